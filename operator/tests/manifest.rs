//! What the operator renders for a CaptureDeployment, checked without an API
//! server, and the pods' settings parsed by capture's own configuration
//! loader: what the operator writes, capture accepts.

use std::collections::BTreeMap;

use clap::CommandFactory;
use k8s_openapi::api::core::v1::EnvVar;
use operator::crd::CaptureDeployment;
use operator::manifest;
use serde_json::json;

fn cd(spec: serde_json::Value) -> CaptureDeployment {
    serde_json::from_value(json!({
        "apiVersion": "capture.dev/v1alpha1",
        "kind": "CaptureDeployment",
        "metadata": {"name": "capture", "namespace": "analytics", "uid": "1d0c0f5e-0000-4000-8000-000000000001"},
        "spec": spec,
    }))
    .expect("a CaptureDeployment")
}

fn realistic() -> serde_json::Value {
    json!({
        "image": "ghcr.io/example/capture:0.1.0",
        "kafka": {
            "brokers": ["kafka-0.kafka:9092", "kafka-1.kafka:9092"],
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": {"name": "kafka-user", "key": "username"},
                "password": {"name": "kafka-user", "key": "password"},
            },
            "topics": {"events": {"name": "events_v2", "partitions": 24}},
        },
        "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "keyPrefix": "capture:"},
        "policies": {"dedupTtl": "5m", "rateLimit": 1000, "rateLimitBurst": 5000, "rateLimitAction": "reject", "quotaAction": "drop", "redisFailureMode": "closed"},
        "logging": {"level": "capture=debug,info", "format": "json"},
        "runtimeConfig": {
            "tokens": {"deny": ["phc_retired"]},
            "signatures": {"tokens": ["phc_server_side"]},
            "plugins": [{"redact": {"keys": ["email"]}}, {"anonymizeIp": {}}],
        },
        "tls": {"secretName": "capture-tls"},
        "signing": {"secretName": "capture-signing"},
    })
}

/// Turns the pod's environment into capture flags (the credential files
/// get stand-ins, written as the kubelet would mount them) and loads them
/// with capture's own loader.
fn load_in_capture(env: &[EnvVar]) -> capture::Config {
    let command = capture::Config::command();
    let mut args = vec!["capture".to_owned()];
    let mounted =
        std::env::temp_dir().join(format!("credentials-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&mounted).expect("temp dir");
    // The allocator's setting is read by mimalloc, not by capture.
    for var in env.iter().filter(|v| v.name != "MIMALLOC_PURGE_DELAY") {
        let value = match (&var.value, &var.value_from) {
            // A credential file: a stand-in at the same name.
            (Some(value), _) if value.starts_with(manifest::CREDENTIALS_DIR) => {
                let file = mounted.join(value.rsplit('/').next().expect("a file name"));
                let content = if var.name == "CAPTURE_REDIS_URL_FILE" {
                    "redis://10.0.0.5:6379\n"
                } else {
                    "from-a-secret\n"
                };
                std::fs::write(&file, content).expect("write");
                file.to_str().expect("utf-8").to_owned()
            }
            (Some(value), _) => value.clone(),
            // The kubelet writes the limit in bytes.
            (None, Some(source)) if source.resource_field_ref.is_some() => "536870912".into(),
            (None, Some(_)) => "from-a-secret".into(),
            (None, None) => panic!("{} has neither value nor source", var.name),
        };
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|e| e == var.name.as_str()))
            .unwrap_or_else(|| panic!("capture has no setting read from {}", var.name));
        let flag = arg.get_long().expect("a long flag");
        // A switch reads `true` from its variable; as a flag it takes no value.
        if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            assert_eq!(value, "true", "{} is a switch", var.name);
            args.push(format!("--{flag}"));
        } else {
            args.push(format!("--{flag}={value}"));
        }
    }
    let config = capture::Config::load(args);
    let _ = std::fs::remove_dir_all(&mounted);
    config.unwrap_or_else(|err| panic!("capture refused the pod's settings: {err}"))
}

#[test]
fn the_pods_settings_parse_in_capture() {
    let cd = cd(realistic());
    let env = manifest::env(&cd.spec);
    let config = load_in_capture(&env);
    assert_eq!(
        config.kafka.brokers,
        ["kafka-0.kafka:9092", "kafka-1.kafka:9092"]
    );
    assert_eq!(&*config.topics().events, "events_v2");
    assert_eq!(
        &*config.topics().recordings,
        "clickhouse_session_recording_events"
    );
    let policy = config.policy();
    let redis = policy.redis.expect("redis policies on");
    assert_eq!(redis.key_prefix, "capture:");
    assert_eq!(redis.dedup_ttl, Some(std::time::Duration::from_secs(300)));
    assert_eq!((redis.rate_limit, redis.rate_burst), (1000.0, 5000));
    assert_eq!(redis.failure_mode, capture::policy::FailureMode::Closed);
    assert_eq!(policy.rate_action, capture::policy::RateAction::Reject);
    assert_eq!(config.http.address.port(), manifest::CONTAINER_PORT as u16);
    assert_eq!(
        config.runtime_config.as_deref(),
        Some(std::path::Path::new("/etc/capture/runtime/runtime.yaml"))
    );

    // The smallest spec parses too.
    let minimal = cd_minimal();
    load_in_capture(&manifest::env(&minimal.spec));
}

#[test]
fn capture_sizes_its_memory_from_the_pods_limit_when_it_has_one() {
    let source = |cd: &CaptureDeployment| {
        manifest::env(&cd.spec)
            .into_iter()
            .find(|v| v.name == "CAPTURE_MEMORY_LIMIT")
            .and_then(|v| v.value_from)
            .and_then(|s| s.resource_field_ref)
    };
    // The default resources have a 512Mi limit.
    let field = source(&cd_minimal()).expect("from the pod's limit");
    assert_eq!(field.resource, "limits.memory");
    let config = load_in_capture(&manifest::env(&cd_minimal().spec));
    assert_eq!(config.memory.limit(), 512 << 20);
    assert_eq!(config.memory.request_budget(), (512 << 20) / 10 * 3);
    assert_eq!(
        config.kafka.queue_kbytes.map(|k| k.get()),
        Some((512 << 20) / 5 / 1024)
    );
    let purge = manifest::env(&cd_minimal().spec)
        .into_iter()
        .find(|v| v.name == "MIMALLOC_PURGE_DELAY")
        .and_then(|v| v.value);
    assert_eq!(
        purge.as_deref(),
        Some("1"),
        "freed memory returned promptly"
    );
    // Resources without a memory limit: capture reads its cgroup, or
    // assumes 512Mi.
    let unlimited = cd(json!({
        "image": "capture:dev",
        "kafka": {"brokers": ["kafka:9092"]},
        "resources": {"requests": {"memory": "256Mi"}},
    }));
    assert!(source(&unlimited).is_none());
}

fn cd_minimal() -> CaptureDeployment {
    cd(json!({"image": "capture:dev", "kafka": {"brokers": ["kafka:9092"]}}))
}

#[test]
fn credentials_reach_the_pods_as_files_of_their_secret_keys_never_as_variables() {
    let mut spec = realistic();
    // The password in a Secret of its own: two projections, one volume.
    spec["kafka"]["sasl"]["password"] = json!({"name": "kafka-password", "key": "pw"});
    let object = cd(spec);
    let env = manifest::env(&object.spec);
    for var in &env {
        assert!(
            var.value_from
                .as_ref()
                .is_none_or(|s| s.secret_key_ref.is_none()),
            "{} comes from a Secret as a variable",
            var.name
        );
    }
    for name in [
        "CAPTURE_REDIS_URL",
        "CAPTURE_KAFKA_SASL_USERNAME",
        "CAPTURE_KAFKA_SASL_PASSWORD",
    ] {
        assert!(env.iter().all(|v| v.name != name), "{name} is set");
    }
    let value = |name: &str| {
        env.iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(
        value("CAPTURE_KAFKA_SASL_USERNAME_FILE"),
        "/etc/capture/credentials/kafka-sasl-username"
    );
    assert_eq!(
        value("CAPTURE_KAFKA_SASL_PASSWORD_FILE"),
        "/etc/capture/credentials/kafka-sasl-password"
    );
    assert_eq!(
        value("CAPTURE_REDIS_URL_FILE"),
        "/etc/capture/credentials/redis-url"
    );

    // One projected volume with just those keys, readable by the pod's
    // group only, mounted read-only where the variables point.
    let deployment = manifest::deployment(&object, &BTreeMap::new());
    let pod = deployment.spec.expect("spec").template.spec.expect("pod");
    assert_eq!(
        pod.security_context.as_ref().and_then(|c| c.fs_group),
        Some(65_532)
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "credentials")
        .expect("the credentials volume");
    let projected = volume.projected.as_ref().expect("projected");
    assert_eq!(projected.default_mode, Some(0o440));
    let mut items: Vec<(String, String, String)> = Vec::new();
    for source in projected.sources.iter().flatten() {
        let secret = source.secret.as_ref().expect("Secret sources only");
        assert_eq!(secret.optional, Some(false));
        for item in secret.items.iter().flatten() {
            items.push((secret.name.clone(), item.key.clone(), item.path.clone()));
        }
    }
    items.sort();
    assert_eq!(
        items,
        [
            (
                "kafka-password".into(),
                "pw".into(),
                "kafka-sasl-password".into()
            ),
            (
                "kafka-user".into(),
                "username".into(),
                "kafka-sasl-username".into()
            ),
            ("redis".into(), "url".into(), "redis-url".into()),
        ]
    );
    let mount = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "credentials")
        .expect("mounted");
    assert_eq!(mount.mount_path, manifest::CREDENTIALS_DIR);
    assert_eq!(mount.read_only, Some(true));

    // No credentials, no volume.
    let minimal = manifest::deployment(&cd_minimal(), &BTreeMap::new());
    let pod = minimal.spec.expect("spec").template.spec.expect("pod");
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .all(|v| v.name != "credentials")
    );
    assert_eq!(
        manifest::referenced_secrets(&cd(realistic()).spec)
            .into_iter()
            .collect::<Vec<_>>(),
        ["kafka-user", "redis"]
    );
}

#[test]
fn the_deployment_is_locked_down_probed_and_owned() {
    let cd = cd(realistic());
    let deployment = manifest::deployment(&cd, &BTreeMap::new());
    let owner = &deployment
        .metadata
        .owner_references
        .as_ref()
        .expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("CaptureDeployment", "capture", Some(true))
    );
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(manifest::DEFAULT_REPLICAS));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/_readiness")
    );
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/_liveness")
    );
    let selector = spec.selector.match_labels.as_ref().expect("selector");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .expect("pod labels");
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the selector matches the pods"
    );
    assert!(manifest::autoscaler(&cd).is_none());
    let pdb = manifest::disruption_budget(&cd);
    assert!(pdb.spec.and_then(|s| s.max_unavailable).is_some());
    let service = manifest::service(&cd).spec.expect("service spec");
    assert_eq!(service.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(service.ports.expect("ports")[0].port, 80);
}

#[test]
fn autoscaling_leaves_replicas_to_the_autoscaler() {
    let mut spec = realistic();
    spec["autoscaling"] =
        json!({"minReplicas": 3, "maxReplicas": 12, "targetCpuUtilizationPercent": 60});
    let cd = cd(spec);
    let deployment = manifest::deployment(&cd, &BTreeMap::new());
    assert_eq!(deployment.spec.expect("spec").replicas, None);
    let hpa = manifest::autoscaler(&cd)
        .expect("an autoscaler")
        .spec
        .expect("spec");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 12));
    assert_eq!(hpa.scale_target_ref.name, "capture");
}

#[test]
fn the_config_map_holds_the_document_capture_parses_where_the_pods_read_it() {
    let cd = cd(realistic());
    let config = manifest::runtime_config(&cd.spec);
    let map = manifest::config_map(&cd, &config);
    let data = map.data.expect("data");
    let document = &data[manifest::RUNTIME_CONFIG_FILE];
    let parsed = capture::runtime_config::parse(document).expect("capture reads it");
    assert_eq!(parsed, config, "round trip");
    assert_eq!(parsed.version, 1, "the operator writes the version");
    assert_eq!(parsed.plugins.len(), 2);
    assert_eq!(
        map.metadata.annotations.expect("annotations")[manifest::CONFIG_HASH_ANNOTATION],
        parsed.hash()
    );
    assert_eq!(
        map.metadata.owner_references.expect("owned")[0].kind,
        "CaptureDeployment"
    );

    // The pods mount that ConfigMap where CAPTURE_RUNTIME_CONFIG points.
    let deployment = manifest::deployment(&cd, &BTreeMap::new());
    let pod = deployment.spec.expect("spec").template.spec.expect("pod");
    let volume = &pod.volumes.expect("volumes")[0];
    assert_eq!(
        volume.config_map.as_ref().expect("configMap volume").name,
        "capture"
    );
    let container = &pod.containers[0];
    let mount = &container.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(
        (mount.name.as_str(), mount.read_only),
        (volume.name.as_str(), Some(true))
    );
    let path = container
        .env
        .as_ref()
        .expect("env")
        .iter()
        .find(|v| v.name == "CAPTURE_RUNTIME_CONFIG")
        .and_then(|v| v.value.clone())
        .expect("CAPTURE_RUNTIME_CONFIG");
    assert_eq!(
        path,
        format!("{}/{}", mount.mount_path, manifest::RUNTIME_CONFIG_FILE)
    );

    // No runtimeConfig in the spec: the empty document.
    let minimal = manifest::runtime_config(&cd_minimal().spec);
    assert_eq!(minimal.to_yaml(), "version: 1\n");
}

#[test]
fn tls_and_signing_secrets_are_mounted_where_capture_reads_them_and_followed_not_rolled() {
    let cd = cd(realistic());
    let deployment = manifest::deployment(&cd, &BTreeMap::new());
    let pod = deployment.spec.expect("spec").template.spec.expect("pod");
    let container = &pod.containers[0];
    let mounts = container.volume_mounts.as_ref().expect("mounts");
    let volumes = pod.volumes.as_ref().expect("volumes");
    let mounted_secret = |secret: &str| {
        let volume = volumes
            .iter()
            .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
            .unwrap_or_else(|| panic!("a volume of Secret {secret}"));
        let mount = mounts
            .iter()
            .find(|m| m.name == volume.name)
            .expect("mounted");
        assert_eq!(mount.read_only, Some(true));
        mount.mount_path.clone()
    };
    let tls_dir = mounted_secret("capture-tls");
    let signing_dir = mounted_secret("capture-signing");

    // Capture reads the certificate and key inside the TLS mount.
    let config = load_in_capture(container.env.as_ref().expect("env"));
    let files = config.http.tls().expect("TLS on");
    assert_eq!(files.cert, std::path::Path::new(&tls_dir).join("tls.crt"));
    assert_eq!(files.key, std::path::Path::new(&tls_dir).join("tls.key"));
    // So kubelet probes over HTTPS.
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let scheme = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.scheme.as_deref());
        assert_eq!(scheme, Some("HTTPS"));
    }

    // The rendered document points signatures at the mounted Secret's key,
    // and capture accepts it.
    let document = manifest::runtime_config(&cd.spec).to_yaml();
    let parsed = capture::runtime_config::parse(&document).expect("capture reads it");
    assert_eq!(
        parsed.signatures.expect("signatures").secrets_file,
        format!("{signing_dir}/secrets.yaml")
    );

    // Capture follows both files, so their Secrets do not roll the pods.
    let rolled_by = manifest::referenced_secrets(&cd.spec);
    assert!(
        !rolled_by.contains("capture-tls") && !rolled_by.contains("capture-signing"),
        "{rolled_by:?}"
    );

    // Without tls: plain HTTP probes and no TLS settings.
    let plain = cd_minimal();
    let deployment = manifest::deployment(&plain, &BTreeMap::new());
    let container = &deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0];
    assert!(
        load_in_capture(container.env.as_ref().expect("env"))
            .http
            .tls()
            .is_none()
    );
    let scheme = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.scheme.clone());
    assert_eq!(scheme, None);
}

fn hash_of(cd: &CaptureDeployment, secrets: &BTreeMap<String, String>) -> String {
    manifest::deployment(cd, secrets)
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get(manifest::SETTINGS_HASH_ANNOTATION).cloned())
        .expect("settings hash annotation")
}

#[test]
fn settings_and_secret_changes_roll_the_pods_and_nothing_else_does() {
    let secrets = BTreeMap::from([
        ("redis".to_owned(), "100".to_owned()),
        ("kafka-user".to_owned(), "7".to_owned()),
    ]);
    let base = hash_of(&cd(realistic()), &secrets);
    assert_eq!(base, hash_of(&cd(realistic()), &secrets), "stable");

    let mut rotated = secrets.clone();
    rotated.insert("redis".into(), "101".into());
    assert_ne!(
        base,
        hash_of(&cd(realistic()), &rotated),
        "a changed Secret rolls the pods"
    );

    let mut image = realistic();
    image["image"] = json!("ghcr.io/example/capture:0.2.0");
    assert_ne!(base, hash_of(&cd(image), &secrets));
    let mut level = realistic();
    level["logging"]["level"] = json!("warn");
    assert_ne!(base, hash_of(&cd(level), &secrets));

    let mut scaled = realistic();
    scaled["replicas"] = json!(7);
    assert_eq!(
        base,
        hash_of(&cd(scaled), &secrets),
        "scaling does not restart pods"
    );
    let mut other_key = realistic();
    other_key["redis"]["urlSecretRef"]["key"] = json!("url-v2");
    assert_ne!(
        base,
        hash_of(&cd(other_key), &secrets),
        "another Secret key is another credential file: the pods roll"
    );

    let mut reconfigured = realistic();
    reconfigured["runtimeConfig"]["plugins"] = json!([{"sample": {"rate": 0.5}}]);
    assert_eq!(
        base,
        hash_of(&cd(reconfigured), &secrets),
        "the runtime config reaches the pods without a restart"
    );
}

/// `kubernetes-validate` from the test venv (`.ci/setup` installs it beside
/// the PostHog SDK), or `$KUBERNETES_VALIDATE`.
fn kubernetes_validate() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE") {
        return path.into();
    }
    let python = std::env::var_os("CAPTURE_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .expect("set CAPTURE_TEST_PYTHON (run .ci/test) or KUBERNETES_VALIDATE");
    python.with_file_name("kubernetes-validate")
}

#[test]
fn rendered_objects_and_crds_pass_the_kubernetes_schemas_strictly() {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/capturedeployment.yaml"),
    )
    .expect("example");
    let cd: CaptureDeployment = serde_yaml::from_str(&example).expect("parses");
    // The same with a spool: a StatefulSet, and the Job draining a volume.
    let mut spooled_example = cd.clone();
    spooled_example.spec.spool = Some(operator::crd::deployment::SpoolSpec {
        size: "10Gi".into(),
        storage_class_name: Some("fast-ssd".into()),
        access_mode: operator::crd::deployment::SpoolAccessMode::ReadWriteOncePod,
        ack_deadline: Some("3s".into()),
    });
    let dir = std::env::temp_dir().join(format!("manifests-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let secrets = BTreeMap::from([("redis-capture".to_owned(), "1".to_owned())]);
    let objects = [
        (
            "serviceaccount.yaml",
            serde_yaml::to_string(&manifest::service_account(&cd)),
        ),
        (
            "deployment.yaml",
            serde_yaml::to_string(&manifest::deployment(&cd, &secrets)),
        ),
        (
            "configmap.yaml",
            serde_yaml::to_string(&manifest::config_map(
                &cd,
                &manifest::runtime_config(&cd.spec),
            )),
        ),
        (
            "service.yaml",
            serde_yaml::to_string(&manifest::service(&cd)),
        ),
        (
            "hpa.yaml",
            serde_yaml::to_string(&manifest::autoscaler(&cd).expect("autoscaled")),
        ),
        (
            "pdb.yaml",
            serde_yaml::to_string(&manifest::disruption_budget(&cd)),
        ),
        (
            "networkpolicy.yaml",
            serde_yaml::to_string(&manifest::network_policy(&cd).expect("the example fences")),
        ),
        (
            "statefulset.yaml",
            serde_yaml::to_string(&manifest::stateful_set(
                &spooled_example,
                &spool_of(&spooled_example),
                &secrets,
            )),
        ),
        (
            "job.yaml",
            serde_yaml::to_string(&manifest::drain_job(
                &spooled_example,
                &operator::spool::Claim {
                    name: operator::spool::claim_name("capture", 2),
                    ordinal: 2,
                    size_bytes: Some(10 << 30),
                    deleting: false,
                },
            )),
        ),
    ];
    let mut files = Vec::new();
    for (name, yaml) in objects {
        let path = dir.join(name);
        std::fs::write(&path, yaml.expect("serializes")).expect("write");
        files.push(path);
    }
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    files.push(crds.join("capturedeployments.yaml"));
    files.push(crds.join("capturequotas.yaml"));
    let output = std::process::Command::new(kubernetes_validate())
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "kubernetes-validate refused:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The NetworkPolicy's rules as (ports, peers) pairs, ports as
/// `PROTOCOL/port`.
fn rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
            Option<&'a Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
        ),
    >,
) -> Vec<(Vec<String>, usize)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    rules
        .map(|(ports, peers)| {
            let ports = ports
                .into_iter()
                .flatten()
                .map(|p| {
                    let port = match p.port.as_ref().expect("a port") {
                        IntOrString::Int(n) => n.to_string(),
                        IntOrString::String(name) => name.clone(),
                    };
                    format!("{}/{port}", p.protocol.as_deref().unwrap_or("TCP"))
                })
                .collect();
            (ports, peers.map_or(0, Vec::len))
        })
        .collect()
}

#[test]
fn no_network_policy_unless_enabled() {
    assert!(manifest::network_policy(&cd_minimal()).is_none());
    let mut off = realistic();
    off["networkPolicy"] = json!({"enabled": false, "redisEgress": {"ports": [6379]}});
    assert!(manifest::network_policy(&cd(off)).is_none());
}

#[test]
fn the_network_policy_admits_the_capture_port_and_lets_out_dns_kafka_and_redis_only() {
    let mut spec = realistic();
    spec["kafka"]["brokers"] = json!([
        "kafka-0.kafka:9093",
        "kafka-1.kafka:9093",
        "kafka-2.kafka:9094"
    ]);
    spec["networkPolicy"] = json!({
        "enabled": true,
        "redisEgress": {"ports": [6380]},
    });
    let cd = cd(spec);
    let policy = manifest::network_policy(&cd).expect("enabled");
    assert_eq!(policy.metadata.name.as_deref(), Some("capture"));
    assert_eq!(
        policy.metadata.owner_references.as_ref().expect("owned")[0].kind,
        "CaptureDeployment"
    );
    let spec = policy.spec.expect("spec");
    assert_eq!(
        spec.pod_selector.and_then(|s| s.match_labels),
        Some(manifest::selector_labels("capture"))
    );
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    let ingress = spec.ingress.expect("ingress");
    assert_eq!(
        rules(ingress.iter().map(|r| (r.ports.as_ref(), r.from.as_ref()))),
        [(vec!["TCP/http".to_owned()], 0)],
        "the capture port, from anyone"
    );
    let egress = spec.egress.expect("egress");
    assert_eq!(
        rules(egress.iter().map(|r| (r.ports.as_ref(), r.to.as_ref()))),
        [
            (vec!["UDP/53".to_owned(), "TCP/53".to_owned()], 0),
            (vec!["TCP/9093".to_owned(), "TCP/9094".to_owned()], 0),
            (vec!["TCP/6380".to_owned()], 0),
        ],
        "DNS, the brokers' ports, the Redis port given; nothing else"
    );
}

#[test]
fn network_policy_peers_and_ports_come_from_the_spec_when_given() {
    let mut spec = realistic();
    let office = json!({"ipBlock": {"cidr": "203.0.113.0/24"}});
    let data =
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}}});
    spec["networkPolicy"] = json!({
        "enabled": true,
        "ingressFrom": [office, {"podSelector": {"matchLabels": {"app": "gateway"}}}],
        "kafkaEgress": {"to": [data], "ports": [9092, 9093]},
        "redisEgress": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [6379]},
    });
    let policy = manifest::network_policy(&cd(spec)).expect("enabled");
    let spec = policy.spec.expect("spec");
    let ingress = spec.ingress.expect("ingress");
    assert_eq!(
        rules(ingress.iter().map(|r| (r.ports.as_ref(), r.from.as_ref()))),
        [(vec!["TCP/http".to_owned()], 2)]
    );
    assert_eq!(
        ingress[0].from.as_ref().expect("from")[0]
            .ip_block
            .as_ref()
            .map(|b| b.cidr.as_str()),
        Some("203.0.113.0/24")
    );
    let egress = spec.egress.expect("egress");
    assert_eq!(
        rules(egress.iter().map(|r| (r.ports.as_ref(), r.to.as_ref()))),
        [
            (vec!["UDP/53".to_owned(), "TCP/53".to_owned()], 0),
            (vec!["TCP/9092".to_owned(), "TCP/9093".to_owned()], 1),
            (vec!["TCP/6379".to_owned()], 1),
        ]
    );
    // Without redis, no Redis rule even if one is given.
    let mut no_redis = realistic();
    no_redis.as_object_mut().expect("object").remove("redis");
    no_redis.as_object_mut().expect("object").remove("policies");
    no_redis["networkPolicy"] = json!({"enabled": true, "redisEgress": {"ports": [6379]}});
    let egress = manifest::network_policy(&cd(no_redis))
        .and_then(|p| p.spec)
        .and_then(|s| s.egress)
        .expect("egress");
    assert_eq!(egress.len(), 2, "DNS and Kafka only");
}

fn spooled(spool: serde_json::Value) -> CaptureDeployment {
    let mut spec = realistic();
    spec["spool"] = spool;
    cd(spec)
}

fn spool_of(cd: &CaptureDeployment) -> operator::spool::Spool {
    operator::spool::Spool::from_spec(cd.spec.spool.as_ref().expect("a spool")).expect("valid")
}

fn var(env: &[EnvVar], name: &str) -> Option<String> {
    env.iter()
        .find(|v| v.name == name)
        .and_then(|v| v.value.clone())
}

#[test]
fn the_spool_settings_parse_in_capture_with_room_left_on_the_volume() {
    let cd = spooled(json!({"size": "10Gi", "ackDeadline": "1500ms"}));
    let env = manifest::env(&cd.spec);
    let config = load_in_capture(&env);
    assert_eq!(
        config.spool.spool_dir.as_deref(),
        Some(std::path::Path::new(operator::spool::SPOOL_DIR))
    );
    let max = config.spool.spool_max_bytes as u64;
    assert!(
        max > (10u64 << 30) * 89 / 100 && max <= (10u64 << 30) * 9 / 10,
        "about 90% of the volume: {max}"
    );
    assert_eq!(
        config.spool.spool_ack_deadline,
        std::time::Duration::from_millis(1500)
    );
    assert!(!config.spool.drain_spool);
    // The shutdown budget leaves the spool time to drain, and the grace
    // period leaves the budget its time.
    assert_eq!(
        config.http.shutdown_timeout,
        std::time::Duration::from_secs(60)
    );
    let set = manifest::stateful_set(&cd, &spool_of(&cd), &BTreeMap::new());
    let grace = set
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.termination_grace_period_seconds)
        .expect("grace");
    assert!(
        std::time::Duration::from_secs(grace as u64)
            > config.http.shutdown_timeout + config.http.shutdown_delay,
        "{grace}s"
    );

    // The smallest volume still holds capture's segments.
    let small = spooled(json!({"size": "64Mi"}));
    let config = load_in_capture(&manifest::env(&small.spec));
    assert!(config.spool.spool_max_bytes >= config.spool.spool_segment_bytes);

    // Without a spool: nothing of it, and today's shutdown.
    let env = manifest::env(&cd_minimal().spec);
    assert!(env.iter().all(|v| !v.name.starts_with("CAPTURE_SPOOL")));
    assert_eq!(
        var(&env, "CAPTURE_SHUTDOWN_TIMEOUT").as_deref(),
        Some("25s")
    );
}

#[test]
fn a_spool_runs_the_same_pods_as_a_stateful_set_each_with_a_volume_of_its_own() {
    let plain = cd(realistic());
    let cd = spooled(json!({"size": "10Gi", "storageClassName": "fast-ssd"}));
    let set = manifest::stateful_set(&cd, &spool_of(&cd), &BTreeMap::new());
    let deployment = manifest::deployment(&plain, &BTreeMap::new());
    assert_eq!(
        set.metadata, deployment.metadata,
        "same name, labels, owner"
    );
    let spec = set.spec.expect("spec");
    let deployment = deployment.spec.expect("spec");
    assert_eq!(
        spec.selector, deployment.selector,
        "the Service selects both"
    );
    assert_eq!(spec.replicas, Some(manifest::DEFAULT_REPLICAS));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let retention = spec
        .persistent_volume_claim_retention_policy
        .expect("retention");
    assert_eq!(
        (
            retention.when_deleted.as_deref(),
            retention.when_scaled.as_deref()
        ),
        (Some("Retain"), Some("Retain")),
        "no claim goes with a pod; the operator drains them"
    );
    assert_eq!(spec.service_name, None, "no pod is addressed by name");

    let claims = spec.volume_claim_templates.expect("claim templates");
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("spool"));
    let labels = claim.metadata.labels.clone().expect("labels");
    assert_eq!(labels, operator::spool::claim_labels("capture"));
    let claim = claim.spec.as_ref().expect("claim spec");
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(claim.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
    assert_eq!(
        claim
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"]
            .0,
        "10Gi"
    );

    // The pod is the Deployment's, plus the volume and its settings, and a
    // longer grace period.
    let mut pod = spec.template.spec.expect("pod");
    let mut plain_pod = deployment.template.spec.expect("pod");
    let container = &mut pod.containers[0];
    let mount = container
        .volume_mounts
        .as_mut()
        .expect("mounts")
        .pop()
        .expect("the spool mount");
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        ("spool", operator::spool::SPOOL_DIR, None)
    );
    let env = container.env.take().expect("env");
    let plain_env = plain_pod.containers[0].env.take().expect("env");
    let extra: Vec<&str> = env
        .iter()
        .filter(|v| !plain_env.contains(v))
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        extra,
        [
            "CAPTURE_SHUTDOWN_TIMEOUT",
            "CAPTURE_SPOOL_DIR",
            "CAPTURE_SPOOL_MAX_BYTES"
        ]
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(70));
    plain_pod.termination_grace_period_seconds = Some(70);
    assert_eq!(pod, plain_pod);
    assert!(
        pod.volumes.iter().flatten().all(|v| v.name != "spool"),
        "the claim template provides it"
    );

    // Autoscaled: the autoscaler owns the StatefulSet's count.
    let mut spec = realistic();
    spec["spool"] = json!({"size": "10Gi", "accessMode": "ReadWriteOncePod"});
    spec["autoscaling"] = json!({"minReplicas": 2, "maxReplicas": 6});
    let scaled = self::cd(spec);
    let set = manifest::stateful_set(&scaled, &spool_of(&scaled), &BTreeMap::new());
    let set_spec = set.spec.expect("spec");
    assert_eq!(set_spec.replicas, None);
    assert_eq!(
        set_spec.volume_claim_templates.expect("claims")[0]
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone()),
        Some(vec!["ReadWriteOncePod".to_owned()])
    );
    let target = manifest::autoscaler(&scaled)
        .and_then(|hpa| hpa.spec)
        .expect("hpa")
        .scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("StatefulSet", "capture")
    );
}

#[test]
fn a_drain_job_runs_capture_on_the_volume_of_a_pod_that_is_gone_without_serving() {
    let cd = spooled(json!({"size": "10Gi", "ackDeadline": "2s"}));
    let claim = operator::spool::Claim {
        name: operator::spool::claim_name("capture", 3),
        ordinal: 3,
        size_bytes: Some(4 << 30),
        deleting: false,
    };
    let job = manifest::drain_job(&cd, &claim);
    assert_eq!(job.metadata.name.as_deref(), Some("spool-capture-3-drain"));
    let owner = &job.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("CaptureDeployment", Some(true))
    );
    let labels = job.metadata.labels.clone().expect("labels");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"], "capture-operator",
        "watched"
    );
    let spec = job.spec.expect("spec");
    assert_eq!(spec.backoff_limit, Some(manifest::DRAIN_BACKOFF_LIMIT));
    assert_eq!(
        spec.active_deadline_seconds,
        Some(manifest::DRAIN_DEADLINE_SECONDS)
    );
    // Nothing selecting the capture pods selects the drain.
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let selector = manifest::selector_labels("capture");
    assert!(
        !selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "{pod_labels:?}"
    );
    let pod = spec.template.spec.expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/example/capture:0.1.0")
    );
    assert!(container.ports.is_none(), "no HTTP");
    assert!(container.readiness_probe.is_none() && container.liveness_probe.is_none());
    let claim_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "spool")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the claim");
    assert_eq!(claim_volume.claim_name, "spool-capture-3");
    // The pods' own Secrets and settings, where the pods have them.
    let volumes: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        ["runtime-config", "tls", "signing", "credentials", "spool"]
    );
    let env = container.env.clone().expect("env");
    assert_eq!(var(&env, "CAPTURE_DRAIN_SPOOL").as_deref(), Some("true"));
    assert_eq!(
        var(&env, "CAPTURE_KAFKA_BROKERS"),
        var(&manifest::env(&cd.spec), "CAPTURE_KAFKA_BROKERS")
    );
    // Its limit from the claim's own size (the spec may have another, or
    // none).
    assert_eq!(
        var(&env, "CAPTURE_SPOOL_MAX_BYTES"),
        Some(operator::spool::max_bytes(4 << 30).to_string())
    );
    let config = load_in_capture(&env);
    assert!(config.spool.drain_spool);
    assert_eq!(
        config.spool.spool_dir.as_deref(),
        Some(std::path::Path::new(operator::spool::SPOOL_DIR))
    );

    // The spool removed from the spec: the volume still drains, with the
    // rest of the settings as they now are.
    let plain = cd_minimal();
    let job = manifest::drain_job(&plain, &claim);
    let env = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().expect("env"))
        .expect("pod");
    let config = load_in_capture(&env);
    assert!(config.spool.drain_spool);
    assert!(config.spool.spool_dir.is_some());
}
