//! The node stand-in: the Deployment controller and kubelet in one loop,
//! with the StatefulSet and Job controllers of [`crate::controllers`].
//! Each Deployment's (StatefulSet's, Job's) pods run as local processes of
//! the real binaries,
//! with their environment (Secret references resolved), their ConfigMap,
//! Secret and projected Secret-key volumes written as kubelet lays them
//! out (and updated the same way), restarted when they exit, and reported
//! ready from their readiness probe. Every pod gets its own loopback
//! address (`127.0.1.N`), so several can listen on the same port.
//!
//! A PersistentVolumeClaim's volume is a directory of its own under the
//! node's root, kept across the pods that mount it (the StatefulSet's pod
//! of its ordinal, then a Job's) and after the claim goes. A pod whose
//! `restartPolicy` is `Never` (a Job's) is not restarted when its process
//! exits: it ends `Succeeded` or `Failed` by its exit code.
//!
//! What it changes to fit on one machine (see e2e/README.md): mount paths
//! are directories under the node's root, and environment values naming
//! them are rewritten to match; a listen address `0.0.0.0:<port>` becomes
//! the pod's own address.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::server::ApiServer;
use crate::store::{Key, PatchKind};

/// Which binary runs a container image.
pub type Images = Vec<(String, PathBuf)>;

/// One running pod.
struct Pod {
    ip: Ipv4Addr,
    dir: PathBuf,
    child: tokio::process::Child,
    /// Volume name to the content last written, to update on change.
    volumes: BTreeMap<String, BTreeMap<String, String>>,
    generation: u32,
    restarts: u32,
    ready: bool,
    /// Its template's hash (`pod-template-hash`, or a StatefulSet pod's
    /// `controller-revision-hash`).
    template: String,
    /// The uid of the Deployment (StatefulSet, Job) that owns it.
    owner: String,
}

/// A Service's proxy: listens on its cluster IP and port, and forwards
/// each connection to one of the ready endpoints, in turn.
struct Proxy {
    endpoints: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node: runs until the task is dropped.
pub struct Node {
    server: ApiServer,
    root: PathBuf,
    images: Images,
    pods: BTreeMap<Key, Pod>,
    next_ip: u32,
    /// Per Service and port (`namespace/name:port`), its proxy.
    proxies: BTreeMap<String, Proxy>,
}

fn key(group: &str, plural: &str, namespace: &str, name: &str) -> Key {
    Key {
        group: group.into(),
        plural: plural.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A stable digest of a pod template, to tell old pods from new.
fn template_hash(template: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

impl Node {
    /// A node for `server`, keeping pod files under `root`, running
    /// containers whose image contains one of `images`' names with its
    /// binary.
    pub fn new(server: ApiServer, root: PathBuf, images: Images) -> Node {
        Node {
            server,
            root,
            images,
            pods: BTreeMap::new(),
            next_ip: 2,
            proxies: BTreeMap::new(),
        }
    }

    /// Runs the loop every 200 ms until dropped.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.step().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.server.mutate(|store| store.list(group, plural, None))
    }

    /// One pass: pods for every Deployment, StatefulSet and Job, processes
    /// for every pod, volumes, restarts, readiness, and the statuses.
    pub async fn step(&mut self) {
        let deployments = self.list("apps", "deployments");
        let sets = self.list("apps", "statefulsets");
        let jobs = self.list("batch", "jobs");
        let pods = self.list("", "pods");
        // Pods whose object is gone (deleted, or collected): stop them.
        let live: Vec<Key> = pods.iter().map(pod_key).collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut pod) = self.pods.remove(&key) {
                let _ = pod.child.start_kill();
                let _ = pod.child.wait().await;
            }
        }
        for deployment in &deployments {
            self.scale(deployment, &pods);
        }
        for set in &sets {
            self.scale_set(set, &pods);
        }
        for job in &jobs {
            self.run_job(job, &pods);
        }
        let pods = self.list("", "pods");
        for pod in &pods {
            let key = pod_key(pod);
            if pod["metadata"].get("deletionTimestamp").is_some() {
                continue;
            }
            // A Job's pod that ended stays ended.
            if matches!(text(&pod["status"]["phase"]), "Succeeded" | "Failed") {
                continue;
            }
            if !self.pods.contains_key(&key) {
                self.start(pod).await;
            }
            self.tend(&key, pod).await;
        }
        for deployment in &deployments {
            self.report(deployment, "deployments");
        }
        for set in &sets {
            self.report(set, "statefulsets");
        }
        self.route().await;
    }

    /// In `namespace`, those of `objects`.
    fn in_namespace(objects: &[Value], namespace: &str) -> Vec<Value> {
        objects
            .iter()
            .filter(|o| text(&o["metadata"]["namespace"]) == namespace)
            .cloned()
            .collect()
    }

    /// Claims and pods of `set`, and its rolling update (see
    /// [`crate::controllers::stateful_set`]).
    fn scale_set(&mut self, set: &Value, pods: &[Value]) {
        let namespace = text(&set["metadata"]["namespace"]).to_owned();
        let pods = Self::in_namespace(pods, &namespace);
        let claims: Vec<String> = self
            .server
            .mutate(|store| store.list("", "persistentvolumeclaims", Some(&namespace)))
            .iter()
            .map(|c| text(&c["metadata"]["name"]).to_owned())
            .collect();
        let revision = template_hash(&set["spec"]["template"]);
        let changes = crate::controllers::stateful_set(set, &pods, &claims, &revision);
        for claim in changes.claims {
            let name = text(&claim["metadata"]["name"]).to_owned();
            let _ = self.server.mutate(|store| {
                let resource = store
                    .resource("", "v1", "persistentvolumeclaims")
                    .expect("built in");
                let key = key("", "persistentvolumeclaims", &namespace, &name);
                store.create(&resource, key.clone(), claim)?;
                store.patch(
                    &resource,
                    &key,
                    PatchKind::Merge,
                    &json!({"status": {"phase": "Bound", "accessModes": claim_modes(set)}}),
                    true,
                )
            });
        }
        for pod in changes.pods {
            let _ = self.server.mutate(|store| {
                let resource = store.resource("", "v1", "pods").expect("pods are built in");
                store.create(&resource, key("", "pods", &namespace, ""), pod)
            });
        }
        for name in changes.delete {
            let _ = self
                .server
                .mutate(|store| store.delete(&key("", "pods", &namespace, &name)));
        }
    }

    /// The pod of `job`, and its status (see [`crate::controllers::job`]).
    fn run_job(&mut self, job: &Value, pods: &[Value]) {
        let namespace = text(&job["metadata"]["namespace"]).to_owned();
        let pods = Self::in_namespace(pods, &namespace);
        let changes = crate::controllers::job(job, &pods, chrono::Utc::now());
        if let Some(pod) = changes.pod {
            let _ = self.server.mutate(|store| {
                let resource = store.resource("", "v1", "pods").expect("pods are built in");
                store.create(&resource, key("", "pods", &namespace, ""), pod)
            });
        }
        for name in changes.delete {
            let _ = self
                .server
                .mutate(|store| store.delete(&key("", "pods", &namespace, &name)));
        }
        if let Some(status) = changes.status {
            let key = key("batch", "jobs", &namespace, text(&job["metadata"]["name"]));
            let _ = self.server.mutate(|store| {
                let resource = store.resource("batch", "v1", "jobs").expect("built in");
                store.patch(
                    &resource,
                    &key,
                    PatchKind::Merge,
                    &json!({"status": status}),
                    true,
                )
            });
        }
    }

    /// Keeps a proxy per Service port, forwarding to the ready pods its
    /// selector picks (kube-proxy's job).
    async fn route(&mut self) {
        let services = self.list("", "services");
        let pods = self.list("", "pods");
        let mut wanted = Vec::new();
        for service in &services {
            let namespace = text(&service["metadata"]["namespace"]);
            let Ok(ip) = text(&service["spec"]["clusterIP"]).parse::<Ipv4Addr>() else {
                continue;
            };
            for port in service["spec"]["ports"].as_array().into_iter().flatten() {
                let Some(number) = port["port"].as_u64() else {
                    continue;
                };
                let id = format!(
                    "{namespace}/{}:{number}",
                    text(&service["metadata"]["name"])
                );
                let endpoints = endpoints(service, port, &pods);
                if !self.proxies.contains_key(&id) {
                    match Proxy::start(SocketAddr::from((ip, number as u16))).await {
                        Ok(proxy) => {
                            self.proxies.insert(id.clone(), proxy);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, service = %id, "cannot listen for the Service");
                            continue;
                        }
                    }
                }
                if let Some(proxy) = self.proxies.get(&id) {
                    *proxy
                        .endpoints
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = endpoints;
                }
                wanted.push(id);
            }
        }
        self.proxies.retain(|id, _| wanted.contains(id));
    }

    /// Creates missing pods of `deployment`, and deletes outdated ones once
    /// as many current ones are ready (a rolling update with no pod
    /// unavailable).
    fn scale(&mut self, deployment: &Value, pods: &[Value]) {
        let uid = text(&deployment["metadata"]["uid"]).to_owned();
        let namespace = text(&deployment["metadata"]["namespace"]).to_owned();
        let name = text(&deployment["metadata"]["name"]).to_owned();
        let template = &deployment["spec"]["template"];
        let hash = template_hash(template);
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|o| o["uid"] == uid.as_str()))
                    && p["metadata"].get("deletionTimestamp").is_none()
            })
            .collect();
        let current: Vec<&&Value> = owned
            .iter()
            .filter(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
            .collect();
        let ready = |p: &Value| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        };
        let current_ready = current.iter().filter(|p| ready(p)).count();
        for _ in current.len()..replicas {
            let mut metadata = template["metadata"].clone();
            metadata["labels"]["pod-template-hash"] = json!(hash);
            metadata["generateName"] = json!(format!("{name}-{hash}-"));
            metadata["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
            let _ = self.server.mutate(|store| {
                let resource = store.resource("", "v1", "pods").expect("pods are built in");
                store.create(&resource, key("", "pods", &namespace, ""), pod)
            });
        }
        // Surplus current pods, and outdated ones once the current are ready.
        let mut doomed: Vec<Key> = current.iter().skip(replicas).map(|p| pod_key(p)).collect();
        if current_ready >= replicas {
            doomed.extend(
                owned
                    .iter()
                    .filter(|p| p["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
                    .map(|p| pod_key(p)),
            );
        }
        for key in doomed {
            let _ = self.server.mutate(|store| store.delete(&key));
        }
    }

    fn binary(&self, image: &str) -> Option<PathBuf> {
        self.images
            .iter()
            .find(|(name, _)| image.contains(name.as_str()))
            .map(|(_, path)| path.clone())
    }

    /// The files of each volume of `pod`: ConfigMap and Secret keys, and
    /// the Secret keys of projected volumes; with `items`, just those keys,
    /// at their paths.
    fn volume_files(&self, pod: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
        use base64::Engine as _;
        let namespace = text(&pod["metadata"]["namespace"]);
        let secret_files = |secret: &Value, items: &Value, files: &mut BTreeMap<String, String>| {
            let decode = |v: &Value| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text(v))
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            match items.as_array() {
                Some(items) => {
                    for item in items {
                        let value = &secret["data"][text(&item["key"])];
                        if !value.is_null() {
                            files.insert(text(&item["path"]).to_owned(), decode(value));
                        }
                    }
                }
                None => {
                    for (k, v) in secret["data"].as_object().into_iter().flatten() {
                        files.insert(k.clone(), decode(v));
                    }
                }
            }
        };
        let mut volumes = BTreeMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = text(&volume["name"]).to_owned();
            let mut files = BTreeMap::new();
            let config_map = volume.get("configMap").and_then(|source| {
                self.server
                    .object("", "configmaps", namespace, text(&source["name"]))
            });
            let secret = volume.get("secret").and_then(|source| {
                self.server
                    .object("", "secrets", namespace, text(&source["secretName"]))
            });
            if let Some(map) = config_map {
                for (k, v) in map["data"].as_object().into_iter().flatten() {
                    files.insert(k.clone(), text(v).to_owned());
                }
            } else if let Some(secret) = secret {
                secret_files(&secret, &volume["secret"]["items"], &mut files);
            } else if let Some(sources) = volume["projected"]["sources"].as_array() {
                for source in sources.iter().filter_map(|s| s.get("secret")) {
                    if let Some(secret) =
                        self.server
                            .object("", "secrets", namespace, text(&source["name"]))
                    {
                        secret_files(&secret, &source["items"], &mut files);
                    }
                }
            }
            volumes.insert(name, files);
        }
        volumes
    }

    async fn start(&mut self, pod: &Value) {
        let key = pod_key(pod);
        let container = &pod["spec"]["containers"][0];
        let Some(binary) = self.binary(text(&container["image"])) else {
            self.set_status(
                &key,
                json!({"phase": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "ImageNotRunnable",
                 "message": format!("no local binary for image {}", container["image"])}]}),
            );
            return;
        };
        let ip = Ipv4Addr::from(0x7f01_0000 + self.next_ip);
        self.next_ip += 1;
        let dir = self.root.join(format!("{}-{}", key.namespace, key.name));
        let _ = std::fs::create_dir_all(&dir);
        let volumes = self.volume_files(pod);
        // Mount paths live under the pod's directory; a claim's, under the
        // node's, where it outlives the pod.
        let claims: BTreeMap<&str, &str> = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                let claim = v["persistentVolumeClaim"]["claimName"].as_str()?;
                Some((text(&v["name"]), claim))
            })
            .collect();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = text(&mount["name"]);
            let path = match claims.get(name) {
                Some(claim) => self.root.join("claims").join(&key.namespace).join(claim),
                None => dir.join("volumes").join(name),
            };
            let _ = std::fs::create_dir_all(&path);
            mounts.push((text(&mount["mountPath"]).to_owned(), path));
        }
        for (name, files) in volumes
            .iter()
            .filter(|(name, _)| !claims.contains_key(name.as_str()))
        {
            write_volume(&dir.join("volumes").join(name), files, 1);
        }
        let env = self.environment(pod, container, ip, &mounts);
        let log = std::fs::File::create(dir.join("log")).ok();
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(container["args"].as_array().into_iter().flatten().map(text))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        match log {
            Some(file) => command.stderr(file),
            None => command.stderr(Stdio::null()),
        };
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                tracing::warn!(error = %err, pod = %key.name, "cannot start");
                return;
            }
        };
        self.set_status(
            &key,
            json!({"phase": "Running", "podIP": ip.to_string(), "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "False", "reason": "Starting"}]}),
        );
        self.pods.insert(
            key.clone(),
            Pod {
                ip,
                dir,
                child,
                volumes,
                generation: 1,
                restarts: 0,
                ready: false,
                template: ["pod-template-hash", crate::controllers::REVISION_LABEL]
                    .iter()
                    .map(|label| text(&pod["metadata"]["labels"][label]))
                    .find(|hash| !hash.is_empty())
                    .unwrap_or_default()
                    .to_owned(),
                owner: text(&pod["metadata"]["ownerReferences"][0]["uid"]).to_owned(),
            },
        );
    }

    /// The container's environment, with Secret and ConfigMap references
    /// resolved, mount paths moved under the pod, and `0.0.0.0` listen
    /// addresses bound to the pod's own IP.
    fn environment(
        &self,
        pod: &Value,
        container: &Value,
        ip: Ipv4Addr,
        mounts: &[(String, PathBuf)],
    ) -> Vec<(String, String)> {
        use base64::Engine as _;
        let namespace = text(&pod["metadata"]["namespace"]);
        let mut env = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = text(&var["name"]).to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_owned()
            } else if let Some(source) = var["valueFrom"]["secretKeyRef"].as_object() {
                let secret = self
                    .server
                    .object("", "secrets", namespace, text(&source["name"]));
                let encoded = secret
                    .as_ref()
                    .map(|s| text(&s["data"][text(&source["key"])]).to_owned())
                    .unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            } else if let Some(source) = var["valueFrom"]["configMapKeyRef"].as_object() {
                let map = self
                    .server
                    .object("", "configmaps", namespace, text(&source["name"]));
                map.map(|m| text(&m["data"][text(&source["key"])]).to_owned())
                    .unwrap_or_default()
            } else if let Some(source) = var["valueFrom"]["resourceFieldRef"].as_object() {
                // As the kubelet does: the container's limit (or request),
                // in bytes or cores, divided by the divisor (default 1).
                let (kind, resource) = text(&source["resource"])
                    .split_once('.')
                    .unwrap_or(("limits", "memory"));
                let amount = quantity(text(&container["resources"][kind][resource]));
                let divisor = source
                    .get("divisor")
                    .and_then(Value::as_str)
                    .and_then(quantity)
                    .unwrap_or(1.0_f64);
                match amount {
                    Some(amount) => format!("{}", (amount / divisor.max(1e-9)).ceil() as u64),
                    None => continue,
                }
            } else {
                continue;
            };
            let mut value = value.replace("0.0.0.0:", &format!("{ip}:"));
            for (mount, path) in mounts {
                if let Some(rest) = value.strip_prefix(mount.as_str()) {
                    value = format!("{}{rest}", path.display());
                }
            }
            env.push((name, value));
        }
        env
    }

    /// Restarts an exited process, refreshes volumes, probes readiness.
    async fn tend(&mut self, key: &Key, pod: &Value) {
        let volumes = self.volume_files(pod);
        let Some(running) = self.pods.get_mut(key) else {
            return;
        };
        let exited = running.child.try_wait().ok().flatten();
        if let Some(status) = exited
            && pod["spec"]["restartPolicy"] == "Never"
        {
            // A Job's pod: it ends, by its exit code.
            let phase = if status.success() {
                "Succeeded"
            } else {
                "Failed"
            };
            tracing::info!(pod = %key.name, %status, phase, "container exited; not restarted");
            let container = text(&pod["spec"]["containers"][0]["name"]).to_owned();
            let code = status.code().unwrap_or(-1);
            self.pods.remove(key);
            self.set_status(
                key,
                json!({"phase": phase, "containerStatuses": [{"name": container, "ready": false,
                    "state": {"terminated": {"exitCode": code}}}],
                    "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]}),
            );
            return;
        }
        if let Some(status) = exited {
            tracing::warn!(pod = %key.name, %status, "container exited; restarting");
            running.restarts += 1;
            self.pods.remove(key);
            self.start(pod).await;
            return;
        }
        if volumes != running.volumes {
            running.generation += 1;
            for (name, files) in &volumes {
                if running.volumes.get(name) != Some(files) {
                    write_volume(
                        &running.dir.join("volumes").join(name),
                        files,
                        running.generation,
                    );
                }
            }
            running.volumes = volumes;
        }
        let container = &pod["spec"]["containers"][0];
        let probe = &container["readinessProbe"]["httpGet"];
        let ready = if probe.is_object() {
            let port = match &probe["port"] {
                Value::Number(n) => n.as_u64().unwrap_or(0) as u16,
                Value::String(name) => container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["containerPort"].as_u64())
                    .unwrap_or(0) as u16,
                _ => 0,
            };
            http_ok(running.ip, port, text(&probe["path"])).await
        } else {
            true
        };
        if ready != running.ready || pod["status"]["podIP"].is_null() {
            running.ready = ready;
            let ip = running.ip.to_string();
            let restarts = running.restarts;
            self.set_status(key, json!({"phase": "Running", "podIP": ip, "hostIP": "127.0.0.1",
                "containerStatuses": [{"name": text(&container["name"]), "ready": ready, "restartCount": restarts}],
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}));
        }
    }

    fn set_status(&self, key: &Key, status: Value) {
        let _ = self.server.mutate(|store| {
            let resource = store.resource("", "v1", "pods").expect("pods are built in");
            store.patch(
                &resource,
                key,
                PatchKind::Merge,
                &json!({"status": status}),
                true,
            )
        });
    }

    /// The status of a Deployment (`plural` `deployments`) or StatefulSet
    /// (`statefulsets`) from its pods.
    fn report(&self, deployment: &Value, plural: &str) {
        let uid = text(&deployment["metadata"]["uid"]);
        let hash = template_hash(&deployment["spec"]["template"]);
        let owned: Vec<&Pod> = self.pods.values().filter(|p| p.owner == uid).collect();
        let ready = owned.iter().filter(|p| p.ready).count();
        let updated = owned.iter().filter(|p| p.template == hash).count();
        let mut status = json!({
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": owned.len(), "readyReplicas": ready, "availableReplicas": ready,
            "updatedReplicas": updated,
        });
        if plural == "statefulsets" {
            status["currentReplicas"] = json!(updated);
            status["currentRevision"] = json!(hash);
            status["updateRevision"] = json!(hash);
        }
        if deployment["status"] == status {
            return;
        }
        let key = key(
            "apps",
            plural,
            text(&deployment["metadata"]["namespace"]),
            text(&deployment["metadata"]["name"]),
        );
        let _ = self.server.mutate(|store| {
            let resource = store.resource("apps", "v1", plural).expect("built in");
            store.patch(
                &resource,
                &key,
                PatchKind::Merge,
                &json!({"status": status}),
                true,
            )
        });
    }
}

impl Proxy {
    async fn start(address: SocketAddr) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let endpoints: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let shared = Arc::clone(&endpoints);
        let task = tokio::spawn(async move {
            let mut turn = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let target = {
                    let list = shared
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    turn = turn.wrapping_add(1);
                    (!list.is_empty()).then(|| list[turn % list.len()])
                };
                // No ready endpoint: the connection is refused (closed).
                let Some(target) = target else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Ok(Proxy { endpoints, task })
    }
}

/// Where `port` of `service` leads: the address of that port on each
/// Ready pod the Service selects, as the Endpoints controller would list
/// them.
pub fn endpoints(service: &Value, port: &Value, pods: &[Value]) -> Vec<SocketAddr> {
    let namespace = text(&service["metadata"]["namespace"]);
    let Some(selector) = service["spec"]["selector"].as_object() else {
        return Vec::new();
    };
    pods.iter()
        .filter(|p| {
            text(&p["metadata"]["namespace"]) == namespace
                && p["metadata"].get("deletionTimestamp").is_none()
                && selector
                    .iter()
                    .all(|(k, v)| &p["metadata"]["labels"][k] == v)
                && p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .filter_map(|pod| {
            let pod_ip: Ipv4Addr = text(&pod["status"]["podIP"]).parse().ok()?;
            let target = match &port["targetPort"] {
                Value::Number(n) => n.as_u64()?,
                Value::String(name) => pod["spec"]["containers"][0]["ports"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == name.as_str())?["containerPort"]
                    .as_u64()?,
                _ => port["port"].as_u64()?,
            };
            Some(SocketAddr::from((pod_ip, u16::try_from(target).ok()?)))
        })
        .collect()
}

/// The access modes of `set`'s first claim template.
fn claim_modes(set: &Value) -> Value {
    set["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"].clone()
}

fn pod_key(pod: &Value) -> Key {
    key(
        "",
        "pods",
        text(&pod["metadata"]["namespace"]),
        text(&pod["metadata"]["name"]),
    )
}

/// Writes a volume as kubelet does: the files in a new timestamped
/// directory, `..data` swapped to it atomically, and `name -> ..data/name`
/// links made once.
fn write_volume(dir: &Path, files: &BTreeMap<String, String>, generation: u32) {
    let _ = std::fs::create_dir_all(dir);
    let data = format!("..{generation:04}");
    let _ = std::fs::create_dir_all(dir.join(&data));
    for (name, content) in files {
        let _ = std::fs::write(dir.join(&data).join(name), content);
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            let _ = std::os::unix::fs::symlink(format!("..data/{name}"), &link);
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    let old = std::fs::read_link(dir.join("..data")).ok();
    if std::os::unix::fs::symlink(&data, &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join("..data"));
    }
    if let Some(old) = old
        && old != Path::new(&data)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
}

/// Whether `GET http://ip:port/path` answers 2xx within a second.
async fn http_ok(ip: Ipv4Addr, port: u16, path: &str) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2"))
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A Kubernetes quantity (`512Mi`, `1G`, `250m`, `2`) as a number.
fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_read_as_the_kubelet_reads_them() {
        assert_eq!(quantity("512Mi"), Some(536_870_912.0));
        assert_eq!(quantity("1G"), Some(1e9));
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("3X"), None);
    }
}
