//! Objects and their lifecycle, as the API server keeps them: resource
//! versions, uids and generations, status kept apart from the rest when
//! `/status` is a subresource, finalizers and `deletionTimestamp`, garbage
//! collection of dependents by `ownerReferences`, merge / JSON / apply
//! patches, and the change history watches replay from.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::resources::{self, Resource};

/// A failed call, as the API server reports it (a `Status` object).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `reason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// 404.
    pub fn not_found(what: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{what} not found"),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    /// 422.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: message.into(),
        }
    }

    /// 409: a write based on an older resource version.
    pub fn conflict(plural: &str, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {plural} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        }
    }

    /// The `Status` body.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": self.reason, "code": self.code,
            "message": self.message,
        })
    }
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// API group.
    pub group: String,
    /// Plural.
    pub plural: String,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A change, for watches.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resource version it made.
    pub version: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// Where.
    pub key: Key,
    /// The object after it (before it, for `DELETED`).
    pub object: Value,
}

/// Changes kept for watches that resume from an older resource version.
const HISTORY: usize = 10_000;

/// Everything the stand-in stores.
#[derive(Debug)]
pub struct Store {
    /// Served resources: built-ins, then those of CRDs.
    pub resources: Vec<Resource>,
    objects: BTreeMap<Key, Value>,
    version: u64,
    /// Recent changes, oldest first.
    pub history: Vec<Change>,
    /// Whether the write in progress asked for `fieldValidation=Strict`
    /// (unknown fields refused rather than pruned).
    pub strict: bool,
    /// Cluster IPs handed out to Services: `127.0.2.N`.
    cluster_ips: u32,
}

impl Default for Store {
    /// A store holding the namespaces every cluster starts with.
    fn default() -> Self {
        let mut store = Store {
            resources: resources::built_in(),
            objects: BTreeMap::new(),
            version: 1,
            history: Vec::new(),
            strict: false,
            cluster_ips: 0,
        };
        let namespaces = store
            .resource("", "v1", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public"] {
            let key = Key {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: name.into(),
            };
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            store
                .create(&namespaces, key, namespace)
                .expect("a fresh store takes its namespaces");
        }
        store
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 7386 merge of `patch` into `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                // Strategic-merge directives (`$setElementOrder/...`,
                // `$patch`, `$retainKeys`) are not emulated: dropped.
                if key.starts_with('$') {
                    continue;
                }
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = strip_directives(patch),
    }
}

fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is an array of operations"))?;
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default();
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens
            .split_last()
            .ok_or_else(|| ApiError::bad_request(format!("JSON patch path {path:?}")))?;
        let mut parent = &mut *target;
        for token in parents {
            parent = match parent {
                Value::Object(map) => map.get_mut(token),
                Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| ApiError::invalid(format!("JSON patch path {path} does not exist")))?;
        }
        let value = op["value"].clone();
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                let current = match parent {
                    Value::Object(map) => map.get(last),
                    Value::Array(items) => last.parse::<usize>().ok().and_then(|i| items.get(i)),
                    _ => None,
                };
                // A missing member tests equal to null, as the API
                // server's patcher has it (kube-rs' finalizer helper
                // relies on that).
                if current.unwrap_or(&Value::Null) != &value {
                    return Err(ApiError::invalid(format!(
                        "JSON patch test failed at {path}"
                    )));
                }
            }
            "add" | "replace" => match parent {
                Value::Object(map) => {
                    map.insert(last.clone(), value);
                }
                Value::Array(items) if last == "-" => items.push(value),
                Value::Array(items) => {
                    let i: usize = last
                        .parse()
                        .map_err(|_| ApiError::invalid(format!("JSON patch index {last}")))?;
                    if op["op"] == "add" && i <= items.len() {
                        items.insert(i, value);
                    } else if i < items.len() {
                        items[i] = value;
                    } else {
                        return Err(ApiError::invalid(format!(
                            "JSON patch index {i} out of range"
                        )));
                    }
                }
                _ => return Err(ApiError::invalid(format!("JSON patch path {path}"))),
            },
            "remove" => {
                let removed = match parent {
                    Value::Object(map) => map.remove(last).is_some(),
                    Value::Array(items) => match last.parse::<usize>() {
                        Ok(i) if i < items.len() => {
                            items.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(ApiError::invalid(format!(
                        "JSON patch remove: {path} does not exist"
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "JSON patch op {other:?} is not supported"
                )));
            }
        }
    }
    Ok(())
}

/// How a `PATCH` body is to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (merged as a merge patch).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply, as a merge that
    /// creates a missing object).
    Apply,
}

impl Store {
    /// The served resource at `group/version` named `plural`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// The current resource version.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn record(&mut self, kind: &'static str, key: &Key, object: Value) {
        self.history.push(Change {
            version: self.version,
            kind,
            key: key.clone(),
            object,
        });
        if self.history.len() > HISTORY {
            let excess = self.history.len() - HISTORY;
            self.history.drain(..excess);
        }
    }

    fn bump(&mut self, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&format!("{} {:?}", key.plural, key.name)))
    }

    /// Objects of `group`/`plural`, in `namespace` (all when `None`).
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| {
                k.group == group
                    && k.plural == plural
                    && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates `object` at `key` (its name may come from `generateName`).
    pub fn create(
        &mut self,
        resource: &Resource,
        mut key: Key,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        if object["kind"].as_str().is_some_and(|k| k != resource.kind) {
            return Err(ApiError::bad_request(format!(
                "kind {} does not match {}",
                object["kind"], resource.plural
            )));
        }
        if key.name.is_empty() {
            key.name = match (
                object["metadata"]["name"].as_str(),
                object["metadata"]["generateName"].as_str(),
            ) {
                (Some(name), _) if !name.is_empty() => name.to_owned(),
                (_, Some(prefix)) => format!(
                    "{prefix}{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..5]
                ),
                _ => return Err(ApiError::invalid("metadata.name: Required value")),
            };
        }
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} {:?} already exists", resource.plural, key.name),
            });
        }
        if resource.namespaced && !key.namespace.is_empty() {
            let namespace = Key {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: key.namespace.clone(),
            };
            if !self.objects.contains_key(&namespace) {
                return Err(ApiError::not_found(&format!(
                    "namespaces {:?}",
                    key.namespace
                )));
            }
        }
        object["apiVersion"] = json!(resource.group_version());
        object["kind"] = json!(resource.kind);
        let meta = object["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta = Map::from_iter(meta);
        meta.insert("name".into(), json!(key.name));
        if resource.namespaced {
            meta.insert("namespace".into(), json!(key.namespace));
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        object["metadata"] = Value::Object(meta);
        if resource.plural == "customresourcedefinitions" {
            establish(&mut object);
        }
        if resource.plural == "secrets" {
            fold_string_data(&mut object);
        }
        if resource.plural == "services" && object["spec"]["clusterIP"].is_null() {
            // A loopback address per Service, where the node proxies it.
            self.cluster_ips += 1;
            let ip = std::net::Ipv4Addr::from(0x7f02_0000 + self.cluster_ips);
            object["spec"]["clusterIP"] = json!(ip.to_string());
            object["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }
        self.admit(resource, &mut object, None)?;
        self.bump(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record("ADDED", &key, object.clone());
        if resource.plural == "customresourcedefinitions" {
            self.refresh_crds();
        }
        Ok(object)
    }

    /// Replaces the object at `key` with `object` (the whole object, or
    /// its status with `status`).
    pub fn update(
        &mut self,
        resource: &Resource,
        key: &Key,
        object: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        if let Some(expected) = object["metadata"]["resourceVersion"].as_str()
            && !expected.is_empty()
            && Some(expected) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(&resource.plural, &key.name));
        }
        self.replace(resource, key, current, object, status)
    }

    /// Patches the object at `key` (creating it for an apply patch).
    pub fn patch(
        &mut self,
        resource: &Resource,
        key: &Key,
        kind: PatchKind,
        patch: &Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        let current = match self.get(key) {
            Ok(current) => current,
            Err(err) if kind == PatchKind::Apply && err.code == 404 && !status => {
                let mut object = patch.clone();
                object["metadata"]["name"] = json!(key.name);
                return self.create(resource, key.clone(), object);
            }
            Err(err) => return Err(err),
        };
        let mut next = current.clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => merge(&mut next, patch),
            PatchKind::Json => json_patch(&mut next, patch)?,
        }
        // A patch does not compare resource versions unless it carries one.
        if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
            && Some(expected) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(&resource.plural, &key.name));
        }
        self.replace(resource, key, current, next, status)
    }

    /// Stores `next` over `current`, keeping what callers may not change.
    fn replace(
        &mut self,
        resource: &Resource,
        key: &Key,
        current: Value,
        mut next: Value,
        status: bool,
    ) -> Result<Value, ApiError> {
        if status {
            // Only the status changes through /status.
            let mut only_status = current.clone();
            only_status["status"] = next["status"].clone();
            next = only_status;
        } else if resource.status {
            next["status"] = current["status"].clone();
            if next["status"].is_null() {
                next.as_object_mut().map(|o| o.remove("status"));
            }
        }
        next["apiVersion"] = current["apiVersion"].clone();
        next["kind"] = current["kind"].clone();
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
        ] {
            match current["metadata"].get(field) {
                Some(value) => next["metadata"][field] = value.clone(),
                None => {
                    next["metadata"].as_object_mut().map(|m| m.remove(field));
                }
            }
        }
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        next["metadata"]["generation"] = current["metadata"]["generation"].clone();
        // Defaults first, so a write that only drops defaulted fields is
        // no change.
        self.admit(resource, &mut next, Some(&current))?;
        let spec_changed = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    o.remove("status");
                }
                v
            };
            strip(&current) != strip(&next)
        };
        if spec_changed {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        if next == current {
            return Ok(current);
        }
        if resource.plural == "customresourcedefinitions" {
            establish(&mut next);
        }
        if resource.plural == "secrets" {
            fold_string_data(&mut next);
        }
        self.bump(&mut next);
        // Deleting, and the last finalizer gone: the object goes.
        let finalizers_left = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if next["metadata"].get("deletionTimestamp").is_some() && !finalizers_left {
            self.remove(key, next.clone());
            return Ok(next);
        }
        self.objects.insert(key.clone(), next.clone());
        self.record("MODIFIED", key, next.clone());
        if resource.plural == "customresourcedefinitions" {
            self.refresh_crds();
        }
        Ok(next)
    }

    /// Deletes the object at `key`: marks it when finalizers hold it, else
    /// removes it and collects its dependents.
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let mut object = self.get(key)?;
        let held = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if held {
            if object["metadata"].get("deletionTimestamp").is_none() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                self.bump(&mut object);
                self.objects.insert(key.clone(), object.clone());
                self.record("MODIFIED", key, object.clone());
            }
            return Ok(object);
        }
        self.remove(key, object.clone());
        Ok(object)
    }

    /// Removes the object and, as the garbage collector does, deletes
    /// what it owns (and what a deleted namespace holds).
    fn remove(&mut self, key: &Key, mut object: Value) {
        self.objects.remove(key);
        self.bump(&mut object);
        self.record("DELETED", key, object.clone());
        if key.plural == "customresourcedefinitions" {
            self.refresh_crds();
        }
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, v)| {
                let owned = v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()));
                let inside =
                    key.plural == "namespaces" && key.group.is_empty() && k.namespace == key.name;
                owned || inside
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dependent in dependents {
            let _ = self.delete(&dependent);
        }
    }

    /// Validates a custom resource against its schema (pruning, defaults,
    /// CEL rules); `422 Invalid` naming each fault.
    fn admit(
        &self,
        resource: &Resource,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let Some(schema) = &resource.schema else {
            return Ok(());
        };
        let problems = crate::schema::admit(schema, object, old, self.strict);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ApiError::invalid(format!(
            "{}.{} {:?} is invalid: [{}]",
            resource.kind,
            resource.group,
            object["metadata"]["name"].as_str().unwrap_or_default(),
            problems.join(", ")
        )))
    }

    /// Serves the resources of the CRDs now stored.
    fn refresh_crds(&mut self) {
        let mut resources = resources::built_in();
        for (key, crd) in &self.objects {
            if key.plural == "customresourcedefinitions"
                && crd["metadata"].get("deletionTimestamp").is_none()
            {
                resources.extend(resources::from_crd(crd));
            }
        }
        self.resources = resources;
    }
}

/// Moves a Secret's `stringData` into `data`, base64-encoded, as the API
/// server does on write.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(strings) = secret.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    for (key, value) in strings.as_object().into_iter().flatten() {
        let text = value.as_str().unwrap_or_default();
        secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Marks a CRD's names accepted and the CRD established, as the API
/// server does once it serves it.
fn establish(crd: &mut Value) {
    let time = now();
    let condition = |kind: &str, reason: &str| json!({"type": kind, "status": "True", "reason": reason, "message": "", "lastTransitionTime": time});
    crd["status"] = json!({
        "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten()
            .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
    });
}

/// Whether `object`'s labels match a label selector (`a=b,c!=d,e,!f`,
/// `a in (x,y)` not supported).
pub fn labels_match(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

/// Whether `object` matches a field selector (`metadata.name=x`,
/// `metadata.namespace=y`).
pub fn fields_match(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (path, expected, equal) = match term.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((p, v)) => (p, v, true),
                    None => return true,
                },
            };
            let mut value = object;
            for part in path.trim().split('.') {
                value = &value[part];
            }
            (value.as_str() == Some(expected.trim())) == equal
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_maps(store: &Store) -> Resource {
        store.resource("", "v1", "configmaps").expect("built in")
    }

    fn key(plural: &str, name: &str) -> Key {
        Key {
            group: String::new(),
            plural: plural.into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn creates_get_identity_and_updates_check_the_resource_version() {
        let mut store = Store::default();
        let cm = config_maps(&store);
        let created = store
            .create(
                &cm,
                key("configmaps", ""),
                json!({"metadata": {"name": "a"}, "data": {"x": "1"}}),
            )
            .expect("create");
        assert!(created["metadata"]["uid"].is_string());
        assert_eq!(created["metadata"]["namespace"], "default");
        let again = store.create(
            &cm,
            key("configmaps", "a"),
            json!({"metadata": {"name": "a"}}),
        );
        assert_eq!(again.expect_err("exists").code, 409);

        let mut stale = created.clone();
        stale["data"]["x"] = json!("2");
        store
            .update(&cm, &key("configmaps", "a"), stale.clone(), false)
            .expect("update");
        let conflict = store.update(&cm, &key("configmaps", "a"), stale, false);
        assert_eq!(conflict.expect_err("stale").reason, "Conflict");

        let missing_ns = Key {
            namespace: "nowhere".into(),
            ..key("configmaps", "b")
        };
        assert_eq!(
            store
                .create(&cm, missing_ns, json!({"metadata": {"name": "b"}}))
                .expect_err("no ns")
                .code,
            404
        );
    }

    #[test]
    fn status_changes_only_through_its_subresource_and_spec_changes_bump_the_generation() {
        let mut store = Store::default();
        let deployments = store
            .resource("apps", "v1", "deployments")
            .expect("built in");
        let k = Key {
            group: "apps".into(),
            ..key("deployments", "d")
        };
        store
            .create(
                &deployments,
                k.clone(),
                json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}}),
            )
            .expect("create");
        let patched = store
            .patch(
                &deployments,
                &k,
                PatchKind::Merge,
                &json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 9}}),
                false,
            )
            .expect("patch");
        assert_eq!(patched["metadata"]["generation"], 2);
        assert!(
            patched.get("status").is_none(),
            "status ignored on the main resource"
        );
        let status = store
            .patch(
                &deployments,
                &k,
                PatchKind::Merge,
                &json!({"spec": {"replicas": 5}, "status": {"readyReplicas": 2}}),
                true,
            )
            .expect("status");
        assert_eq!(status["status"]["readyReplicas"], 2);
        assert_eq!(status["spec"]["replicas"], 2, "spec ignored on /status");
        assert_eq!(status["metadata"]["generation"], 2);
    }

    #[test]
    fn finalizers_hold_deletion_and_owners_take_their_dependents() {
        let mut store = Store::default();
        let cm = config_maps(&store);
        let owner = store
            .create(
                &cm,
                key("configmaps", "owner"),
                json!({"metadata": {"name": "owner", "finalizers": ["x/y"]}}),
            )
            .expect("owner");
        let uid = owner["metadata"]["uid"].clone();
        store
            .create(&cm, key("configmaps", "child"), json!({"metadata": {"name": "child", "ownerReferences": [{"uid": uid, "kind": "ConfigMap", "name": "owner", "apiVersion": "v1"}]}}))
            .expect("child");

        let marked = store.delete(&key("configmaps", "owner")).expect("delete");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(
            store.get(&key("configmaps", "owner")).is_ok(),
            "held by its finalizer"
        );
        assert!(store.get(&key("configmaps", "child")).is_ok());

        store
            .patch(
                &cm,
                &key("configmaps", "owner"),
                PatchKind::Json,
                &json!([{"op": "remove", "path": "/metadata/finalizers"}]),
                false,
            )
            .expect("finalizer removed");
        assert_eq!(
            store
                .get(&key("configmaps", "owner"))
                .expect_err("gone")
                .code,
            404
        );
        assert_eq!(
            store
                .get(&key("configmaps", "child"))
                .expect_err("collected")
                .code,
            404
        );
        let kinds: Vec<&str> = store.history.iter().rev().take(2).map(|c| c.kind).collect();
        assert_eq!(kinds, ["DELETED", "DELETED"]);
    }

    #[test]
    fn a_crd_serves_its_kind_until_deleted() {
        let mut store = Store::default();
        let crds = store
            .resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .expect("built in");
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]},
        });
        let k = Key {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: "widgets.example.com".into(),
        };
        let created = store.create(&crds, k.clone(), crd).expect("create");
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let widgets = store
            .resource("example.com", "v1", "widgets")
            .expect("served");
        assert!(widgets.status && widgets.namespaced);
        store.delete(&k).expect("delete");
        assert!(store.resource("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn selectors_match_labels_and_fields() {
        let object = json!({"metadata": {"name": "a", "namespace": "n", "labels": {"app": "capture", "tier": "web"}}});
        assert!(labels_match(&object, "app=capture,tier"));
        assert!(labels_match(&object, "app==capture,!missing"));
        assert!(!labels_match(&object, "app!=capture"));
        assert!(fields_match(
            &object,
            "metadata.name=a,metadata.namespace=n"
        ));
        assert!(!fields_match(&object, "metadata.name=b"));
    }
}
