//! Turning a request path and method into what it asks for (upstream's `RequestInfo`).

use http::Method;

/// What an API request addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// "" for the core group.
    pub group: String,
    /// e.g. `v1`.
    pub version: String,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The plural resource name.
    pub resource: String,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource (`status`, `scale`, `binding`, `log`, `exec`, `eviction`), if any.
    pub subresource: Option<String>,
    /// The verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
    /// The path segments after a `proxy` subresource, decoded (`["stats", "summary"]` of
    /// `nodes/n1/proxy/stats/summary`).
    pub proxy_path: Option<Vec<String>>,
}

/// What a path outside the resource tree names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`
    ResourceList {
        /// The group.
        group: String,
        /// The version.
        version: String,
    },
    /// A resource request.
    Resource(RequestInfo),
    /// Anything else (`/version`, `/healthz`, `/openapi/v2` ...).
    Other(String),
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// Parses a request path and method; `watch` is whether the query asked for a watch.
pub fn parse(method: &Method, path: &str, watch_param: bool) -> Target {
    let parts = split(path);
    let (group, version, rest) = match parts.first().map(String::as_str) {
        Some("api") => match parts.len() {
            1 => return Target::CoreVersions,
            _ => (String::new(), parts[1].clone(), &parts[2..]),
        },
        Some("apis") => match parts.len() {
            1 => return Target::Groups,
            2 => return Target::Group(parts[1].clone()),
            _ => (parts[1].clone(), parts[2].clone(), &parts[3..]),
        },
        _ => return Target::Other(path.to_string()),
    };
    if rest.is_empty() {
        return Target::ResourceList { group, version };
    }
    let mut rest: Vec<String> = rest.to_vec();
    let mut legacy_watch = false;
    if rest[0] == "watch" {
        legacy_watch = true;
        rest.remove(0);
        if rest.is_empty() {
            return Target::Other(path.to_string());
        }
    }
    let mut info = RequestInfo {
        group,
        version,
        ..Default::default()
    };
    if rest[0] == "namespaces" {
        if rest.len() >= 3 && !matches!(rest[2].as_str(), "status" | "finalize") {
            info.namespace = Some(rest[1].clone());
            rest.drain(0..2);
        } else if rest.len() >= 2 {
            // The namespace object itself (and its status/finalize subresources).
            info.name = Some(rest[1].clone());
            info.resource = "namespaces".into();
            info.subresource = rest.get(2).cloned();
            info.verb = verb(
                method,
                true,
                legacy_watch || watch_param,
                info.subresource.as_deref(),
            );
            return Target::Resource(info);
        }
    }
    info.resource = rest[0].clone();
    info.name = rest.get(1).cloned();
    info.subresource = rest.get(2).cloned();
    if info.subresource.as_deref() == Some("proxy") {
        info.proxy_path = Some(rest[3..].to_vec());
    } else if rest.len() > 3 {
        return Target::Other(path.to_string());
    }
    info.verb = verb(
        method,
        info.name.is_some(),
        legacy_watch || watch_param,
        info.subresource.as_deref(),
    );
    Target::Resource(info)
}

fn verb(method: &Method, has_name: bool, watch: bool, subresource: Option<&str>) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if has_name || subresource.is_some() => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if has_name => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: Method, path: &str) -> RequestInfo {
        match parse(&method, path, false) {
            Target::Resource(info) => info,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_object_and_subresource() {
        let info = res(
            Method::PUT,
            "/apis/apps/v1/namespaces/ns1/deployments/web/scale",
        );
        assert_eq!(info.group, "apps");
        assert_eq!(info.namespace.as_deref(), Some("ns1"));
        assert_eq!(info.resource, "deployments");
        assert_eq!(info.name.as_deref(), Some("web"));
        assert_eq!(info.subresource.as_deref(), Some("scale"));
        assert_eq!(info.verb, "update");
    }

    #[test]
    fn namespace_object_and_lists() {
        let ns = res(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (ns.resource.as_str(), ns.name.as_deref(), ns.verb),
            ("namespaces", Some("kube-system"), "get")
        );
        let list = res(Method::GET, "/api/v1/pods");
        assert_eq!((list.namespace, list.verb), (None, "list"));
        let watch = res(Method::GET, "/api/v1/watch/namespaces/a/pods");
        assert_eq!(
            (watch.namespace.as_deref(), watch.verb),
            (Some("a"), "watch")
        );
        let dc = res(Method::DELETE, "/api/v1/namespaces/a/pods");
        assert_eq!(dc.verb, "deletecollection");
    }

    #[test]
    fn proxy_subresources_keep_the_rest_of_the_path() {
        let info = res(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(
            (
                info.resource.as_str(),
                info.name.as_deref(),
                info.subresource.as_deref(),
                info.proxy_path.as_deref()
            ),
            (
                "nodes",
                Some("n1"),
                Some("proxy"),
                Some(&["stats".to_owned(), "summary".to_owned()][..])
            )
        );
        let bare = res(Method::GET, "/api/v1/nodes/n1/proxy");
        assert_eq!(bare.proxy_path.as_deref(), Some(&[][..]));
        // Escapes are decoded per segment: an escaped slash stays inside its segment.
        let escaped = res(Method::GET, "/api/v1/nodes/n1/proxy/a%2Fb/c%3Fd");
        assert_eq!(
            escaped.proxy_path,
            Some(vec!["a/b".to_owned(), "c?d".to_owned()])
        );
        assert!(matches!(
            parse(&Method::GET, "/api/v1/nodes/n1/status/extra", false),
            Target::Other(_)
        ));
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(parse(&Method::GET, "/api", false), Target::CoreVersions);
        assert_eq!(parse(&Method::GET, "/apis/", false), Target::Groups);
        assert_eq!(
            parse(&Method::GET, "/apis/apps", false),
            Target::Group("apps".into())
        );
        assert_eq!(
            parse(&Method::GET, "/apis/apps/v1", false),
            Target::ResourceList {
                group: "apps".into(),
                version: "v1".into()
            }
        );
    }
}
