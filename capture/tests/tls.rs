//! HTTPS on the listener: a client that trusts the CA connects, over HTTP/2
//! when it offers it and HTTP/1.1 when not; a certificate rotated through a
//! Secret-like volume (kubelet's `..data` swap) is served to new connections
//! without a restart; a broken rotation leaves the old certificate serving.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Capture;
use common::volume::Volume;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

const HOST: &str = "capture.test";

/// A CA and a server certificate for [`HOST`] that it signed.
struct Authority {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        let key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec![HOST.to_owned()])
            .expect("leaf params")
            .signed_by(&key, &ca)
            .expect("leaf");
        Authority {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn files(&self) -> [(&'static str, &str); 2] {
        [("tls.crt", &self.cert_pem), ("tls.key", &self.key_pem)]
    }
}

/// A client that trusts only `ca`, resolving [`HOST`] to capture.
fn client(ca: &str, address: SocketAddr, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca pem"))
        .resolve(HOST, address)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

fn start(volume: &Volume) -> Capture {
    let cert = volume.path("tls.crt").display().to_string();
    let key = volume.path("tls.key").display().to_string();
    Capture::start(&[
        "--sink",
        "noop",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-poll",
        "100ms",
    ])
}

fn url(capture: &Capture, path: &str) -> String {
    format!("https://{HOST}:{}{path}", capture.address.port())
}

#[tokio::test]
async fn clients_trusting_the_ca_connect_over_http2_and_http1() {
    let authority = Authority::new("first CA");
    let volume = Volume::new(&authority.files());
    let capture = start(&volume);

    let h2 = client(&authority.ca_pem, capture.address, false);
    let response = h2
        .post(url(&capture, "/e/"))
        .json(&serde_json::json!({"token": "phc_tls", "event": "over tls", "distinct_id": "d1"}))
        .send()
        .await
        .expect("https request");
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN chose h2"
    );
    assert_eq!(response.status(), 200);

    let h1 = client(&authority.ca_pem, capture.address, true);
    let response = h1
        .get(url(&capture, "/_readiness"))
        .send()
        .await
        .expect("https request");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);

    let stranger = client(&Authority::new("other CA").ca_pem, capture.address, false);
    let refused = stranger.get(url(&capture, "/_readiness")).send().await;
    assert!(refused.is_err(), "a client without the CA must not connect");

    let plain = reqwest::get(format!("http://{}/_readiness", capture.address)).await;
    assert!(
        plain.is_err(),
        "plain HTTP gets no answer on a TLS listener"
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let first = Authority::new("first CA");
    let mut volume = Volume::new(&first.files());
    let capture = start(&volume);
    let pid = capture.pid();
    let trusts_first = client(&first.ca_pem, capture.address, false);
    let check = |client: &reqwest::Client| {
        let request = client.get(url(&capture, "/_readiness")).send();
        async move { request.await.map(|r| r.status().as_u16()).ok() }
    };
    assert_eq!(check(&trusts_first).await, Some(200));

    // A broken rotation (the new certificate with the old key) is refused
    // and the first certificate keeps serving.
    let second = Authority::new("second CA");
    volume.update(&[("tls.crt", &second.cert_pem), ("tls.key", &first.key_pem)]);
    capture.wait_for_log("TLS certificate change refused");
    assert_eq!(check(&trusts_first).await, Some(200));

    volume.update(&second.files());
    let trusts_second = client(&second.ca_pem, capture.address, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(&trusts_second).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served within 10 s; logs:\n{}",
            capture.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        check(&trusts_first).await,
        None,
        "the old certificate is gone"
    );
    assert_eq!(capture.pid(), pid, "same process");
    capture.wait_for_log("TLS certificate reloaded");
    let metrics = trusts_second
        .get(url(&capture, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for line in [
        r#"capture_tls_reloads_total{result="refused"} 1"#,
        r#"capture_tls_reloads_total{result="applied"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// Runs capture with `args`, expecting it to refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_capture"))
        .args(["--sink", "noop", "--address", "127.0.0.1:0"])
        .args(args)
        .env_remove("CAPTURE_CONFIG")
        .output()
        .expect("run capture");
    assert!(!output.status.success(), "capture started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn half_a_tls_setting_or_a_missing_file_is_refused_by_name() {
    let stderr = refused(&["--tls-cert", "/nonexistent/tls.crt"]);
    assert!(stderr.contains("`--tls-cert` and `--tls-key`"), "{stderr}");
    let stderr = refused(&[
        "--tls-cert",
        "/nonexistent/tls.crt",
        "--tls-key",
        "/nonexistent/tls.key",
    ]);
    assert!(
        stderr.contains("cannot start TLS") && stderr.contains("/nonexistent/tls.crt"),
        "{stderr}"
    );
}
