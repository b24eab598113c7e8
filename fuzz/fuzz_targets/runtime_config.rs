//! `capture::runtime_config::parse`, the loader of the document the
//! operator renders and capture reloads.
//!
//! The operator writes `to_yaml()` of the same type capture parses, and
//! both sides compare `hash()` to tell whether a pod runs the current
//! document. So besides "never panics": whatever `parse` accepts is valid,
//! reads back from its own YAML (and from its JSON, which the CRD holds)
//! as the same document, and keeps its hash through that round trip.

#![no_main]

use capture::runtime_config::{RuntimeConfig, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = parse(text) else {
        return;
    };
    config
        .validate()
        .expect("parse returns only valid documents");

    let yaml = config.to_yaml();
    let again = parse(&yaml).unwrap_or_else(|err| panic!("own YAML refused: {err}\n{yaml}"));
    same(&config, &again, &yaml);

    let json = serde_json::to_string(&config).expect("serializes as JSON");
    let again = parse(&json).unwrap_or_else(|err| panic!("own JSON refused: {err}\n{json}"));
    same(&config, &again, &json);
});

fn same(config: &RuntimeConfig, again: &RuntimeConfig, text: &str) {
    assert_eq!(config, again, "round trip changed the document:\n{text}");
    assert_eq!(config.hash(), again.hash(), "round trip changed the hash");
    assert_eq!(config.to_yaml(), again.to_yaml(), "YAML is not canonical");
}
