//! Nothing secret reaches the logs, even at `trace` level for every crate:
//! not project tokens (only their masked prefix), not the values of
//! properties a `redact` plugin masks, not signing secrets; across accepted
//! requests, refused ones (bad input, denied token, bad signature) and a
//! refused runtime config reload.

mod common;

use std::time::Duration;

use common::Capture;
use common::volume::Volume;
use serde_json::json;

const TOKEN: &str = "phc_masking_token_0123456789";
const DENIED: &str = "phc_denied_token_0123456789";
const SIGNED: &str = "phc_signed_token_0123456789";
const SECRET: &str = "signing-secret-never-logged";
const EMAIL: &str = "alice.private@example.com";
const CARD: &str = "4111-1111-1111-1111";

fn document(extra_deny: &str) -> String {
    format!(
        "version: 1\n\
         tokens: {{deny: [{DENIED}{extra_deny}]}}\n\
         signatures: {{tokens: [{SIGNED}], secretsFile: SECRETS}}\n\
         plugins: [{{redact: {{keys: [email, card]}}}}]\n"
    )
}

#[tokio::test]
async fn tokens_masked_properties_and_secrets_never_reach_the_logs() {
    let secrets = Volume::new(&[("secrets.yaml", &format!("{SIGNED}: {SECRET}\n"))]);
    let secrets_path = secrets.path("secrets.yaml").display().to_string();
    let with_secrets = |doc: String| doc.replace("SECRETS", &secrets_path);
    let mut config = Volume::new(&[("runtime.yaml", &with_secrets(document("")))]);
    let out = tempfile::NamedTempFile::new().expect("out");
    let capture = Capture::start(&[
        "--log-level",
        "trace",
        "--sink",
        "file",
        "--sink-file",
        out.path().to_str().expect("utf-8"),
        "--runtime-config",
        config.path("runtime.yaml").to_str().expect("utf-8"),
        "--runtime-config-poll",
        "50ms",
    ]);
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(capture.url(path))
            .header("X-Forwarded-For", "203.0.113.7")
            .body(body.to_string())
            .send()
    };
    let event = |token: &str| {
        json!({
            "token": token,
            "event": "signed up",
            "distinct_id": "user-1",
            "properties": {"email": EMAIL, "profile": {"card": CARD}},
        })
    };

    let accepted = post("/e", event(TOKEN)).await.expect("post");
    assert_eq!(accepted.status(), 200);
    let batch = json!({"api_key": TOKEN, "batch": [event(TOKEN), {"event": "no id"}]});
    assert_eq!(post("/batch", batch).await.expect("post").status(), 400);
    assert_eq!(post("/e", event(DENIED)).await.expect("post").status(), 401);
    assert_eq!(post("/e", event(SIGNED)).await.expect("post").status(), 401);
    let bad_signature = client
        .post(capture.url("/e"))
        .header("X-Capture-Signature", "t=1,v2=00")
        .body(event(SIGNED).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(bad_signature.status(), 401);
    // A refused reload whose fault is a token-like value.
    config.update(&[(
        "runtime.yaml",
        &with_secrets(document(", phx_personal_key_0123456789")),
    )]);
    capture.wait_for_log("runtime config not applied");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The produced event has the values masked, too.
    let produced = std::fs::read_to_string(out.path()).expect("sink file");
    assert!(produced.contains("signed up"), "{produced}");
    assert!(
        !produced.contains(EMAIL) && !produced.contains(CARD),
        "{produced}"
    );

    let logs = capture.logs().join("\n");
    assert!(
        logs.contains("request accepted") && logs.contains("request refused"),
        "debug lines of each request are logged:\n{logs}"
    );
    assert!(
        logs.contains("\"phc_ma***\""),
        "tokens appear masked:\n{logs}"
    );
    for secret in [
        TOKEN,
        DENIED,
        SIGNED,
        "phx_personal_key_0123456789",
        SECRET,
        EMAIL,
        CARD,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
}

/// Credentials given as files (as the operator mounts them) stay out of
/// the logs too, even while Redis refuses every connection and the errors
/// are logged at `trace`; and they are in no environment variable.
#[tokio::test]
async fn credentials_read_from_files_never_reach_the_logs() {
    const REDIS_PASSWORD: &str = "redis-password-never-logged";
    const KAFKA_PASSWORD: &str = "kafka-password-never-logged";
    // Nothing listens on port 1: every Redis call fails and is logged.
    let files = Volume::new(&[
        (
            "redis-url",
            &format!("redis://:{REDIS_PASSWORD}@127.0.0.1:1\n"),
        ),
        ("kafka-sasl-username", "capture\n"),
        ("kafka-sasl-password", &format!("{KAFKA_PASSWORD}\n")),
    ]);
    let out = tempfile::NamedTempFile::new().expect("out");
    let path = |name: &str| files.path(name).to_str().expect("utf-8").to_owned();
    let capture = Capture::start(&[
        "--log-level".to_owned(),
        "trace".to_owned(),
        "--sink".to_owned(),
        "file".to_owned(),
        "--sink-file".to_owned(),
        out.path().to_str().expect("utf-8").to_owned(),
        "--redis-url-file".to_owned(),
        path("redis-url"),
        "--kafka-security-protocol".to_owned(),
        "sasl-plaintext".to_owned(),
        "--kafka-sasl-mechanism".to_owned(),
        "PLAIN".to_owned(),
        "--kafka-sasl-username-file".to_owned(),
        path("kafka-sasl-username"),
        "--kafka-sasl-password-file".to_owned(),
        path("kafka-sasl-password"),
    ]);
    let event = json!({"token": TOKEN, "event": "e", "distinct_id": "u"});
    let answer = reqwest::Client::new()
        .post(capture.url("/e"))
        .body(event.to_string())
        .send()
        .await
        .expect("post");
    // Redis fails open by default: the event is taken anyway.
    assert_eq!(answer.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = capture.logs().join("\n");
    assert!(
        logs.to_lowercase().contains("redis"),
        "the Redis failures are logged:\n{logs}"
    );
    for secret in [REDIS_PASSWORD, KAFKA_PASSWORD] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
    }
    let environ =
        std::fs::read(format!("/proc/{}/environ", capture.pid())).expect("the process environment");
    let environ = String::from_utf8_lossy(&environ);
    for secret in [REDIS_PASSWORD, KAFKA_PASSWORD] {
        assert!(!environ.contains(secret), "{secret} in the environment");
    }
}
