//! Leader election between operator processes sharing one Lease, against an
//! in-memory Lease API that answers like the API server does for the calls
//! the lease manager makes (get, create, apply and strategic-merge patches,
//! 409 on a conflicting holder): only one process works at a time; a leader
//! that shuts down hands over at once, one that dies hands over once its
//! lease expires.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use operator::leader::{Election, lead};
use serde_json::{Value, json};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/capture-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/capture-system/leases/capture-operator";

/// The one Lease object, shared by every client.
#[derive(Default)]
struct LeaseStore {
    lease: Option<Value>,
    version: u64,
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason}),
    )
}

impl LeaseStore {
    fn stored(&mut self, mut lease: Value) -> Value {
        self.version += 1;
        lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
        lease["metadata"]["namespace"] = json!("capture-system");
        self.lease = Some(lease.clone());
        lease
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        match (method, path) {
            ("GET", LEASE) => match &self.lease {
                Some(lease) => (200, lease.clone()),
                None => status(404, "NotFound"),
            },
            ("POST", LEASES) if self.lease.is_some() => status(409, "AlreadyExists"),
            ("POST", LEASES) => (201, self.stored(body)),
            ("PATCH", LEASE) => {
                let Some(mut lease) = self.lease.clone() else {
                    return status(404, "NotFound");
                };
                let patch = &body["spec"];
                let holder = &lease["spec"]["holderIdentity"];
                // Server-side apply refuses to take a field another manager
                // set to a different value.
                if content_type.starts_with("application/apply-patch")
                    && !holder.is_null()
                    && patch.get("holderIdentity").is_some_and(|new| new != holder)
                {
                    return status(409, "Conflict");
                }
                if !lease["spec"].is_object() {
                    lease["spec"] = json!({});
                }
                for (key, value) in patch.as_object().into_iter().flatten() {
                    let spec = lease["spec"].as_object_mut().expect("object");
                    if value.is_null() {
                        spec.remove(key);
                    } else {
                        spec.insert(key.clone(), value.clone());
                    }
                }
                (200, self.stored(lease))
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }
}

/// A client whose calls go to the shared Lease store.
fn client(store: &Arc<Mutex<LeaseStore>>) -> kube::Client {
    let store = Arc::clone(store);
    let service = tower::service_fn(move |request: Request<Body>| {
        let store = Arc::clone(&store);
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
            let body = serde_json::from_slice(&bytes)
                .or_else(|_| serde_yaml::from_slice(&bytes))
                .unwrap_or(Value::Null);
            let (code, reply) =
                store
                    .lock()
                    .expect("store")
                    .handle(&method, &path, &content_type, body);
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    kube::Client::new(service, "capture-system")
}

/// Who is working right now, and the most that ever worked at once.
#[derive(Default)]
struct Work {
    active: Mutex<Vec<String>>,
    most: AtomicUsize,
    runs: AtomicUsize,
}

/// Starts one elector on its own runtime (so that it can die without
/// releasing anything); returns its shutdown switch and readiness.
fn elector(
    store: &Arc<Mutex<LeaseStore>>,
    work: &Arc<Work>,
    identity: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
    tokio::runtime::Runtime,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ready = Arc::new(AtomicBool::new(false));
    let election = Election {
        lease_name: "capture-operator".into(),
        namespace: "capture-system".into(),
        identity: identity.into(),
        duration: Duration::from_secs(2),
    };
    let task = {
        let client = {
            let _entered = runtime.enter();
            client(store)
        };
        let work = Arc::clone(work);
        let ready = Arc::clone(&ready);
        let identity = identity.to_owned();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.await;
            };
            lead(client, &election, ready, shutdown, |stop| {
                let work = Arc::clone(&work);
                let identity = identity.clone();
                async move {
                    {
                        let mut active = work.active.lock().expect("active");
                        active.push(identity.clone());
                        work.most.fetch_max(active.len(), Ordering::SeqCst);
                    }
                    work.runs.fetch_add(1, Ordering::SeqCst);
                    stop.await;
                    work.active
                        .lock()
                        .expect("active")
                        .retain(|who| *who != identity);
                }
            })
            .await;
        })
    };
    let handle = runtime.handle().clone();
    let thread = std::thread::spawn(move || {
        let _ = handle.block_on(task);
    });
    (stop_tx, ready, thread, runtime)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn active(work: &Work) -> Vec<String> {
    work.active.lock().expect("active").clone()
}

#[test]
fn one_process_leads_and_a_standby_takes_over_on_release_or_expiry() {
    let store = Arc::new(Mutex::new(LeaseStore::default()));
    let work = Arc::new(Work::default());

    let (stop_a, ready_a, thread_a, runtime_a) = elector(&store, &work, "a");
    wait_for("a to lead", Duration::from_secs(10), || {
        active(&work) == ["a"]
    });
    let (stop_b, ready_b, thread_b, runtime_b) = elector(&store, &work, "b");
    wait_for("b to stand by, ready", Duration::from_secs(10), || {
        ready_b.load(Ordering::SeqCst)
    });
    assert!(ready_a.load(Ordering::SeqCst), "the leader is ready");
    // Several lease periods: a keeps renewing, b never works.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(active(&work), ["a"], "only the leader works");

    // a shuts down: it stops working and releases the lease, b takes over
    // without waiting for the lease to expire (within one renewal sleep).
    let released = Instant::now();
    stop_a.send(()).expect("a running");
    thread_a.join().expect("a stopped");
    assert!(!ready_a.load(Ordering::SeqCst), "not ready after shutdown");
    let lease = store.lock().expect("store").lease.clone().expect("lease");
    assert_ne!(lease["spec"]["holderIdentity"], "a", "released: {lease}");
    wait_for("b to lead", Duration::from_secs(5), || {
        active(&work) == ["b"]
    });
    let handover = released.elapsed();
    drop(runtime_a);

    // c joins, then b dies without releasing: c leads once b's lease expires.
    let (stop_c, _ready_c, thread_c, runtime_c) = elector(&store, &work, "c");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(active(&work), ["b"]);
    let died = Instant::now();
    runtime_b.shutdown_background();
    drop(thread_b);
    drop(stop_b);
    // b's work future was dropped mid-run; only c may appear from now on.
    work.active.lock().expect("active").retain(|who| who != "b");
    wait_for(
        "c to lead after b's lease expired",
        Duration::from_secs(10),
        || active(&work) == ["c"],
    );
    let takeover = died.elapsed();
    assert!(
        takeover >= Duration::from_millis(500),
        "c waited for the lease to expire, took {takeover:?}"
    );

    stop_c.send(()).expect("c running");
    thread_c.join().expect("c stopped");
    drop(runtime_c);
    assert_eq!(work.most.load(Ordering::SeqCst), 1, "never two at once");
    assert_eq!(
        work.runs.load(Ordering::SeqCst),
        3,
        "a, b and c each led once"
    );
    eprintln!("handover on release {handover:?}, takeover after a crash {takeover:?}");
}
