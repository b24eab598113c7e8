//! An in-memory Kubernetes API for benchmarks and multi-step tests: objects
//! by path, `GET`, `POST` (to the collection), `DELETE`, and `PATCH` as JSON
//! patch (the `test`/`add`/`remove`/`replace` operations the finalizer
//! helper sends) or as a JSON merge patch (merge, strategic and apply
//! patches are all merged, which is what they amount to for the flat objects
//! used here). Every call is counted by method and resource.
//!
//! It is not an API server: no list or watch, no validation, no defaults.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// Objects and call counts, shared by every client made from it.
#[derive(Clone, Default)]
pub struct MemoryApi {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<String, Value>,
    version: u64,
    calls: BTreeMap<(String, String), u64>,
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
        inner.objects.insert(path.to_owned(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.inner.lock().expect("api").objects.get(path).cloned()
    }

    /// Calls so far by `(method, resource)`.
    pub fn calls(&self) -> BTreeMap<(String, String), u64> {
        self.inner.lock().expect("api").calls.clone()
    }

    /// Forgets the call counts.
    pub fn reset_calls(&self) {
        self.inner.lock().expect("api").calls.clear();
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
                None => status(404, "NotFound"),
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
                inner.objects.insert(path, object.clone());
                (201, object)
            }
            "DELETE" => match inner.objects.remove(object_path) {
                Some(object) => (200, object),
                None => status(404, "NotFound"),
            },
            "PATCH" => {
                let Some(mut object) = inner.objects.get(object_path).cloned() else {
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
                inner.objects.insert(object_path.to_owned(), object.clone());
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
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let bytes = request.into_body().collect_bytes().await.expect("body");
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, reply) = api.handle(&method, &path, &content_type, body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }
}
