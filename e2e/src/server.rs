//! The HTTP side of the stand-in: discovery, the REST paths of every
//! served resource (`/api/v1/...`, `/apis/<group>/<version>/...`), lists
//! with label and field selectors, watches that replay from a resource
//! version and send bookmarks, and the `Status` errors clients expect.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resources;
use crate::store::{ApiError, Change, Key, PatchKind, Store, fields_match, labels_match};

/// The API server stand-in: one store, shared by every connection.
#[derive(Clone)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    /// Every request RBAC refused, as its message.
    denials: Arc<Mutex<Vec<String>>>,
    changes: broadcast::Sender<Change>,
    /// How often watches that asked for them get a bookmark.
    bookmark_every: Duration,
    /// For the `proxy` subresources: the client, and whose turn it is
    /// among a Service's pods.
    proxy_client: reqwest::Client,
    proxy_turn: Arc<AtomicUsize>,
}

impl Default for ApiServer {
    fn default() -> Self {
        ApiServer {
            store: Arc::default(),
            denials: Arc::default(),
            changes: broadcast::channel(16_384).0,
            bookmark_every: Duration::from_secs(1),
            proxy_client: reqwest::Client::new(),
            proxy_turn: Arc::default(),
        }
    }
}

/// A request path, taken apart.
#[derive(Debug)]
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (String::new(), (*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_owned(), (*version).to_owned(), rest),
        _ => return None,
    };
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_owned());
    let target = match rest {
        ["namespaces", namespace, plural, rest @ ..]
            if !(group.is_empty()
                && matches!(*plural, "status" | "finalize")
                && rest.is_empty()) =>
        {
            Target {
                group,
                version,
                namespace: Some((*namespace).to_owned()),
                plural: (*plural).to_owned(),
                name: owned(rest.first()),
                subresource: owned(rest.get(1)),
            }
        }
        [plural, rest @ ..] if !plural.is_empty() => Target {
            group,
            version,
            namespace: None,
            plural: (*plural).to_owned(),
            name: owned(rest.first()),
            subresource: owned(rest.get(1)),
        },
        _ => return None,
    };
    Some(target)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn error_response(err: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.status(),
    )
}

impl ApiServer {
    /// Binds `address` (port 0 for any) and serves the cluster admin
    /// there until the task is dropped; returns where.
    pub async fn start(
        &self,
        address: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.listen(address, None).await
    }

    /// Like [`ApiServer::start`], for one user
    /// (`system:serviceaccount:<ns>:<name>`): every request on this
    /// listener is theirs, and RBAC decides it. (Clients send no bearer
    /// token over plain HTTP, so the listener is the identity.)
    pub async fn start_for(
        &self,
        address: SocketAddr,
        user: &str,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.listen(address, Some(user.to_owned())).await
    }

    async fn listen(
        &self,
        address: SocketAddr,
        user: Option<String>,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        let server = self.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let server = server.clone();
                let user = user.clone();
                async move {
                    server
                        .handle(user.as_deref(), method, uri, headers, body)
                        .await
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((bound, task))
    }

    /// A kubeconfig for clients of the stand-in at `address`.
    pub fn kubeconfig(address: SocketAddr, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: stand-in, cluster: {{server: 'http://{address}'}}}}]\n\
             users: [{{name: admin, user: {{}}}}]\n\
             contexts: [{{name: stand-in, context: {{cluster: stand-in, user: admin, namespace: {namespace}}}}}]\n\
             current-context: stand-in\n"
        )
    }

    /// The requests RBAC refused so far.
    pub fn denials(&self) -> Vec<String> {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The store, even if a panicking request left its lock poisoned.
    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `change` on the store and tells watches what it changed (for
    /// the node stand-in and tests, which act as controllers would).
    pub fn mutate<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock_store();
        let before = store.version();
        let result = change(&mut store);
        for change in store.history.iter().filter(|c| c.version > before) {
            let _ = self.changes.send(change.clone());
        }
        result
    }

    /// A copy of one stored object (for tests).
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.lock_store();
        store
            .get(&Key {
                group: group.into(),
                plural: plural.into(),
                namespace: namespace.into(),
                name: name.into(),
            })
            .ok()
    }

    async fn handle(
        &self,
        user: Option<&str>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let path = uri.path();
        let query: HashMap<String, String> = uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        tracing::debug!(%method, %uri, "request");
        if method == Method::GET {
            let store = self.lock_store();
            if let Some(document) = resources::discovery(&store.resources, path)
                .or_else(|| resources::openapi_v3(&store.resources, path))
            {
                return json_response(StatusCode::OK, &document);
            }
        }
        // `kubectl --as` and kubeconfigs with `as:` send the user to act
        // as; the cluster admin may, nobody else.
        let impersonated = headers
            .get("impersonate-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let user = match (user, impersonated.as_deref()) {
            (None, Some(as_user)) => Some(as_user),
            (Some(user), Some(_)) => {
                return error_response(&ApiError {
                    code: 403,
                    reason: "Forbidden",
                    message: format!("users \"{user}\" is forbidden: cannot impersonate"),
                });
            }
            (user, None) => user,
        };
        if let Some(proxy) = crate::proxy::parse(path) {
            return self
                .proxy(user, method, &proxy, uri.query(), &headers, body)
                .await;
        }
        let Some(target) = parse_path(path) else {
            return error_response(&ApiError::not_found(path));
        };
        let resource = {
            let store = self.lock_store();
            store.resource(&target.group, &target.version, &target.plural)
        };
        let Some(resource) = resource else {
            return error_response(&ApiError::not_found(&format!(
                "the server could not find the requested resource {path}"
            )));
        };
        let namespace = if resource.namespaced {
            target.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let key = |name: &str| Key {
            group: resource.group.clone(),
            plural: resource.plural.clone(),
            namespace: namespace.clone(),
            name: name.to_owned(),
        };
        if let Some(denied) =
            user.and_then(|user| self.forbidden(user, &method, &target, &resource, &query))
        {
            return error_response(&denied);
        }
        let status = target.subresource.as_deref() == Some("status");
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
        if let Some(sub) = target.subresource.as_deref()
            && !(status && resource.status)
        {
            return error_response(&ApiError::not_found(&format!(
                "subresource {sub} of {}",
                resource.plural
            )));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Typed clients send protobuf: decoded for the kinds they create,
        // else refused with 415, after which clients fall back to JSON.
        let unsupported = |message: String| {
            error_response(&ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message,
            })
        };
        let protobuf = if content_type.contains("protobuf") {
            match crate::protobuf::decode(&body) {
                Ok(object) => Some(object),
                Err(reason) => return unsupported(reason),
            }
        } else if content_type.contains("cbor") {
            return unsupported(format!(
                "the body content type {content_type:?} is not supported; send JSON"
            ));
        } else {
            None
        };
        let parse_body = |yaml: bool| -> Result<Value, ApiError> {
            if let Some(object) = &protobuf {
                Ok(object.clone())
            } else if yaml {
                serde_yaml::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("the body is not YAML: {e}")))
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
            }
        };
        let result = match (&method, target.name.as_deref()) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                return self.watch(&resource, target.namespace.as_deref(), &query);
            }
            (&Method::GET, None) => {
                let store = self.lock_store();
                let items: Vec<Value> = store
                    .list(
                        &resource.group,
                        &resource.plural,
                        target.namespace.as_deref(),
                    )
                    .into_iter()
                    .filter(|o| {
                        labels_match(o, query.get("labelSelector").map_or("", String::as_str))
                    })
                    .filter(|o| {
                        fields_match(o, query.get("fieldSelector").map_or("", String::as_str))
                    })
                    .collect();
                if crate::table::wanted(accept) {
                    return json_response(
                        StatusCode::OK,
                        &crate::table::table(&resource, &items, store.version()),
                    );
                }
                Ok((
                    StatusCode::OK,
                    json!({
                        "kind": format!("{}List", resource.kind),
                        "apiVersion": resource.group_version(),
                        "metadata": {"resourceVersion": store.version().to_string()},
                        "items": items,
                    }),
                ))
            }
            (&Method::GET, Some(name)) => {
                let store = self.lock_store();
                match store.get(&key(name)) {
                    Ok(object) if crate::table::wanted(accept) => {
                        return json_response(
                            StatusCode::OK,
                            &crate::table::table(&resource, &[object], store.version()),
                        );
                    }
                    other => other.map(|o| (StatusCode::OK, o)),
                }
            }
            (&Method::POST, None) => parse_body(false).and_then(|object| {
                self.mutate(|store| {
                    store.strict = strict;
                    store.create(&resource, key(""), object)
                })
                .map(|o| (StatusCode::CREATED, o))
            }),
            (&Method::PUT, Some(name)) => parse_body(false).and_then(|object| {
                self.mutate(|store| {
                    store.strict = strict;
                    store.update(&resource, &key(name), object, status)
                })
                .map(|o| (StatusCode::OK, o))
            }),
            (&Method::PATCH, Some(name)) => {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                    "application/merge-patch+json" => Ok(PatchKind::Merge),
                    "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
                    "application/json-patch+json" => Ok(PatchKind::Json),
                    "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                        Ok(PatchKind::Apply)
                    }
                    other => Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!("the patch content type {other:?} is not supported"),
                    }),
                };
                kind.and_then(|kind| {
                    let patch = parse_body(kind == PatchKind::Apply)?;
                    self.mutate(|store| {
                        store.strict = strict;
                        // Under the same lock: whether an apply patch created it.
                        let created = store.get(&key(name)).is_err();
                        store
                            .patch(&resource, &key(name), kind, &patch, status)
                            .map(|o| (created, o))
                    })
                    .map(|(created, o)| {
                        (
                            if created {
                                StatusCode::CREATED
                            } else {
                                StatusCode::OK
                            },
                            o,
                        )
                    })
                })
            }
            (&Method::DELETE, Some(name)) => self
                .mutate(|store| store.delete(&key(name)))
                .map(|o| (StatusCode::OK, o)),
            _ => Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("{method} is not supported on {path}"),
            }),
        };
        match result {
            Ok((code, object)) => json_response(code, &object),
            Err(err) => error_response(&err),
        }
    }

    /// A `proxy` subresource request, once RBAC allows it.
    async fn proxy(
        &self,
        user: Option<&str>,
        method: Method,
        proxy: &crate::proxy::Target,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let resource = {
            let store = self.lock_store();
            store.resource("", "v1", &proxy.plural)
        };
        let Some(resource) = resource else {
            return error_response(&ApiError::not_found(&proxy.plural));
        };
        let target = Target {
            group: String::new(),
            version: "v1".into(),
            namespace: Some(proxy.namespace.clone()),
            plural: proxy.plural.clone(),
            name: Some(proxy.name.clone()),
            subresource: Some("proxy".into()),
        };
        if let Some(denied) =
            user.and_then(|user| self.forbidden(user, &method, &target, &resource, &HashMap::new()))
        {
            return error_response(&denied);
        }
        let to = {
            let store = self.lock_store();
            crate::proxy::resolve(&store, proxy, &self.proxy_turn)
        };
        match to {
            Ok(to) => {
                crate::proxy::forward(&self.proxy_client, to, method, proxy, query, headers, body)
                    .await
            }
            Err(err) => error_response(&err),
        }
    }

    /// Why `user` may not make the request, if they may not.
    fn forbidden(
        &self,
        user: &str,
        method: &Method,
        target: &Target,
        resource: &resources::Resource,
        query: &HashMap<String, String>,
    ) -> Option<ApiError> {
        let verb = match (method, target.name.is_some()) {
            (&Method::GET, false)
                if query.get("watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                "watch"
            }
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "unknown",
        };
        let request = crate::rbac::Attributes {
            verb,
            group: &resource.group,
            resource: match &target.subresource {
                Some(sub) => format!("{}/{sub}", resource.plural),
                None => resource.plural.clone(),
            },
            namespace: if resource.namespaced {
                target.namespace.as_deref()
            } else {
                None
            },
            name: target.name.as_deref(),
        };
        let store = self.lock_store();
        crate::rbac::authorize(&store, user, &request)
            .err()
            .map(|message| {
                tracing::warn!(%user, %message, "forbidden");
                self.denials
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(message.clone());
                ApiError {
                    code: 403,
                    reason: "Forbidden",
                    message,
                }
            })
    }

    /// A watch of `resource` (in `namespace`, or all): first what the
    /// resource version asks for (every object as `ADDED` when it is
    /// unset or `0`, else the changes after it, or `410 Gone` when those
    /// are no longer kept), then every change as it happens, with
    /// bookmarks when asked for, until `timeoutSeconds`.
    fn watch(
        &self,
        resource: &resources::Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> Response {
        let labels = query.get("labelSelector").cloned().unwrap_or_default();
        let fields = query.get("fieldSelector").cloned().unwrap_or_default();
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        let since = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let group = resource.group.clone();
        let plural = resource.plural.clone();
        let namespace = namespace.map(str::to_owned);
        let matches = move |key: &Key, object: &Value| {
            key.group == group
                && key.plural == plural
                && namespace.as_deref().is_none_or(|ns| key.namespace == ns)
                && labels_match(object, &labels)
                && fields_match(object, &fields)
        };
        let (first, mut changes, mut version) = {
            let store = self.lock_store();
            let changes = self.changes.subscribe();
            let mut first = Vec::new();
            if since == 0 {
                for object in store.list(&resource.group, &resource.plural, None) {
                    let key = Key {
                        group: resource.group.clone(),
                        plural: resource.plural.clone(),
                        namespace: object["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        name: object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    };
                    if matches(&key, &object) {
                        first.push(json!({"type": "ADDED", "object": object}));
                    }
                }
            } else if store.history.first().is_some_and(|c| c.version > since + 1)
                && since < store.version()
            {
                first.push(json!({"type": "ERROR", "object": ApiError {
                    code: 410, reason: "Expired",
                    message: format!("too old resource version: {since}"),
                }.status()}));
            } else {
                for change in store.history.iter().filter(|c| c.version > since) {
                    if matches(&change.key, &change.object) {
                        first.push(json!({"type": change.kind, "object": change.object}));
                    }
                }
            }
            (first, changes, store.version())
        };
        let kind = resource.kind.clone();
        let api_version = resource.group_version();
        let every = self.bookmark_every;
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
        tokio::spawn(async move {
            let line = |event: Value| Bytes::from(format!("{event}\n"));
            for event in first {
                if sender.send(line(event)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut ticks = tokio::time::interval(every);
            loop {
                let event = tokio::select! {
                    () = tokio::time::sleep_until(deadline) => return,
                    _ = ticks.tick(), if bookmarks => json!({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": version.to_string()},
                    }}),
                    change = changes.recv() => match change {
                        Ok(change) => {
                            version = change.version;
                            if !matches(&change.key, &change.object) {
                                continue;
                            }
                            json!({"type": change.kind, "object": change.object})
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => json!({"type": "ERROR", "object": ApiError {
                            code: 410, reason: "Expired", message: "the watch fell behind".into(),
                        }.status()}),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if sender.send(line(event)).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(bytes), receiver))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_resource_namespace_and_subresource() {
        let t = parse_path("/apis/capture.dev/v1alpha1/namespaces/a/capturedeployments/x/status")
            .expect("path");
        assert_eq!(
            (
                t.group.as_str(),
                t.version.as_str(),
                t.namespace.as_deref(),
                t.plural.as_str(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            (
                "capture.dev",
                "v1alpha1",
                Some("a"),
                "capturedeployments",
                Some("x"),
                Some("status")
            )
        );
        let t = parse_path("/api/v1/namespaces/a").expect("path");
        assert_eq!(
            (t.plural.as_str(), t.name.as_deref()),
            ("namespaces", Some("a"))
        );
        let t = parse_path("/api/v1/namespaces/a/status").expect("path");
        assert_eq!(
            (t.plural.as_str(), t.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let t = parse_path("/api/v1/pods").expect("path");
        assert_eq!((t.plural.as_str(), t.namespace), ("pods", None));
        assert!(parse_path("/healthz").is_none());
    }

    async fn get_as(server: &ApiServer, listener: Option<&str>, user: &str, path: &str) -> u16 {
        let mut headers = HeaderMap::new();
        headers.insert("impersonate-user", user.parse().expect("a header value"));
        server
            .handle(
                listener,
                Method::GET,
                path.parse().expect("a URI"),
                headers,
                Bytes::new(),
            )
            .await
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn the_admin_may_impersonate_and_rbac_decides_for_the_user_acted_as() {
        let server = ApiServer::default();
        let account = "system:serviceaccount:ops:reader";
        for (path, object) in [
            (
                "/api/v1/namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ops"}}),
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/ops/roles",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "read", "namespace": "ops"},
                    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}),
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/ops/rolebindings",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "read", "namespace": "ops"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"},
                    "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "ops"}]}),
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("value"),
            );
            let created = server
                .handle(
                    None,
                    Method::POST,
                    path.parse().expect("a URI"),
                    headers,
                    Bytes::from(object.to_string()),
                )
                .await;
            assert_eq!(created.status(), StatusCode::CREATED, "{path}");
        }
        let configmaps = "/api/v1/namespaces/ops/configmaps";
        assert_eq!(get_as(&server, None, account, configmaps).await, 200);
        assert_eq!(
            get_as(&server, None, account, "/api/v1/namespaces/ops/secrets").await,
            403
        );
        assert_eq!(server.denials().len(), 1, "{:?}", server.denials());
        // Only the admin may: another account's listener is refused even
        // the user who may list.
        assert_eq!(
            get_as(
                &server,
                Some("system:serviceaccount:ops:other"),
                account,
                configmaps
            )
            .await,
            403
        );
    }
}
