//! Request bodies, query parameters and responses.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::status::StatusError;

/// The body type of every response.
pub type Body = BoxBody<Bytes, Infallible>;

/// The largest request body accepted (upstream's limit: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Wraps bytes as a response body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response.
pub fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    json_bytes_response(
        code,
        serde_json::to_vec(value).expect("JSON values always serialize"),
    )
}

/// A JSON response from bytes already encoded.
pub fn json_bytes_response(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON response with another content type (e.g. aggregated discovery).
pub fn json_response_as(
    code: StatusCode,
    value: &Value,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = json_response(code, value);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A plain-text response.
pub fn text_response(code: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The response for a failed request.
pub fn error_response(err: &StatusError) -> Response<Body> {
    let mut resp = json_response(err.code, &err.to_status());
    if let Some(retry) = err.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    }
    resp
}

/// Query parameters (last value wins, as Go's `url.Values.Get` returns the first: we keep the first).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a query string.
    pub fn parse(query: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Self(map)
    }

    /// A parameter, if present and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean parameter (`true`, `1`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    /// An integer parameter; a malformed one is a 400 naming it.
    pub fn int(&self, key: &str) -> Result<Option<i64>, StatusError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    StatusError::bad_request(format!("invalid value for {key}: {v:?}"))
                })
            })
            .transpose()
    }

    /// Whether `dryRun=All` was asked for; other values are refused as upstream does.
    pub fn dry_run(&self) -> Result<bool, StatusError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(StatusError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            ))),
        }
    }
}

/// Parses a JSON (or YAML) request body, answering 400 as upstream words it.
pub fn parse_object(body: &[u8], content_type: &str) -> Result<Value, StatusError> {
    let is_yaml = content_type.contains("yaml");
    let value: Value = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        crate::protobuf::decode_request(body)
            .map_err(|e| StatusError::bad_request(e.to_string()))?
    } else if is_yaml {
        serde_saphyr::from_slice(body)
            .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            StatusError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    if !value.is_object() {
        return Err(StatusError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    Ok(value)
}

/// How the client wants the response encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The object(s) as JSON.
    Object,
    /// A meta.k8s.io Table (kubectl get).
    Table,
    /// Metadata only (PartialObjectMetadata / List).
    Metadata,
}

/// Reads the Accept header.
pub fn wanted(accept: Option<&str>) -> Result<Wanted, StatusError> {
    let Some(accept) = accept else {
        return Ok(Wanted::Object);
    };
    let mut json_ok = false;
    for media in accept.split(',') {
        let media = media.trim();
        let base = media.split(';').next().unwrap_or_default().trim();
        if !matches!(
            base,
            "application/json" | "*/*" | "application/*" | "application/yaml" | ""
        ) {
            continue;
        }
        if media.contains("as=Table") {
            return Ok(Wanted::Table);
        }
        if media.contains("as=PartialObjectMetadata") {
            return Ok(Wanted::Metadata);
        }
        if !media.contains("as=") {
            json_ok = true;
        }
    }
    if json_ok {
        Ok(Wanted::Object)
    } else {
        Err(StatusError::not_acceptable(accept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_get_asks_for_tables() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(wanted(Some(accept)).unwrap(), Wanted::Table);
        assert_eq!(
            wanted(Some("application/json, */*")).unwrap(),
            Wanted::Object
        );
        assert_eq!(wanted(None).unwrap(), Wanted::Object);
        assert!(wanted(Some("application/vnd.kubernetes.protobuf")).is_err());
    }
}
