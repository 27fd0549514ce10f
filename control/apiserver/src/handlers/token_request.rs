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

    let issued_at = jiff::Timestamp::now().as_second();
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
            "metadata": { "name": name, "namespace": namespace, "creationTimestamp": null },
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
                return Err(StatusError::bad_request(format!(
                    "cannot bind a token for service account {account:?} to pod {object_name:?}, which runs as service account {runs_as:?}"
                )));
            }
            if let Some(node) = object["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                let nodes = resources::find("", "v1", "nodes").expect("served");
                if let Ok(node_object) =
                    read_object(server, nodes, &nodes.key(None, node), node).await
                {
                    claims.node = Some(ObjectRef {
                        name: node.to_string(),
                        uid: uid_of(&node_object),
                    });
                }
            }
            claims.pod = Some(reference);
        }
        "Secret" => claims.secret = Some(reference),
        _ => claims.node = Some(reference),
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
