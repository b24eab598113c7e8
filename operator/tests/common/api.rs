//! A scripted Kubernetes API server for reconcile tests (tower_test): it
//! expects exactly the listed calls, in order, checks method and path,
//! answers each, and fails the test on any other or extra call.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How to answer a call.
pub enum Reply {
    /// This JSON.
    Json(Value),
    /// The request's own body (what a server-side apply returns, near enough).
    Echo,
}

/// One expected call.
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub reply: Reply,
}

/// An expected call answered with `status` and `reply`.
pub fn call(method: &'static str, path: &str, status: u16, reply: Reply) -> Call {
    Call {
        method,
        path: path.to_owned(),
        status,
        reply,
    }
}

/// The Event the reconciler publishes (answered with itself), checked
/// afterwards through the request bodies.
pub fn event() -> Call {
    call(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        201,
        Reply::Echo,
    )
}

/// A Kubernetes `Status` object for errors.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message})
}

/// A client whose calls go to the script; the handle yields the request
/// bodies once the client is dropped and every call was made.
pub fn serve(calls: Vec<Call>) -> (kube::Client, tokio::task::JoinHandle<Vec<Value>>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for expected in calls {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!("no call; expected {} {}", expected.method, expected.path)
            });
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                (expected.method, expected.path.as_str()),
                "unexpected call"
            );
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let reply = match expected.reply {
                Reply::Json(value) => value,
                Reply::Echo => json.clone(),
            };
            bodies.push(json);
            let response = Response::builder()
                .status(expected.status)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(response);
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!(
                "unexpected extra call {} {}",
                request.method(),
                request.uri()
            );
        }
        bodies
    });
    (kube::Client::new(service, "default"), server)
}
