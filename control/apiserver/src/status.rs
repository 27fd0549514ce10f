//! Failed requests as Kubernetes `Status` objects (reason, code, details with field causes).

use http::StatusCode;
use serde_json::{Value, json};

/// One field-level cause of an `Invalid` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// e.g. `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`.
    pub reason: &'static str,
    /// The message for this field.
    pub message: String,
    /// The JSON path of the field, e.g. `spec.replicas`.
    pub field: String,
}

/// `field: message`, as upstream prints a cause in an `Invalid` error's message.
impl std::fmt::Display for FieldCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl FieldCause {
    /// A value that is not allowed: `field: Invalid value: VALUE: detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        let field = field.into();
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", detail.into()),
            field,
        }
    }

    /// Like [`FieldCause::invalid`], with the value already rendered as upstream shows it.
    pub fn invalid_shown(field: impl Into<String>, shown: &str, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {}", detail.into()),
            field: field.into(),
        }
    }

    /// A missing value: `field: Required value`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            reason: "FieldValueRequired",
            message,
            field: field.into(),
        }
    }

    /// A value outside a fixed set: `field: Unsupported value: "x": supported values: ...`.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    /// A field that may not be set or changed: `field: Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }

    /// A reference to something that does not exist: `field: Not found: VALUE`.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueNotFound",
            message: format!("Not found: {value}"),
            field: field.into(),
        }
    }

    /// A duplicate entry: `field: Duplicate value: VALUE`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
            field: field.into(),
        }
    }
}

/// A request that failed, answered as a `Status` with the matching HTTP code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    /// HTTP status code.
    pub code: StatusCode,
    /// Kubernetes reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, as upstream words it.
    pub message: String,
    /// `details`, when the error concerns a named object.
    pub details: Option<Box<Value>>,
    /// Retry-After seconds, for 429/503.
    pub retry_after: Option<u32>,
}

/// The group and kind (or resource) an error is about, as upstream's `qualifiedResource`.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// The plural resource name, e.g. `pods` or `deployments`.
    pub resource: &'a str,
    /// The kind, e.g. `Pod`.
    pub kind: &'a str,
}

impl Subject<'_> {
    /// `pods` or `deployments.apps`, as upstream prints a qualified resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Pod` or `Deployment.apps`, as upstream prints a qualified kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

impl StatusError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, subject: &Subject<'_>, name: &str) -> Self {
        let mut details = json!({ "name": name, "kind": subject.resource });
        if !subject.group.is_empty() {
            details["group"] = json!(subject.group);
        }
        self.details = Some(Box::new(details));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(subject: &Subject<'_>, name: &str, detail: &str) -> Self {
        let msg = format!("{} {name:?} is forbidden: {detail}", subject.qualified());
        Self::new(StatusCode::FORBIDDEN, "Forbidden", msg).with_details(subject, name)
    }

    /// 404 NotFound for an object.
    pub fn not_found(subject: &Subject<'_>, name: &str) -> Self {
        let msg = format!("{} {name:?} not found", subject.qualified());
        Self::new(StatusCode::NOT_FOUND, "NotFound", msg).with_details(subject, name)
    }

    /// 404 NotFound for a path that names nothing. Its `details` are there and empty, as
    /// upstream's (`NewNotFound` of no resource): kubectl reads them to tell a missing
    /// subresource (`kubectl debug`: "ephemeral containers are disabled") from a missing object.
    pub fn no_such_path() -> Self {
        let mut status = Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
        status.details = Some(Box::new(json!({})));
        status
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_supported(subject: &Subject<'_>, verb: &str) -> Self {
        let msg = format!(
            "{verb} is not supported on resources of kind {:?}",
            subject.qualified()
        );
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", msg)
    }

    /// 406 NotAcceptable for an object or list.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::not_acceptable_of(accept, &["application/json", "application/yaml"])
    }

    /// 406 NotAcceptable, naming the media types that are served.
    pub fn not_acceptable_of(accept: &str, served: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {} (asked for {accept:?})",
                served.join(", ")
            ),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(subject: &Subject<'_>, name: &str) -> Self {
        let msg = format!("{} {name:?} already exists", subject.qualified());
        Self::new(StatusCode::CONFLICT, "AlreadyExists", msg).with_details(subject, name)
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(subject: &Subject<'_>, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
            subject.qualified()
        );
        Self::new(StatusCode::CONFLICT, "Conflict", msg).with_details(subject, name)
    }

    /// 409 Conflict with a message of the caller's.
    pub fn conflict_with(subject: &Subject<'_>, name: &str, detail: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: {detail}",
            subject.qualified()
        );
        Self::new(StatusCode::CONFLICT, "Conflict", msg).with_details(subject, name)
    }

    /// 410 Gone with reason Expired (a resourceVersion or continue token that was compacted).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
            ),
        )
    }

    /// 422 Invalid with field causes, worded as upstream's `NewInvalid`.
    pub fn invalid(subject: &Subject<'_>, name: &str, causes: Vec<FieldCause>) -> Self {
        let summary = if causes.len() == 1 {
            causes[0].to_string()
        } else {
            let parts: Vec<String> = causes.iter().map(ToString::to_string).collect();
            format!("[{}]", parts.join(", "))
        };
        let msg = format!(
            "{} {name:?} is invalid: {summary}",
            subject.qualified_kind()
        );
        let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg);
        let mut details = json!({ "name": name, "kind": subject.kind });
        if !subject.group.is_empty() {
            details["group"] = json!(subject.group);
        }
        details["causes"] = causes
            .iter()
            .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
            .collect();
        err.details = Some(Box::new(details));
        err
    }

    /// 429 TooManyRequests with the causes upstream's eviction gives (`DisruptionBudget`), and
    /// a Retry-After only where upstream sends one (client-go retries such answers itself, so
    /// `kubectl drain`, which retries every 5 s on its own, would stall behind it).
    pub fn too_many_requests(
        message: impl Into<String>,
        causes: &[(&str, String)],
        retry_after: Option<u32>,
    ) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
        let causes: Vec<Value> = causes
            .iter()
            .map(|(reason, message)| json!({ "reason": reason, "message": message }))
            .collect();
        let mut details = json!({ "causes": causes });
        if let Some(seconds) = retry_after {
            details["retryAfterSeconds"] = json!(seconds);
        }
        err.details = Some(Box::new(details));
        err.retry_after = retry_after;
        err
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            message,
        );
        err.retry_after = Some(1);
        err
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        // Upstream leaves the reason out when there is none (an internal error's plain text).
        if self.reason.is_empty()
            && let Some(m) = status.as_object_mut()
        {
            m.remove("reason");
        }
        if let Some(details) = &self.details {
            status["details"] = (**details).clone();
        }
        if let Some(retry) = self.retry_after {
            let details = status["details"]
                .as_object_mut()
                .cloned()
                .unwrap_or_default();
            let mut details = Value::Object(details);
            details["retryAfterSeconds"] = json!(retry);
            status["details"] = details;
        }
        status
    }
}

/// A `Status` reporting success, as returned by delete when the object is gone.
pub fn success_status(subject: &Subject<'_>, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({ "name": name, "kind": subject.resource });
    if !subject.group.is_empty() {
        details["group"] = json!(subject.group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_matches_upstream_wording() {
        let subject = Subject {
            group: "apps",
            resource: "deployments",
            kind: "Deployment",
        };
        let err = StatusError::invalid(
            &subject,
            "web",
            vec![FieldCause::invalid(
                "spec.replicas",
                &json!(-1),
                "must be greater than or equal to 0",
            )],
        );
        assert_eq!(
            err.message,
            "Deployment.apps \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        let status = err.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn not_found_names_the_qualified_resource() {
        let subject = Subject {
            group: "",
            resource: "pods",
            kind: "Pod",
        };
        assert_eq!(
            StatusError::not_found(&subject, "x").message,
            "pods \"x\" not found"
        );
    }
}
