//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-User`,
//! `Impersonate-Group`, `Impersonate-Uid` and `Impersonate-Extra-KEY` headers make a request
//! act as another user, as upstream's impersonation filter does. Until RBAC is enforced every
//! authenticated user may impersonate anyone, which is what upstream's AlwaysAllow answers to
//! its `impersonate` checks. The headers are removed from the request once read.

use std::collections::BTreeMap;

use http::HeaderMap;

use crate::authn::UserInfo;
use crate::status::StatusError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";

const AUTHENTICATED: &str = "system:authenticated";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const ANONYMOUS: &str = "system:anonymous";

/// The user a request acts as: the impersonated one when its headers ask for one (they are
/// taken out of `headers`), else `None`.
pub fn impersonated(headers: &mut HeaderMap) -> Result<Option<UserInfo>, StatusError> {
    let text = |v: &http::HeaderValue| v.to_str().unwrap_or_default().to_string();
    let name = headers.get(USER).map(text);
    let mut groups: Vec<String> = headers.get_all(GROUP).iter().map(text).collect();
    let uid = headers.get(UID).map(text);
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let extra_headers: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(EXTRA_PREFIX))
        .cloned()
        .collect();
    for header in &extra_headers {
        let escaped = &header.as_str()[EXTRA_PREFIX.len()..];
        let key = percent_encoding::percent_decode_str(escaped)
            .decode_utf8()
            .map_err(|_| {
                StatusError::bad_request(format!("invalid impersonation header {header}"))
            })?
            .into_owned();
        extra
            .entry(key)
            .or_default()
            .extend(headers.get_all(header).iter().map(text));
    }
    if name.is_none() && groups.is_empty() && uid.is_none() && extra.is_empty() {
        return Ok(None);
    }
    for header in [USER, GROUP, UID] {
        headers.remove(header);
    }
    for header in &extra_headers {
        headers.remove(header);
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(StatusError::internal(
            "requested impersonation of groups, a uid or extra values without impersonating a user",
        ));
    };
    if groups.is_empty()
        && let Some(namespace) = name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(namespace, _)| namespace)
    {
        groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{namespace}"),
        ];
    }
    if name == ANONYMOUS {
        if !groups.iter().any(|g| g == UNAUTHENTICATED) {
            groups.push(UNAUTHENTICATED.to_string());
        }
    } else if !groups
        .iter()
        .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
    {
        groups.push(AUTHENTICATED.to_string());
    }
    Ok(Some(UserInfo {
        name,
        groups,
        uid: uid.filter(|u| !u.is_empty()),
        extra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn no_headers_no_impersonation() {
        assert_eq!(
            impersonated(&mut headers(&[("accept", "x")])).unwrap(),
            None
        );
    }

    #[test]
    fn a_user_with_groups_uid_and_extra() {
        let mut h = headers(&[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "u-1"),
            ("Impersonate-Extra-Scopes", "view"),
            ("Impersonate-Extra-Scopes", "edit"),
            ("Impersonate-Extra-Example.com%2Fteam", "a"),
            ("accept", "x"),
        ]);
        let user = impersonated(&mut h).unwrap().unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(user.extra["scopes"], ["view", "edit"]);
        assert_eq!(user.extra["example.com/team"], ["a"]);
        // The headers do not travel further; the others stay.
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn service_accounts_get_their_groups_and_anonymous_stays_unauthenticated() {
        let mut h = headers(&[("Impersonate-User", "system:serviceaccount:team:builder")]);
        let user = impersonated(&mut h).unwrap().unwrap();
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:team",
                "system:authenticated"
            ]
        );
        let mut h = headers(&[("Impersonate-User", "system:anonymous")]);
        let user = impersonated(&mut h).unwrap().unwrap();
        assert_eq!(user.groups, ["system:unauthenticated"]);
        let mut h = headers(&[
            ("Impersonate-User", "x"),
            ("Impersonate-Group", "system:unauthenticated"),
        ]);
        let user = impersonated(&mut h).unwrap().unwrap();
        assert_eq!(user.groups, ["system:unauthenticated"]);
    }

    #[test]
    fn groups_without_a_user_are_refused() {
        let mut h = headers(&[("Impersonate-Group", "system:masters")]);
        let err = impersonated(&mut h).unwrap_err();
        assert_eq!(err.code, http::StatusCode::INTERNAL_SERVER_ERROR);
    }
}
