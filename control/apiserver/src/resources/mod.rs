//! The resources Baton serves: one [`Resource`] per (group, version, plural), with what
//! discovery, storage, defaulting, validation and printing need to know about it.

mod catalog;
pub mod defaults;
pub mod events;
pub mod printers;
pub mod validation;

pub use catalog::CATALOG;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::status::Subject;

/// A subresource and the verbs it accepts.
#[derive(Debug, Clone, Copy)]
pub struct Subresource {
    /// e.g. `status`.
    pub name: &'static str,
    /// The kind it takes and returns (`Scale` for scale, the parent kind for status).
    pub kind: Option<(&'static str, &'static str, &'static str)>,
    /// Verbs, as discovery lists them.
    pub verbs: &'static [&'static str],
}

/// One served resource.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group, "" for core.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind, e.g. `Deployment`.
    pub kind: &'static str,
    /// Plural resource name, e.g. `deployments`.
    pub plural: &'static str,
    /// Singular name, e.g. `deployment`.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names, e.g. `deploy`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// Whether `status` is a separate subresource (the main resource ignores status writes).
    pub has_status: bool,
    /// Whether metadata.generation counts spec changes.
    pub tracks_generation: bool,
    /// The etcd key prefix, e.g. `/registry/deployments/`.
    pub storage_prefix: &'static str,
    /// Decodes an object into its typed form and back: rejects bodies that do not decode and
    /// drops fields the type does not know.
    pub normalize: fn(&Value) -> Result<Value, serde_json::Error>,
    /// When objects are stored in another form (events.k8s.io Events are stored as core
    /// Events): the conversions into and out of storage.
    pub view: Option<StorageView>,
    /// The OpenAPI schema of the type (from k8s-openapi's schemars support).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// The schema of a k8s-openapi type, registering its definitions with the generator.
pub fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

/// Conversions between a resource's API form and its stored form.
#[derive(Debug, Clone, Copy)]
pub struct StorageView {
    /// API form to stored form.
    pub to_storage: fn(Value) -> Value,
    /// Stored form to API form.
    pub from_storage: fn(Value) -> Value,
}

/// Round-trips a JSON object through its k8s-openapi type (reading it in place, not a copy).
pub fn roundtrip<T: DeserializeOwned + Serialize>(
    value: &Value,
) -> Result<Value, serde_json::Error> {
    let typed = T::deserialize(value)?;
    serde_json::to_value(typed)
}

/// The verbs of an ordinary resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// What errors about this resource name.
    pub fn subject(&self) -> Subject<'static> {
        Subject {
            group: self.group,
            resource: self.plural,
            kind: self.kind,
        }
    }

    /// The list kind, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage_prefix),
            _ => format!("{}{name}", self.storage_prefix),
        }
    }

    /// The storage prefix of a list (one namespace, or all).
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.storage_prefix),
            _ => self.storage_prefix.to_string(),
        }
    }

    /// Whether this is the core (group "") resource of `kind`.
    pub fn is_core(&self, kind: &str) -> bool {
        self.group.is_empty() && self.kind == kind
    }

    /// Converts a stored object to this resource's form.
    pub fn from_storage(&self, obj: Value) -> Value {
        match self.view {
            Some(view) => (view.from_storage)(obj),
            None => obj,
        }
    }

    /// The bytes an object of this resource's form is stored as (its stored form, without
    /// resourceVersion); copied only when the stored form differs.
    pub fn stored_bytes(&self, obj: &Value) -> bytes::Bytes {
        match self.view {
            Some(view) => crate::objects::encode(&(view.to_storage)(obj.clone())),
            None => crate::objects::encode(obj),
        }
    }

    /// Whether the stored form is this resource's form, so stored bytes can be served as
    /// they are.
    pub fn stored_as_served(&self) -> bool {
        self.view.is_none()
    }

    /// Whether this resource has the named subresource.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// Finds a served resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    CATALOG
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a served resource by group and kind.
pub fn find_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    CATALOG.iter().find(|r| r.group == group && r.kind == kind)
}
