//! Admission of custom resources against their CRD's `openAPIV3Schema`, as
//! the API server does it: unknown fields pruned (refused under
//! `fieldValidation=Strict`), `null` in a non-nullable field dropped, types,
//! bounds, `required` and `enum` checked, defaults applied, then the CEL
//! rules (`x-kubernetes-validations`, transition rules with the old object)
//! evaluated by `kube-cel`. Errors name the field, in the API server's
//! style.

use serde_json::Value;

/// Checks and prunes `object` (a whole custom resource) against `schema`,
/// then applies defaults and evaluates the CEL rules; the problems found.
pub fn admit(schema: &Value, object: &mut Value, old: Option<&Value>, strict: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if let (Some(map), Some(properties)) =
        (object.as_object_mut(), schema["properties"].as_object())
    {
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match properties.get(&key) {
                Some(child) => visit(child, map, &key, &key, strict, &mut problems),
                None if strict => problems.push(format!("{key}: unknown field {key:?}")),
                None => {
                    map.remove(&key);
                }
            }
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    *object = kube_cel::apply_defaults(schema, object);
    if let Err(errors) = kube_cel::validate(schema, object, old) {
        problems.extend(errors.iter().map(|e| {
            let path = e.field_path.trim_start_matches('.');
            if path.is_empty() {
                e.message.clone()
            } else {
                format!("{path}: Invalid value: {}", e.message)
            }
        }));
    }
    problems
}

/// Checks `parent[key]` against `schema` at `path`, removing it when it is
/// a `null` the schema does not allow.
fn visit(
    schema: &Value,
    parent: &mut serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    strict: bool,
    problems: &mut Vec<String>,
) {
    if parent.get(key).is_some_and(Value::is_null) {
        if schema["nullable"] != true {
            parent.remove(key);
        }
        return;
    }
    if let Some(value) = parent.get_mut(key) {
        check(schema, value, path, strict, problems);
    }
}

fn check(schema: &Value, value: &mut Value, path: &str, strict: bool, problems: &mut Vec<String>) {
    let mut invalid = |value: &Value, reason: String| {
        problems.push(format!("{path}: Invalid value: {value}: {reason}"));
    };
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            invalid(value, "must be an integer or a string".into());
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        invalid(value, format!("supported values: {}", list.join(", ")));
    }
    let number = |key: &str| schema[key].as_f64();
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object_mut() else {
                let shown = value.clone();
                return invalid(&shown, format!("{path} must be of type object"));
            };
            for required in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(required) {
                    problems.push(format!("{path}.{required}: Required value"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let keep_unknown = schema["x-kubernetes-preserve-unknown-fields"] == true
                || additional == &Value::Bool(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = format!("{path}.{key}");
                if let Some(child) = properties.and_then(|p| p.get(&key)) {
                    visit(child, map, &key, &child_path, strict, problems);
                } else if additional.is_object() {
                    visit(additional, map, &key, &child_path, strict, problems);
                } else if keep_unknown {
                } else if strict {
                    problems.push(format!("{child_path}: unknown field {key:?}"));
                } else {
                    map.remove(&key);
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array_mut() else {
                let shown = value.clone();
                return invalid(&shown, format!("{path} must be of type array"));
            };
            let count = items.len() as f64;
            if number("minItems").is_some_and(|min| count < min)
                || number("maxItems").is_some_and(|max| count > max)
            {
                problems.push(format!(
                    "{path}: Invalid value: {count}: must have between {} and {} items",
                    schema["minItems"], schema["maxItems"]
                ));
            }
            if schema["items"].is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    check(
                        &schema["items"],
                        item,
                        &format!("{path}[{i}]"),
                        strict,
                        problems,
                    );
                }
            }
        }
        Some("string") => match value.as_str() {
            None => invalid(value, format!("{path} must be of type string")),
            Some(text) => {
                let length = text.chars().count() as f64;
                if number("minLength").is_some_and(|min| length < min) {
                    invalid(
                        value,
                        format!(
                            "{path} should be at least {} chars long",
                            schema["minLength"]
                        ),
                    );
                }
                if number("maxLength").is_some_and(|max| length > max) {
                    invalid(
                        value,
                        format!(
                            "{path} may not be more than {} chars long",
                            schema["maxLength"]
                        ),
                    );
                }
            }
        },
        Some(kind @ ("integer" | "number")) => {
            let whole = value.is_i64() || value.is_u64();
            match value.as_f64() {
                Some(_) if kind == "integer" && !whole => {
                    invalid(value, format!("{path} must be of type integer"))
                }
                None => invalid(value, format!("{path} must be of type {kind}")),
                Some(n) => {
                    if number("minimum").is_some_and(|min| n < min) {
                        invalid(
                            value,
                            format!(
                                "{path} should be greater than or equal to {}",
                                schema["minimum"]
                            ),
                        );
                    }
                    if number("maximum").is_some_and(|max| n > max) {
                        invalid(
                            value,
                            format!(
                                "{path} should be less than or equal to {}",
                                schema["maximum"]
                            ),
                        );
                    }
                }
            }
        }
        Some("boolean") if !value.is_boolean() => {
            invalid(value, format!("{path} must be of type boolean"))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["image"],
                    "x-kubernetes-validations": [{"rule": "!(has(self.replicas) && has(self.autoscaling))", "message": "set either replicas or autoscaling, not both"}],
                    "properties": {
                        "image": {"type": "string", "minLength": 1},
                        "replicas": {"type": "integer", "minimum": 0, "nullable": true},
                        "autoscaling": {"type": "object", "properties": {"max": {"type": "integer"}}},
                        "mode": {"type": "string", "default": "fast", "enum": ["fast", "safe"]},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "brokers": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        })
    }

    #[test]
    fn a_good_object_is_defaulted_and_unknown_fields_pruned() {
        let mut object = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"image": "i", "replicas": 2, "extra": 1, "labels": {"a": "b"}, "brokers": ["k:9092"]}, "junk": 1});
        assert_eq!(
            admit(&schema(), &mut object, None, false),
            Vec::<String>::new()
        );
        assert_eq!(object["spec"]["mode"], "fast", "defaulted");
        assert!(
            object["spec"].get("extra").is_none() && object.get("junk").is_none(),
            "pruned"
        );
        assert_eq!(object["metadata"]["name"], "a", "metadata untouched");
    }

    #[test]
    fn each_fault_names_its_field() {
        let cases = [
            (
                json!({"image": ""}),
                "spec.image: Invalid value: \"\": spec.image should be at least 1 chars long",
            ),
            (json!({}), "spec.image: Required value"),
            (
                json!({"image": "i", "replicas": "two"}),
                "spec.replicas must be of type integer",
            ),
            (
                json!({"image": "i", "replicas": -1}),
                "should be greater than or equal to 0",
            ),
            (
                json!({"image": "i", "mode": "slow"}),
                "supported values: \"fast\", \"safe\"",
            ),
            (
                json!({"image": "i", "brokers": [1]}),
                "spec.brokers[0]: Invalid value: 1: spec.brokers[0] must be of type string",
            ),
            (
                json!({"image": "i", "labels": {"a": 1}}),
                "spec.labels.a must be of type string",
            ),
            (
                json!({"image": "i", "replicas": 1, "autoscaling": {}}),
                "set either replicas or autoscaling, not both",
            ),
        ];
        for (spec, expected) in cases {
            let mut object = json!({"spec": spec});
            let problems = admit(&schema(), &mut object, None, false).join("; ");
            assert!(problems.contains(expected), "{spec}: {problems}");
        }
        let mut unknown = json!({"spec": {"image": "i", "extra": 1}});
        let problems = admit(&schema(), &mut unknown, None, true).join("; ");
        assert!(problems.contains("spec.extra: unknown field"), "{problems}");
        let mut nulled = json!({"spec": {"image": "i", "replicas": null, "mode": null}});
        assert_eq!(
            admit(&schema(), &mut nulled, None, false),
            Vec::<String>::new()
        );
        assert!(
            nulled["spec"]["replicas"].is_null() && nulled["spec"]["mode"] == "fast",
            "{nulled}"
        );
    }
}
