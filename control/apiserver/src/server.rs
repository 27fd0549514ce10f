//! The HTTPS server: TLS handshakes, authentication, and routing of each request to
//! discovery, health, metrics, OpenAPI or the resource handlers.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use baton_store::Store;

use crate::ApiServer;
use crate::authn::{UserInfo, bearer_token, user_from_certificate, user_from_token};
use crate::body::{
    Body, MAX_BODY, Query, error_response, full, json_response, json_response_as, text_response,
    wanted,
};
use crate::discovery;
use crate::handlers::{self, Call};
use crate::request::{self, Target};
use crate::resources;
use crate::status::StatusError;

/// Accepts connections until the listener fails.
pub async fn serve<S: Store>(
    server: Arc<ApiServer<S>>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(user_from_certificate);
            let user = Arc::new(user);
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let user = user.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&server, req, user.as_ref().as_ref()).await,
                    )
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // kubectl multiplexes its requests and watches over one HTTP/2 connection.
            builder.http2().max_concurrent_streams(1000);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle<S: Store>(
    server: &ApiServer<S>,
    req: Request<Incoming>,
    user: Option<&UserInfo>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let target = request::parse(&method, &path, query.flag("watch"));
    let (verb, resource_label) = match &target {
        Target::Resource(info) => {
            let r = match &info.subresource {
                Some(s) => format!("{}/{s}", info.resource),
                None => info.resource.clone(),
            };
            (info.verb.to_uppercase(), r)
        }
        _ => (method.as_str().to_string(), String::new()),
    };
    // A client certificate wins over a token, as upstream's authenticators are ordered.
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .filter(|_| user.is_none())
        .map(str::to_owned);
    let token_user = match token {
        Some(token) => user_from_token(server, &token).await.map(Some),
        None => Ok(None),
    };
    let mut req = req;
    let result = match token_user {
        Ok(token_user) => {
            let authenticated = user.or(token_user.as_ref());
            // Only an authenticated request may act as someone else.
            let acting_as = match authenticated {
                Some(_) => crate::impersonation::impersonated(req.headers_mut()),
                None => Ok(None),
            };
            match acting_as {
                Ok(acting_as) => {
                    let user = acting_as.as_ref().or(authenticated);
                    route(server, req, target, &query, user).await
                }
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err),
    };
    let resp = result.unwrap_or_else(|err| error_response(&err));
    server.metrics.observe(
        &verb,
        &resource_label,
        resp.status().as_u16(),
        started.elapsed(),
    );
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    resp
}

async fn route<S: Store>(
    server: &ApiServer<S>,
    req: Request<Incoming>,
    target: Target,
    query: &Query,
    user: Option<&UserInfo>,
) -> Result<Response<Body>, StatusError> {
    // Health endpoints answer without credentials, as upstream's do for probes.
    if let Target::Other(path) = &target {
        match path.trim_end_matches('/') {
            "/healthz" | "/livez" => return Ok(text_response(StatusCode::OK, "ok")),
            "/readyz" => {
                return match server.store.current_revision().await {
                    Ok(_) => Ok(text_response(StatusCode::OK, "ok")),
                    Err(_) => Ok(text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "[-]etcd failed: reason withheld\nreadyz check failed",
                    )),
                };
            }
            _ => {}
        }
    }
    let Some(user) = user else {
        return Err(StatusError::unauthorized());
    };
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match target {
        Target::CoreVersions => Ok(if discovery::wants_aggregated(accept.as_deref()) {
            json_response_as(
                StatusCode::OK,
                &discovery::aggregated(true),
                discovery::AGGREGATED_V2,
            )
        } else {
            json_response(StatusCode::OK, &discovery::core_versions(&server.advertise))
        }),
        Target::Groups => Ok(if discovery::wants_aggregated(accept.as_deref()) {
            json_response_as(
                StatusCode::OK,
                &discovery::aggregated(false),
                discovery::AGGREGATED_V2,
            )
        } else {
            json_response(StatusCode::OK, &discovery::group_list())
        }),
        Target::Group(name) => discovery::group(&name)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(StatusError::no_such_path),
        Target::ResourceList { group, version } => discovery::resource_list(&group, &version)
            .map(|doc| json_response(StatusCode::OK, &doc))
            .ok_or_else(StatusError::no_such_path),
        Target::Other(path) => other(server, &path, accept.as_deref()),
        Target::Resource(info)
            if info.group == "authentication.k8s.io"
                && info.version == "v1"
                && info.resource == "selfsubjectreviews"
                && info.verb == "create" =>
        {
            Ok(json_response(
                StatusCode::CREATED,
                &crate::authn::self_subject_review(user),
            ))
        }
        Target::Resource(info)
            if info.group == crate::authz::GROUP
                && info.version == "v1"
                && info.verb == "create"
                && info.namespace.is_none()
                && info.name.is_none()
                && info.subresource.is_none()
                && crate::authz::REVIEWS
                    .iter()
                    .any(|(plural, _)| *plural == info.resource) =>
        {
            let content_type = request_content_type(&req);
            let body = read_body(req).await?;
            let asked = crate::body::parse_object(&body, &content_type)?;
            Ok(json_response(
                StatusCode::CREATED,
                &crate::authz::review(&info.resource, &asked)?,
            ))
        }
        Target::Resource(info) if crate::resource_metrics::is_metrics_request(&info) => {
            crate::resource_metrics::serve(server, &info, query).await
        }
        Target::Resource(info) if crate::node_proxy::is_node_proxied(&info) => {
            crate::node_proxy::proxy(server, req, &info).await
        }
        Target::Resource(info) => {
            let resource = resources::find(&info.group, &info.version, &info.resource)
                .ok_or_else(StatusError::no_such_path)?;
            let content_type = request_content_type(&req);
            let wanted = wanted(accept.as_deref())?;
            let user_agent = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = read_body(req).await?;
            let call = Call {
                info: &info,
                resource,
                query,
                wanted,
                content_type: &content_type,
                body,
                user,
                user_agent: &user_agent,
            };
            handlers::dispatch(server, call).await
        }
    }
}

/// The request's Content-Type (JSON when it says none).
fn request_content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, StatusError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(Bytes::new());
    }
    // The body is read up to the limit (not refused on its Content-Length alone), so that a
    // client still sending gets the 413 rather than a reset connection.
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(StatusError::too_large(MAX_BODY))
        }
        Err(e) => Err(StatusError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// /openapi/v2 as JSON or, when asked for (as kubectl does), in gnostic's protobuf encoding.
fn openapi_v2(accept: Option<&str>) -> Result<Response<Body>, StatusError> {
    use crate::openapi::{V2_PROTOBUF, V2Encoding};
    let (bytes, content_type) = match crate::openapi::v2_encoding(accept) {
        Some(V2Encoding::Json) => (crate::openapi::v2_json(), "application/json"),
        Some(V2Encoding::Protobuf) => (crate::openapi::v2_protobuf(), V2_PROTOBUF),
        None => {
            return Err(StatusError::not_acceptable_of(
                accept.unwrap_or_default(),
                &["application/json", V2_PROTOBUF],
            ));
        }
    };
    let mut resp = Response::new(full(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp.headers_mut()
        .insert(header::VARY, http::HeaderValue::from_static("Accept"));
    Ok(resp)
}

fn other<S: Store>(
    server: &ApiServer<S>,
    path: &str,
    accept: Option<&str>,
) -> Result<Response<Body>, StatusError> {
    match path.trim_end_matches('/') {
        "/version" => Ok(json_response(StatusCode::OK, &discovery::version())),
        // Service account issuer discovery, as upstream serves it to authenticated clients.
        "/.well-known/openid-configuration" | "/openid/v1/jwks" => {
            let tokens = server
                .tokens
                .as_ref()
                .ok_or_else(StatusError::no_such_path)?;
            Ok(if path.starts_with("/openid") {
                json_response_as(StatusCode::OK, &tokens.jwks(), "application/jwk-set+json")
            } else {
                json_response(
                    StatusCode::OK,
                    &tokens.openid_configuration(&server.advertise),
                )
            })
        }
        "/metrics" => Ok(text_response(StatusCode::OK, server.metrics.render())),
        "/openapi/v2" => openapi_v2(accept),
        "/openapi/v3" => Ok(json_response(StatusCode::OK, &crate::openapi::v3_index())),
        p if p.starts_with("/openapi/v3/") => crate::openapi::v3_group(&p["/openapi/v3/".len()..])
            .map(|doc| json_response(StatusCode::OK, doc))
            .ok_or_else(StatusError::no_such_path),
        "" => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/metrics", "/openapi/v2", "/openapi/v3", "/readyz", "/version"] }),
        )),
        _ => Err(StatusError::no_such_path()),
    }
}
