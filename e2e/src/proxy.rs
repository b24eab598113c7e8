//! The API server's `proxy` subresources, which `kubectl proxy` and
//! clients outside a cluster use to reach a pod or a Service:
//! `/api/v1/namespaces/<ns>/pods/<name>[:<port>]/proxy/<path>` goes to the
//! pod's IP, `/api/v1/namespaces/<ns>/services/<name>[:<port>]/proxy/<path>`
//! to the Service's Ready pods in turn. The method, query, body and
//! end-to-end headers pass through both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use crate::store::{ApiError, Key, Store};

/// A request for a proxy subresource, taken apart.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub namespace: String,
    /// `pods` or `services`.
    pub plural: String,
    pub name: String,
    /// The port asked for after `name:`, if any (a number, or for a
    /// Service also a port name).
    pub port: Option<String>,
    /// The path to ask the backend for, from its `/`.
    pub path: String,
}

/// `path` as a proxy request, when it is one.
pub fn parse(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.splitn(5, '/');
    let namespace = parts.next()?;
    let plural = parts.next()?;
    let id = parts.next()?;
    if parts.next()? != "proxy" || !matches!(plural, "pods" | "services") {
        return None;
    }
    // `[scheme:]name[:port]`: only plain HTTP is served here.
    let id = id.strip_prefix("http:").unwrap_or(id);
    let (name, port) = match id.split_once(':') {
        Some((name, port)) => (name, Some(port.to_owned())),
        None => (id, None),
    };
    Some(Target {
        namespace: namespace.to_owned(),
        plural: plural.to_owned(),
        name: name.to_owned(),
        port,
        path: format!("/{}", parts.next().unwrap_or_default()),
    })
}

/// Where `target` leads now; `turn` picks among a Service's pods.
pub fn resolve(store: &Store, target: &Target, turn: &AtomicUsize) -> Result<SocketAddr, ApiError> {
    let object = store.get(&Key {
        group: String::new(),
        plural: target.plural.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    })?;
    let unavailable = |message: String| ApiError {
        code: 503,
        reason: "ServiceUnavailable",
        message,
    };
    if target.plural == "pods" {
        let ip: std::net::Ipv4Addr = object["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| unavailable(format!("pod {} has no IP yet", target.name)))?;
        let port = match &target.port {
            Some(port) => port.parse().map_err(|_| {
                ApiError::bad_request(format!("the pod port {port:?} is not a number"))
            })?,
            None => object["spec"]["containers"][0]["ports"][0]["containerPort"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(80),
        };
        return Ok(SocketAddr::from((ip, port)));
    }
    let ports = object["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let port = match &target.port {
        None => ports.first(),
        Some(asked) => ports.iter().find(|p| {
            p["name"].as_str() == Some(asked.as_str())
                || p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(asked.as_str())
        }),
    }
    .ok_or_else(|| {
        ApiError::not_found(&format!(
            "port {:?} of service {}",
            target.port.as_deref().unwrap_or_default(),
            target.name
        ))
    })?;
    let pods: Vec<Value> = store.list("", "pods", Some(&target.namespace));
    let endpoints = crate::node::endpoints(&object, port, &pods);
    if endpoints.is_empty() {
        return Err(unavailable(format!(
            "no endpoints available for service {:?}",
            target.name
        )));
    }
    Ok(endpoints[turn.fetch_add(1, Ordering::Relaxed) % endpoints.len()])
}

/// Headers that belong to one connection, not to the exchange.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
            | "authorization"
    ) || name.as_str().starts_with("impersonate-")
}

/// Sends the request on to `to` and answers with what it answered.
pub async fn forward(
    client: &reqwest::Client,
    to: SocketAddr,
    method: Method,
    target: &Target,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let url = match query {
        Some(query) => format!("http://{to}{}?{query}", target.path),
        None => format!("http://{to}{}", target.path),
    };
    let mut request = client.request(method, url).body(body);
    for (name, value) in headers {
        if !hop_by_hop(name) {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(err) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(format!("error trying to reach {to}: {err}")))
                .unwrap_or_default();
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_name_the_object_port_and_path() {
        let target =
            parse("/api/v1/namespaces/a/services/capture:http/proxy/batch/").expect("a proxy path");
        assert_eq!(
            target,
            Target {
                namespace: "a".into(),
                plural: "services".into(),
                name: "capture".into(),
                port: Some("http".into()),
                path: "/batch/".into(),
            }
        );
        let target = parse("/api/v1/namespaces/a/pods/p-1/proxy").expect("a proxy path");
        assert_eq!((target.port, target.path.as_str()), (None, "/"));
        let target = parse("/api/v1/namespaces/a/pods/http:p-1:3000/proxy/_readiness")
            .expect("a proxy path");
        assert_eq!(
            (target.name.as_str(), target.port.as_deref()),
            ("p-1", Some("3000"))
        );
        assert!(parse("/api/v1/namespaces/a/pods/p-1/log").is_none());
        assert!(parse("/api/v1/namespaces/a/configmaps/c/proxy/x").is_none());
        assert!(parse("/apis/apps/v1/namespaces/a/deployments/d").is_none());
    }
}
