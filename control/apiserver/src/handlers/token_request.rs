//! `serviceaccounts/NAME/token`: the TokenRequest API. A token for the service account,
//! optionally bound to a pod, secret or node (it stops authenticating once that object is
//! gone), for the audiences and lifetime the request asks (upstream's defaults: the API
//! server's audiences, one hour; at least ten minutes).

use http::{Response, StatusCode};
use serde_json::{Value, json};

use baton_store::Store;

use super::Call;
use super::read::read_object;
use crate::ApiServer;
use crate::body::{Body, json_response, parse_object};
use crate::resources;
use crate::status::{FieldCause, StatusError, Subject};
use crate::tokens::{KubernetesClaims, ObjectRef};

const SUBJECT: Subject<'static> = Subject {
    group: "authentication.k8s.io",
    resource: "tokenrequests",
    kind: "TokenRequest",
};
/// A token's lifetime when the request names none.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a request may ask for.
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a request may ask for.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Serves POST `serviceaccounts/NAME/token`.
pub async fn create<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let Some(tokens) = server.tokens.as_ref().filter(|t| t.can_issue()) else {
        // As upstream, where the subresource is not installed without a signing key.
        tracing::info!(
            "a token was requested, but tokens are not issued: no --service-account-signing-key-file"
        );
        return Err(StatusError::no_such_path());
    };
    let namespace = call.namespace().unwrap_or_default().to_string();
    let name = call.name().to_string();
    let request = parse_object(&call.body, call.content_type)?;
    check_shape(&request, &namespace, &name)?;
    let spec = &request["spec"];

    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => v
            .as_i64()
            .ok_or_else(|| invalid(&name, "spec.expirationSeconds", v, "must be a whole number"))?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if audiences.is_empty() {
        audiences = tokens.default_audiences().to_vec();
    }

    let accounts = resources::find("", "v1", "serviceaccounts").expect("served");
    let account = read_object(server, accounts, &call.key(), &name).await?;
    let mut claims = KubernetesClaims {
        namespace: namespace.clone(),
        serviceaccount: ObjectRef {
            name: name.clone(),
            uid: uid_of(&account),
        },
        pod: None,
        secret: None,
        node: None,
    };
    let bound = &spec["boundObjectRef"];
    if !bound.is_null() {
        bind(server, &mut claims, bound).await?;
    }

    let now = jiff::Timestamp::now();
    let issued_at = now.as_second();
    let expires_at = issued_at + expiration;
    let token = tokens
        .issue(claims, audiences.clone(), issued_at, expires_at)
        .expect("a signing key is configured");
    let expiration_timestamp = jiff::Timestamp::from_second(expires_at)
        .expect("a time within range")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut spec_out = json!({ "audiences": audiences, "expirationSeconds": expiration });
    if !bound.is_null() {
        spec_out["boundObjectRef"] = bound.clone();
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
            "spec": spec_out,
            "status": { "token": token, "expirationTimestamp": expiration_timestamp },
        }),
    ))
}

/// Binds the token to the object `bound` names, which must exist (with the UID it gives, if
/// any); a pod must run as the service account, and its node goes into the claims too.
async fn bind<S: Store>(
    server: &ApiServer<S>,
    claims: &mut KubernetesClaims,
    bound: &Value,
) -> Result<(), StatusError> {
    let account = claims.serviceaccount.name.clone();
    let kind = bound["kind"].as_str().unwrap_or_default();
    let api_version = bound["apiVersion"].as_str().unwrap_or("v1");
    let object_name = bound["name"].as_str().unwrap_or_default().to_string();
    let plural = match kind {
        "Pod" => "pods",
        "Secret" => "secrets",
        "Node" => "nodes",
        _ => {
            return Err(invalid(
                &account,
                "spec.boundObjectRef.kind",
                &json!(kind),
                "supported values: \"Node\", \"Pod\", \"Secret\"",
            ));
        }
    };
    if api_version != "v1" {
        return Err(invalid(
            &account,
            "spec.boundObjectRef.apiVersion",
            &json!(api_version),
            "supported values: \"v1\"",
        ));
    }
    if object_name.is_empty() {
        return Err(StatusError::invalid(
            &SUBJECT,
            &account,
            vec![FieldCause::required("spec.boundObjectRef.name", "")],
        ));
    }
    let resource = resources::find("", "v1", plural).expect("core resources are served");
    let namespace = (kind != "Node").then_some(claims.namespace.as_str());
    let object = read_object(
        server,
        resource,
        &resource.key(namespace, &object_name),
        &object_name,
    )
    .await?;
    let uid = uid_of(&object);
    if let Some(wanted) = bound["uid"].as_str().filter(|u| !u.is_empty())
        && wanted != uid
    {
        return Err(StatusError::conflict_with(
            &resource.subject(),
            &object_name,
            &format!(
                "the UID in the bound object reference ({wanted}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
            ),
        ));
    }
    let reference = ObjectRef {
        name: object_name.clone(),
        uid,
    };
    match kind {
        "Pod" => {
            let runs_as = object["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            if runs_as != account {
                // Upstream's words.
                return Err(StatusError::bad_request(format!(
                    "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
                )));
            }
            if let Some(node) = object["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                // A node that is gone is named without its UID, as upstream does.
                let nodes = resources::find("", "v1", "nodes").expect("served");
                let uid = match read_object(server, nodes, &nodes.key(None, node), node).await {
                    Ok(node_object) => uid_of(&node_object),
                    Err(e) if e.code == StatusCode::NOT_FOUND => String::new(),
                    Err(e) => return Err(e),
                };
                claims.node = Some(ObjectRef {
                    name: node.to_string(),
                    uid,
                });
            }
            claims.pod = Some(reference);
        }
        "Secret" => claims.secret = Some(reference),
        _ => claims.node = Some(reference),
    }
    Ok(())
}

/// Refuses a body that is not a TokenRequest for this account: another kind, another name or
/// namespace in its metadata, or fields of the wrong type (a token for other audiences than
/// asked would be worse than none).
fn check_shape(request: &Value, namespace: &str, name: &str) -> Result<(), StatusError> {
    if let Some(kind) = request["kind"].as_str()
        && !kind.is_empty()
        && kind != "TokenRequest"
    {
        return Err(StatusError::bad_request(format!(
            "the body is a {kind:?}, not a TokenRequest"
        )));
    }
    let meta = &request["metadata"];
    for (field, expected) in [("name", name), ("namespace", namespace)] {
        if let Some(given) = meta[field].as_str()
            && !given.is_empty()
            && given != expected
        {
            return Err(invalid(
                name,
                &format!("metadata.{field}"),
                &json!(given),
                &format!("must match the service account {field} if specified"),
            ));
        }
    }
    let spec = &request["spec"];
    let audiences = &spec["audiences"];
    let audiences_ok = audiences.is_null()
        || audiences
            .as_array()
            .is_some_and(|list| list.iter().all(Value::is_string));
    if !audiences_ok {
        return Err(invalid(
            name,
            "spec.audiences",
            audiences,
            "must be a list of strings",
        ));
    }
    let bound = &spec["boundObjectRef"];
    if !bound.is_null() && !bound.is_object() {
        return Err(invalid(
            name,
            "spec.boundObjectRef",
            bound,
            "must be an object",
        ));
    }
    for field in ["kind", "apiVersion", "name", "uid"] {
        let value = &bound[field];
        if !value.is_null() && !value.is_string() {
            return Err(invalid(
                name,
                &format!("spec.boundObjectRef.{field}"),
                value,
                "must be a string",
            ));
        }
    }
    Ok(())
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> StatusError {
    StatusError::invalid(
        &SUBJECT,
        name,
        vec![FieldCause::invalid(field, value, detail)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(request: Value) -> String {
        let err = check_shape(&request, "team", "builder").unwrap_err();
        err.message
    }

    #[test]
    fn a_body_that_is_not_this_accounts_token_request_is_refused() {
        assert!(
            check_shape(
                &json!({ "spec": { "audiences": ["vault"] } }),
                "team",
                "builder"
            )
            .is_ok()
        );
        assert!(check_shape(&json!({}), "team", "builder").is_ok());
        let named = refusal(json!({ "metadata": { "name": "other" } }));
        assert!(
            named.contains("metadata.name: Invalid value: \"other\": must match the service account name if specified"),
            "{named}"
        );
        let audiences = refusal(json!({ "spec": { "audiences": "vault" } }));
        assert!(audiences.contains("spec.audiences"), "{audiences}");
        let uid = refusal(json!({ "spec": { "boundObjectRef": { "kind": "Pod", "uid": 7 } } }));
        assert!(uid.contains("spec.boundObjectRef.uid"), "{uid}");
        let kind = refusal(json!({ "kind": "Pod" }));
        assert!(kind.contains("not a TokenRequest"), "{kind}");
    }
}
