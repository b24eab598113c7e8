//! From a `CaptureQuota` to what capture reads in Redis, and back to a usage
//! snapshot for its status. The writing itself goes through capture's own
//! [`QuotaAdmin`](capture::policy::admin::QuotaAdmin), so the key schema has
//! one definition.

use std::collections::BTreeMap;

use capture::policy::QuotaAction;
use capture::policy::QuotaType;
use capture::policy::admin::{QuotaSettings, QuotaStatus, TypeLimit};

use crate::crd::quota::{CaptureQuotaSpec, QuotaUsage, window_seconds};

/// A spec the schema should have refused (applied without validation, or
/// by an older CRD), naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {reason}")]
pub struct InvalidQuota {
    /// The field, as a path under `spec`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

/// The settings to write for `spec`.
pub fn settings(spec: &CaptureQuotaSpec) -> Result<QuotaSettings, InvalidQuota> {
    let invalid = |field: String, reason: &str| InvalidQuota {
        field,
        reason: reason.to_owned(),
    };
    capture::token::validate(&spec.token)
        .map_err(|err| invalid("token".into(), &err.to_string()))?;
    let action = match spec.action.as_deref() {
        None => None,
        Some(name) => Some(
            QuotaAction::from_name(name)
                .ok_or_else(|| invalid("action".into(), "must be drop or reject"))?,
        ),
    };
    let mut types = BTreeMap::new();
    for (i, limit) in spec.limits.iter().enumerate() {
        let field = |name: &str| format!("limits[{i}].{name}");
        let kind: QuotaType = limit
            .event_type
            .parse()
            .map_err(|err: String| invalid(field("eventType"), &err))?;
        if types.contains_key(&kind) {
            return Err(invalid(
                field("eventType"),
                "appears twice; give each type one entry",
            ));
        }
        let positive = |value: Option<i64>, name: &str| -> Result<Option<u64>, InvalidQuota> {
            match value {
                None => Ok(None),
                Some(v) if v > 0 => Ok(Some(v as u64)),
                Some(_) => Err(invalid(field(name), "must be positive")),
            }
        };
        types.insert(
            kind,
            TypeLimit {
                limit: positive(limit.limit, "limit")?,
                window_secs: window_seconds(&limit.window).ok_or_else(|| {
                    invalid(
                        field("window"),
                        "must be a whole number followed by s, m, h or d",
                    )
                })?,
                rate: positive(limit.rate, "rate")?.map(|r| r as f64),
                burst: positive(limit.burst, "burst")?,
            },
        );
    }
    Ok(QuotaSettings { action, types })
}

/// The usage snapshot for the status, in a fixed order.
pub fn usage(status: &QuotaStatus) -> Vec<QuotaUsage> {
    status
        .usage
        .iter()
        .map(|(kind, usage)| QuotaUsage {
            event_type: kind.as_str().to_owned(),
            used: i64::try_from(usage.used).unwrap_or(i64::MAX),
            remaining: i64::try_from(usage.remaining).unwrap_or(i64::MAX),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> CaptureQuotaSpec {
        serde_json::from_value(value).expect("a CaptureQuota spec")
    }

    #[test]
    fn limits_become_capture_settings() {
        let settings = settings(&spec(json!({
            "deployment": "capture",
            "token": "phc_abc",
            "action": "reject",
            "limits": [
                {"eventType": "events", "limit": 1000, "window": "30d"},
                {"eventType": "recordings", "rate": 10, "burst": 50},
            ],
        })))
        .expect("valid");
        assert_eq!(settings.action, Some(QuotaAction::Reject));
        assert_eq!(
            settings.types[&QuotaType::Events],
            TypeLimit {
                limit: Some(1000),
                window_secs: 2_592_000,
                rate: None,
                burst: None
            }
        );
        let recordings = &settings.types[&QuotaType::Recordings];
        assert_eq!(
            (recordings.limit, recordings.rate, recordings.burst),
            (None, Some(10.0), Some(50))
        );
        assert_eq!(recordings.window_secs, 86_400);
    }

    #[test]
    fn specs_the_schema_would_refuse_name_their_field() {
        let base = json!({"deployment": "d", "token": "phc_abc", "limits": []});
        let cases = [
            (json!({"token": "phx_key"}), "spec.token"),
            (json!({"action": "block"}), "spec.action"),
            (
                json!({"limits": [{"eventType": "pageviews", "limit": 1}]}),
                "spec.limits[0].eventType",
            ),
            (
                json!({"limits": [{"eventType": "events", "limit": 0}]}),
                "spec.limits[0].limit",
            ),
            (
                json!({"limits": [{"eventType": "events", "limit": 1, "window": "1w"}]}),
                "spec.limits[0].window",
            ),
            (
                json!({"limits": [{"eventType": "events", "limit": 1}, {"eventType": "events", "limit": 2}]}),
                "spec.limits[1].eventType",
            ),
        ];
        for (patch, field) in cases {
            let mut value = base.clone();
            for (key, v) in patch.as_object().expect("object") {
                value[key] = v.clone();
            }
            let err = settings(&spec(value)).expect_err("invalid");
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }
}
