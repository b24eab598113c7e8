//! An in-memory Kubernetes API for benchmarks and multi-step tests: objects
//! by path, `GET`, `POST` (to the collection), `DELETE`, and `PATCH` as JSON
//! patch (the `test`/`add`/`remove`/`replace` operations the finalizer
//! helper sends) or as a JSON merge patch (an apply patch creates a missing
//! object) (merge, strategic and apply
//! patches are all merged, which is what they amount to for the flat objects
//! used here). A `GET` of a collection lists what is stored under it (label
//! selectors ignored); a watch streams every later change to it (and first
//! the objects changed since the `resourceVersion` it gives). An object with
//! a `deletionTimestamp` goes once its last finalizer does. Every call is
//! counted by method and resource, and kept in order.
//!
//! It is not an API server: no validation, no defaults, no bookmarks, no
//! garbage collection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::Either;
use kube::client::Body;
use serde_json::{Value, json};

/// Objects and call counts, shared by every client made from it.
#[derive(Clone)]
pub struct MemoryApi {
    inner: Arc<Mutex<Inner>>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for MemoryApi {
    fn default() -> Self {
        MemoryApi {
            inner: Arc::default(),
            changes: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

/// A change for watchers: path, event type, object.
type Change = (String, &'static str, Value);

#[derive(Default)]
struct Inner {
    objects: HashMap<String, Value>,
    version: u64,
    calls: BTreeMap<(String, String), u64>,
    requests: Vec<Recorded>,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// URL query (`watch=true&...`), maybe empty.
    pub query: String,
}

/// A path split into its parts: API prefix (`api/v1`, `apis/apps/v1`),
/// namespace, resource, name and subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// `api/v1` or `apis/GROUP/VERSION`.
    pub prefix: String,
    /// API group (empty for the core group).
    pub group: String,
    /// Namespace, for namespaced paths.
    pub namespace: Option<String>,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource (`status`).
    pub subresource: Option<String>,
}

/// Splits an API path; `None` for discovery and other non-resource paths.
pub fn parts(path: &str) -> Option<Parts> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, group, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (format!("api/{version}"), String::new(), rest),
        ["apis", group, version, rest @ ..] => {
            (format!("apis/{group}/{version}"), (*group).to_owned(), rest)
        }
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, rest @ ..] => (Some((*ns).to_owned()), {
            let mut all = vec![*resource];
            all.extend_from_slice(rest);
            all
        }),
        rest => (None, rest.to_vec()),
    };
    let mut rest = rest.into_iter();
    Some(Parts {
        prefix,
        group,
        namespace,
        resource: rest.next()?.to_owned(),
        name: rest.next().map(str::to_owned),
        subresource: rest.next().map(str::to_owned),
    })
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason}),
    )
}

/// The resource a path names: `capturequotas`, `capturequotas/status`,
/// `secrets`, `events`.
pub fn resource(path: &str) -> String {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 2 => match parts.get(i + 4) {
            Some(sub) => format!("{}/{sub}", parts[i + 2]),
            None => parts[i + 2].to_owned(),
        },
        _ => path.to_owned(),
    }
}

/// RFC 7386: objects merge, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// RFC 6902, the operations on object members and array ends that the
/// finalizer helper uses. `Err` is a failed `test`.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
        let pointer = |v: &Value| v.pointer(path).cloned().unwrap_or(Value::Null);
        match op["op"].as_str() {
            Some("test") if pointer(target) != op["value"] => {
                return Err(format!("test of {path} failed"));
            }
            Some("test") => {}
            Some("add" | "replace") => {
                let Some(parent) = target.pointer_mut(parent) else {
                    return Err(format!("no parent of {path}"));
                };
                match parent {
                    Value::Array(items) if last == "-" => items.push(op["value"].clone()),
                    Value::Array(items) => {
                        let index: usize = last.parse().map_err(|_| format!("index {last}"))?;
                        if index > items.len() {
                            return Err(format!("index {index} out of range"));
                        }
                        items.insert(index, op["value"].clone());
                    }
                    Value::Object(members) => {
                        members.insert(last.to_owned(), op["value"].clone());
                    }
                    _ => return Err(format!("{path} is not in an object or array")),
                }
            }
            Some("remove") => match target.pointer_mut(parent) {
                Some(Value::Array(items)) => {
                    let index: usize = last.parse().map_err(|_| format!("index {last}"))?;
                    if index >= items.len() {
                        return Err(format!("index {index} out of range"));
                    }
                    items.remove(index);
                }
                Some(Value::Object(members)) => {
                    members.remove(last);
                }
                _ => return Err(format!("nothing at {path}")),
            },
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

impl MemoryApi {
    /// Stores `object` at its path (`/apis/.../namespaces/NS/PLURAL/NAME`).
    pub fn insert(&self, path: &str, mut object: Value) {
        let mut inner = self.inner.lock().expect("api");
        inner.version += 1;
        object["metadata"]["resourceVersion"] = json!(inner.version.to_string());
        inner.objects.insert(path.to_owned(), object.clone());
        let _ = self.changes.send((path.to_owned(), "ADDED", object));
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.inner.lock().expect("api").objects.get(path).cloned()
    }

    /// Every object stored under `prefix` (a collection path).
    pub fn under(&self, prefix: &str) -> Vec<Value> {
        let inner = self.inner.lock().expect("api");
        let mut found: Vec<(&String, &Value)> = inner
            .objects
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .collect();
        found.sort_by_key(|(path, _)| path.as_str());
        found
            .into_iter()
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Deletes the object at `path` (as `kubectl delete` would, without
    /// finalizers), telling watchers.
    pub fn delete(&self, path: &str) {
        let mut inner = self.inner.lock().expect("api");
        if let Some(object) = inner.objects.remove(path) {
            let _ = self.changes.send((path.to_owned(), "DELETED", object));
        }
    }

    /// Calls so far by `(method, resource)`.
    pub fn calls(&self) -> BTreeMap<(String, String), u64> {
        self.inner.lock().expect("api").calls.clone()
    }

    /// Forgets the call counts.
    pub fn reset_calls(&self) {
        self.inner.lock().expect("api").calls.clear();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("api").requests.clone()
    }

    /// Changes the stored object at `path` in place.
    pub fn update(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut inner = self.inner.lock().expect("api");
        inner.version += 1;
        let version = inner.version;
        let object = inner.objects.get_mut(path).expect("stored object");
        change(object);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let _ = self
            .changes
            .send((path.to_owned(), "MODIFIED", object.clone()));
    }

    /// A watch of the collection `wanted`: the objects changed after
    /// `since`, then every change as it happens.
    fn watch(
        &self,
        wanted: Parts,
        since: u64,
    ) -> futures::stream::BoxStream<
        'static,
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    > {
        use futures::StreamExt as _;
        let matches = move |path: &str| {
            parts(path).is_some_and(|p| {
                p.prefix == wanted.prefix
                    && p.resource == wanted.resource
                    && p.name.is_some()
                    && p.subresource.is_none()
                    && (wanted.namespace.is_none() || p.namespace == wanted.namespace)
            })
        };
        let line = |kind: &str, object: &Value| {
            let mut line =
                serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json");
            line.push(b'\n');
            Ok(http_body::Frame::data(bytes::Bytes::from(line)))
        };
        let receiver = self.changes.subscribe();
        let replay: Vec<_> = {
            let inner = self.inner.lock().expect("api");
            let mut changed: Vec<(&String, &Value)> = inner
                .objects
                .iter()
                .filter(|(path, object)| {
                    matches(path)
                        && object["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .is_some_and(|v| v > since)
                })
                .collect();
            changed.sort_by_key(|(path, _)| path.as_str());
            changed
                .into_iter()
                .map(|(_, object)| line("MODIFIED", object))
                .collect()
        };
        let live = futures::stream::unfold(receiver, move |mut receiver| {
            let matches = matches.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok((path, kind, object)) if matches(&path) => {
                            return Some((line(kind, &object), receiver));
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        futures::stream::iter(replay).chain(live).boxed()
    }

    /// The stored objects a collection `GET` names, as a list.
    fn list(inner: &Inner, wanted: &Parts) -> Value {
        let mut items: Vec<(&String, &Value)> = inner
            .objects
            .iter()
            .filter(|(path, _)| {
                parts(path).is_some_and(|p| {
                    p.prefix == wanted.prefix
                        && p.resource == wanted.resource
                        && p.name.is_some()
                        && (wanted.namespace.is_none() || p.namespace == wanted.namespace)
                })
            })
            .collect();
        items.sort_by_key(|(path, _)| path.as_str());
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": inner.version.to_string()},
            "items": items.into_iter().map(|(_, object)| object.clone()).collect::<Vec<_>>(),
        })
    }

    fn handle(&self, method: &str, path: &str, content_type: &str, body: Value) -> (u16, Value) {
        let mut inner = self.inner.lock().expect("api");
        *inner
            .calls
            .entry((method.to_owned(), resource(path)))
            .or_default() += 1;
        let object_path = path.strip_suffix("/status").unwrap_or(path);
        match method {
            "GET" => match inner.objects.get(object_path) {
                Some(object) => (200, object.clone()),
                None => match parts(path) {
                    Some(wanted) if wanted.name.is_none() => (200, Self::list(&inner, &wanted)),
                    _ => status(404, "NotFound"),
                },
            },
            "POST" => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("generated-{}", inner.version));
                let path = format!("{path}/{name}");
                if inner.objects.contains_key(&path) {
                    return status(409, "AlreadyExists");
                }
                let mut object = body;
                inner.version += 1;
                object["metadata"]["name"] = json!(name);
                object["metadata"]["resourceVersion"] = json!(inner.version.to_string());
                inner.objects.insert(path.clone(), object.clone());
                let _ = self.changes.send((path, "ADDED", object.clone()));
                (201, object)
            }
            "DELETE" => match inner.objects.remove(object_path) {
                Some(object) => {
                    let _ = self
                        .changes
                        .send((object_path.to_owned(), "DELETED", object.clone()));
                    (200, object)
                }
                None => status(404, "NotFound"),
            },
            "PATCH" => {
                // Server-side apply creates what does not exist yet.
                let applying = content_type.starts_with("application/apply-patch");
                let Some(mut object) = inner
                    .objects
                    .get(object_path)
                    .cloned()
                    .or_else(|| applying.then(|| json!({"metadata": {}})))
                else {
                    return status(404, "NotFound");
                };
                if content_type.starts_with("application/json-patch") {
                    if let Err(reason) = json_patch(&mut object, &body) {
                        return (
                            422,
                            json!({"kind": "Status", "code": 422, "reason": "Invalid", "message": reason}),
                        );
                    }
                } else {
                    let mut body = body;
                    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                    }
                    merge(&mut object, &body);
                }
                inner.version += 1;
                object["metadata"]["resourceVersion"] = json!(inner.version.to_string());
                let finalized = !object["metadata"]["deletionTimestamp"].is_null()
                    && object["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if finalized {
                    inner.objects.remove(object_path);
                    let _ = self
                        .changes
                        .send((object_path.to_owned(), "DELETED", object.clone()));
                } else {
                    inner.objects.insert(object_path.to_owned(), object.clone());
                    let _ = self
                        .changes
                        .send((object_path.to_owned(), "MODIFIED", object.clone()));
                }
                (200, object)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }

    /// A client whose calls go to this API; must be called inside a tokio
    /// runtime.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or_default().to_owned();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                api.inner.lock().expect("api").requests.push(Recorded {
                    method: method.clone(),
                    path: path.clone(),
                    query: query.clone(),
                });
                let response = Response::builder()
                    .status(200)
                    .header("content-type", "application/json");
                if method == "GET" && query.split('&').any(|kv| kv == "watch=true") {
                    let since = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("resourceVersion="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let wanted = parts(&path).expect("a watch of a collection");
                    let body =
                        Either::Right(http_body_util::StreamBody::new(api.watch(wanted, since)));
                    return Ok::<_, std::convert::Infallible>(
                        response.body(body).expect("response"),
                    );
                }
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, reply) = api.handle(&method, &path, &content_type, body);
                let bytes = bytes::Bytes::from(serde_json::to_vec(&reply).expect("json"));
                Ok(response
                    .status(code)
                    .body(Either::Left(http_body_util::Full::new(bytes)))
                    .expect("response"))
            }
        });
        kube::Client::new(service, "default")
    }
}
