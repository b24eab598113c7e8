//! HTTP behaviour of the capture binary that needs no broker: health and
//! metadata endpoints, CORS, timeouts, the file sink and start-up errors.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Capture;
use serde_json::json;

/// Posts `body` to `path` on `capture`, with optional extra headers.
async fn post(
    capture: &Capture,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(capture.url(path)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("post")
}

/// A minimal valid event.
fn event() -> String {
    json!({"event": "e", "distinct_id": "d", "token": "phc_t"}).to_string()
}

fn noop_capture(extra: &[&str]) -> Capture {
    let mut args = vec!["--sink", "noop"];
    args.extend_from_slice(extra);
    Capture::start(&args)
}

#[tokio::test]
async fn health_metadata_and_unknown_paths() {
    let capture = noop_capture(&[]);
    let get = |path: &str| reqwest::get(capture.url(path));
    let root = get("/").await.expect("root");
    assert_eq!(root.status(), 200);
    assert_eq!(root.text().await.expect("text"), "capture");
    assert_eq!(get("/_liveness").await.expect("liveness").status(), 200);
    assert_eq!(get("/_readiness").await.expect("readiness").status(), 200);
    assert_eq!(get("/nope").await.expect("404").status(), 404);
    let put = reqwest::Client::new()
        .put(capture.url("/e"))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 405);
    let response = post(&capture, "/e", &[], event()).await;
    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("a request id");
    assert_eq!(request_id.len(), 36, "{request_id:?}");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn cors_preflight_mirrors_origin_and_headers() {
    let capture = noop_capture(&[]);
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, capture.url("/batch/"))
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,x-custom")
        .send()
        .await
        .expect("preflight");
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header("access-control-allow-origin"),
        "https://app.example.com"
    );
    assert_eq!(
        header("access-control-allow-headers"),
        "content-type,x-custom"
    );
    assert_eq!(header("access-control-allow-credentials"), "true");
    assert!(header("access-control-allow-methods").contains("POST"));

    let origin = [("Origin", "https://other.example.org")];
    let response = post(&capture, "/e", &origin, event()).await;
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://other.example.org"[..])
    );
}

/// Reads from `stream` until the server answers or closes; returns what came.
fn read_answer(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn slow_headers_are_cut_off() {
    let capture = noop_capture(&["--header-read-timeout", "500ms"]);
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: x\r\n")
        .expect("partial headers");
    let started = Instant::now();
    let answer = read_answer(stream);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "connection held open"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[test]
fn slow_bodies_get_408() {
    let capture = noop_capture(&["--body-read-timeout", "500ms"]);
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"event\":")
        .expect("partial body");
    let answer = read_answer(stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// A body sent a byte at a time, each well within the timeout of the one
/// before, is still cut off at the timeout counted from the headers.
#[test]
fn a_drip_fed_body_is_cut_off_at_the_body_deadline() {
    let capture = noop_capture(&["--body-read-timeout", "2s"]);
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n")
        .expect("headers");
    let reader = stream.try_clone().expect("clone");
    let started = Instant::now();
    let answer = std::thread::spawn(move || read_answer(reader));
    // One byte every 200 ms: 40 s for the whole body.
    for _ in 0..200 {
        if stream.write_all(b" ").is_err() || answer.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = answer.join().expect("reader");
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took < Duration::from_secs(6),
        "answered after {took:?}, not at the 2 s deadline"
    );
}

#[tokio::test]
async fn the_file_sink_appends_one_json_line_per_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.jsonl");
    let path_arg = path.to_str().expect("utf-8 path");
    let capture = Capture::start(&[
        "--sink",
        "file",
        "--sink-file",
        path_arg,
        "--events-topic",
        "ev",
    ]);
    let batch = json!({"api_key": "phc_file", "batch": [
        {"event": "a", "distinct_id": "d1"}, {"event": "b", "distinct_id": "d2"}]});
    let response = post(&capture, "/batch", &[], batch.to_string()).await;
    assert_eq!(response.status(), 200);
    let text = std::fs::read_to_string(&path).expect("sink file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["topic"], "ev");
    assert_eq!(lines[0]["key"], "phc_file:d1");
    assert_eq!(lines[1]["headers"]["event"], "b");
    assert_eq!(lines[1]["value"]["distinct_id"], "d2");
}

#[test]
fn bad_settings_stop_the_start_and_name_the_setting() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_capture"))
            .args(args)
            .env_remove("CAPTURE_KAFKA_BROKERS")
            .output()
            .expect("run capture");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--sink", "kafka"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--kafka-brokers"), "{stderr}");
    let (code, stderr) = run(&["--kafka-linger", "soon"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--kafka-linger"), "{stderr}");
    let (code, stderr) = run(&["--log-level", "capture=["]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--log-level"), "{stderr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("capture.yaml");
    std::fs::write(&file, "adress: 0.0.0.0:3000\n").expect("write config");
    let (code, stderr) = run(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown setting `adress`"), "{stderr}");
    // A runtime config capture cannot apply stops the start, naming the field.
    let runtime = dir.path().join("runtime.yaml");
    std::fs::write(&runtime, "version: 1\nplugins: [{sample: {rate: 2}}]\n").expect("write");
    let (code, stderr) = run(&["--runtime-config", runtime.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("plugins[0].sample.rate: must be between 0 and 1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn settings_come_from_the_yaml_file_and_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let file = dir.path().join("capture.yaml");
    std::fs::write(
        &file,
        format!(
            "sink: file\nsink-file: {}\nevents-topic: from-file\n",
            out.display()
        ),
    )
    .expect("write config");
    let send = |capture: Capture| async move {
        let response = post(&capture, "/e", &[], event()).await;
        assert_eq!(response.status(), 200);
    };
    let last_topic = || {
        let text = std::fs::read_to_string(&out).expect("out");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().last().expect("a line")).expect("JSON");
        line["topic"].as_str().expect("topic").to_owned()
    };
    let config = file.to_str().expect("utf-8");
    send(Capture::start(&["--config", config])).await;
    assert_eq!(last_topic(), "from-file");
    // The environment overrides the file, and a flag overrides both.
    let env = [("CAPTURE_EVENTS_TOPIC", "from-env")];
    send(Capture::start_with_env(&["--config", config], &env)).await;
    assert_eq!(last_topic(), "from-env");
    let flag = ["--config", config, "--events-topic", "from-flag"];
    send(Capture::start_with_env(&flag, &env)).await;
    assert_eq!(last_topic(), "from-flag");
}

#[tokio::test]
async fn an_lz_string_bomb_is_refused_at_the_decompressed_cap() {
    let capture = noop_capture(&[
        "--max-event-body-bytes",
        "10kB",
        "--max-batch-body-bytes",
        "10kB",
        "--max-recording-body-bytes",
        "10kB",
        "--max-decompressed-bytes",
        "50kB",
    ]);
    // A couple of kilobytes that would expand to 100 kB.
    let bomb = lz_str::compress_to_base64(&format!(r#"{{"event":"{}"}}"#, "a".repeat(100_000)));
    assert!(bomb.len() < 5_000, "{}", bomb.len());
    let response = post(&capture, "/e/?compression=lz64", &[], bomb).await;
    assert_eq!(response.status(), 413);
    let text = response.text().await.expect("text");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn during_the_shutdown_delay_readiness_fails_but_requests_are_served() {
    let mut capture = noop_capture(&["--shutdown-delay", "2s"]);
    capture.signal_term();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ready = client
            .get(capture.url("/_readiness"))
            .send()
            .await
            .expect("readiness");
        if ready.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness kept passing after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = post(&capture, "/e", &[], event()).await;
    assert_eq!(response.status(), 200);
    let status = tokio::task::spawn_blocking(move || capture.wait_exit())
        .await
        .expect("join");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn beacon_requests_get_an_empty_204() {
    let capture = noop_capture(&[]);
    let text = [("Content-Type", "text/plain")];
    let response = post(&capture, "/e/?beacon=1&ver=1.78.5", &text, event()).await;
    assert_eq!(response.status(), 204);
    assert!(response.text().await.expect("text").is_empty());
}

/// Sends `request` (raw HTTP/1.1) on a new connection and returns the
/// status line of the answer, or `None` if none came within `wait`.
fn status_line(capture: &Capture, request: &str, wait: Duration) -> Option<String> {
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    stream.set_read_timeout(Some(wait)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = [0u8; 256];
    let n = stream.read(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

fn event_request() -> String {
    let body = event();
    format!(
        "POST /e HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Requests whose bodies have not arrived count as in flight; one more
/// than the cap gets 503 `overloaded` with Retry-After, and the cap frees
/// as they end.
#[test]
fn requests_over_the_in_flight_cap_get_503_overloaded() {
    let capture = noop_capture(&[
        "--max-requests-in-flight",
        "2",
        "--body-read-timeout",
        "30s",
    ]);
    let mut waiting: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(capture.address).expect("connect");
            stream
                .write_all(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                .expect("partial body");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    stream.write_all(event_request().as_bytes()).expect("send");
    let answer = read_answer(stream);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"overloaded\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    waiting.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = status_line(&capture, &event_request(), Duration::from_secs(5));
        if status.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {status:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// At `--max-connections`, a new connection waits in the listen queue and
/// is served as soon as another closes.
#[test]
fn connections_over_the_cap_wait_until_one_closes() {
    let capture = noop_capture(&["--max-connections", "2", "--header-read-timeout", "30s"]);
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(capture.address).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(capture.address).expect("queued by the kernel");
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    third.write_all(event_request().as_bytes()).expect("send");
    let mut answer = [0u8; 64];
    assert!(
        third.read(&mut answer).is_err(),
        "served while two connections were open"
    );
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = third.read(&mut answer).expect("served once a slot freed");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

/// A request head larger than `--max-header-bytes` is refused with 431
/// before its body is read.
#[test]
fn oversized_headers_get_431() {
    let capture = noop_capture(&["--max-header-bytes", "16KiB"]);
    let big = "x".repeat(40 * 1024);
    let request =
        format!("POST /e HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\n{{}}");
    let status = status_line(&capture, &request, Duration::from_secs(5));
    assert_eq!(
        status.as_deref(),
        Some("HTTP/1.1 431 Request Header Fields Too Large")
    );
    // Within the limit, the same request is read.
    let fits = format!(
        "POST /e HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        "x".repeat(4 * 1024),
        event().len(),
        event()
    );
    let status = status_line(&capture, &fits, Duration::from_secs(5));
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
}

/// A connection that sends nothing is closed after the header read
/// timeout, so idle connections cannot hold the connection slots.
#[test]
fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let capture = noop_capture(&["--header-read-timeout", "500ms"]);
    let stream = TcpStream::connect(capture.address).expect("connect");
    let started = Instant::now();
    let answer = read_answer(stream);
    assert!(answer.is_empty(), "{answer}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "held open for {took:?} (read_answer gives up at 10 s)"
    );
}

/// After a request, an HTTP/1.1 keep-alive connection that stays silent is
/// closed after the header read timeout too (hyper starts its timer when
/// it waits for the next request).
#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let capture = noop_capture(&["--header-read-timeout", "500ms"]);
    let mut stream = TcpStream::connect(capture.address).expect("connect");
    let body = event();
    let request = format!(
        "POST /e HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let started = Instant::now();
    let answer = read_answer(stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "idle keep-alive connection held for {took:?}"
    );
}
