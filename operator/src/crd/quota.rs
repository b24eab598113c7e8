//! `CaptureQuota`: one project's limits, written by the operator into the
//! Redis of the `CaptureDeployment` it names, in the key schema capture reads
//! (`capture::policy::keys`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;

/// A project's quota.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capture.dev",
    version = "v1alpha1",
    kind = "CaptureQuota",
    namespaced,
    doc = "A project token's quota, written into the Redis of a CaptureDeployment.",
    status = "CaptureQuotaStatus",
    shortname = "cquota",
    category = "capture",
    printcolumn = r#"{"name":"Deployment","type":"string","jsonPath":".spec.deployment"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Events limit","type":"integer","jsonPath":".spec.limits[?(@.eventType==\"events\")].limit"}"#,
    printcolumn = r#"{"name":"Events used","type":"integer","jsonPath":".status.usage[?(@.eventType==\"events\")].used"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct CaptureQuotaSpec {
    /// The CaptureDeployment (same namespace) whose Redis holds this quota.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("deployment cannot change; delete the quota and create it for the other deployment"))]
    pub deployment: String,
    /// The project token (`phc_...`) the limits apply to. Project tokens are
    /// public (SDKs embed them in web pages); personal keys are refused.
    #[x_kube(validation = Rule::new("self.matches('^[!-z|~]{1,64}$')")
        .message("token must be 1-64 printable ASCII characters without spaces or braces"))]
    #[x_kube(validation = Rule::new("!self.startsWith('phx_')")
        .message("token must be a project token (phc_...), not a personal API key (phx_...)"))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("token cannot change; delete the quota and create one for the other token"))]
    pub token: String,
    /// Limits by event type; each type at most once.
    #[serde(default)]
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["eventType"]))]
    pub limits: Vec<QuotaLimit>,
    /// Over-quota events: `drop` (200 with `quota_limited`, what PostHog
    /// SDKs expect) or `reject` (429). Default: the deployment's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['drop', 'reject']")
        .message("action must be drop or reject"))]
    pub action: Option<String>,
}

/// One event type's limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.limit) || has(self.rate)")
        .message("a limit entry needs a limit, a rate, or both")
)]
#[x_kube(
    validation = Rule::new("!has(self.burst) || has(self.rate)")
        .message("burst only applies together with rate")
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimit {
    /// `events`, `recordings`, `exceptions` or `historical`.
    #[x_kube(validation = Rule::new("self in ['events', 'recordings', 'exceptions', 'historical']")
        .message("eventType must be one of events, recordings, exceptions, historical"))]
    pub event_type: String,
    /// Most events per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0")
        .message("limit must be positive; delete the entry to lift the limit"))]
    pub limit: Option<i64>,
    /// Window length: a whole number followed by `s`, `m`, `h` or `d`
    /// (`30d`). The window opens with the first event. Default `1d`.
    #[serde(default = "default_window")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,8}(s|m|h|d)$')")
        .message("window must be a whole number followed by s, m, h or d, like 1h or 30d"))]
    pub window: String,
    /// Cluster-wide events per second for this token and type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub rate: Option<i64>,
    /// Burst above that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<i64>,
}

fn default_window() -> String {
    "1d".into()
}

/// What the operator last wrote and saw.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaptureQuotaStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (written to Redis), with a reason when not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// When the settings were last written, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Usage of the open windows, refreshed at low frequency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<QuotaUsage>,
    /// The `capture.dev/reset-usage` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<String>,
}

/// One type's usage snapshot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    /// The event type.
    pub event_type: String,
    /// Events counted in the open window.
    pub used: i64,
    /// What remains.
    pub remaining: i64,
}

/// The window in seconds, for a window the schema accepted.
pub fn window_seconds(window: &str) -> Option<u64> {
    let unit = window.chars().last()?;
    let count: u64 = window[..window.len() - 1].parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    count.checked_mul(scale).filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn quota(spec: serde_json::Value) -> CaptureQuota {
        serde_json::from_value(json!({
            "apiVersion": "capture.dev/v1alpha1",
            "kind": "CaptureQuota",
            "metadata": {"name": "q", "namespace": "default"},
            "spec": spec,
        }))
        .expect("a CaptureQuota")
    }

    fn good() -> serde_json::Value {
        json!({
            "deployment": "capture",
            "token": "phc_abc123",
            "limits": [
                {"eventType": "events", "limit": 1000000, "window": "30d"},
                {"eventType": "recordings", "limit": 5000, "window": "1d", "rate": 10, "burst": 50},
            ],
            "action": "drop",
        })
    }

    /// The messages of every rule `spec` breaks.
    fn broken(spec: serde_json::Value) -> String {
        match quota(spec).validate_cel() {
            Ok(()) => String::new(),
            Err(errors) => errors.to_string(),
        }
    }

    #[test]
    fn a_realistic_quota_passes_every_rule() {
        assert_eq!(broken(good()), "");
    }

    #[test]
    fn each_bad_field_is_refused_with_its_message() {
        let cases = [
            (
                "/limits/0/window",
                json!("30 days"),
                "window must be a whole number",
            ),
            (
                "/limits/0/window",
                json!("0d"),
                "window must be a whole number",
            ),
            ("/limits/0/limit", json!(0), "limit must be positive"),
            (
                "/limits/0/eventType",
                json!("pageviews"),
                "eventType must be one of",
            ),
            ("/token", json!("phx_personal"), "not a personal API key"),
            ("/token", json!("phc_{x}"), "without spaces or braces"),
            ("/token", json!("phc x"), "without spaces or braces"),
            ("/action", json!("block"), "action must be drop or reject"),
        ];
        for (pointer, value, message) in cases {
            let mut spec = good();
            *spec.pointer_mut(pointer).expect("field exists") = value.clone();
            let errors = broken(spec);
            assert!(errors.contains(message), "{pointer} = {value}: {errors:?}");
        }
        let mut spec = good();
        spec["limits"][1] = json!({"eventType": "recordings", "burst": 5});
        let errors = broken(spec);
        assert!(
            errors.contains("needs a limit, a rate, or both"),
            "{errors}"
        );
        assert!(
            errors.contains("burst only applies together with rate"),
            "{errors}"
        );
    }

    #[test]
    fn token_and_deployment_are_immutable() {
        let old = quota(good());
        let mut changed = good();
        changed["token"] = json!("phc_other");
        changed["deployment"] = json!("elsewhere");
        let errors = quota(changed)
            .validate_cel_update(&old)
            .expect_err("immutable fields changed")
            .to_string();
        assert!(errors.contains("token cannot change"), "{errors}");
        assert!(errors.contains("deployment cannot change"), "{errors}");
        let mut raised = good();
        raised["limits"][0]["limit"] = json!(2000000);
        assert!(quota(raised).validate_cel_update(&old).is_ok());
    }

    #[test]
    fn windows_convert_to_seconds() {
        assert_eq!(window_seconds("30d"), Some(2_592_000));
        assert_eq!(window_seconds("90s"), Some(90));
        assert_eq!(window_seconds("1h"), Some(3600));
        assert_eq!(window_seconds("0s"), None);
        assert_eq!(window_seconds("5w"), None);
    }
}
