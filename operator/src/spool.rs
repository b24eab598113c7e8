//! The per-pod durable spool: its settings from `spec.spool`, the names of
//! its volumes, and [`plan`], which decides what becomes of the volume of a
//! pod that is gone for good.
//!
//! With a spool, capture writes the events Kafka cannot take to its own
//! volume before answering, and replays them later. The pods run as a
//! StatefulSet whose volume claim template gives pod `NAME-N` the claim
//! `spool-NAME-N`, kept across restarts and rolling updates, so a pod that
//! comes back finds what it spooled. On SIGTERM capture replays what it can
//! within its shutdown budget; what remains stays on the volume. A scale-down
//! (or a spool removed from the spec) leaves the claims of the ordinals no
//! longer wanted, which the StatefulSet retains: the operator drains each
//! with a Job running capture with `--drain-spool` on it, and deletes the
//! claim once that Job succeeded, then the Job. A claim whose ordinal is
//! wanted again before that belongs to the new pod: its Job goes.
//!
//! [`plan`] is pure, so each of these decisions is unit tested; the
//! reconciler lists the claims, Jobs and pods and carries the plan out.
//! It deliberately never drains a volume while a pod of its ordinal exists
//! (that pod is draining it, or will use it), and never deletes a claim
//! whose Job did not succeed: a spooled event is dropped by nobody.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::deployment::{SpoolAccessMode, SpoolSpec};

/// Name of the volume claim template, and so the prefix of every claim.
pub const VOLUME: &str = "spool";
/// Where the volume is mounted in the pods and drain Jobs.
pub const SPOOL_DIR: &str = "/var/lib/capture/spool";
/// The smallest volume the schema admits: 90% of it, less the filesystem
/// reserve, still holds capture's 16 MiB segments.
pub const MIN_BYTES: u64 = 64 << 20;
/// The largest volume the schema admits.
pub const MAX_BYTES: u64 = 1 << 50;
/// Room left for the filesystem's own structures (journal, inode tables),
/// which weigh most on small volumes.
const FILESYSTEM_RESERVE: u64 = 8 << 20;
/// Label of the drain Jobs and their pods, naming the claim they drain.
/// Their pods carry a `app.kubernetes.io/name` of their own, so that
/// neither the Service nor the StatefulSet selects them.
pub const DRAIN_COMPONENT: &str = "spool-drain";

/// What was wrong with `spec.spool` (the schema refuses the same values;
/// the reconciler reports these as a condition and leaves the pods alone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// `size` is not a quantity of bytes.
    #[error("spool.size {0:?} is not a quantity of bytes like 10Gi")]
    Size(String),
    /// `size` is outside the bounds.
    #[error("spool.size {0:?} must be from 64Mi to 1Pi")]
    SizeRange(String),
    /// `ackDeadline` is not a duration capture takes.
    #[error("spool.ackDeadline {0:?} must be a duration in ms or s, above 0s and under 20s")]
    AckDeadline(String),
}

/// `spec.spool`, checked, with what the pods are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spool {
    /// The claims' storage request, as the spec gives it.
    pub size: String,
    /// Capture's `--spool-max-bytes`.
    pub max_bytes: u64,
    /// StorageClass of the claims.
    pub storage_class_name: Option<String>,
    /// Access mode of the claims.
    pub access_mode: SpoolAccessMode,
    /// Capture's `--spool-ack-deadline`, when given.
    pub ack_deadline: Option<String>,
}

impl Spool {
    /// Checks `spec`, as the schema does, and works out capture's limit.
    pub fn from_spec(spec: &SpoolSpec) -> Result<Spool, SpoolError> {
        let bytes =
            quantity_bytes(&spec.size).ok_or_else(|| SpoolError::Size(spec.size.clone()))?;
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
            return Err(SpoolError::SizeRange(spec.size.clone()));
        }
        if let Some(deadline) = &spec.ack_deadline {
            let ok = humantime::parse_duration(deadline)
                .is_ok_and(|d| !d.is_zero() && d < std::time::Duration::from_secs(20))
                && (deadline.ends_with("ms") || deadline.ends_with('s'))
                && deadline
                    .trim_end_matches(['m', 's'])
                    .bytes()
                    .all(|b| b.is_ascii_digit());
            if !ok {
                return Err(SpoolError::AckDeadline(deadline.clone()));
            }
        }
        Ok(Spool {
            size: spec.size.clone(),
            max_bytes: max_bytes(bytes),
            storage_class_name: spec.storage_class_name.clone(),
            access_mode: spec.access_mode,
            ack_deadline: spec.ack_deadline.clone(),
        })
    }
}

/// Capture's `--spool-max-bytes` on a volume of `size` bytes: 90% of it,
/// less a reserve for the filesystem, so the spool fills before the
/// filesystem does (capture then answers 503, as without a spool, instead
/// of failing its writes).
pub fn max_bytes(size: u64) -> u64 {
    (size / 10 * 9).saturating_sub(FILESYSTEM_RESERVE)
}

/// The bytes of a Kubernetes quantity of the forms the schema admits
/// (`10Gi`, `1.5G`, `500000000`), rounded down; `None` for anything else.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty()
        || (number.contains('.') && fraction.is_empty())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 20
        || fraction.len() > 18
    {
        return None;
    }
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    let bytes = digits.checked_mul(multiplier)? / scale;
    u64::try_from(bytes).ok()
}

/// The claim the StatefulSet `name` makes for its pod `ordinal`.
pub fn claim_name(name: &str, ordinal: u32) -> String {
    format!("{VOLUME}-{name}-{ordinal}")
}

/// The ordinal of a claim of the StatefulSet `name`, from the claim's
/// name; `None` for any other claim.
pub fn ordinal(name: &str, claim: &str) -> Option<u32> {
    let digits = claim
        .strip_prefix(VOLUME)?
        .strip_prefix('-')?
        .strip_prefix(name)?
        .strip_prefix('-')?;
    // `spool-a-b-0` is `a-b`'s, not `a`'s: all digits, no sign, no leading
    // zero (the StatefulSet never writes one).
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// The StatefulSet's pod of `ordinal`.
pub fn pod_name(name: &str, ordinal: u32) -> String {
    format!("{name}-{ordinal}")
}

/// The drain Job of `claim`.
pub fn job_name(claim: &str) -> String {
    format!("{claim}-drain")
}

/// The claim a drain Job drains, from its name.
pub fn job_claim(job: &str) -> Option<&str> {
    job.strip_suffix("-drain")
}

/// Labels of the claims of CaptureDeployment `name` (the volume claim
/// template's; the StatefulSet adds its selector's, which are among them).
pub fn claim_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = crate::manifest::labels(name);
    labels.insert("app.kubernetes.io/component".into(), VOLUME.into());
    labels
}

/// Labels of the drain Jobs of CaptureDeployment `name` and their pods:
/// the operator's, with a name of their own so that nothing selecting the
/// capture pods (Service, StatefulSet, PodDisruptionBudget) selects them.
pub fn drain_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = crate::manifest::labels(name);
    labels.insert(
        "app.kubernetes.io/name".into(),
        "capture-spool-drain".into(),
    );
    labels.insert("app.kubernetes.io/component".into(), DRAIN_COMPONENT.into());
    labels
}

/// A label selector (`k=v,k=v`) matching exactly `labels`.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A spool claim as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Its name, `spool-NAME-N`.
    pub name: String,
    /// `N`.
    pub ordinal: u32,
    /// Its storage request, in bytes, when readable: the drain Job's
    /// `--spool-max-bytes` (the spec may no longer say).
    pub size_bytes: Option<u64>,
    /// Being deleted already.
    pub deleting: bool,
}

/// Where a drain Job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Not finished (pending, running, retrying a failed pod).
    Running,
    /// Its `Complete` condition: the volume is empty.
    Succeeded,
    /// Its `Failed` condition: out of retries or past its deadline (Kafka
    /// down all along, say). The volume keeps what it held.
    Failed,
}

/// A drain Job as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainJob {
    /// Its name, `CLAIM-drain`.
    pub name: String,
    /// Where it is.
    pub state: JobState,
}

/// What is known of a claim whose ordinal is no longer wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// Its pod still exists (replaying its spool on SIGTERM): the volume is
    /// left to it.
    PodStopping,
    /// Its drain Job runs (or is created now).
    Draining,
    /// Its drain Job failed; it is deleted now and made again next time.
    DrainFailed,
    /// Its drain Job succeeded: the claim is deleted now, then the Job.
    Drained,
}

/// What to do about the spool volumes of one CaptureDeployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrainPlan {
    /// Claims to drain: a Job to create for each.
    pub create_jobs: Vec<Claim>,
    /// Claims to delete, drained (before their Jobs).
    pub delete_claims: Vec<String>,
    /// Jobs to delete: succeeded (after their claim), failed (to be made
    /// again), of a claim wanted again, or of a claim that is gone.
    pub delete_jobs: Vec<String>,
    /// Every claim not wanted by a pod and not yet deleted, with its state.
    pub volumes: BTreeMap<String, VolumeState>,
}

impl DrainPlan {
    /// Volumes still holding what they may hold: not drained yet.
    pub fn pending(&self) -> usize {
        self.volumes
            .values()
            .filter(|state| **state != VolumeState::Drained)
            .count()
    }

    /// The volumes whose drain failed.
    pub fn failed(&self) -> Vec<&str> {
        self.volumes
            .iter()
            .filter(|(_, state)| **state == VolumeState::DrainFailed)
            .map(|(claim, _)| claim.as_str())
            .collect()
    }

    /// Whether some volume waits for its pod to stop (nothing watched
    /// tells when it does).
    pub fn waiting_for_pods(&self) -> bool {
        self.volumes
            .values()
            .any(|s| *s == VolumeState::PodStopping)
    }
}

/// What becomes of the spool volumes of the CaptureDeployment `name`, whose
/// StatefulSet wants `replicas` pods (0 without spool), given its claims,
/// its drain Jobs and the pods that exist (by name).
///
/// A claim of an ordinal below `replicas` belongs to its pod: any drain Job
/// of it goes. Any other claim is drained: not while a pod of its ordinal
/// exists; then by a Job; deleted once the Job succeeded, the Job after it;
/// a failed Job is deleted, to be made again. A Job whose claim is gone is
/// deleted once finished.
pub fn plan(
    name: &str,
    replicas: i32,
    claims: &[Claim],
    jobs: &[DrainJob],
    pods: &BTreeSet<String>,
) -> DrainPlan {
    let wanted = u32::try_from(replicas).unwrap_or(0);
    let jobs: BTreeMap<&str, &DrainJob> = jobs
        .iter()
        .filter_map(|job| Some((job_claim(&job.name)?, job)))
        .collect();
    let mut plan = DrainPlan::default();
    for claim in claims {
        let job = jobs.get(claim.name.as_str());
        if claim.ordinal < wanted {
            // The pod of this ordinal has it (or is about to).
            if let Some(job) = job {
                plan.delete_jobs.push(job.name.clone());
            }
            continue;
        }
        if claim.deleting {
            if let Some(job) = job.filter(|job| job.state != JobState::Running) {
                plan.delete_jobs.push(job.name.clone());
            }
            continue;
        }
        let state = if pods.contains(&pod_name(name, claim.ordinal)) {
            VolumeState::PodStopping
        } else {
            match job.map(|job| job.state) {
                None => {
                    plan.create_jobs.push(claim.clone());
                    VolumeState::Draining
                }
                Some(JobState::Running) => VolumeState::Draining,
                Some(JobState::Succeeded) => {
                    plan.delete_claims.push(claim.name.clone());
                    plan.delete_jobs.push(job_name(&claim.name));
                    VolumeState::Drained
                }
                Some(JobState::Failed) => {
                    plan.delete_jobs.push(job_name(&claim.name));
                    VolumeState::DrainFailed
                }
            }
        };
        plan.volumes.insert(claim.name.clone(), state);
    }
    // Jobs of claims that are gone: done with, once finished.
    let claimed: BTreeSet<&str> = claims.iter().map(|c| c.name.as_str()).collect();
    for (claim, job) in &jobs {
        if !claimed.contains(claim) && job.state != JobState::Running {
            plan.delete_jobs.push(job.name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ordinal: u32) -> Claim {
        Claim {
            name: claim_name("capture", ordinal),
            ordinal,
            size_bytes: Some(10 << 30),
            deleting: false,
        }
    }

    fn job(ordinal: u32, state: JobState) -> DrainJob {
        DrainJob {
            name: job_name(&claim_name("capture", ordinal)),
            state,
        }
    }

    fn pods(ordinals: &[u32]) -> BTreeSet<String> {
        ordinals.iter().map(|n| pod_name("capture", *n)).collect()
    }

    fn names(claims: &[Claim]) -> Vec<&str> {
        claims.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn claims_of_wanted_ordinals_belong_to_their_pods() {
        let claims = [claim(0), claim(1), claim(2)];
        let plan = plan("capture", 3, &claims, &[], &pods(&[0, 1, 2]));
        assert_eq!(plan, DrainPlan::default());
        // Even while a pod is replaced (rolling update, eviction).
        let plan = plan_of(3, &claims, &[], &[0, 2]);
        assert_eq!(plan, DrainPlan::default());
    }

    fn plan_of(replicas: i32, claims: &[Claim], jobs: &[DrainJob], running: &[u32]) -> DrainPlan {
        plan("capture", replicas, claims, jobs, &pods(running))
    }

    #[test]
    fn a_scaled_away_volume_waits_for_its_pod_to_stop_then_gets_a_drain_job() {
        let claims = [claim(0), claim(1), claim(2), claim(3)];
        // Scaled from 4 to 2: pods 2 and 3 replay their spool on SIGTERM.
        let stopping = plan_of(2, &claims, &[], &[0, 1, 2, 3]);
        assert!(stopping.create_jobs.is_empty());
        assert_eq!(
            stopping.volumes,
            BTreeMap::from([
                ("spool-capture-2".to_owned(), VolumeState::PodStopping),
                ("spool-capture-3".to_owned(), VolumeState::PodStopping),
            ])
        );
        assert!(stopping.waiting_for_pods());
        assert_eq!(stopping.pending(), 2);
        // Pod 3 is gone, pod 2 not yet.
        let one = plan_of(2, &claims, &[], &[0, 1, 2]);
        assert_eq!(names(&one.create_jobs), ["spool-capture-3"]);
        assert_eq!(one.volumes["spool-capture-3"], VolumeState::Draining);
        assert!(one.delete_claims.is_empty() && one.delete_jobs.is_empty());
    }

    #[test]
    fn a_running_drain_is_left_to_run() {
        let claims = [claim(0), claim(1)];
        let plan = plan_of(1, &claims, &[job(1, JobState::Running)], &[0]);
        assert!(plan.create_jobs.is_empty());
        assert!(plan.delete_jobs.is_empty() && plan.delete_claims.is_empty());
        assert_eq!(plan.volumes["spool-capture-1"], VolumeState::Draining);
        assert!(!plan.waiting_for_pods());
    }

    #[test]
    fn a_drained_volume_is_deleted_before_its_job() {
        let claims = [claim(0), claim(1)];
        let plan = plan_of(1, &claims, &[job(1, JobState::Succeeded)], &[0]);
        assert_eq!(plan.delete_claims, ["spool-capture-1"]);
        assert_eq!(plan.delete_jobs, ["spool-capture-1-drain"]);
        assert!(plan.create_jobs.is_empty());
        assert_eq!(plan.volumes["spool-capture-1"], VolumeState::Drained);
        assert_eq!(plan.pending(), 0);
    }

    #[test]
    fn a_failed_drain_keeps_the_volume_and_is_made_again() {
        let claims = [claim(0), claim(1)];
        let failed = plan_of(1, &claims, &[job(1, JobState::Failed)], &[0]);
        assert!(
            failed.delete_claims.is_empty(),
            "the events stay on the volume"
        );
        assert_eq!(failed.delete_jobs, ["spool-capture-1-drain"]);
        assert!(
            failed.create_jobs.is_empty(),
            "not before the old one is gone"
        );
        assert_eq!(failed.failed(), ["spool-capture-1"]);
        assert_eq!(failed.pending(), 1);
        // Once it is gone: a new one.
        let again = plan_of(1, &claims, &[], &[0]);
        assert_eq!(names(&again.create_jobs), ["spool-capture-1"]);
    }

    #[test]
    fn a_volume_wanted_again_goes_back_to_its_pod_and_its_drain_job_goes() {
        let claims = [claim(0), claim(1), claim(2)];
        // Scaled down to 1, drains started, then up to 3 again.
        let jobs = [job(1, JobState::Running), job(2, JobState::Succeeded)];
        let plan = plan_of(3, &claims, &jobs, &[0, 1, 2]);
        assert!(plan.delete_claims.is_empty(), "the new pods use them");
        assert_eq!(
            plan.delete_jobs,
            ["spool-capture-1-drain", "spool-capture-2-drain"]
        );
        assert!(plan.create_jobs.is_empty());
        assert!(plan.volumes.is_empty());
    }

    #[test]
    fn without_a_spool_every_volume_drains_once_its_pod_is_gone() {
        let claims = [claim(0), claim(1)];
        let plan = plan_of(0, &claims, &[], &[]);
        assert_eq!(
            names(&plan.create_jobs),
            ["spool-capture-0", "spool-capture-1"]
        );
        assert_eq!(plan.pending(), 2);
        // A negative count (never from the API) wants no pod either.
        assert_eq!(plan_of(-1, &claims, &[], &[]).create_jobs.len(), 2);
    }

    #[test]
    fn a_job_whose_volume_is_gone_is_deleted_once_finished() {
        let claims = [claim(0)];
        let jobs = [
            job(4, JobState::Succeeded),
            job(5, JobState::Failed),
            job(6, JobState::Running),
        ];
        let plan = plan_of(1, &claims, &jobs, &[0]);
        assert_eq!(
            plan.delete_jobs,
            ["spool-capture-4-drain", "spool-capture-5-drain"]
        );
        assert!(plan.volumes.is_empty());
    }

    #[test]
    fn a_volume_being_deleted_is_left_alone() {
        let mut going = claim(1);
        going.deleting = true;
        let plan = plan_of(1, &[claim(0), going.clone()], &[], &[0]);
        assert_eq!(plan, DrainPlan::default());
        let plan = plan_of(1, &[claim(0), going], &[job(1, JobState::Succeeded)], &[0]);
        assert_eq!(plan.delete_jobs, ["spool-capture-1-drain"]);
        assert!(plan.delete_claims.is_empty() && plan.create_jobs.is_empty());
    }

    #[test]
    fn ordinals_come_from_the_claims_of_this_deployment_only() {
        assert_eq!(ordinal("capture", "spool-capture-0"), Some(0));
        assert_eq!(ordinal("capture", "spool-capture-12"), Some(12));
        assert_eq!(ordinal("capture", "spool-capture-1-0"), None, "capture-1's");
        assert_eq!(ordinal("capture-1", "spool-capture-1-0"), Some(0));
        for other in [
            "spool-capture-",
            "spool-capture-x",
            "spool-capture-01",
            "spool-capture-+1",
            "data-capture-0",
            "spool-capturex-0",
            "spool-capture",
        ] {
            assert_eq!(ordinal("capture", other), None, "{other}");
        }
        assert_eq!(
            job_claim(&job_name("spool-capture-3")),
            Some("spool-capture-3")
        );
        assert_eq!(claim_name("capture", 3), "spool-capture-3");
    }

    #[test]
    fn quantities_read_as_bytes_the_way_kubernetes_reads_them() {
        for (text, bytes) in [
            ("10Gi", 10 << 30),
            ("64Mi", 64 << 20),
            ("1.5Gi", 3 << 29),
            ("500M", 500_000_000),
            ("2k", 2_000),
            ("1Pi", 1 << 50),
            ("68719476736", 1 << 36),
            ("0.5Ki", 512),
        ] {
            assert_eq!(quantity_bytes(text), Some(bytes), "{text}");
        }
        for text in [
            "", "Gi", "1.Gi", ".5Gi", "10 Gi", "10GB", "1e9", "-1Gi", "100m", "1..5Gi",
        ] {
            assert_eq!(quantity_bytes(text), None, "{text:?}");
        }
        assert_eq!(quantity_bytes("99999999999999999999Ei"), None, "too large");
    }

    #[test]
    fn the_spool_fills_before_the_filesystem_does() {
        let spool = |size: &str| {
            Spool::from_spec(&SpoolSpec {
                size: size.into(),
                storage_class_name: None,
                access_mode: SpoolAccessMode::default(),
                ack_deadline: None,
            })
        };
        let ten = spool("10Gi").expect("valid");
        assert_eq!(ten.max_bytes, (10 << 30) / 10 * 9 - (8 << 20));
        assert!(ten.max_bytes * 100 / (10 << 30) >= 89);
        // The smallest still holds capture's 16 MiB segments, with room.
        let small = spool("64Mi").expect("valid");
        assert!(small.max_bytes >= 3 * (16 << 20), "{}", small.max_bytes);
        assert!(small.max_bytes < 64 << 20);
        assert_eq!(spool("63Mi"), Err(SpoolError::SizeRange("63Mi".into())));
        assert_eq!(spool("2Pi"), Err(SpoolError::SizeRange("2Pi".into())));
        assert_eq!(spool("ten"), Err(SpoolError::Size("ten".into())));
        assert!(
            spool("ten")
                .expect_err("refused")
                .to_string()
                .starts_with("spool.size")
        );
    }

    #[test]
    fn the_ack_deadline_is_one_capture_takes() {
        let spool = |deadline: &str| {
            Spool::from_spec(&SpoolSpec {
                size: "1Gi".into(),
                storage_class_name: None,
                access_mode: SpoolAccessMode::default(),
                ack_deadline: Some(deadline.into()),
            })
        };
        for ok in ["3s", "1500ms", "19s", "19999ms"] {
            assert!(spool(ok).is_ok(), "{ok}");
        }
        for bad in ["0s", "20s", "1m", "3", "2.5s", "0ms", "1h"] {
            assert_eq!(
                spool(bad),
                Err(SpoolError::AckDeadline(bad.into())),
                "{bad}"
            );
        }
    }
}
