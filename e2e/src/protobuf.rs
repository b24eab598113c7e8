//! Request bodies in the Kubernetes protobuf encoding, for the few kinds
//! that typed clients write: `kubectl create namespace`, `kubectl create
//! secret generic` and `kubectl create configmap` send protobuf, and so
//! does helm when it stores a release in a Secret. Each is turned into the
//! JSON object the rest of the stand-in works on. Other kinds get a 415,
//! after which clients fall back to JSON.
//!
//! The wire format: the magic bytes `k8s\0`, then a `runtime.Unknown`
//! message (`typeMeta` = 1 with `apiVersion` = 1 and `kind` = 2, `raw` = 2
//! holding the object's own message). Field numbers are those of
//! `k8s.io/api/core/v1/generated.proto` and
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// One field of a message: its number and its value.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message, in order.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(&mut bytes)?),
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|e| e.to_string())?;
                let (value, rest) = bytes
                    .split_at_checked(len)
                    .ok_or("a length-delimited field runs past the end")?;
                bytes = rest;
                Field::Bytes(value)
            }
            1 => {
                bytes = bytes.get(8..).ok_or("a 64-bit field runs past the end")?;
                continue;
            }
            5 => {
                bytes = bytes.get(4..).ok_or("a 32-bit field runs past the end")?;
                continue;
            }
            other => return Err(format!("wire type {other} is not supported")),
        };
        out.push((number, field));
    }
    Ok(out)
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or("a varint runs past the end")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint is longer than 64 bits".into())
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".into())
}

/// A `map<string, string>` entry, or with `base64` a `map<string, bytes>`
/// entry with its value base64-encoded as JSON carries bytes.
fn map_entry(bytes: &[u8], base64: bool) -> Result<(String, Value), String> {
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) if base64 => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Field::Bytes(b)) => value = json!(text(b)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(object: &mut Map<String, Value>, name: &str, entry: (String, Value)) {
    if let Value::Object(map) = object
        .entry(name)
        .or_insert_with(|| Value::Object(Map::new()))
    {
        map.insert(entry.0, entry.1);
    }
}

/// `ObjectMeta`: the fields a create or update carries.
fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Field::Bytes(b)) => {
                meta.insert("name".into(), json!(text(b)?));
            }
            (2, Field::Bytes(b)) => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            (3, Field::Bytes(b)) => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            (5, Field::Bytes(b)) => {
                meta.insert("uid".into(), json!(text(b)?));
            }
            (6, Field::Bytes(b)) => {
                meta.insert("resourceVersion".into(), json!(text(b)?));
            }
            (11, Field::Bytes(b)) => insert_entry(&mut meta, "labels", map_entry(b, false)?),
            (12, Field::Bytes(b)) => insert_entry(&mut meta, "annotations", map_entry(b, false)?),
            (14, Field::Bytes(b)) => {
                if let Value::Array(list) = meta
                    .entry("finalizers")
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    list.push(json!(text(b)?));
                }
            }
            _ => {}
        }
    }
    // Empty strings are proto's "unset".
    meta.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(meta))
}

/// The JSON object of a protobuf-encoded body, or why it cannot be read
/// (a kind this stand-in does not decode, or a malformed message).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or("the body does not start with the protobuf magic bytes")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (number, field) in fields(unknown)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                for (number, field) in fields(type_meta)? {
                    match (number, field) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let raw = raw.ok_or("the body has no object")?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    // Fields by kind: 1 is always the metadata.
    let known = matches!(
        (api_version.as_str(), kind.as_str()),
        ("v1", "Namespace" | "Secret" | "ConfigMap")
    );
    if !known {
        return Err(format!(
            "{api_version} {kind} in protobuf is not decoded here; send JSON"
        ));
    }
    for (number, field) in fields(raw)? {
        let Field::Bytes(b) = field else {
            if let (5, Field::Varint(v)) = (number, field)
                && kind == "Secret"
            {
                object.insert("immutable".into(), json!(v != 0));
            }
            continue;
        };
        match (kind.as_str(), number) {
            (_, 1) => {
                object.insert("metadata".into(), object_meta(b)?);
            }
            ("Secret", 2) => insert_entry(&mut object, "data", map_entry(b, true)?),
            ("Secret", 3) => {
                object.insert("type".into(), json!(text(b)?));
            }
            ("Secret", 4) => insert_entry(&mut object, "stringData", map_entry(b, false)?),
            ("ConfigMap", 2) => insert_entry(&mut object, "data", map_entry(b, false)?),
            ("ConfigMap", 3) => insert_entry(&mut object, "binaryData", map_entry(b, true)?),
            ("Namespace", 2) => {
                let mut finalizers = Vec::new();
                for (number, field) in fields(b)? {
                    if let (1, Field::Bytes(f)) = (number, field) {
                        finalizers.push(json!(text(f)?));
                    }
                }
                object.insert("spec".into(), json!({"finalizers": finalizers}));
            }
            _ => {}
        }
    }
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint_bytes(number << 3 | 2, &mut out);
        varint_bytes(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        [field(1, key.as_bytes()), field(2, value)].concat()
    }

    fn body(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        [b"k8s\0".to_vec(), field(1, &type_meta), field(2, raw)].concat()
    }

    #[test]
    fn a_secret_as_kubectl_sends_it() {
        let meta = [
            field(1, b"redis-capture"),
            field(3, b"analytics"),
            field(11, &entry("app", b"capture")),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &entry("url", b"redis://r:6379")),
            field(3, b"Opaque"),
        ]
        .concat();
        let object = decode(&body("v1", "Secret", &raw)).expect("decodes");
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "redis-capture", "namespace": "analytics", "labels": {"app": "capture"}},
                "data": {"url": "cmVkaXM6Ly9yOjYzNzk="}, "type": "Opaque"})
        );
    }

    #[test]
    fn a_namespace_and_a_config_map() {
        let namespace =
            decode(&body("v1", "Namespace", &field(1, &field(1, b"analytics")))).expect("decodes");
        assert_eq!(namespace["metadata"]["name"], "analytics");
        let raw = [field(1, &field(1, b"c")), field(2, &entry("k", b"v"))].concat();
        let config_map = decode(&body("v1", "ConfigMap", &raw)).expect("decodes");
        assert_eq!(config_map["data"], json!({"k": "v"}));
    }

    #[test]
    fn other_kinds_and_broken_bodies_are_refused_with_a_reason() {
        let err = decode(&body("apps/v1", "Deployment", &field(1, b""))).expect_err("refused");
        assert!(err.contains("apps/v1 Deployment"), "{err}");
        assert!(decode(b"{}").is_err());
        let mut truncated = body("v1", "Secret", &field(1, &field(1, b"name")));
        truncated.truncate(truncated.len() - 2);
        assert!(decode(&truncated).is_err());
    }
}
