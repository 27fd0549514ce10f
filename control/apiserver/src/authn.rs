//! Authentication: the user and groups of a request, from its verified client certificate
//! (CN = user name, each O = a group), as kube-apiserver's x509 authenticator does, else from
//! a service account token in `Authorization: Bearer` (checked by [`crate::tokens`], then
//! refused when the account, or the pod, secret or node it is bound to, is gone or was
//! recreated under another UID).

use rustls_pki_types::CertificateDer;
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};

use baton_store::Store;

use crate::ApiServer;
use crate::handlers::read::read_object;
use crate::resources;
use crate::status::StatusError;
use crate::tokens::{Claims, ObjectRef};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The groups, including `system:authenticated`.
    pub groups: Vec<String>,
    /// The user's uid, when the credential names one.
    pub uid: Option<String>,
    /// Extra attributes, by key.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Reads the user from the leaf client certificate that TLS already verified.
pub fn user_from_certificate(cert: &CertificateDer<'_>) -> Option<UserInfo> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".to_string());
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

/// The SelfSubjectReview that `kubectl auth whoami` asks for: who the request came as.
pub fn self_subject_review(user: &UserInfo) -> Value {
    serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "status": { "userInfo": user_info(user) },
    })
}

/// A user as authentication.k8s.io's `UserInfo` (uid and extra only when set).
fn user_info(user: &UserInfo) -> Value {
    let mut info = serde_json::json!({ "username": user.name, "groups": user.groups });
    if let Some(uid) = &user.uid {
        info["uid"] = uid.clone().into();
    }
    if !user.extra.is_empty() {
        info["extra"] = serde_json::json!(user.extra);
    }
    info
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The service account a bearer token authenticates, or 401 when it does not.
pub async fn user_from_token<S: Store>(
    server: &ApiServer<S>,
    token: &str,
) -> Result<UserInfo, StatusError> {
    let Some(tokens) = &server.tokens else {
        return Err(StatusError::unauthorized());
    };
    let now = jiff::Timestamp::now().as_second();
    if let Some(claims) = tokens.recall(token, now) {
        return Ok(claims.user());
    }
    let claims = tokens.verify(token, now).map_err(|e| {
        tracing::debug!(error = %e, "bearer token refused");
        StatusError::unauthorized()
    })?;
    if let Err(why) = check_bound_objects(server, &claims, now).await? {
        tracing::debug!(user = %claims.sub, why, "bearer token refused");
        return Err(StatusError::unauthorized());
    }
    tokens.remember(token, &claims);
    Ok(claims.user())
}

/// Whether the objects `claims` name still exist with their UIDs: `Ok(Err(why))` when not;
/// `Err` when they could not be read.
async fn check_bound_objects<S: Store>(
    server: &ApiServer<S>,
    claims: &Claims,
    now: i64,
) -> Result<Result<(), String>, StatusError> {
    let k = &claims.kubernetes;
    let account = server
        .service_accounts
        .get(&*server.store, &k.namespace, &k.serviceaccount.name)
        .await?;
    match account {
        Some(account) if account.uid != k.serviceaccount.uid => {
            return Ok(Err("service account UID differs".into()));
        }
        Some(account) if deleted_before(account.deletion_timestamp.as_deref(), now) => {
            return Ok(Err("service account is being deleted".into()));
        }
        Some(_) => {}
        None => return Ok(Err("service account is gone".into())),
    }
    let bound = [
        ("pods", Some(k.namespace.as_str()), &k.pod),
        ("secrets", Some(k.namespace.as_str()), &k.secret),
        // The node of a pod-bound token only informs; the pod check covers it.
        ("nodes", None, if k.pod.is_none() { &k.node } else { &None }),
    ];
    for (plural, namespace, reference) in bound {
        let Some(ObjectRef { name, uid }) = reference else {
            continue;
        };
        let resource = resources::find("", "v1", plural).expect("core resources are served");
        let object = match read_object(server, resource, &resource.key(namespace, name), name).await
        {
            Ok(object) => object,
            Err(e) if e.code == http::StatusCode::NOT_FOUND => {
                return Ok(Err(format!("bound {plural} {name:?} is gone")));
            }
            Err(e) => return Err(e),
        };
        if object["metadata"]["uid"].as_str() != Some(uid.as_str()) {
            return Ok(Err(format!("bound {plural} {name:?} has another UID")));
        }
        if deleted_before(object["metadata"]["deletionTimestamp"].as_str(), now) {
            return Ok(Err(format!("bound {plural} {name:?} is being deleted")));
        }
    }
    Ok(Ok(()))
}

/// Whether a deletionTimestamp (the end of the object's grace period) has passed.
fn deleted_before(deletion_timestamp: Option<&str>, now: i64) -> bool {
    deletion_timestamp
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t.as_second() <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  tok "), Some("tok"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn deletion_counts_once_the_grace_period_is_over() {
        let at = Some("2026-01-01T00:00:30Z");
        let end = "2026-01-01T00:00:30Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        assert!(!deleted_before(at, end - 1));
        assert!(deleted_before(at, end));
        assert!(!deleted_before(None, end));
    }
}
