//! The kinds the stand-in serves: the built-in ones the chart, the operator
//! and kubectl use, plus those of every CustomResourceDefinition created in
//! it. Also the discovery documents kubectl reads to map kinds to paths.

use serde_json::{Value, json};

/// One served resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: String,
    /// Version served.
    pub version: String,
    /// Plural, as in paths.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is a subresource (status changes only there).
    pub status: bool,
    /// Short names (`cdep`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `capture`).
    pub categories: Vec<String>,
    /// `additionalPrinterColumns` of a CRD version, for tables.
    pub columns: Vec<Value>,
    /// The `openAPIV3Schema` of a CRD version, validated on every write.
    pub schema: Option<Value>,
}

impl Resource {
    /// `group/version`, or `v1` for core.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn discovery_entry(&self) -> Vec<Value> {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// `(group, version, plural, kind, namespaced, status)` of the built-ins.
const BUILT_IN: &[(&str, &str, &str, &str, bool, bool)] = &[
    ("", "v1", "namespaces", "Namespace", false, true),
    ("", "v1", "configmaps", "ConfigMap", true, false),
    ("", "v1", "secrets", "Secret", true, false),
    ("", "v1", "services", "Service", true, true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, false),
    ("", "v1", "pods", "Pod", true, true),
    ("", "v1", "events", "Event", true, false),
    ("apps", "v1", "deployments", "Deployment", true, true),
    ("apps", "v1", "statefulsets", "StatefulSet", true, true),
    (
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        true,
    ),
    ("batch", "v1", "jobs", "Job", true, true),
    (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        false,
    ),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        true,
    ),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ("events.k8s.io", "v1", "events", "Event", true, false),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
];

/// Short names of the built-ins kubectl users type.
fn built_in_short_names(plural: &str) -> Vec<String> {
    let names: &[&str] = match plural {
        "namespaces" => &["ns"],
        "configmaps" => &["cm"],
        "services" => &["svc"],
        "serviceaccounts" => &["sa"],
        "pods" => &["po"],
        "deployments" => &["deploy"],
        "statefulsets" => &["sts"],
        "persistentvolumeclaims" => &["pvc"],
        "horizontalpodautoscalers" => &["hpa"],
        "poddisruptionbudgets" => &["pdb"],
        "networkpolicies" => &["netpol"],
        "customresourcedefinitions" => &["crd", "crds"],
        "events" => &["ev"],
        _ => &[],
    };
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The built-in resources.
pub fn built_in() -> Vec<Resource> {
    BUILT_IN
        .iter()
        .map(
            |&(group, version, plural, kind, namespaced, status)| Resource {
                group: group.into(),
                version: version.into(),
                plural: plural.into(),
                singular: kind.to_ascii_lowercase(),
                kind: kind.into(),
                namespaced,
                status,
                short_names: built_in_short_names(plural),
                categories: if matches!(
                    plural,
                    "pods" | "services" | "deployments" | "statefulsets" | "jobs"
                ) {
                    vec!["all".into()]
                } else {
                    Vec::new()
                },
                columns: Vec::new(),
                schema: None,
            },
        )
        .collect()
}

/// The resources a CustomResourceDefinition object defines (one per served
/// version).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|version| version["served"].as_bool() == Some(true))
        .map(|version| Resource {
            group: text(&spec["group"]),
            version: text(&version["name"]),
            plural: text(&names["plural"]),
            singular: text(&names["singular"]),
            kind: text(&names["kind"]),
            namespaced: spec["scope"] == "Namespaced",
            status: version["subresources"]["status"].is_object(),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            columns: version["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            schema: version["schema"]["openAPIV3Schema"]
                .is_object()
                .then(|| version["schema"]["openAPIV3Schema"].clone()),
        })
        .collect()
}

/// The legacy discovery document at `path` for `resources`, if any.
pub fn discovery(resources: &[Resource], path: &str) -> Option<Value> {
    let list = |group_version: &str| -> Option<Value> {
        let entries: Vec<Value> = resources
            .iter()
            .filter(|r| r.group_version() == group_version)
            .flat_map(Resource::discovery_entry)
            .collect();
        (!entries.is_empty()).then(|| {
            json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": entries,
            })
        })
    };
    match path {
        "/api" => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        "/api/v1" => list("v1"),
        "/apis" => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for resource in resources.iter().filter(|r| !r.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == resource.group) {
                    Some((_, versions)) if !versions.contains(&resource.version) => {
                        versions.push(resource.version.clone());
                    }
                    Some(_) => {}
                    None => groups.push((resource.group.clone(), vec![resource.version.clone()])),
                }
            }
            let version = |group: &str, version: &str| json!({"groupVersion": format!("{group}/{version}"), "version": version});
            Some(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": groups.iter().map(|(group, versions)| json!({
                    "name": group,
                    "versions": versions.iter().map(|v| version(group, v)).collect::<Vec<_>>(),
                    "preferredVersion": version(group, &versions[0]),
                })).collect::<Vec<_>>(),
            }))
        }
        "/version" => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-standin",
            "platform": "linux/amd64",
        })),
        _ => {
            let rest = path.strip_prefix("/apis/")?;
            if rest.contains('/') {
                list(rest)
            } else {
                // `/apis/<group>`: the group and its versions.
                let versions: Vec<&Resource> =
                    resources.iter().filter(|r| r.group == rest).collect();
                let first = versions.first()?;
                Some(json!({
                    "kind": "APIGroup", "apiVersion": "v1", "name": rest,
                    "versions": [{"groupVersion": first.group_version(), "version": first.version}],
                    "preferredVersion": {"groupVersion": first.group_version(), "version": first.version},
                }))
            }
        }
    }
}

/// The OpenAPI v3 documents kubectl reads to learn that the server
/// validates fields itself (`fieldValidation`): `/openapi/v3`, the index of
/// group versions, and per group version a document whose `PATCH`
/// operations carry the kind (`x-kubernetes-group-version-kind`) and the
/// `fieldValidation` query parameter. No schemas: the server validates.
pub fn openapi_v3(resources: &[Resource], path: &str) -> Option<Value> {
    let prefix = |r: &Resource| {
        if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        }
    };
    if path == "/openapi/v3" {
        let mut paths = serde_json::Map::new();
        for resource in resources {
            let gv = prefix(resource);
            paths.insert(
                gv.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", resources.len())}),
            );
        }
        return Some(json!({"paths": paths}));
    }
    let gv = path.strip_prefix("/openapi/v3/")?;
    let mut paths = serde_json::Map::new();
    for resource in resources.iter().filter(|r| prefix(r) == gv) {
        let gvk =
            json!({"group": resource.group, "version": resource.version, "kind": resource.kind});
        let parameter =
            |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string"}});
        let operation = |action: &str| {
            json!({
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": action,
                "parameters": [parameter("fieldValidation"), parameter("fieldManager"), parameter("dryRun")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let collection = if resource.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", resource.plural)
        } else {
            format!("/{gv}/{}", resource.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"post": operation("post"), "get": operation("list")}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"patch": operation("patch"), "put": operation("put"), "get": operation("get"), "delete": operation("delete")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (stand-in)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
