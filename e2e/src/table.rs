//! Server-side tables, as `kubectl get` asks for them (`Accept:
//! application/json;as=Table;...`): for a custom resource, its name and
//! its CRD's `additionalPrinterColumns`, read with the small JSONPath
//! subset those columns use (`.a.b`, `[0]`, `[?(@.k=="v")]`); for built-in
//! kinds, name and age.

use serde_json::{Value, json};

use crate::resources::Resource;

/// Whether `accept` asks for a table.
pub fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

/// The values `path` selects in `object`.
pub fn select<'a>(object: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![object];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            current = current.into_iter().filter_map(|v| v.get(field)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return Vec::new();
            };
            let inside = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inside
                .strip_prefix("?(@.")
                .and_then(|f| f.strip_suffix(')'))
            {
                let Some((key, wanted)) = filter.split_once("==") else {
                    return Vec::new();
                };
                let wanted = wanted.trim().trim_matches(|c| c == '"' || c == '\'');
                current = current
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .filter(|item| item.get(key.trim()).and_then(Value::as_str) == Some(wanted))
                    .collect();
            } else if let Ok(index) = inside.parse::<usize>() {
                current = current.into_iter().filter_map(|v| v.get(index)).collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    current
}

/// `2026-11-26T10:00:00Z` as an age like kubectl prints (`42s`, `5m`,
/// `3h`, `2d`).
fn age(timestamp: &str) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let seconds = (chrono::Utc::now() - then.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

fn cell(value: Option<&Value>, kind: &str) -> Value {
    match (value, kind) {
        (None | Some(Value::Null), _) => json!("<none>"),
        (Some(Value::String(text)), "date") => json!(age(text)),
        (Some(value), _) => value.clone(),
    }
}

/// The table of `objects` of `resource`.
pub fn table(resource: &Resource, objects: &[Value], version: u64) -> Value {
    let columns: Vec<Value> = if resource.columns.is_empty() {
        vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]
    } else {
        resource.columns.clone()
    };
    let mut definitions = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    for column in &columns {
        definitions.push(json!({
            "name": column["name"], "type": column["type"],
            "format": column.get("format").cloned().unwrap_or(json!("")),
            "description": column.get("description").cloned().unwrap_or(json!("")),
            "priority": column.get("priority").cloned().unwrap_or(json!(0)),
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            for column in &columns {
                let path = column["jsonPath"].as_str().unwrap_or_default();
                cells.push(cell(
                    select(object, path).first().copied(),
                    column["type"].as_str().unwrap_or_default(),
                ));
            }
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": object["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": version.to_string()},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jsonpath_subset_of_printer_columns() {
        let object = json!({"status": {"readyReplicas": 2, "conditions": [
            {"type": "TopicsReady", "status": "True"}, {"type": "Ready", "status": "False", "reason": "Progressing"}]}});
        assert_eq!(
            select(&object, r#".status.conditions[?(@.type=="Ready")].status"#),
            [&json!("False")]
        );
        assert_eq!(
            select(&object, r#".status.conditions[?(@.type=="Ready")].reason"#),
            [&json!("Progressing")]
        );
        assert_eq!(select(&object, ".status.readyReplicas"), [&json!(2)]);
        assert_eq!(
            select(&object, ".status.conditions[0].type"),
            [&json!("TopicsReady")]
        );
        assert!(select(&object, ".status.missing").is_empty());
        assert_eq!(cell(None, "string"), json!("<none>"));
        let recent = (chrono::Utc::now() - chrono::Duration::seconds(90)).to_rfc3339();
        assert_eq!(cell(Some(&json!(recent)), "date"), json!("90s"));
    }
}
