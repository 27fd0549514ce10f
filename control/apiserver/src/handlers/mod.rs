//! The REST handlers of resource requests: one file per group of verbs.

mod delete;
mod disruption_budget;
pub mod read;
mod subresources;
mod token_request;
mod watch;
mod write;

pub use write::{
    WrittenPart, check_type, create_for_apply, decision, finish_write, finished_deleting,
    normalize, now_rfc3339 as now, prepare_update, service_ports,
};

use bytes::Bytes;
use http::Response;
use serde_json::Value;

use baton_store::Store;

use crate::ApiServer;
use crate::authn::UserInfo;
use crate::body::{Body, Query, Wanted};
use crate::request::RequestInfo;
use crate::resources::Resource;
use crate::status::StatusError;

/// Everything a handler needs about one resource request.
#[derive(Debug)]
pub struct Call<'a> {
    /// What the path addressed.
    pub info: &'a RequestInfo,
    /// The resource it names.
    pub resource: &'static Resource,
    /// Query parameters.
    pub query: &'a Query,
    /// How to encode the response.
    pub wanted: Wanted,
    /// The request's Content-Type.
    pub content_type: &'a str,
    /// The request body.
    pub body: Bytes,
    /// Who asked.
    pub user: &'a UserInfo,
    /// The User-Agent header ("" when absent).
    pub user_agent: &'a str,
}

impl Call<'_> {
    /// The object name in the path.
    pub fn name(&self) -> &str {
        self.info.name.as_deref().unwrap_or_default()
    }

    /// The namespace in the path (for namespaced resources).
    pub fn namespace(&self) -> Option<&str> {
        if self.resource.namespaced {
            self.info.namespace.as_deref()
        } else {
            None
        }
    }

    /// The field manager of a write: `fieldManager`, else the user agent's product name, as
    /// upstream defaults it.
    pub fn manager(&self) -> String {
        match self.query.get("fieldManager") {
            Some(m) => m.to_string(),
            None => {
                let product = self.user_agent.split('/').next().unwrap_or_default().trim();
                if product.is_empty() {
                    "unknown".to_string()
                } else {
                    product.to_string()
                }
            }
        }
    }

    /// The storage key of the named object.
    pub fn key(&self) -> String {
        self.resource.key(self.namespace(), self.name())
    }
}

/// Serves a resource request.
pub async fn dispatch<S: Store>(
    server: &ApiServer<S>,
    call: Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    if resource.namespaced && call.info.name.is_some() && call.info.namespace.is_none() {
        return Err(StatusError::no_such_path());
    }
    if !resource.namespaced && call.info.namespace.is_some() {
        return Err(StatusError::no_such_path());
    }
    if let Some(sub) = call.info.subresource.as_deref() {
        if resource.subresource(sub).is_none() {
            return Err(StatusError::no_such_path());
        }
        return subresources::dispatch(server, &call, sub).await;
    }
    match call.info.verb {
        "get" => read::get(server, &call).await,
        "list" => read::list(server, &call).await,
        "watch" => watch::watch(server, &call).await,
        "create" => write::create(server, &call).await,
        "update" => write::update(server, &call, WrittenPart::Object).await,
        "patch" => write::patch(server, &call, WrittenPart::Object).await,
        "delete" => delete::delete(server, &call).await,
        "deletecollection" => delete::delete_collection(server, &call).await,
        other => Err(StatusError::method_not_supported(
            &resource.subject(),
            other,
        )),
    }
}

/// Sets `kind` and `apiVersion` on an object read from storage or about to be returned.
pub fn set_type(resource: &Resource, obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("kind".into(), Value::String(resource.kind.to_string()));
        map.insert("apiVersion".into(), Value::String(resource.api_version()));
    }
}
