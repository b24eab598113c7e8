//! RBAC as the API server enforces it, for the users the stand-in knows by
//! bearer token (ServiceAccounts, `system:serviceaccount:<ns>:<name>`):
//! a request is allowed when a RoleBinding in its namespace, or a
//! ClusterRoleBinding, binds the account to a Role or ClusterRole with a
//! rule matching its API group, resource (with subresource), verb and,
//! for single objects, name. Requests without a known token are the
//! cluster admin (the person running kubectl).

use serde_json::Value;

use crate::store::Store;

/// What a request asks to do.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'a str,
    /// API group (`""` for core).
    pub group: &'a str,
    /// Plural, with `/<subresource>` when there is one.
    pub resource: String,
    /// The namespace, for namespaced requests.
    pub namespace: Option<&'a str>,
    /// The object's name, for requests about one object.
    pub name: Option<&'a str>,
}

fn strings(value: &Value) -> impl Iterator<Item = &str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn rule_allows(rule: &Value, request: &Attributes<'_>) -> bool {
    let any = |field: &str, wanted: &str| strings(&rule[field]).any(|v| v == "*" || v == wanted);
    let named = || {
        let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
        names.is_empty()
            || (!matches!(request.verb, "list" | "watch" | "create")
                && request.name.is_some_and(|n| names.contains(&n)))
    };
    any("apiGroups", request.group)
        && any("resources", &request.resource)
        && any("verbs", request.verb)
        && named()
}

/// Whether the ServiceAccount `user` may do `request`; `Err` says why not.
pub fn authorize(store: &Store, user: &str, request: &Attributes<'_>) -> Result<(), String> {
    let Some(account) = user.strip_prefix("system:serviceaccount:") else {
        return Err(format!("user {user:?} is not a ServiceAccount"));
    };
    let (account_namespace, account_name) = account.split_once(':').unwrap_or(("", account));
    let bound = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == account_name
                    && s["namespace"] == account_namespace
            })
    };
    let rbac = "rbac.authorization.k8s.io";
    let rules_of = |reference: &Value, namespace: &str| -> Vec<Value> {
        let (plural, namespace) = match reference["kind"].as_str() {
            Some("ClusterRole") => ("clusterroles", ""),
            _ => ("roles", namespace),
        };
        store
            .list(rbac, plural, Some(namespace))
            .into_iter()
            .find(|role| role["metadata"]["name"] == reference["name"])
            .and_then(|role| role["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut rules = Vec::new();
    for binding in store.list(rbac, "clusterrolebindings", Some("")) {
        if bound(&binding) {
            rules.extend(rules_of(&binding["roleRef"], ""));
        }
    }
    if let Some(namespace) = request.namespace {
        for binding in store.list(rbac, "rolebindings", Some(namespace)) {
            if bound(&binding) {
                rules.extend(rules_of(&binding["roleRef"], namespace));
            }
        }
    }
    if rules.iter().any(|rule| rule_allows(rule, request)) {
        return Ok(());
    }
    let group = if request.group.is_empty() {
        String::new()
    } else {
        format!(" in API group {:?}", request.group)
    };
    let scope = match request.namespace {
        Some(namespace) => format!(" in the namespace {namespace:?}"),
        None => " at the cluster scope".to_owned(),
    };
    Err(format!(
        "{}{} is forbidden: User {user:?} cannot {} resource {:?}{group}{scope}",
        request.resource,
        request.name.map(|n| format!(" {n:?}")).unwrap_or_default(),
        request.verb,
        request.resource,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Key;

    fn add(store: &mut Store, plural: &str, namespace: &str, object: Value) {
        let resource = store
            .resource("rbac.authorization.k8s.io", "v1", plural)
            .expect("rbac kind");
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let key = Key {
            group: resource.group.clone(),
            plural: plural.into(),
            namespace: namespace.into(),
            name,
        };
        store.create(&resource, key, object).expect("create");
    }

    fn request<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group,
            resource: resource.into(),
            namespace,
            name,
        }
    }

    #[test]
    fn bindings_grant_their_roles_rules_in_their_scope() {
        let mut store = Store::default();
        let namespaces = store.resource("", "v1", "namespaces").expect("built in");
        let ops = Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: "ops".into(),
        };
        store
            .create(&namespaces, ops, json!({"metadata": {"name": "ops"}}))
            .expect("namespace");
        let user = "system:serviceaccount:ops:robot";
        let subject = json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "ops"}]);
        add(
            &mut store,
            "clusterroles",
            "",
            json!({"metadata": {"name": "reader"},
            "rules": [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/status"], "verbs": ["get", "list", "watch"]}]}),
        );
        add(
            &mut store,
            "clusterrolebindings",
            "",
            json!({"metadata": {"name": "reader"},
            "roleRef": {"kind": "ClusterRole", "name": "reader"}, "subjects": subject}),
        );
        add(
            &mut store,
            "roles",
            "ops",
            json!({"metadata": {"name": "lease"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"], "resourceNames": ["mine"]}]}),
        );
        add(
            &mut store,
            "rolebindings",
            "ops",
            json!({"metadata": {"name": "lease"},
            "roleRef": {"kind": "Role", "name": "lease"}, "subjects": subject}),
        );

        assert!(
            authorize(
                &store,
                user,
                &request("list", "apps", "deployments", None, None)
            )
            .is_ok()
        );
        assert!(
            authorize(
                &store,
                user,
                &request("get", "apps", "deployments/status", Some("a"), Some("d"))
            )
            .is_ok()
        );
        let denied = authorize(
            &store,
            user,
            &request("delete", "apps", "deployments", Some("a"), Some("d")),
        )
        .expect_err("no delete");
        assert!(
            denied.contains("cannot delete resource \"deployments\" in API group \"apps\""),
            "{denied}"
        );
        assert!(
            authorize(
                &store,
                user,
                &request(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    Some("ops"),
                    Some("mine")
                )
            )
            .is_ok()
        );
        assert!(
            authorize(
                &store,
                user,
                &request(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    Some("ops"),
                    Some("other")
                )
            )
            .is_err(),
            "resourceNames"
        );
        assert!(
            authorize(
                &store,
                user,
                &request(
                    "get",
                    "coordination.k8s.io",
                    "leases",
                    Some("elsewhere"),
                    Some("mine")
                )
            )
            .is_err(),
            "a RoleBinding is namespaced"
        );
        assert!(
            authorize(
                &store,
                "system:serviceaccount:ops:other",
                &request("list", "apps", "deployments", None, None)
            )
            .is_err()
        );
    }
}
