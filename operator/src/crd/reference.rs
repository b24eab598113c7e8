//! `docs/crd-reference.md`, generated from the CRDs' schemas by `crdgen`:
//! every field with its type, default, bounds and description, and every
//! CEL rule's message. A test fails when the committed file is stale.

use std::fmt::Write as _;

use serde_json::Value;

/// The reference page for `crds`.
pub fn markdown(
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
) -> String {
    let mut out = String::from(
        "# CRD reference\n\n\
         Generated from the CRD schemas by `cargo run -p operator --bin crdgen`;\n\
         do not edit. [operator.md](operator.md) explains what the fields do.\n",
    );
    for crd in crds {
        let names = &crd.spec.names;
        for version in &crd.spec.versions {
            let Some(schema) = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
            else {
                continue;
            };
            let schema = serde_json::to_value(schema).unwrap_or_default();
            let _ = write!(
                out,
                "\n## {} ({}/{})\n\nShort names: {}. {}\n",
                names.kind,
                crd.spec.group,
                version.name,
                names
                    .short_names
                    .as_ref()
                    .map(|s| s
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_else(|| "none".into()),
                first_sentence(schema["description"].as_str().unwrap_or_default()),
            );
            for part in ["spec", "status"] {
                let Some(section) = schema["properties"].get(part) else {
                    continue;
                };
                let _ = write!(
                    out,
                    "\n### `{part}`\n\n| Field | Type | Default | Rules | Description |\n|---|---|---|---|---|\n"
                );
                let mut rows = Vec::new();
                walk(part, section, false, &mut rows);
                for row in rows {
                    out.push_str(&row);
                }
                let mut rules = Vec::new();
                collect_rules(part, section, &mut rules);
                if !rules.is_empty() {
                    let _ = write!(out, "\nValidation messages of `{part}`:\n\n");
                    for (path, message) in rules {
                        let _ = writeln!(out, "- `{path}`: {message}");
                    }
                }
            }
        }
    }
    out
}

/// A description on one line; long ones (the Kubernetes types') cut after
/// their first sentence.
fn first_sentence(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() <= 200 {
        return text;
    }
    let bytes = text.as_bytes();
    let end = (0..bytes.len().saturating_sub(2))
        .find(|&i| bytes[i] == b'.' && bytes[i + 1] == b' ' && bytes[i + 2].is_ascii_uppercase());
    match end {
        Some(end) => text[..=end].to_owned(),
        None => text,
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn type_of(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object")
            if schema
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(kind) => kind.to_owned(),
        None if schema.get("x-kubernetes-int-or-string").is_some() => "int or string".into(),
        None => "any".into(),
    }
}

fn bounds(schema: &Value, required: bool) -> String {
    let mut parts = Vec::new();
    if required {
        parts.push("required".to_owned());
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| {
                format!(
                    "`{}`",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    for (key, label) in [
        ("minimum", ">="),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
    ] {
        if let Some(n) = schema[key].as_f64() {
            if schema["format"]
                .as_str()
                .is_some_and(|f| f.starts_with("uint"))
                && key == "minimum"
                && n == 0.0
            {
                continue;
            }
            parts.push(format!("{label} {n}"));
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        parts.push(format!("matches `{pattern}`"));
    }
    parts.join("; ")
}

fn walk(path: &str, schema: &Value, required: bool, rows: &mut Vec<String>) {
    // Scalar defaults only; an object's default is its fields' defaults.
    let default = schema
        .get("default")
        .filter(|d| !d.is_object() && !d.is_array())
        .map(|d| format!("`{}`", serde_json::to_string(d).unwrap_or_default()))
        .unwrap_or_default();
    rows.push(format!(
        "| `{path}` | {} | {} | {} | {} |\n",
        type_of(schema),
        cell(&default),
        cell(&bounds(schema, required)),
        cell(&first_sentence(
            schema["description"].as_str().unwrap_or_default()
        )),
    ));
    let (object, suffix) = match schema["type"].as_str() {
        Some("array") => (&schema["items"], "[]"),
        _ => (schema, ""),
    };
    let Some(properties) = object["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = object["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, child) in properties {
        walk(
            &format!("{path}{suffix}.{name}"),
            child,
            required.contains(&name.as_str()),
            rows,
        );
    }
}

fn collect_rules(path: &str, schema: &Value, rules: &mut Vec<(String, String)>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(message) = rule["message"].as_str() {
            rules.push((path.to_owned(), message.to_owned()));
        }
    }
    let (object, suffix) = match schema["type"].as_str() {
        Some("array") => {
            collect_rules(&format!("{path}[]"), &schema["items"], rules);
            return;
        }
        _ => (schema, ""),
    };
    for (name, child) in object["properties"].as_object().into_iter().flatten() {
        collect_rules(&format!("{path}{suffix}.{name}"), child, rules);
    }
}
