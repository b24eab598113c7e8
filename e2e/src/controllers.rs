//! The StatefulSet and Job controllers the node stand-in plays beside its
//! Deployment controller, as decisions: each function looks at an object
//! and the pods (and claims) there are, and says what to create, delete
//! and write to its status; the node carries that out.
//!
//! What they keep of the real controllers: a StatefulSet's pods are named
//! by ordinal (`NAME-N`), each with the claims of its volume claim
//! templates (`TEMPLATE-NAME-N`, made before the pod, labelled with the
//! template's and the selector's labels, never deleted: the retention the
//! operator asks for); `Parallel` pod management (pods made and removed
//! all at once); a rolling update replaces one outdated pod at a time,
//! highest ordinal first, once every pod is ready. A Job runs one pod at a
//! time, never restarted in place (`restartPolicy: Never`): a pod that
//! succeeds completes the Job (`Complete`), one that fails is replaced
//! until `backoffLimit` failures, and past `activeDeadlineSeconds` its pod
//! is deleted and the Job fails (`Failed`, `DeadlineExceeded`). Not kept:
//! `OrderedReady`, partitions, `maxUnavailable`, parallel or indexed Jobs,
//! pod failure policies.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Whether `pod` is owned (as controller or not) by the object of `uid`.
pub fn owned_by(pod: &Value, uid: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

fn deleting(object: &Value) -> bool {
    object["metadata"].get("deletionTimestamp").is_some()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn owner(object: &Value, kind: &str) -> Value {
    json!([{
        "apiVersion": object["apiVersion"], "kind": kind,
        "name": object["metadata"]["name"], "uid": object["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    }])
}

/// The label that tells a StatefulSet's pods of one template from another.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What a StatefulSet wants done.
#[derive(Debug, Default, PartialEq)]
pub struct SetChanges {
    /// Claims to create, before the pods.
    pub claims: Vec<Value>,
    /// Pods to create.
    pub pods: Vec<Value>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
}

/// The ordinal of `pod` in the StatefulSet `name`.
fn ordinal(name: &str, pod: &Value) -> Option<u64> {
    text(&pod["metadata"]["name"])
        .strip_prefix(name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// What the StatefulSet `set` wants, given the pods in its namespace, the
/// names of the claims there, and `revision`, its template's hash.
pub fn stateful_set(set: &Value, pods: &[Value], claims: &[String], revision: &str) -> SetChanges {
    let name = text(&set["metadata"]["name"]);
    let uid = text(&set["metadata"]["uid"]);
    let replicas = set["spec"]["replicas"].as_u64().unwrap_or(1);
    let template = &set["spec"]["template"];
    let templates: Vec<&Value> = set["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let selector = set["spec"]["selector"]["matchLabels"].clone();
    let owned: Vec<&Value> = pods.iter().filter(|p| owned_by(p, uid)).collect();
    let mut changes = SetChanges::default();
    for n in 0..replicas {
        let pod_name = format!("{name}-{n}");
        let mut volumes = template["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for claim in &templates {
            let volume = text(&claim["metadata"]["name"]);
            let claim_name = format!("{volume}-{name}-{n}");
            if !claims.contains(&claim_name) {
                let mut labels = claim["metadata"]["labels"].clone();
                if !labels.is_object() {
                    labels = json!({});
                }
                for (k, v) in selector.as_object().into_iter().flatten() {
                    labels[k] = v.clone();
                }
                changes.claims.push(json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name, "labels": labels},
                    "spec": claim["spec"],
                }));
            }
            volumes
                .push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim_name}}));
        }
        // One of that name still stopping: wait for it to go.
        if pods
            .iter()
            .any(|p| p["metadata"]["name"] == pod_name.as_str())
        {
            continue;
        }
        let mut metadata = template["metadata"].clone();
        if !metadata["labels"].is_object() {
            metadata["labels"] = json!({});
        }
        metadata["labels"][REVISION_LABEL] = json!(revision);
        metadata["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        metadata["name"] = json!(pod_name);
        metadata["ownerReferences"] = owner(set, "StatefulSet");
        let mut spec = template["spec"].clone();
        spec["volumes"] = json!(volumes);
        spec["hostname"] = json!(pod_name);
        changes
            .pods
            .push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}));
    }
    let live: Vec<&&Value> = owned.iter().filter(|p| !deleting(p)).collect();
    // Scaled down: every pod past the count goes at once (Parallel).
    changes.delete.extend(
        live.iter()
            .filter(|p| ordinal(name, p).is_none_or(|n| n >= replicas))
            .map(|p| text(&p["metadata"]["name"]).to_owned()),
    );
    // A rolling update: once all are there and ready, the highest outdated.
    let in_range: Vec<&&&Value> = live
        .iter()
        .filter(|p| ordinal(name, p).is_some_and(|n| n < replicas))
        .collect();
    if in_range.len() as u64 == replicas
        && in_range.iter().all(|p| ready(p))
        && let Some(outdated) = in_range
            .iter()
            .filter(|p| p["metadata"]["labels"][REVISION_LABEL] != revision)
            .max_by_key(|p| ordinal(name, p))
    {
        changes
            .delete
            .push(text(&outdated["metadata"]["name"]).to_owned());
    }
    changes
}

/// What a Job wants done.
#[derive(Debug, Default, PartialEq)]
pub struct JobChanges {
    /// A pod to create.
    pub pod: Option<Value>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Its new status, when it changed.
    pub status: Option<Value>,
}

/// What `job` wants, given the pods in its namespace, at `now`.
pub fn job(job: &Value, pods: &[Value], now: DateTime<Utc>) -> JobChanges {
    let mut changes = JobChanges::default();
    let status = &job["status"];
    let finished = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
    });
    if finished {
        return changes;
    }
    let uid = text(&job["metadata"]["uid"]);
    let owned: Vec<&Value> = pods.iter().filter(|p| owned_by(p, uid)).collect();
    let phase = |p: &&Value| text(&p["status"]["phase"]).to_owned();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count();
    let failed = owned.iter().filter(|p| phase(p) == "Failed").count();
    let active: Vec<&&Value> = owned
        .iter()
        .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed") && !deleting(p))
        .collect();
    let started = status["startTime"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now);
    let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let condition = |kind: &str, reason: &str| {
        json!([{"type": kind, "status": "True", "reason": reason, "message": "",
                "lastTransitionTime": stamp(now)}])
    };
    let backoff_limit = job["spec"]["backoffLimit"].as_u64().unwrap_or(6) as usize;
    let past_deadline = job["spec"]["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|seconds| now - started >= chrono::TimeDelta::seconds(seconds));
    let mut next = json!({
        "startTime": stamp(started), "active": active.len(),
        "succeeded": succeeded, "failed": failed,
    });
    if succeeded > 0 {
        next["active"] = json!(0);
        next["completionTime"] = json!(stamp(now));
        next["conditions"] = condition("Complete", "Completed");
    } else if failed > backoff_limit || past_deadline {
        changes.delete = active
            .iter()
            .map(|p| text(&p["metadata"]["name"]).to_owned())
            .collect();
        next["active"] = json!(0);
        next["conditions"] = condition(
            "Failed",
            if past_deadline {
                "DeadlineExceeded"
            } else {
                "BackoffLimitExceeded"
            },
        );
    } else if active.is_empty() {
        let template = &job["spec"]["template"];
        let name = text(&job["metadata"]["name"]);
        let mut metadata = template["metadata"].clone();
        if !metadata["labels"].is_object() {
            metadata["labels"] = json!({});
        }
        metadata["labels"]["batch.kubernetes.io/job-name"] = json!(name);
        metadata["labels"]["job-name"] = json!(name);
        metadata["generateName"] = json!(format!("{name}-"));
        metadata["ownerReferences"] = owner(job, "Job");
        changes.pod = Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}),
        );
        next["active"] = json!(1);
    }
    if *status != next {
        changes.status = Some(next);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(replicas: u64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "capture", "namespace": "a", "uid": "set-uid"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "capture"}},
                "template": {"metadata": {"labels": {"app": "capture"}},
                             "spec": {"containers": [{"name": "capture"}], "volumes": [{"name": "config"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "spool", "labels": {"part": "spool"}},
                                          "spec": {"resources": {"requests": {"storage": "1Gi"}}}}],
            },
        })
    }

    fn pod(name: &str, revision: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "labels": {REVISION_LABEL: revision},
                            "ownerReferences": [{"uid": "set-uid"}]},
               "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn names(values: &[Value]) -> Vec<&str> {
        values
            .iter()
            .map(|v| text(&v["metadata"]["name"]))
            .collect()
    }

    #[test]
    fn a_stateful_set_makes_a_claim_then_a_pod_per_ordinal() {
        let changes = stateful_set(&set(2), &[], &[], "r1");
        assert_eq!(
            names(&changes.claims),
            ["spool-capture-0", "spool-capture-1"]
        );
        assert_eq!(
            changes.claims[0]["metadata"]["labels"],
            json!({"part": "spool", "app": "capture"})
        );
        assert_eq!(names(&changes.pods), ["capture-0", "capture-1"]);
        let pod = &changes.pods[1];
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"name": "config"}, {"name": "spool", "persistentVolumeClaim": {"claimName": "spool-capture-1"}}])
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "set-uid");
        // Claims that exist are reused.
        let again = stateful_set(
            &set(2),
            &[],
            &["spool-capture-0".into(), "spool-capture-1".into()],
            "r1",
        );
        assert!(again.claims.is_empty());
    }

    #[test]
    fn scaling_down_deletes_the_pods_past_the_count_and_keeps_their_claims() {
        let pods = [
            pod("capture-0", "r1", true),
            pod("capture-1", "r1", true),
            pod("capture-2", "r1", true),
        ];
        let claims: Vec<String> = (0..3).map(|n| format!("spool-capture-{n}")).collect();
        let changes = stateful_set(&set(1), &pods, &claims, "r1");
        assert_eq!(changes.delete, ["capture-1", "capture-2"]);
        assert!(changes.claims.is_empty() && changes.pods.is_empty());
    }

    #[test]
    fn a_rolling_update_replaces_the_highest_outdated_pod_once_all_are_ready() {
        let pods = [pod("capture-0", "r1", true), pod("capture-1", "r1", true)];
        let claims: Vec<String> = (0..2).map(|n| format!("spool-capture-{n}")).collect();
        assert_eq!(
            stateful_set(&set(2), &pods, &claims, "r2").delete,
            ["capture-1"]
        );
        let pods = [pod("capture-0", "r1", true), pod("capture-1", "r2", false)];
        assert!(
            stateful_set(&set(2), &pods, &claims, "r2")
                .delete
                .is_empty()
        );
        let pods = [pod("capture-0", "r1", true), pod("capture-1", "r2", true)];
        assert_eq!(
            stateful_set(&set(2), &pods, &claims, "r2").delete,
            ["capture-0"]
        );
    }

    fn job_object(status: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "drain", "uid": "job-uid"},
               "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 60,
                        "template": {"metadata": {"labels": {"app": "drain"}}, "spec": {"restartPolicy": "Never"}}},
               "status": status})
    }

    fn job_pod(phase: &str) -> Value {
        json!({"metadata": {"name": format!("drain-{phase}"), "ownerReferences": [{"uid": "job-uid"}]},
               "status": {"phase": phase}})
    }

    #[test]
    fn a_job_runs_a_pod_and_completes_when_it_succeeds() {
        let now = Utc::now();
        let started = job(&job_object(Value::Null), &[], now);
        let pod = started.pod.expect("a pod");
        assert_eq!(pod["metadata"]["generateName"], "drain-");
        assert_eq!(pod["metadata"]["labels"]["job-name"], "drain");
        assert_eq!(started.status.as_ref().expect("status")["active"], 1);
        let status = started.status.expect("status");
        let running = job(&job_object(status.clone()), &[job_pod("Running")], now);
        assert_eq!(running, JobChanges::default());
        let done = job(&job_object(status), &[job_pod("Succeeded")], now);
        let status = done.status.expect("status");
        assert_eq!(status["conditions"][0]["type"], "Complete");
        assert_eq!(status["succeeded"], 1);
        assert_eq!(job(&job_object(status), &[], now), JobChanges::default());
    }

    #[test]
    fn a_job_retries_failed_pods_up_to_its_backoff_limit_and_stops_at_its_deadline() {
        let now = Utc::now();
        let status = json!({"startTime": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "active": 1, "succeeded": 0, "failed": 0});
        let retry = job(&job_object(status.clone()), &[job_pod("Failed")], now);
        assert!(retry.pod.is_some(), "one failure of a limit of one: again");
        let out = job(
            &job_object(status.clone()),
            &[job_pod("Failed"), job_pod("Failed")],
            now,
        );
        assert_eq!(
            out.status.expect("status")["conditions"][0]["reason"],
            "BackoffLimitExceeded"
        );
        let late = job(
            &job_object(status),
            &[job_pod("Running")],
            now + chrono::TimeDelta::seconds(61),
        );
        assert_eq!(late.delete, ["drain-Running"]);
        assert_eq!(
            late.status.expect("status")["conditions"][0]["reason"],
            "DeadlineExceeded"
        );
    }
}
