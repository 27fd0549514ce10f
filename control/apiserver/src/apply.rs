//! Server-side apply: the applied configuration is merged into the live object; ownership of
//! fields is recorded per manager in `metadata.managedFields`; an apply that would change a
//! field another manager owns is refused (409) unless `force=true`; fields a manager stops
//! applying are removed when no one else owns them.

use std::collections::BTreeSet;

use http::Response;
use serde_json::json;

use baton_store::Store;

use crate::ApiServer;
use crate::body::{Body, parse_object};
use crate::handlers::{Call, WrittenPart, set_type};
use crate::managed_fields::{self, FieldPath};
use crate::patch::strategic_merge;
use crate::status::{FieldCause, StatusError};

fn manager_required() -> StatusError {
    let subject = crate::status::Subject {
        group: "meta.k8s.io",
        resource: "PatchOptions",
        kind: "PatchOptions",
    };
    StatusError::invalid(
        &subject,
        "",
        vec![FieldCause::required(
            "fieldManager",
            "is required for apply patch",
        )],
    )
}

fn conflict_error(call: &Call<'_>, conflicts: &[managed_fields::Conflict]) -> StatusError {
    let subject = call.resource.subject();
    let mut err = StatusError::conflict_with(&subject, call.name(), "");
    err.message = managed_fields::conflict_message(conflicts);
    if let Some(details) = err.details.as_mut() {
        details["causes"] = conflicts
            .iter()
            .map(|c| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {:?} using {}", c.manager, c.api_version),
                    "field": managed_fields::render(&c.path),
                })
            })
            .collect();
    }
    err
}

/// PATCH with application/apply-patch+yaml.
pub async fn server_side_apply<S: Store>(
    server: &ApiServer<S>,
    call: &Call<'_>,
    part: WrittenPart,
) -> Result<Response<Body>, StatusError> {
    let resource = call.resource;
    let manager = call
        .query
        .get("fieldManager")
        .ok_or_else(manager_required)?;
    let force = call.query.flag("force");
    let mut applied = parse_object(&call.body, "application/yaml")?;
    if applied["metadata"]["name"].as_str() != Some(call.name()) {
        return Err(StatusError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            applied["metadata"]["name"].as_str().unwrap_or_default(),
            call.name()
        )));
    }
    crate::handlers::check_type(resource, &mut applied)?;
    let applied_paths: BTreeSet<FieldPath> =
        managed_fields::leaves(&managed_fields::field_set(&applied));
    let subresource = part.subresource();
    let api_version = resource.api_version();
    let dry_run = call.query.dry_run()?;
    let mut warnings = vec![];
    // Services: NodePorts the merged object will need are claimed before the write.
    let pool = crate::handlers::service_ports(server, call, dry_run, |current| {
        let mut preview = current.clone();
        strategic_merge(&mut preview, &applied, "")?;
        Ok(preview)
    })
    .await?;
    let result = server
        .guaranteed_update(resource, &call.key(), call.name(), |current| {
            // Only the last attempt's warnings are the answer's.
            warnings.clear();
            let conflicts: Vec<_> =
                managed_fields::conflicts(current, &applied, &applied_paths, manager);
            if !conflicts.is_empty() && !force {
                return Err(conflict_error(call, &conflicts));
            }
            let mut merged = current.clone();
            // Fields this manager applied before and no longer does, and no one else owns, go.
            let before = managed_fields::applied_by(current, manager);
            let others = managed_fields::owned_by_others(current, manager);
            let mut dropped: Vec<&FieldPath> = before
                .iter()
                .filter(|p| !applied_paths.contains(*p) && !others.contains(*p))
                .collect();
            dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for path in dropped {
                managed_fields::remove(&mut merged, path);
            }
            strategic_merge(&mut merged, &applied, "")?;
            set_type(resource, &mut merged);
            managed_fields::assign(
                &mut merged,
                manager,
                "Apply",
                &api_version,
                subresource,
                &applied_paths,
                true,
            );
            let next = crate::handlers::normalize(call, &merged, &mut warnings)?;
            let mut prepared =
                crate::handlers::prepare_update(&server.defaulting, resource, current, next, part)?;
            crate::priority_admission::admit_class_update(
                &server.priority_classes,
                resource,
                &prepared,
            )?;
            pool.fill(&mut prepared);
            Ok(crate::handlers::decision(current, prepared, dry_run))
        })
        .await;
    match result {
        Ok(_) => crate::handlers::finish_write(server, call, result, &pool, &warnings).await,
        // Apply creates what does not exist yet (never through a subresource).
        Err(e) if e.reason == "NotFound" && part == WrittenPart::Object => {
            server.release(&pool.claimed()).await;
            let mut obj = applied.clone();
            managed_fields::assign(
                &mut obj,
                manager,
                "Apply",
                &api_version,
                None,
                &applied_paths,
                true,
            );
            crate::handlers::create_for_apply(server, call, obj).await
        }
        Err(_) => crate::handlers::finish_write(server, call, result, &pool, &warnings).await,
    }
}
