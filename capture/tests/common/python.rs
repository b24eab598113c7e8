//! The Python that drives the real PostHog SDK in `sdk.rs` and
//! `sdk_v1.rs`: `$CAPTURE_TEST_PYTHON` (which `.ci/setup` exports), else
//! `python3`; it must be able to `import posthog`, and the tests fail when
//! it cannot.

use std::process::Stdio;

/// What `.ci/setup` installs into the venv.
pub const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/requirements.txt");

/// The interpreter to run the SDK with.
pub fn python() -> String {
    std::env::var("CAPTURE_TEST_PYTHON")
        .ok()
        .filter(|path| !path.trim().is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

fn how_to_get_posthog() -> String {
    format!(
        "These tests need a Python with the PostHog SDK. Source `.ci/setup` (`. .ci/setup`), \
         which makes a venv and exports CAPTURE_TEST_PYTHON, or by hand:\n  \
         python3 -m venv ~/.cache/capture-ci/venv\n  \
         ~/.cache/capture-ci/venv/bin/pip install -r {REQUIREMENTS}\n  \
         export CAPTURE_TEST_PYTHON=~/.cache/capture-ci/venv/bin/python"
    )
}

/// The SDK version `python` has; fails the test when it has none.
pub async fn posthog_version(python: &str) -> String {
    let output = tokio::process::Command::new(python)
        .args(["-c", "import posthog; print(posthog.VERSION)"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|err| {
            panic!(
                "cannot run the Python interpreter `{python}` ($CAPTURE_TEST_PYTHON, else \
                 python3): {err}\n{}",
                how_to_get_posthog()
            )
        });
    assert!(
        output.status.success(),
        "`{python}` cannot import the PostHog SDK (`posthog`):\n{}\n{}",
        String::from_utf8_lossy(&output.stderr).trim(),
        how_to_get_posthog()
    );
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let pinned = std::fs::read_to_string(REQUIREMENTS).unwrap_or_default();
    if !pinned.contains(&format!("posthog=={version}")) {
        eprintln!("note: testing posthog {version}; {REQUIREMENTS} pins another version");
    }
    version
}
