//! The Helm chart in `charts/capture-operator`, checked with the real `helm`
//! and `kubectl` (`. .ci/setup` installs both and exports their paths).
//!
//! The chart lints strictly and renders objects that pass the Kubernetes
//! schemas; its values schema refuses unknown keys by name; it grants the
//! RBAC the operator needs and nothing more, cluster-wide or in one
//! namespace; its CRDs are the generated ones; its dashboard and alerts
//! query only metrics the code exports; and `kubectl apply --dry-run=client`
//! takes the CRDs and examples, against a stand-in for the API server's
//! discovery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_yaml::Value;

mod common;

const RELEASE: &str = "capture-operator";
const NAMESPACE: &str = "capture-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn chart() -> String {
    repo()
        .join("charts/capture-operator")
        .to_str()
        .expect("a UTF-8 path")
        .to_owned()
}

/// Every value set away from its default, every optional object on.
fn all_values() -> String {
    format!("{}/ci/all-values.yaml", chart())
}

/// A tool `.ci/setup` installs, from the variable it exports.
fn tool(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => path.into(),
        _ => panic!(
            "{var} is not set: run `. .ci/setup` first; it installs helm and kubectl and \
             exports CAPTURE_TEST_HELM and CAPTURE_TEST_KUBECTL"
        ),
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn helm(args: &[&str]) -> Run {
    let output = Command::new(tool("CAPTURE_TEST_HELM"))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run helm: {err}"));
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `helm template` of the chart: the objects, or helm's error output.
fn template(args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut all = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    all.extend_from_slice(args);
    let run = helm(&all);
    if run.ok {
        Ok(parse_documents(&run.stdout))
    } else {
        Err(run.stderr)
    }
}

fn render(args: &[&str]) -> Vec<Value> {
    template(args).unwrap_or_else(|err| panic!("helm template {args:?} failed:\n{err}"))
}

/// helm's error output for values the chart must refuse.
fn refused(args: &[&str]) -> String {
    match template(args) {
        Ok(_) => panic!("helm template {args:?} rendered; it should have failed"),
        Err(err) => err,
    }
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|err| panic!("a rendered document is not YAML: {err}\n{yaml}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn kind(object: &Value) -> &str {
    text(&object["kind"])
}

fn name(object: &Value) -> &str {
    text(&object["metadata"]["name"])
}

fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

fn one<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    match of_kind(objects, wanted)[..] {
        [object] => object,
        ref found => panic!("expected one {wanted}, found {}", found.len()),
    }
}

/// A string map (labels, selectors) as a BTreeMap.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (text(k).to_owned(), text(v).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

fn container(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// The container's environment: name to value, or to `fieldRef:<path>`.
fn env(objects: &[Value]) -> BTreeMap<String, String> {
    container(objects)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|var| {
            let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some(path) => format!("fieldRef:{path}"),
                None => text(&var["value"]).to_owned(),
            };
            (text(&var["name"]).to_owned(), value)
        })
        .collect()
}

/// Rules as (apiGroup, resource, verb) triples, one per permission.
fn permissions(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut all = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        assert!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "plain rules only: {rule:?}"
        );
        for group in rule["apiGroups"].as_sequence().expect("apiGroups") {
            for resource in rule["resources"].as_sequence().expect("resources") {
                for verb in rule["verbs"].as_sequence().expect("verbs") {
                    all.insert((
                        text(group).to_owned(),
                        text(resource).to_owned(),
                        text(verb).to_owned(),
                    ));
                }
            }
        }
    }
    all
}

fn triples(rules: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut all = BTreeSet::new();
    for (group, resources, verbs) in rules {
        for resource in *resources {
            for verb in *verbs {
                all.insert((
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                ));
            }
        }
    }
    all
}

/// What the operator may do where it watches: the whole grant, so that any
/// widening is a deliberate change here too.
fn watch_permissions() -> BTreeSet<(String, String, String)> {
    const WATCH_APPLY: &[&str] = &["list", "watch", "patch"];
    triples(&[
        (
            "capture.dev",
            &["capturedeployments"],
            &["get", "list", "watch", "patch"],
        ),
        ("capture.dev", &["capturequotas"], WATCH_APPLY),
        (
            "capture.dev",
            &["capturedeployments/status", "capturequotas/status"],
            &["patch"],
        ),
        (
            "capture.dev",
            &["capturedeployments/finalizers"],
            &["update"],
        ),
        (
            "",
            &["serviceaccounts", "services", "configmaps"],
            WATCH_APPLY,
        ),
        (
            "apps",
            &["deployments", "statefulsets"],
            &["list", "watch", "patch", "delete"],
        ),
        ("", &["persistentvolumeclaims"], &["list", "delete"]),
        ("batch", &["jobs"], &["list", "watch", "patch", "delete"]),
        ("policy", &["poddisruptionbudgets"], WATCH_APPLY),
        (
            "autoscaling",
            &["horizontalpodautoscalers"],
            &["get", "list", "watch", "patch", "delete"],
        ),
        (
            "networking.k8s.io",
            &["networkpolicies"],
            &["list", "watch", "patch", "delete"],
        ),
        ("", &["secrets"], &["get", "list", "watch"]),
        ("", &["pods"], &["list"]),
        ("events.k8s.io", &["events"], &["create", "patch"]),
    ])
}

fn lease_permissions() -> BTreeSet<(String, String, String)> {
    triples(&[(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "patch"],
    )])
}

/// The ServiceAccount the binding grants to.
fn assert_binds_the_operator(binding: &Value, role_kind: &str, role_name: &str, account: &str) {
    assert_eq!(text(&binding["roleRef"]["kind"]), role_kind);
    assert_eq!(text(&binding["roleRef"]["name"]), role_name);
    let subjects = binding["subjects"].as_sequence().expect("subjects");
    assert_eq!(subjects.len(), 1, "{binding:?}");
    assert_eq!(
        (
            text(&subjects[0]["kind"]),
            text(&subjects[0]["name"]),
            text(&subjects[0]["namespace"]),
        ),
        ("ServiceAccount", account, NAMESPACE)
    );
}

#[test]
fn lint_passes_strictly_with_defaults_and_with_every_feature() {
    let chart = chart();
    let all = all_values();
    for extra in [&[][..], &["-f", all.as_str()][..]] {
        let mut args = vec!["lint", "--strict", &chart];
        args.extend_from_slice(extra);
        let run = helm(&args);
        assert!(
            run.ok && run.stdout.contains("0 chart(s) failed"),
            "helm lint {extra:?} failed:\n{}{}",
            run.stdout,
            run.stderr
        );
    }
}

/// `kubernetes-validate` from the test venv (beside `CAPTURE_TEST_PYTHON`),
/// or `$KUBERNETES_VALIDATE`, as in `manifest.rs`.
fn kubernetes_validate() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE") {
        return path.into();
    }
    let python = std::env::var_os("CAPTURE_TEST_PYTHON")
        .map(PathBuf::from)
        .expect("set CAPTURE_TEST_PYTHON (run `. .ci/setup`) or KUBERNETES_VALIDATE");
    python.with_file_name("kubernetes-validate")
}

#[test]
fn rendered_objects_pass_the_kubernetes_schemas_strictly() {
    let all = all_values();
    let renders: [(&str, Vec<&str>); 3] = [
        ("defaults", vec!["--include-crds"]),
        ("all", vec!["--include-crds", "-f", &all]),
        (
            "namespaces",
            vec![
                "--set",
                "watchNamespaces={team-a,team-b}",
                "--set",
                "leaderElection.enabled=false",
            ],
        ),
    ];
    let dir = TempDir::new("chart-render");
    let mut files = Vec::new();
    let mut kinds = BTreeMap::new();
    for (label, args) in renders {
        let objects = render(&args);
        let mut rendered = BTreeSet::new();
        for (i, object) in objects.iter().enumerate() {
            assert!(
                !text(&object["apiVersion"]).is_empty() && !kind(object).is_empty(),
                "{label}: object {i} has no apiVersion or kind: {object:?}"
            );
            assert!(!name(object).is_empty(), "{label}: object {i} has no name");
            rendered.insert(kind(object).to_owned());
            // kubernetes-validate knows only Kubernetes' own kinds (and CRDs).
            if text(&object["apiVersion"]).starts_with("monitoring.coreos.com/") {
                continue;
            }
            let path = dir.0.join(format!("{label}-{i}.yaml"));
            let yaml = serde_yaml::to_string(object).expect("serializes");
            std::fs::write(&path, yaml).expect("write");
            files.push(path);
        }
        kinds.insert(label, rendered);
    }
    let names = |list: &[&str]| {
        list.iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>()
    };
    let base = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "CustomResourceDefinition",
    ];
    assert_eq!(
        kinds["defaults"],
        names(&[
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "CustomResourceDefinition",
        ])
    );
    let mut everything = base.to_vec();
    everything.extend([
        "ServiceMonitor",
        "PodMonitor",
        "ConfigMap",
        "PrometheusRule",
    ]);
    assert_eq!(kinds["all"], names(&everything));

    let output = Command::new(kubernetes_validate())
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        output.status.success(),
        "kubernetes-validate refused:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn unknown_or_invalid_values_are_refused_by_name() {
    for (args, words) in [
        (&["--set", "bogus=1"][..], &["bogus", "not allowed"][..]),
        (
            &["--set", "image.tag2=x"],
            &["image", "tag2", "not allowed"],
        ),
        (
            &["--set", "serviceMonitor.intervall=1m"],
            &["serviceMonitor", "intervall", "not allowed"],
        ),
        (&["--set", "logFormat=xml"], &["logFormat", "json", "text"]),
        (&["--set-string", "kafkaTimeout=10"], &["kafkaTimeout"]),
    ] {
        let err = refused(args);
        let lower = err.to_lowercase();
        for word in words {
            assert!(
                lower.contains(&word.to_lowercase()),
                "helm template {args:?}: the error does not name {word:?}:\n{err}"
            );
        }
    }
}

#[test]
fn several_replicas_need_leader_election() {
    let err = refused(&[
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(
        err.contains("more than one operator replica needs leader election"),
        "{err}"
    );
    let objects = render(&["--set", "replicaCount=3"]);
    assert_eq!(
        one(&objects, "Deployment")["spec"]["replicas"].as_i64(),
        Some(3)
    );
}

/// The Roles and RoleBindings of `objects` in `namespace`.
fn in_namespace<'a>(objects: &'a [Value], kind_wanted: &str, namespace: &str) -> Vec<&'a Value> {
    of_kind(objects, kind_wanted)
        .into_iter()
        .filter(|o| text(&o["metadata"]["namespace"]) == namespace)
        .collect()
}

#[test]
fn by_default_it_manages_the_release_namespace_with_roles_there_and_no_cluster_role() {
    let objects = render(&[]);
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let account = name(one(&objects, "ServiceAccount"));
    assert_eq!(
        one(&objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some(account)
    );
    // The operator's rules and the Lease's, both Roles in the release
    // namespace, each with its binding.
    let roles = in_namespace(&objects, "Role", NAMESPACE);
    assert_eq!(roles.len(), 2, "{roles:?}");
    let role = roles
        .iter()
        .find(|r| name(r) == RELEASE)
        .expect("the operator's Role");
    assert_eq!(permissions(role), watch_permissions());
    let lease_role = roles
        .iter()
        .find(|r| name(r) == format!("{RELEASE}-leader-election"))
        .expect("the Lease's Role");
    assert_eq!(permissions(lease_role), lease_permissions());
    let bindings = in_namespace(&objects, "RoleBinding", NAMESPACE);
    assert_eq!(bindings.len(), 2);
    for role in [role, lease_role] {
        let binding = bindings
            .iter()
            .find(|b| name(b) == name(role))
            .expect("a binding per Role");
        assert_binds_the_operator(binding, "Role", name(role), account);
    }

    let env = env(&objects);
    assert_eq!(env["OPERATOR_NAMESPACE"], NAMESPACE);
    assert_eq!(env["OPERATOR_LEADER_ELECTION"], "true");
    assert_eq!(env["OPERATOR_LEASE_NAME"], "capture-operator");
    assert_eq!(
        env["OPERATOR_LEASE_NAMESPACE"],
        "fieldRef:metadata.namespace"
    );
    assert_eq!(env["OPERATOR_IDENTITY"], "fieldRef:metadata.name");

    // Without leader election: no Lease access, and no overlap on rollout.
    let objects = render(&["--set", "leaderElection.enabled=false"]);
    assert_eq!(of_kind(&objects, "Role").len(), 1);
    assert_eq!(name(one(&objects, "Role")), RELEASE);
    let env = self::env(&objects);
    assert_eq!(env["OPERATOR_LEADER_ELECTION"], "false");
    assert!(
        !env.keys().any(|k| k.starts_with("OPERATOR_LEASE_")),
        "{env:?}"
    );
    assert_eq!(
        one(&objects, "Deployment")["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
}

#[test]
fn several_namespaces_get_a_role_each_and_the_lease_stays_home() {
    // watchNamespaces, with the older single watchNamespace merged in.
    let objects = render(&[
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "watchNamespace=team-c",
    ]);
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let account = name(one(&objects, "ServiceAccount"));
    for namespace in ["team-a", "team-b", "team-c"] {
        let roles = in_namespace(&objects, "Role", namespace);
        assert_eq!(roles.len(), 1, "one Role in {namespace}");
        assert_eq!(permissions(roles[0]), watch_permissions());
        let bindings = in_namespace(&objects, "RoleBinding", namespace);
        assert_eq!(bindings.len(), 1, "one RoleBinding in {namespace}");
        assert_binds_the_operator(bindings[0], "Role", name(roles[0]), account);
    }
    // The release namespace holds only the Lease's Role.
    let home = in_namespace(&objects, "Role", NAMESPACE);
    assert_eq!(home.len(), 1);
    assert_eq!(permissions(home[0]), lease_permissions());
    assert_eq!(of_kind(&objects, "Role").len(), 4);
    assert_eq!(env(&objects)["OPERATOR_NAMESPACE"], "team-a,team-b,team-c");

    // Each namespace is a Kubernetes name.
    let err = refused(&["--set", "watchNamespace=Team_A"]);
    assert!(err.contains("watchNamespace"), "{err}");
    let err = refused(&["--set", "watchNamespaces={Team_A}"]);
    assert!(err.contains("watchNamespaces"), "{err}");
}

#[test]
fn cluster_wide_is_an_opt_in_cluster_role_and_excludes_namespace_lists() {
    let objects = render(&["--set", "clusterWide=true"]);
    let account = name(one(&objects, "ServiceAccount"));
    let role = one(&objects, "ClusterRole");
    assert_eq!(permissions(role), watch_permissions());
    assert_binds_the_operator(
        one(&objects, "ClusterRoleBinding"),
        "ClusterRole",
        name(role),
        account,
    );
    // Only the Lease's Role remains namespaced.
    assert_eq!(permissions(one(&objects, "Role")), lease_permissions());
    let env = env(&objects);
    assert!(!env.contains_key("OPERATOR_NAMESPACE"), "{env:?}");

    for values in [
        "clusterWide=true,watchNamespaces={team-a}",
        "clusterWide=true,watchNamespace=team-a",
    ] {
        let err = refused(&["--set", values]);
        assert!(
            err.contains("clusterWide is true but watchNamespaces"),
            "{values}: {err}"
        );
    }
}

#[test]
fn the_operator_pod_is_locked_down_probed_and_configured() {
    let chart_yaml: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{}/Chart.yaml", chart())).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let app_version = text(&chart_yaml["appVersion"]);
    assert!(!app_version.is_empty());

    let objects = render(&[]);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    let pod = &deployment["spec"]["template"];
    let container = container(&objects);
    assert_eq!(
        text(&container["image"]),
        format!("ghcr.io/example/capture-operator:{app_version}")
    );
    for security in [
        &pod["spec"]["securityContext"],
        &container["securityContext"],
    ] {
        assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(security["runAsUser"].as_i64(), Some(65532));
        assert_eq!(text(&security["seccompProfile"]["type"]), "RuntimeDefault");
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        security["capabilities"]["drop"],
        serde_yaml::from_str::<Value>("[ALL]").expect("yaml")
    );

    let port = &container["ports"][0];
    assert_eq!(
        (text(&port["name"]), port["containerPort"].as_i64()),
        ("metrics", Some(8080))
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!((text(&get["path"]), text(&get["port"])), (path, "metrics"));
    }

    // The selector picks the pods; the Service picks them and names the port.
    let pod_labels = string_map(&pod["metadata"]["labels"]);
    assert!(is_subset(
        &string_map(&deployment["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    let service = one(&objects, "Service");
    assert!(is_subset(
        &string_map(&service["spec"]["selector"]),
        &pod_labels
    ));
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(
        (
            text(&service_port["name"]),
            service_port["port"].as_i64(),
            text(&service_port["targetPort"])
        ),
        ("metrics", Some(8080), "metrics")
    );

    let env = env(&objects);
    assert_eq!(env["OPERATOR_METRICS_ADDRESS"], "0.0.0.0:8080");
    assert_eq!(env["OPERATOR_KAFKA_TIMEOUT"], "10s");
    assert_eq!(env["OPERATOR_REDIS_TIMEOUT"], "5s");
    assert_eq!(env["OPERATOR_LOG_FORMAT"], "json");
    assert_eq!(env["OPERATOR_LOG_LEVEL"], "info");

    // Every variable the chart sets is one the binary reads.
    let help = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("--help")
        .output()
        .expect("run operator --help");
    // Joined into one line: clap wraps long help lines.
    let help = String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let all = all_values();
    let with_everything = render(&[
        "-f",
        &all,
        "--set",
        "clusterWide=false,watchNamespace=team-a",
    ]);
    for variable in env.keys().chain(self::env(&with_everything).keys()) {
        assert!(
            help.contains(&format!("[env: {variable}=")),
            "the chart sets {variable}, which `operator --help` does not list:\n{help}"
        );
    }

    // Values reach the pod.
    let objects = render(&["-f", &all]);
    let env = self::env(&objects);
    assert_eq!(env["OPERATOR_LOG_FORMAT"], "text");
    assert_eq!(env["OPERATOR_LOG_LEVEL"], "operator=debug,info");
    assert_eq!(env["OPERATOR_KAFKA_TIMEOUT"], "30s");
    assert_eq!(env["OPERATOR_REDIS_TIMEOUT"], "1500ms");
    assert_eq!(env["OPERATOR_LEASE_NAME"], "capture-operator-all");
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    assert_eq!(
        text(&self::container(&objects)["image"]),
        "registry.example.com/capture-operator:0.1.0-rc.1"
    );
    let pod_labels = string_map(&pod["metadata"]["labels"]);
    assert_eq!(pod_labels["example.com/tier"], "platform");
    assert!(is_subset(
        &string_map(&deployment["spec"]["selector"]["matchLabels"]),
        &pod_labels
    ));
    assert_eq!(
        string_map(&pod["metadata"]["annotations"])["example.com/team"],
        "analytics"
    );
    let spec = &pod["spec"];
    assert_eq!(text(&spec["serviceAccountName"]), "capture-operator-sa");
    assert_eq!(text(&spec["priorityClassName"]), "system-cluster-critical");
    assert_eq!(text(&spec["imagePullSecrets"][0]["name"]), "regcred");
    assert_eq!(
        string_map(&spec["nodeSelector"])["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(text(&spec["tolerations"][0]["key"]), "dedicated");
    assert!(spec["affinity"]["podAntiAffinity"].is_mapping());
    let account = one(&objects, "ServiceAccount");
    assert_eq!(name(account), "capture-operator-sa");
    assert!(
        string_map(&account["metadata"]["annotations"]).contains_key("eks.amazonaws.com/role-arn")
    );
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let yaml_files = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|file| file.ends_with(".yaml"))
            .collect()
    };
    let generated = repo().join("crds");
    let in_chart = PathBuf::from(chart()).join("crds");
    let files = yaml_files(&generated);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(yaml_files(&in_chart), files);
    for file in &files {
        let read = |dir: &Path| std::fs::read(dir.join(file)).expect("read CRD");
        assert!(
            read(&generated) == read(&in_chart),
            "charts/capture-operator/crds/{file} differs from crds/{file}: it must be the \
             symbolic link ../../../crds/{file}"
        );
    }

    // What helm itself reads from the chart.
    let run = helm(&["show", "crds", &chart()]);
    assert!(run.ok, "helm show crds failed:\n{}", run.stderr);
    let shown: BTreeMap<String, Value> = parse_documents(&run.stdout)
        .into_iter()
        .map(|crd| (name(&crd).to_owned(), crd))
        .collect();
    let expected: BTreeMap<String, Value> = files
        .iter()
        .map(|file| {
            let crd: Value = serde_yaml::from_str(
                &std::fs::read_to_string(generated.join(file)).expect("read CRD"),
            )
            .expect("CRD parses");
            (name(&crd).to_owned(), crd)
        })
        .collect();
    assert_eq!(shown, expected);
}

/// Metric names the code defines: string literals starting with `capture_`
/// or `operator_` in the sources of both crates.
fn exported_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, names: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).expect("read source");
                // Between quotes: the pieces that are whole metric names.
                names.extend(
                    source
                        .split('"')
                        .filter(|piece| {
                            (piece.starts_with("capture_") || piece.starts_with("operator_"))
                                && piece.chars().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
                                })
                        })
                        .map(str::to_owned),
                );
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(&repo().join("capture/src"), &mut names);
    walk(&repo().join("operator/src"), &mut names);
    names
}

/// The `capture_*` and `operator_*` series a PromQL expression reads, as
/// metric names (a histogram's `_bucket`, `_sum` and `_count` series, and a
/// summary's, belong to the metric without the suffix).
fn queried_metrics(expr: &str, exported: &BTreeSet<String>) -> Result<BTreeSet<String>, String> {
    let mut found = BTreeSet::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if !(word.starts_with("capture_") || word.starts_with("operator_")) {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| word.strip_suffix(suffix))
            .filter(|base| exported.contains(*base));
        match base {
            Some(base) => found.insert(base.to_owned()),
            None if exported.contains(word) => found.insert(word.to_owned()),
            None => {
                return Err(format!(
                    "{word} (in `{expr}`) is not a metric the code defines"
                ));
            }
        };
    }
    Ok(found)
}

/// Every string under an `expr` or `query` key, at any depth.
fn queries(json: &serde_json::Value, out: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push(q.clone());
                    }
                    _ => queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| queries(item, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_code_exports() {
    let exported = exported_metrics();
    assert!(
        exported.contains("capture_http_requests_total"),
        "{exported:?}"
    );
    assert!(
        exported.contains("operator_reconciles_total"),
        "{exported:?}"
    );

    let objects = render(&["--set", "dashboard.enabled=true"]);
    let config_map = one(&objects, "ConfigMap");
    assert_eq!(
        string_map(&config_map["metadata"]["labels"])["grafana_dashboard"],
        "1"
    );
    let json = text(&config_map["data"]["capture.json"]);
    let dashboard: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|err| panic!("dashboard JSON: {err}"));
    assert_eq!(dashboard["uid"], "capture-overview");

    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<_> = panels
        .iter()
        .map(|p| p["id"].as_u64().expect("panel id"))
        .collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{} has no query",
            panel["title"]
        );
    }

    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        used.extend(
            queried_metrics(expr, &exported).unwrap_or_else(|err| panic!("dashboard: {err}")),
        );
    }
    for wanted in [
        "capture_http_requests_total",
        "capture_http_request_duration_seconds",
        "capture_events_produced_total",
        "capture_events_dropped_total",
        "capture_sink_errors_total",
        "capture_sink_ack_duration_seconds",
        "capture_events_quota_limited_total",
        "capture_events_rate_limited_total",
        "capture_events_duplicate_total",
        "capture_redis_up",
        "capture_redis_errors_total",
        "operator_reconciles_total",
        "operator_reconcile_duration_seconds",
        "capture_spool_bytes",
        "capture_spool_max_bytes",
        "capture_spool_records",
        "capture_spool_oldest_record_age_seconds",
        "capture_spool_replayed_total",
        "capture_spool_appended_total",
        "capture_spool_corrupt_records_total",
        "capture_spool_late_acks_total",
    ] {
        assert!(
            used.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
    // The spool's panels, in a row of their own.
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Spool",
        "Spool bytes",
        "Spooled records",
        "Oldest spooled record",
        "Spool appends and replay",
        "Spool trouble",
    ] {
        assert!(titles.contains(wanted), "no {wanted:?} panel in {titles:?}");
    }
    // No two panels overlap on the grid.
    let mut cells = BTreeSet::new();
    for panel in panels {
        let grid = &panel["gridPos"];
        let at = |key: &str| grid[key].as_u64().expect("grid position");
        for x in at("x")..at("x") + at("w") {
            for y in at("y")..at("y") + at("h") {
                assert!(
                    cells.insert((x, y)),
                    "{} overlaps at ({x}, {y})",
                    panel["title"]
                );
            }
        }
    }

    // The ConfigMap carries the chart's file as it is, under the chosen label.
    let file = std::fs::read_to_string(format!("{}/dashboards/capture.json", chart()))
        .expect("dashboard file");
    assert_eq!(json.trim_end(), file.trim_end());
    let all = all_values();
    let objects = render(&["-f", &all]);
    let config_map = one(&objects, "ConfigMap");
    assert_eq!(text(&config_map["metadata"]["namespace"]), "monitoring");
    assert_eq!(
        string_map(&config_map["metadata"]["labels"])["grafana.example.com/dashboard"],
        "capture"
    );
}

#[test]
fn the_alerts_query_only_metrics_the_code_exports_and_are_documented() {
    let exported = exported_metrics();
    let all = all_values();
    let objects = render(&["-f", &all]);
    let rule = one(&objects, "PrometheusRule");
    assert_eq!(
        string_map(&rule["metadata"]["labels"])["release"],
        "prometheus"
    );
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rule["spec"]["groups"].as_sequence().expect("groups") {
        for alert in group["rules"].as_sequence().expect("rules") {
            let alert_name = text(&alert["alert"]);
            assert!(alerts.insert(alert_name.to_owned()), "{alert_name} twice");
            let expr = text(&alert["expr"]);
            assert!(!expr.is_empty(), "{alert_name} has no expr");
            used.extend(
                queried_metrics(expr, &exported)
                    .unwrap_or_else(|err| panic!("{alert_name}: {err}")),
            );
            assert!(
                ["critical", "warning", "info"].contains(&text(&alert["labels"]["severity"])),
                "{alert_name} has no severity"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    !text(&alert["annotations"][annotation]).is_empty(),
                    "{alert_name} has no {annotation}"
                );
            }
        }
    }
    for wanted in [
        "CaptureServerErrorsHigh",
        "CaptureNotReady",
        "CaptureSinkErrors",
        "CaptureRedisDown",
        "CaptureMemoryBudgetExhausted",
        "CaptureConnectionsAtCap",
        "CaptureOperatorReconcileErrors",
        "CaptureOperatorNoLeader",
        "CaptureOperatorDown",
        "CaptureSpoolFilling",
        "CaptureSpoolFull",
        "CaptureSpoolOld",
        "CaptureSpoolCorrupt",
    ] {
        assert!(alerts.contains(wanted), "no {wanted} alert in {alerts:?}");
    }
    for wanted in [
        "capture_ready",
        "capture_redis_up",
        "capture_memory_budget_refused_total",
        "capture_http_connections_at_cap_total",
        "operator_reconcile_errors_total",
        "capture_spool_bytes",
        "capture_spool_max_bytes",
        "capture_spool_full_total",
        "capture_spool_oldest_record_age_seconds",
        "capture_spool_corrupt_records_total",
    ] {
        assert!(used.contains(wanted), "no alert reads {wanted}");
    }
}

#[test]
fn the_monitors_select_what_they_scrape() {
    let all = all_values();
    let objects = render(&["-f", &all]);

    // The operator's metrics: ServiceMonitor -> Service -> pod port.
    let service = one(&objects, "Service");
    let monitor = one(&objects, "ServiceMonitor");
    assert!(is_subset(
        &string_map(&monitor["spec"]["selector"]["matchLabels"]),
        &string_map(&service["metadata"]["labels"])
    ));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        text(&endpoint["port"]),
        text(&service["spec"]["ports"][0]["name"])
    );
    assert_eq!(text(&endpoint["path"]), "/metrics");
    assert_eq!(text(&endpoint["interval"]), "15s");

    // Capture's metrics: the PodMonitor matches the pods the operator renders
    // and their named port (capture serves /metrics on its main listener).
    let example =
        std::fs::read_to_string(repo().join("examples/capturedeployment.yaml")).expect("example");
    let cd: operator::crd::CaptureDeployment = serde_yaml::from_str(&example).expect("parses");
    let capture = operator::manifest::deployment(&cd, &BTreeMap::new());
    let template = capture.spec.expect("spec").template;
    let capture_labels = template
        .metadata
        .and_then(|m| m.labels)
        .expect("pod labels");
    let capture_ports: Vec<String> = template.spec.expect("pod spec").containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    let pods = one(&objects, "PodMonitor");
    assert!(is_subset(
        &string_map(&pods["spec"]["selector"]["matchLabels"]),
        &capture_labels
    ));
    let endpoint = &pods["spec"]["podMetricsEndpoints"][0];
    assert!(
        capture_ports.iter().any(|p| p == text(&endpoint["port"])),
        "capture's pod has no port {:?}: {capture_ports:?}",
        endpoint["port"]
    );
    assert_eq!(text(&endpoint["path"]), "/metrics");
    assert_eq!(
        pods["spec"]["namespaceSelector"]["any"].as_bool(),
        Some(true)
    );

    assert_eq!(text(&endpoint["scheme"]), "http");

    let objects = render(&[
        "--set",
        "podMonitor.enabled=true,watchNamespaces={team-a,team-b}",
    ]);
    let pods = one(&objects, "PodMonitor");
    assert_eq!(
        pods["spec"]["namespaceSelector"]["matchNames"],
        serde_yaml::from_str::<Value>("[team-a, team-b]").expect("yaml")
    );
    // By default: the release namespace, which the operator manages.
    let objects = render(&["--set", "podMonitor.enabled=true"]);
    assert_eq!(
        one(&objects, "PodMonitor")["spec"]["namespaceSelector"]["matchNames"],
        serde_yaml::from_str::<Value>(&format!("[{NAMESPACE}]")).expect("yaml")
    );

    // Pods with spec.tls are scraped over HTTPS, their certificate unchecked.
    let objects = render(&["--set", "podMonitor.enabled=true,podMonitor.scheme=https"]);
    let endpoint = &one(&objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(text(&endpoint["scheme"]), "https");
    assert_eq!(
        endpoint["tlsConfig"]["insecureSkipVerify"].as_bool(),
        Some(true)
    );
}

// --- kubectl against a stand-in for the API server's discovery -------------

/// A request the stand-in saw: method, path and Accept header.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// The discovery documents: API group versions and their resources, the
/// built-in ones kubectl needs plus those of the repository's CRDs.
struct Discovery {
    /// Group name to its versions (the first is preferred).
    groups: BTreeMap<String, Vec<String>>,
    /// `group/version` (or `v1` for core) to its resource list.
    resources: BTreeMap<String, Vec<serde_json::Value>>,
}

impl Discovery {
    fn from_crds(crds: &[Value]) -> Self {
        let mut groups = BTreeMap::new();
        let mut resources: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        resources.insert(
            "v1".into(),
            vec![serde_json::json!({
                "name": "namespaces", "singularName": "namespace", "namespaced": false,
                "kind": "Namespace", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })],
        );
        groups.insert("apiextensions.k8s.io".to_owned(), vec!["v1".to_owned()]);
        resources.insert(
            "apiextensions.k8s.io/v1".into(),
            vec![serde_json::json!({
                "name": "customresourcedefinitions", "singularName": "customresourcedefinition",
                "namespaced": false, "kind": "CustomResourceDefinition", "shortNames": ["crd", "crds"],
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })],
        );
        for crd in crds {
            let spec = &crd["spec"];
            let group = text(&spec["group"]).to_owned();
            let names = &spec["names"];
            for version in spec["versions"].as_sequence().expect("versions") {
                if version["served"].as_bool() != Some(true) {
                    continue;
                }
                let version = text(&version["name"]).to_owned();
                let versions: &mut Vec<String> = groups.entry(group.clone()).or_default();
                if !versions.contains(&version) {
                    versions.push(version.clone());
                }
                let list = |key: &str| -> Vec<String> {
                    names[key]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .map(|v| text(v).to_owned())
                        .collect()
                };
                resources
                    .entry(format!("{group}/{version}"))
                    .or_default()
                    .push(serde_json::json!({
                        "name": text(&names["plural"]),
                        "singularName": text(&names["singular"]),
                        "namespaced": text(&spec["scope"]) == "Namespaced",
                        "kind": text(&names["kind"]),
                        "shortNames": list("shortNames"),
                        "categories": list("categories"),
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    }));
            }
        }
        Self { groups, resources }
    }

    /// The legacy (unaggregated) discovery document at `path`, if any.
    fn document(&self, path: &str) -> Option<serde_json::Value> {
        let group_version = |group: &str, version: &str| serde_json::json!({"groupVersion": format!("{group}/{version}"), "version": version});
        let resource_list = |group_version: &str| {
            self.resources.get(group_version).map(|resources| {
                serde_json::json!({
                    "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": group_version, "resources": resources,
                })
            })
        };
        match path {
            "/api" => Some(serde_json::json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            })),
            "/api/v1" => resource_list("v1"),
            "/apis" => Some(serde_json::json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": self.groups.iter().map(|(group, versions)| serde_json::json!({
                    "name": group,
                    "versions": versions.iter().map(|v| group_version(group, v)).collect::<Vec<_>>(),
                    "preferredVersion": group_version(group, &versions[0]),
                })).collect::<Vec<_>>(),
            })),
            _ => resource_list(path.strip_prefix("/apis/")?),
        }
    }
}

/// Serves discovery as plain `application/json` (so kubectl falls back from
/// aggregated discovery), and 404 for everything else, so that kubectl plans
/// to create every object. Records every request.
async fn stand_in(
    discovery: Arc<Discovery>,
    seen: Seen,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let discovery = Arc::clone(&discovery);
        let seen = Arc::clone(&seen);
        async move {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock()
                .expect("log")
                .push((method.to_string(), uri.path().to_owned(), accept));
            let (status, body) = match (method == Method::GET)
                .then(|| discovery.document(uri.path()))
                .flatten()
            {
                Some(document) => (StatusCode::OK, document),
                None => (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("{} not found", uri.path()),
                    }),
                ),
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, server)
}

fn read_documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| parse_documents(&std::fs::read_to_string(path).expect("read")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_the_crds_and_examples_in_a_client_dry_run() {
    let kubectl = tool("CAPTURE_TEST_KUBECTL");
    let crds = read_documents(&repo().join("crds"));
    let examples = read_documents(&repo().join("examples"));
    assert!(!examples.is_empty());

    let seen = Seen::default();
    let (address, server) =
        stand_in(Arc::new(Discovery::from_crds(&crds)), Arc::clone(&seen)).await;
    let dir = TempDir::new("kubectl");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: stand-in, cluster: {{server: 'http://{address}'}}}}]\n\
             users: [{{name: nobody, user: {{}}}}]\n\
             contexts: [{{name: stand-in, context: {{cluster: stand-in, user: nobody}}}}]\n\
             current-context: stand-in\n"
        ),
    )
    .expect("kubeconfig");

    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(&kubectl)
            .current_dir(repo())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(dir.0.join("cache"))
            .args([
                "--request-timeout=10s",
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-f",
                "crds/",
                "-f",
                "examples/",
                "-o",
                "name",
            ])
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl finished within a minute")
    .expect("run kubectl");
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let seen = seen.lock().expect("log").clone();
    assert!(
        output.status.success(),
        "kubectl apply --dry-run=client failed:\n{stdout}{stderr}\nrequests: {seen:#?}"
    );

    // `-o name` lists every object as <kind>.<group>/<name>.
    let listed: BTreeSet<&str> = stdout.lines().collect();
    let mut expected = BTreeSet::new();
    for object in crds.iter().chain(&examples) {
        let api_version = text(&object["apiVersion"]);
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        expected.insert(format!(
            "{}.{group}/{}",
            kind(object).to_lowercase(),
            name(object)
        ));
    }
    assert_eq!(
        listed,
        expected.iter().map(String::as_str).collect(),
        "stderr:\n{stderr}"
    );

    // A client dry run only reads; it looked each object up to plan a create.
    assert!(
        seen.iter().all(|(method, _, _)| method == "GET"),
        "kubectl wrote: {seen:#?}"
    );
    let plurals: BTreeMap<&str, &str> = crds
        .iter()
        .map(|crd| {
            let names = &crd["spec"]["names"];
            (text(&names["kind"]), text(&names["plural"]))
        })
        .collect();
    for object in &examples {
        let path = format!(
            "/apis/{}/namespaces/{}/{}/{}",
            text(&object["apiVersion"]),
            text(&object["metadata"]["namespace"]),
            plurals[kind(object)],
            name(object)
        );
        assert!(
            seen.iter().any(|(_, p, _)| *p == path),
            "kubectl did not look up {path}: {seen:#?}"
        );
    }
    // kubectl asked for aggregated discovery, took the plain answer, and read
    // each group version's resources the legacy way.
    assert!(
        seen.iter()
            .any(|(_, path, accept)| path == "/apis" && accept.contains("apidiscovery.k8s.io")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|(_, path, _)| path == "/apis/capture.dev/v1alpha1"),
        "{seen:#?}"
    );
}

/// What a recorded request asks RBAC for: (apiGroup, resource, verb) and
/// its namespace.
fn requested(
    request: &common::memory::Recorded,
) -> Option<((String, String, String), Option<String>)> {
    let parts = common::memory::parts(&request.path)?;
    let verb = match (request.method.as_str(), &parts.name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if request.query.split('&').any(|kv| kv == "watch=true") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        (other, _) => panic!("unexpected method {other}"),
    };
    let resource = match &parts.subresource {
        Some(sub) => format!("{}/{sub}", parts.resource),
        None => parts.resource.clone(),
    };
    Some(((parts.group, resource, verb.to_owned()), parts.namespace))
}

/// The user the chart's bindings name.
const OPERATOR_USER: &str = "system:serviceaccount:capture-system:capture-operator";

/// The rendered RBAC loaded into the e2e API server stand-in's store, whose
/// authorizer decides as a real API server does (RoleBindings count in
/// their own namespace only).
fn rbac_store(objects: &[Value], namespaces: &[&str]) -> e2e::store::Store {
    let mut store = e2e::store::Store::default();
    let namespace_kind = store.resource("", "v1", "namespaces").expect("namespaces");
    let namespaces: BTreeSet<&str> = namespaces.iter().copied().collect();
    for namespace in namespaces {
        if ["default", "kube-system", "kube-public"].contains(&namespace) {
            continue;
        }
        let key = e2e::store::Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: namespace.to_owned(),
        };
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        store
            .create(&namespace_kind, key, object)
            .expect("namespace");
    }
    for object in objects {
        let plural = match kind(object) {
            "Role" => "roles",
            "RoleBinding" => "rolebindings",
            "ClusterRole" => "clusterroles",
            "ClusterRoleBinding" => "clusterrolebindings",
            _ => continue,
        };
        let resource = store
            .resource("rbac.authorization.k8s.io", "v1", plural)
            .expect("rbac kinds are built in");
        let json: serde_json::Value = serde_json::to_value(object).expect("JSON");
        let key = e2e::store::Key {
            group: resource.group.clone(),
            plural: plural.into(),
            namespace: text(&object["metadata"]["namespace"]).to_owned(),
            name: name(object).to_owned(),
        };
        store
            .create(&resource, key, json)
            .expect("rendered RBAC loads");
    }
    store
}

/// Whether the chart's RBAC lets the operator do `verb` on `resource` of
/// `group` in `namespace` (`None`: cluster-wide).
fn allowed(
    store: &e2e::store::Store,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<(), String> {
    e2e::rbac::authorize(
        store,
        OPERATOR_USER,
        &e2e::rbac::Attributes {
            verb,
            group,
            resource: resource.to_owned(),
            namespace,
            name,
        },
    )
}

/// Runs the real operator (leader election, both controllers), configured
/// as the chart rendered with `values` configures it, against the in-memory
/// API until it has reconciled two CaptureDeployments and a CaptureQuota in
/// `managed`, then takes them through deletion. Every call it made must be
/// allowed by the rendered RBAC (as the e2e stand-in's authorizer decides),
/// and every grant must have been used in its own namespace (least
/// privilege), but for the one a call does not show. Returns the store of
/// the rendered RBAC and the calls, for checks of each mode.
async fn operator_calls_against_the_charts_rbac(
    values: &[&str],
    managed: &str,
    unmanaged: Option<&str>,
) -> (e2e::store::Store, Vec<common::memory::Recorded>) {
    use common::memory::MemoryApi;
    use operator::crd::CaptureQuota;
    use serde_json::json;
    use std::time::Duration;

    let objects = render(values);
    let mut namespaces = vec![NAMESPACE, managed];
    namespaces.extend(unmanaged);
    let store = rbac_store(&objects, &namespaces);
    // The operator as the chart's Deployment configures it.
    let watched: Vec<String> = env(&objects)
        .get("OPERATOR_NAMESPACE")
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default();

    let redis = common::redis::RedisServer::start();
    let broker = common::broker::broker();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let api = MemoryApi::default();
    let ns = format!("/namespaces/{managed}");
    let deployment_path = format!("/apis/capture.dev/v1alpha1{ns}/capturedeployments/capture");
    let quota_path = format!("/apis/capture.dev/v1alpha1{ns}/capturequotas/q");
    let topic = |kind: &str| json!({"name": format!("{kind}-{id}"), "partitions": 1, "replicationFactor": 1});
    api.insert(
        &deployment_path,
        json!({
            "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment",
            "metadata": {"name": "capture", "namespace": managed, "uid": "00000000-0000-4000-8000-0000000000cd", "generation": 1},
            "spec": {
                "image": "capture:dev",
                "kafka": {"brokers": [broker.address.clone()], "topics": {
                    "events": topic("events"), "recordings": topic("recordings"),
                    "historical": topic("historical"), "clientWarnings": topic("warnings"),
                    "exceptions": topic("exceptions"), "overflow": topic("overflow"),
                    "heatmaps": topic("heatmaps"), "dlq": topic("dlq"),
                }},
                "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            },
        }),
    );
    // A second one, autoscaled and fenced: its HPA and NetworkPolicy are
    // applied.
    let scaled_path = format!("/apis/capture.dev/v1alpha1{ns}/capturedeployments/scaled");
    let scaled_topic = |kind: &str| json!({"name": format!("{kind}-scaled-{id}"), "partitions": 1, "replicationFactor": 1});
    api.insert(
        &scaled_path,
        json!({
            "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment",
            "metadata": {"name": "scaled", "namespace": managed, "uid": "00000000-0000-4000-8000-0000000000ce", "generation": 1},
            "spec": {
                "image": "capture:dev",
                "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                "networkPolicy": {"enabled": true},
                "kafka": {"brokers": [broker.address.clone()], "topics": {
                    "events": scaled_topic("events"), "recordings": scaled_topic("recordings"),
                    "historical": scaled_topic("historical"), "clientWarnings": scaled_topic("warnings"),
                    "exceptions": scaled_topic("exceptions"), "overflow": scaled_topic("overflow"),
                    "heatmaps": scaled_topic("heatmaps"), "dlq": scaled_topic("dlq"),
                }},
            },
        }),
    );
    // A third, with a spool, serving from its StatefulSet: the Deployment
    // it had goes. Scaled from 2 to 1: the volume of pod 1 was drained by
    // its Job, so the volume goes, then the Job.
    let spooled_path = format!("/apis/capture.dev/v1alpha1{ns}/capturedeployments/spooled");
    let spooled_topic = |kind: &str| json!({"name": format!("{kind}-spooled-{id}"), "partitions": 1, "replicationFactor": 1});
    api.insert(
        &spooled_path,
        json!({
            "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment",
            "metadata": {"name": "spooled", "namespace": managed, "uid": "00000000-0000-4000-8000-0000000000d0", "generation": 1},
            "spec": {
                "image": "capture:dev",
                "replicas": 1,
                "spool": {"size": "1Gi"},
                "kafka": {"brokers": [broker.address.clone()], "topics": {
                    "events": spooled_topic("events"), "recordings": spooled_topic("recordings"),
                    "historical": spooled_topic("historical"), "clientWarnings": spooled_topic("warnings"),
                    "exceptions": spooled_topic("exceptions"), "overflow": spooled_topic("overflow"),
                    "heatmaps": spooled_topic("heatmaps"), "dlq": spooled_topic("dlq"),
                }},
            },
        }),
    );
    let ready = |replicas: i32| json!({"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas});
    api.insert(
        &format!("/apis/apps/v1{ns}/statefulsets/spooled"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "spooled", "namespace": managed, "generation": 1},
               "status": ready(1)}),
    );
    let claim = |deployment: &str, ordinal: u32| {
        let name = operator::spool::claim_name(deployment, ordinal);
        (
            format!("/api/v1{ns}/persistentvolumeclaims/{name}"),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": managed, "labels": operator::spool::claim_labels(deployment)},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        )
    };
    for (deployment, ordinal) in [("spooled", 0), ("spooled", 1), ("capture", 0)] {
        let (path, object) = claim(deployment, ordinal);
        api.insert(&path, object);
    }
    api.insert(
        &format!("/apis/batch/v1{ns}/jobs/spool-spooled-1-drain"),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "spool-spooled-1-drain", "namespace": managed, "labels": operator::spool::drain_labels("spooled")},
               "status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}),
    );
    // The first had a spool, now removed: its Deployment serves again, so
    // the StatefulSet goes, and its volume is drained by a Job.
    api.insert(
        &format!("/apis/apps/v1{ns}/deployments/capture"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "capture", "namespace": managed, "generation": 1},
               "status": ready(2)}),
    );
    api.insert(
        &format!("/apis/apps/v1{ns}/statefulsets/capture"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "capture", "namespace": managed, "generation": 1},
               "spec": {"replicas": 2}}),
    );
    api.insert(
        &format!("/api/v1{ns}/secrets/redis"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": managed},
               "data": {"url": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, redis.url())}}),
    );
    // Left from autoscaling that the spec no longer asks for: deleted.
    api.insert(
        &format!("/apis/autoscaling/v2{ns}/horizontalpodautoscalers/capture"),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "capture", "namespace": managed},
               "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "capture"}}}),
    );
    api.insert(
        &quota_path,
        json!({
            "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureQuota",
            "metadata": {"name": "q", "namespace": managed, "uid": "00000000-0000-4000-8000-00000000000a", "generation": 1,
                         "annotations": {"capture.dev/reset-usage": "now"}},
            "spec": {"deployment": "capture", "token": format!("phc_{id}"),
                     "limits": [{"eventType": "events", "limit": 10, "window": "1h"}]},
        }),
    );
    // Someone else's namespace: a Secret, and a CaptureDeployment reading
    // it, that a namespaced operator must never see.
    if let Some(other) = unmanaged {
        api.insert(
            &format!("/api/v1/namespaces/{other}/secrets/payroll"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "payroll", "namespace": other},
                   "data": {"url": "c2VjcmV0"}}),
        );
        api.insert(
            &format!("/apis/capture.dev/v1alpha1/namespaces/{other}/capturedeployments/theirs"),
            json!({
                "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureDeployment",
                "metadata": {"name": "theirs", "namespace": other, "uid": "00000000-0000-4000-8000-0000000000cf", "generation": 1},
                "spec": {"image": "capture:dev", "kafka": {"brokers": ["127.0.0.1:1"]},
                         "redis": {"urlSecretRef": {"name": "payroll", "key": "url"}}},
            }),
        );
    }

    let client = api.client();
    let running = common::running::start_in(client.clone(), watched);
    let reason = |path: &str| common::running::ready_reason(api.get(path));
    let state = || {
        format!(
            "quota {:?}, deployments {:?} {:?} {:?}",
            reason(&quota_path),
            reason(&deployment_path),
            reason(&scaled_path),
            reason(&spooled_path)
        )
    };
    common::running::wait_until(
        "both kinds reconciled",
        Duration::from_secs(60),
        || {
            reason(&quota_path).as_deref() == Some("Synced")
                && reason(&deployment_path).is_some()
                && reason(&scaled_path).is_some()
                && reason(&spooled_path).is_some()
        },
        state,
    )
    .await;
    // What the spool asked for was done.
    assert!(
        api.get(&format!(
            "/api/v1{ns}/persistentvolumeclaims/spool-spooled-1"
        ))
        .is_none()
            && api
                .get(&format!("/apis/batch/v1{ns}/jobs/spool-spooled-1-drain"))
                .is_none(),
        "the drained volume and its Job are gone"
    );
    assert!(
        api.get(&format!(
            "/api/v1{ns}/persistentvolumeclaims/spool-spooled-0"
        ))
        .is_some(),
        "pod 0 keeps its volume"
    );
    assert!(
        api.get(&format!("/apis/apps/v1{ns}/statefulsets/capture"))
            .is_none(),
        "the StatefulSet of the removed spool is gone"
    );
    assert!(
        api.get(&format!("/apis/batch/v1{ns}/jobs/spool-capture-0-drain"))
            .is_some(),
        "its volume is drained"
    );

    // Deletion: the watch brings it, the finalizers clean up, the objects go.
    for path in [&quota_path, &deployment_path] {
        api.update(path, |object| {
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        });
    }
    common::running::wait_until(
        "the finalizers to let go",
        Duration::from_secs(60),
        || api.get(&quota_path).is_none() && api.get(&deployment_path).is_none(),
        || {
            format!(
                "finalizers: quota {:?}, deployment {:?}",
                api.get(&quota_path)
                    .map(|o| o["metadata"]["finalizers"].clone()),
                api.get(&deployment_path)
                    .map(|o| o["metadata"]["finalizers"].clone()),
            )
        },
    )
    .await;
    running.stop().await;
    let events = operator::events::Events::new(client.clone());
    let quota: CaptureQuota = serde_json::from_value(json!({
        "apiVersion": "capture.dev/v1alpha1", "kind": "CaptureQuota",
        "metadata": {"name": "q", "namespace": managed, "uid": "00000000-0000-4000-8000-00000000000a"},
        "spec": {"deployment": "capture", "token": "phc_x", "limits": []},
    }))
    .expect("quota");
    // The same Event twice: the recorder patches the first into a series.
    for _ in 0..2 {
        events
            .normal(&quota, "Repeated", "Check", "the same note".into())
            .await;
    }

    let requests = api.requests();
    let mut denied = Vec::new();
    // (permission, namespace) pairs used; `None` for cluster-wide calls.
    let mut used = BTreeSet::new();
    for request in &requests {
        let Some(((group, resource, verb), namespace)) = requested(request) else {
            continue;
        };
        let name = common::memory::parts(&request.path).and_then(|p| p.name);
        if let Err(why) = allowed(
            &store,
            &verb,
            &group,
            &resource,
            namespace.as_deref(),
            name.as_deref(),
        ) {
            denied.push(format!(
                "{} {}?{}: {why}",
                request.method, request.path, request.query
            ));
        }
        used.insert(((group, resource, verb), namespace));
    }
    assert!(
        denied.is_empty(),
        "calls the chart's RBAC does not allow:\n{}",
        denied.join("\n")
    );
    // Checked by the API server on owner references with blockOwnerDeletion,
    // not a call of its own.
    let implied = (
        "capture.dev".to_owned(),
        "capturedeployments/finalizers".to_owned(),
        "update".to_owned(),
    );
    let mut unused = Vec::new();
    for role in of_kind(&objects, "Role")
        .into_iter()
        .chain(of_kind(&objects, "ClusterRole"))
    {
        let scope = match kind(role) {
            "Role" => Some(text(&role["metadata"]["namespace"]).to_owned()),
            _ => None,
        };
        for permission in permissions(role) {
            let used_here = used
                .iter()
                .any(|(p, namespace)| *p == permission && (scope.is_none() || *namespace == scope));
            if !used_here && permission != implied {
                unused.push((kind(role).to_owned(), scope.clone(), permission));
            }
        }
    }
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    assert!(
        used.len() > 20,
        "the operator made too few calls to prove anything: {used:?}"
    );
    (store, requests)
}

/// The chart's default: the operator manages the release namespace only,
/// with Roles there; it makes no cluster-wide call, touches nothing in
/// another namespace, and could not read a Secret there if it tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_by_default_every_call_is_granted_and_other_secrets_are_out_of_reach() {
    let objects = render(&[]);
    assert!(
        of_kind(&objects, "ClusterRole").is_empty()
            && of_kind(&objects, "ClusterRoleBinding").is_empty(),
        "no cluster-wide grant by default"
    );
    let elsewhere = "payroll";
    let (store, requests) =
        operator_calls_against_the_charts_rbac(&[], NAMESPACE, Some(elsewhere)).await;
    let outside: Vec<String> = requests
        .iter()
        .filter_map(|request| {
            let parts = common::memory::parts(&request.path)?;
            (parts.namespace.as_deref() != Some(NAMESPACE))
                .then(|| format!("{} {}?{}", request.method, request.path, request.query))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "calls outside the managed namespace: {outside:#?}"
    );
    // Whatever the operator might try: no Secret outside its namespace.
    for verb in ["get", "list", "watch"] {
        let name = (verb == "get").then_some("payroll");
        assert!(
            allowed(&store, verb, "", "secrets", Some(elsewhere), name).is_err(),
            "{verb} secrets in {elsewhere} must be refused"
        );
        assert!(
            allowed(&store, verb, "", "secrets", None, None).is_err(),
            "{verb} secrets cluster-wide must be refused"
        );
        assert!(allowed(&store, verb, "", "secrets", Some(NAMESPACE), name).is_ok());
    }
}

/// `clusterWide: true`: one ClusterRole, the same rules, every call
/// granted and every grant used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_every_call_is_granted_and_every_grant_is_used() {
    let (store, _) =
        operator_calls_against_the_charts_rbac(&["--set", "clusterWide=true"], "default", None)
            .await;
    assert!(allowed(&store, "list", "", "secrets", None, None).is_ok());
}
