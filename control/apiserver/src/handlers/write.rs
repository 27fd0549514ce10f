//! create, update (PUT) and patch: decoding, defaulting, validation, and the write itself.

use http::{HeaderValue, Response, StatusCode};
use jiff::Timestamp;
use serde_json::{Value, json};

use baton_store::{Store, StoreError};

use super::{Call, set_type};
use crate::ApiServer;
use crate::body::{Body, json_bytes_response, json_response, parse_object};
use crate::objects::{Decision, set_resource_version, store_error};
use crate::patch::{self, PatchType};
use crate::priority_admission;
use crate::resources::{Resource, defaults, validation};
use crate::status::StatusError;

/// The current time as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    rfc3339(Timestamp::now())
}

/// A time as Kubernetes writes timestamps (seconds, UTC).
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Checks (and fills in) kind and apiVersion of a request body.
pub fn check_type(resource: &Resource, obj: &mut Value) -> Result<(), StatusError> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    if (!kind.is_empty() && kind != resource.kind)
        || (!api_version.is_empty() && api_version != resource.api_version())
    {
        return Err(StatusError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            resource.api_version()
        ))
        .with_kind_message(kind, resource));
    }
    set_type(resource, obj);
    Ok(())
}

trait KindMessage {
    fn with_kind_message(self, kind: &str, resource: &Resource) -> Self;
}

impl KindMessage for StatusError {
    fn with_kind_message(mut self, kind: &str, resource: &Resource) -> Self {
        if !kind.is_empty() && kind != resource.kind {
            self.message = format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                resource.kind
            );
        }
        self
    }
}

/// Field paths present in `input` but dropped by decoding (unknown fields).
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None if !v.is_null() && k != "status" => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (idx, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{idx}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes into the typed form (dropping unknown fields, or refusing them under Strict).
pub fn normalize(
    call: &Call<'_>,
    obj: &Value,
    warnings: &mut Vec<String>,
) -> Result<Value, StatusError> {
    let resource = call.resource;
    let out = (resource.normalize)(obj).map_err(|e| {
        StatusError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            resource.kind, resource.version, resource.kind
        ))
    })?;
    let mut unknown = vec![];
    unknown_fields(obj, &out, "", &mut unknown);
    if !unknown.is_empty() {
        let messages: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match call.query.get("fieldValidation").unwrap_or("Warn") {
            "Strict" => {
                return Err(StatusError::bad_request(format!(
                    "strict decoding error: {}",
                    messages.join(", ")
                )));
            }
            "Ignore" => {}
            _ => warnings.extend(messages),
        }
    }
    Ok(out)
}

fn validate(resource: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), StatusError> {
    let mut causes = vec![];
    let rule = validation::name_rule(resource.group, resource.kind);
    validation::metadata(&obj["metadata"], rule, &mut causes);
    validation::object(resource.group, resource.kind, obj, &mut causes);
    match old {
        Some(old) => validation::update(resource.group, resource.kind, old, obj, &mut causes),
        None => validation::create(resource.group, resource.kind, obj, &mut causes),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        Err(StatusError::invalid(&resource.subject(), name, causes))
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            resp.headers_mut().append(http::header::WARNING, v);
        }
    }
    resp
}

/// Fills namespace and name (generateName) of a new object from the request.
fn place(call: &Call<'_>, obj: &mut Value) -> Result<(), StatusError> {
    let meta = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.is_object() {
        return Err(StatusError::bad_request("metadata must be an object"));
    }
    if call.resource.namespaced {
        let ns = call.namespace().ok_or_else(StatusError::no_such_path)?;
        match meta["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(StatusError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if meta["name"].as_str().is_none_or(str::is_empty)
        && let Some(prefix) = meta["generateName"].as_str()
    {
        meta["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    Ok(())
}

/// Clears what a client may not set on create, as upstream's PrepareForCreate does.
fn prepare_new(server_defaults: &defaults::DefaultingConfig, resource: &Resource, obj: &mut Value) {
    let meta = &mut obj["metadata"];
    let uid = uuid::Uuid::new_v4().to_string();
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(now_rfc3339());
    if let Some(m) = meta.as_object_mut() {
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            m.remove(field);
        }
    }
    if resource.tracks_generation {
        meta["generation"] = json!(1);
    }
    if resource.has_status
        && !matches!(resource.kind, "Node" | "PersistentVolumeClaim")
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if (resource.group, resource.kind) == ("batch", "Job") {
        defaults::job_selector(obj, &uid);
    }
    defaults::apply(resource.group, resource.kind, obj, server_defaults, true);
}

/// Makes sure the namespace of a new object exists and is not terminating.
async fn check_namespace<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    name: &str,
) -> Result<(), StatusError> {
    let Some(ns) = call.namespace() else {
        return Ok(());
    };
    use crate::namespaces::{NamespaceState, state_of};
    let state = match server.namespaces.get(ns) {
        Some(state) => state,
        // Not seen yet (or just created): ask etcd.
        None => {
            let ns_resource =
                crate::resources::find("", "v1", "namespaces").expect("namespaces are served");
            let kv = server
                .store
                .get(&ns_resource.key(None, ns))
                .await
                .map_err(|e| store_error(ns_resource, ns, e))?
                .ok_or_else(|| StatusError::not_found(&ns_resource.subject(), ns))?;
            state_of(&serde_json::from_slice(&kv.value).unwrap_or_default())
        }
    };
    if state == NamespaceState::Terminating {
        let detail = format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        );
        return Err(StatusError::forbidden(
            &call.resource.subject(),
            name,
            &detail,
        ));
    }
    Ok(())
}

/// A new object as written, with its stored bytes when they are also its served form.
struct Created {
    object: Value,
    stored: Option<(bytes::Bytes, i64)>,
}

impl Created {
    /// The object as a response: its stored bytes with the resourceVersion spliced in when it
    /// has them, so it is not serialized a second time.
    fn response(&self, code: StatusCode) -> Response<Body> {
        if let Some((raw, revision)) = &self.stored {
            let mut out = Vec::new();
            if crate::objects::write_with_resource_version(&mut out, raw, *revision) {
                return json_bytes_response(code, out);
            }
        }
        json_response(code, &self.object)
    }
}

/// Creates `obj` (already parsed) for a create or a create-on-apply.
async fn create_object<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    mut obj: Value,
    warnings: &mut Vec<String>,
) -> Result<Created, StatusError> {
    let resource = call.resource;
    check_type(resource, &mut obj)?;
    if obj["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| !rv.is_empty())
    {
        return Err(StatusError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    place(call, &mut obj)?;
    let mut obj = normalize(call, &obj, warnings)?;
    // The creator owns the fields it sent (not the defaults), unless an apply already said so.
    let applied = obj["metadata"].get("managedFields").is_some();
    let requested = (!applied).then(|| crate::managed_fields::created_fields(&obj));
    prepare_new(&server.defaulting, resource, &mut obj);
    if let Some(fields) = requested {
        crate::managed_fields::record_create(
            &mut obj,
            &call.manager(),
            &resource.api_version(),
            fields,
        );
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Admission as upstream orders it: NamespaceLifecycle and the mutating plugins, then
    // validation, then the validating plugins.
    check_namespace(server, call, &name).await?;
    if resource.is_core("Pod") {
        crate::service_accounts::admit_new_pod(
            &server.service_accounts,
            &*server.store,
            call.namespace().unwrap_or("default"),
            &mut obj,
            server.tokens.as_ref().is_some_and(|t| t.can_issue()),
        )
        .await?;
        priority_admission::admit_new_pod(
            &server.priority_classes,
            &*server.store,
            resource,
            &mut obj,
        )
        .await?;
    }
    if resource.is_core("PersistentVolumeClaim") {
        crate::storage_classes::admit_new_claim(&*server.store, &mut obj).await?;
    }
    validate(resource, &obj, None)?;
    if is_priority_class(resource) {
        priority_admission::admit_new_class(
            &server.priority_classes,
            &*server.store,
            resource,
            &obj,
        )
        .await?;
    }
    let key = resource.key(call.namespace(), &name);
    if call.query.dry_run()? {
        let exists = server
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(resource, &name, e))?;
        if exists.is_some() {
            return Err(StatusError::already_exists(&resource.subject(), &name));
        }
        return Ok(Created {
            object: obj,
            stored: None,
        });
    }
    let allocated = if resource.kind == "Service" && resource.group.is_empty() {
        server.allocate_service(&mut obj).await?
    } else {
        Default::default()
    };
    let started = std::time::Instant::now();
    let stored = resource.stored_bytes(&obj);
    let written = server.store.create(&key, stored.clone()).await;
    server
        .metrics
        .observe_etcd("create", resource.plural, started.elapsed());
    match written {
        Ok(revision) => {
            set_resource_version(&mut obj, revision);
            if is_priority_class(resource) {
                server.priority_classes.caught_up(revision).await;
            }
            Ok(Created {
                object: obj,
                stored: resource.stored_as_served().then_some((stored, revision)),
            })
        }
        Err(e) => {
            server.release(&allocated).await;
            Err(match e {
                StoreError::AlreadyExists { .. } => {
                    StatusError::already_exists(&resource.subject(), &name)
                }
                other => store_error(resource, &name, other),
            })
        }
    }
}

/// POST: create.
pub async fn create<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
) -> Result<Response<Body>, StatusError> {
    let obj = parse_object(&call.body, call.content_type)?;
    let mut warnings = vec![];
    let created = create_object(server, call, obj, &mut warnings).await?;
    Ok(with_warnings(
        created.response(StatusCode::CREATED),
        &warnings,
    ))
}

/// What of an object a write may change: the whole object (but its status), its status (the
/// `status` subresource), or a pod's ephemeral containers (`ephemeralcontainers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenPart {
    Object,
    Status,
    EphemeralContainers,
}

impl WrittenPart {
    /// The subresource that writes this part, as recorded in managedFields.
    pub fn subresource(self) -> Option<&'static str> {
        match self {
            WrittenPart::Object => None,
            WrittenPart::Status => Some("status"),
            WrittenPart::EphemeralContainers => Some("ephemeralcontainers"),
        }
    }
}

/// Builds the object an update stores, from the current one and the client's.
pub fn prepare_update(
    server: &defaults::DefaultingConfig,
    resource: &Resource,
    current: &Value,
    mut next: Value,
    part: WrittenPart,
) -> Result<Value, StatusError> {
    if part == WrittenPart::EphemeralContainers {
        return crate::ephemeral_containers::prepare_update(resource, current, &next);
    }
    if part == WrittenPart::Status {
        let mut out = current.clone();
        out["status"] = next.get("status").cloned().unwrap_or(Value::Null);
        // Upstream's apps status strategies keep everything but spec and labels from the
        // client: the Deployment controller records its revision annotation this way.
        if resource.group == "apps" {
            match next["metadata"].get("annotations") {
                Some(a) => out["metadata"]["annotations"] = a.clone(),
                None => {
                    if let Some(m) = out["metadata"].as_object_mut() {
                        m.remove("annotations");
                    }
                }
            }
        }
        if out["status"].is_null()
            && let Some(m) = out.as_object_mut()
        {
            m.remove("status");
        }
        return Ok(out);
    }
    // What the client may not change.
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "generation",
    ] {
        match current["metadata"].get(field) {
            Some(v) => next["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if resource.has_status {
        match current.get("status") {
            Some(status) => next["status"] = status.clone(),
            None => {
                if let Some(m) = next.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    // A client that leaves managedFields out keeps the recorded ones (upstream does the same).
    if next["metadata"].get("managedFields").is_none()
        && let Some(mf) = current["metadata"].get("managedFields")
    {
        next["metadata"]["managedFields"] = mf.clone();
    }
    if resource.kind == "Service" && resource.group.is_empty() {
        crate::services::keep_allocations(current, &mut next);
    }
    // A namespace's spec.finalizers change only through its finalize subresource.
    if resource.kind == "Namespace" && resource.group.is_empty() {
        next["spec"]["finalizers"] = current["spec"]["finalizers"].clone();
    }
    if resource.is_core("Pod") {
        priority_admission::keep_on_update(current, &mut next);
    }
    defaults::apply(resource.group, resource.kind, &mut next, server, false);
    let spec_changed = current.get("spec") != next.get("spec");
    // Upstream also counts a Deployment's annotation changes as a new generation.
    let annotations_changed = resource.kind == "Deployment"
        && current["metadata"].get("annotations") != next["metadata"].get("annotations");
    if resource.tracks_generation && (spec_changed || annotations_changed) {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        next["metadata"]["generation"] = json!(generation);
    }
    validate(resource, &next, Some(current))?;
    Ok(next)
}

/// Whether an update must remove the object instead of writing it, as upstream's
/// ShouldDeleteDuringUpdate: it was already being deleted with no grace period left, and the
/// update removed its last finalizer (for a namespace, also its last spec finalizer).
pub fn finished_deleting(current: &Value, next: &Value) -> bool {
    let meta = &current["metadata"];
    let graceless = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0;
    let no_finalizers = next["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    let no_spec_finalizers = next["kind"] != "Namespace"
        || next["spec"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
    !meta["deletionTimestamp"].is_null() && graceless && no_finalizers && no_spec_finalizers
}

/// Refuses an update whose body names another object (a recreated one with the same name).
fn check_uid(
    call: &Call<'_>,
    current: &Value,
    next: &Value,
    is_patch: bool,
) -> Result<(), StatusError> {
    let Some(uid) = next["metadata"]["uid"].as_str().filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let current_uid = current["metadata"]["uid"].as_str().unwrap_or_default();
    if uid == current_uid {
        return Ok(());
    }
    let subject = call.resource.subject();
    if is_patch {
        let cause =
            crate::status::FieldCause::invalid("metadata.uid", &json!(uid), "field is immutable");
        return Err(StatusError::invalid(&subject, call.name(), vec![cause]));
    }
    Err(StatusError::conflict_with(
        &subject,
        call.name(),
        &format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"
        ),
    ))
}

/// For a Service update, the NodePorts its new form (`next_of` the stored one) needs, claimed
/// before the write; nothing for other kinds, dry runs, or a Service that does not exist.
pub async fn service_ports<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    dry_run: bool,
    next_of: impl FnOnce(&Value) -> Result<Value, StatusError>,
) -> Result<crate::services::PortPool, StatusError> {
    if dry_run || !call.resource.is_core("Service") {
        return Ok(Default::default());
    }
    let current =
        match super::read::read_object(server, call.resource, &call.key(), call.name()).await {
            Ok(current) => current,
            Err(e) if e.reason == "NotFound" => return Ok(Default::default()),
            Err(e) => return Err(e),
        };
    let next = next_of(&current)?;
    server.preallocate_for_update(call, &current, &next).await
}

fn is_priority_class(resource: &Resource) -> bool {
    (resource.group, resource.kind) == ("scheduling.k8s.io", "PriorityClass")
}

/// The validating admission of an update, run on each compare-and-swap attempt: Priority's
/// refusal of a second default PriorityClass.
fn admit_update<S: Store>(
    server: &ApiServer<S>,
    resource: &Resource,
    next: &Value,
) -> Result<(), StatusError> {
    if is_priority_class(resource) {
        priority_admission::admit_class_update(&server.priority_classes, resource, next)?;
    }
    Ok(())
}

/// Kinds that a PUT creates when they do not exist (upstream's AllowCreateOnUpdate).
fn creates_on_update(resource: &Resource) -> bool {
    matches!(
        (resource.group, resource.kind),
        ("", "Endpoints")
            | ("", "Event")
            | ("events.k8s.io", "Event")
            | ("coordination.k8s.io", "Lease")
    )
}

/// The last steps of every update: NodePorts claimed beforehand, the manager's ownership of
/// what it changed, and whether to preview, delete or write.
fn decide(
    call: &Call<'_>,
    part: WrittenPart,
    current: &Value,
    mut prepared: Value,
    pool: &crate::services::PortPool,
    dry_run: bool,
) -> Decision {
    pool.fill(&mut prepared);
    crate::managed_fields::record_update(
        current,
        &mut prepared,
        &call.manager(),
        &call.resource.api_version(),
        part.subresource(),
    );
    decision(current, prepared, dry_run)
}

/// What an update that produced `prepared` does: preview it (dry run), remove the object (its
/// deletion finished), or write it.
pub fn decision(current: &Value, prepared: Value, dry_run: bool) -> Decision {
    if dry_run {
        Decision::Preview(prepared)
    } else if finished_deleting(current, &prepared) {
        Decision::Delete
    } else {
        Decision::Write(prepared)
    }
}

/// PUT of the object or of a part of it.
pub async fn update<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    part: WrittenPart,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let mut obj = parse_object(&call.body, call.content_type)?;
    check_type(resource, &mut obj)?;
    let name = call.name().to_string();
    let body_name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if body_name != name {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    place(call, &mut obj)?;
    let mut warnings = vec![];
    let precondition = obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let next = normalize(call, &obj, &mut warnings)?;
    let dry_run = call.query.dry_run()?;
    let finalize = call.info.subresource.as_deref() == Some("finalize");
    let pool = service_ports(server, call, dry_run, |_| Ok(next.clone())).await?;
    let result = server
        .guaranteed_update(resource, &call.key(), &name, |current| {
            if let Some(rv) = &precondition
                && current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
            {
                return Err(StatusError::conflict(&resource.subject(), &name));
            }
            check_uid(call, current, &next, false)?;
            let mut prepared =
                prepare_update(&server.defaulting, resource, current, next.clone(), part)?;
            if finalize {
                prepared["spec"]["finalizers"] = next["spec"]["finalizers"].clone();
            }
            admit_update(server, resource, &prepared)?;
            Ok(decide(call, part, current, prepared, &pool, dry_run))
        })
        .await;
    if let Err(e) = &result
        && e.reason == "NotFound"
        && part == WrittenPart::Object
        && creates_on_update(resource)
        && precondition.is_none()
    {
        server.release(&pool.claimed()).await;
        let created = create_object(server, call, obj, &mut warnings).await?;
        return Ok(with_warnings(
            created.response(StatusCode::CREATED),
            &warnings,
        ));
    }
    finish_write(server, call, result, &pool, &warnings).await
}

/// Answers an update, releasing Service addresses and ports it claimed and did not use, or
/// gave up.
pub async fn finish_write<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    result: Result<crate::objects::Updated, StatusError>,
    pool: &crate::services::PortPool,
    warnings: &[String],
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    match result {
        Ok(updated) => {
            let mut obj = updated.object;
            let stored_type = (obj["apiVersion"].clone(), obj["kind"].clone());
            set_type(resource, &mut obj);
            let typed_as_stored =
                stored_type.0 == obj["apiVersion"] && stored_type.1 == obj["kind"];
            // Pods created after this answer see the class as written.
            if is_priority_class(resource)
                && updated.written
                && let Some(revision) = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse().ok())
            {
                server.priority_classes.caught_up(revision).await;
            }
            if resource.kind == "Service" && resource.group.is_empty() {
                if updated.deleted {
                    server.release_held(&updated.previous).await;
                    server.release(&pool.claimed()).await;
                } else {
                    server
                        .release_unused(&updated.previous, &obj, pool, updated.written)
                        .await;
                }
            }
            // The object as written is its stored bytes with the resourceVersion spliced in,
            // when that is its served form: no second serialization.
            if resource.stored_as_served()
                && typed_as_stored
                && let Some((raw, revision)) = &updated.stored
            {
                let mut out = Vec::new();
                if crate::objects::write_with_resource_version(&mut out, raw, *revision) {
                    return Ok(with_warnings(
                        json_bytes_response(StatusCode::OK, out),
                        warnings,
                    ));
                }
            }
            Ok(with_warnings(json_response(StatusCode::OK, &obj), warnings))
        }
        Err(e) => {
            server.release(&pool.claimed()).await;
            Err(e)
        }
    }
}

/// PATCH of the object or a part of it.
pub async fn patch<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    part: WrittenPart,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let patch_type = PatchType::from_content_type(call.content_type)?;
    let name = call.name().to_string();
    if patch_type == PatchType::Apply {
        return crate::apply::server_side_apply(server, call, part).await;
    }
    let dry_run = call.query.dry_run()?;
    let mut warnings = vec![];
    let pool = service_ports(server, call, dry_run, |current| {
        patch::apply(current, patch_type, &call.body)
    })
    .await?;
    let result = server
        .guaranteed_update(resource, &call.key(), &name, |current| {
            // Only the last attempt's warnings are the answer's.
            warnings.clear();
            let mut patched = patch::apply(current, patch_type, &call.body)?;
            if patched["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
                && patched["metadata"]["resourceVersion"].is_string()
            {
                return Err(StatusError::conflict(&resource.subject(), &name));
            }
            if patched["metadata"]["name"] != current["metadata"]["name"] {
                return Err(StatusError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    patched["metadata"]["name"].as_str().unwrap_or_default()
                )));
            }
            check_uid(call, current, &patched, true)?;
            set_type(resource, &mut patched);
            let next = normalize(call, &patched, &mut warnings)?;
            let prepared = prepare_update(&server.defaulting, resource, current, next, part)?;
            admit_update(server, resource, &prepared)?;
            Ok(decide(call, part, current, prepared, &pool, dry_run))
        })
        .await;
    finish_write(server, call, result, &pool, &warnings).await
}

/// Creates an object for server-side apply when it does not exist yet, answered as a create.
pub async fn create_for_apply<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    obj: Value,
) -> Result<Response<Body>, StatusError> {
    let mut warnings = vec![];
    let created = create_object(server, call, obj, &mut warnings).await?;
    Ok(with_warnings(
        created.response(StatusCode::CREATED),
        &warnings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_created_object_is_answered_from_its_stored_bytes() {
        let object = json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": "c", "namespace": "default", "resourceVersion": "17"},
            "data": {"k": "v"},
        });
        let stored = crate::objects::encode(&object);
        assert!(!String::from_utf8_lossy(&stored).contains("resourceVersion"));
        let created = Created {
            object: object.clone(),
            stored: Some((stored, 17)),
        };
        let response = created.response(StatusCode::CREATED);
        assert_eq!(response.status(), StatusCode::CREATED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, object);
    }
}
