//! The Helm chart, rendered offline with `helm template`: its values schema
//! refuses what is wrong, its options reach the objects, its alerts use
//! metrics the operator exports, and its versions are the crate's.
//! (`make unit-test` runs these; the cluster-side lifecycle is in tests/e2e/in_cluster.rs.)

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let helm = std::env::var_os("EPHEMERA_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ephemera/helm-v3.22.0/helm"));
    assert!(helm.exists(), "helm is missing at {}: run `make {}`", helm.display(), helm.display());
    helm
}

/// `helm template` of the chart for Kubernetes 1.34 with extra arguments: (success, stdout + stderr).
fn template(args: &[&str]) -> (bool, String) {
    template_release("ephemera", args)
}

fn template_release(release: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(helm())
        .args(["template", release, "charts/ephemera", "--namespace", "ops", "--kube-version", "1.34"])
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The rendered objects.
fn render(args: &[&str]) -> Vec<Value> {
    let (ok, text) = template(args);
    assert!(ok, "helm template {args:?} failed:\n{text}");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    documents.into_iter().filter(|document| !document.is_null()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|object| object["kind"] == kind)
}

fn pod_spec(objects: &[Value]) -> &Value {
    &find(objects, "Deployment").expect("a Deployment")["spec"]["template"]["spec"]
}

#[test]
fn chart_version_and_app_version_are_the_crate_version() {
    let chart: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo_root().join("charts/ephemera/Chart.yaml")).unwrap())
            .unwrap();
    let crate_version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["version"], crate_version, "Chart.yaml version (bump it with Cargo.toml's)");
    assert_eq!(chart["appVersion"], crate_version, "Chart.yaml appVersion (the image tag `make image` gives)");
    let changelog = std::fs::read_to_string(repo_root().join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains(&format!("## [{crate_version}]")), "CHANGELOG.md has no section for {crate_version}");
}

#[test]
fn values_of_the_wrong_type_or_unknown_names_are_refused() {
    for (value, complaint) in [
        (["--set", "replicaCount=two"], "/replicaCount': got string, want integer"),
        (["--set-json", r#"image={"repository":"r","tag":1}"#], "/image/tag': got number, want string"),
        (["--set", "logFormat=xml"], "/logFormat"),
        (["--set", "hostNetwork=maybe"], "/hostNetwork': got string, want boolean"),
        (["--set", "podAntiAffinity=always"], "/podAntiAffinity"),
        (["--set", "podLabels.team=null"], "/podLabels/team"),
        (["--set", "replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "serviceMonitor.intervall=1m"], "additional properties 'intervall' not allowed"),
    ] {
        let (ok, text) = template(&value);
        assert!(!ok, "{value:?} was accepted");
        assert!(text.contains("don't meet the specifications of the schema") && text.contains(complaint), "{text}");
    }
}

#[test]
fn two_replicas_get_a_disruption_budget_and_prefer_different_nodes() {
    let objects = render(&[]);
    let budget = find(&objects, "PodDisruptionBudget").expect("a PodDisruptionBudget with two replicas");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    let selector = &find(&objects, "Deployment").unwrap()["spec"]["selector"]["matchLabels"];
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
    let preferred =
        &pod_spec(&objects)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(preferred[0]["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(&preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"], selector);
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(find(&objects, kind).is_none(), "{kind} is opt-in");
    }

    let one = render(&["--set", "replicaCount=1"]);
    assert!(find(&one, "PodDisruptionBudget").is_none(), "minAvailable 1 of 1 replica would block every drain");
    let hard = render(&["--set", "podAntiAffinity=hard"]);
    assert!(
        pod_spec(&hard)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array()
    );
    let none = render(&["--set", "podAntiAffinity=none"]);
    assert!(pod_spec(&none)["affinity"].is_null());
    let spread = render(&[
        "--set-json",
        r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"}]"#,
    ]);
    assert_eq!(pod_spec(&spread)["topologySpreadConstraints"][0]["maxSkew"], 1);
}

#[test]
fn name_overrides_rename_every_object_and_the_lease() {
    let objects = render(&["--set", "fullnameOverride=debug-ops"]);
    for object in &objects {
        let name = object["metadata"]["name"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap();
        // The CRD is not the release's: it is shared by every release.
        if kind != "CustomResourceDefinition" {
            assert!(name.starts_with("debug-ops"), "{kind} {name} does not carry fullnameOverride");
        }
    }
    let args = &pod_spec(&objects)["containers"][0]["args"];
    assert!(args.as_array().unwrap().contains(&"--leader-election-lease-name=debug-ops".into()), "{args}");

    let objects = render(&["--set", "nameOverride=dbg"]);
    let deployment = find(&objects, "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["name"], "ephemera-dbg");
    assert_eq!(deployment["metadata"]["labels"]["app.kubernetes.io/name"], "dbg");
    assert_eq!(deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "dbg");

    // Two releases: no cluster-scoped name in common.
    let cluster_scoped = |release: &str| -> Vec<String> {
        let (ok, text) = template_release(release, &[]);
        assert!(ok, "{text}");
        let objects: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        objects
            .iter()
            .filter(|o| o["metadata"]["namespace"].is_null() && !o.is_null())
            .filter(|o| o["kind"] != "CustomResourceDefinition")
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect()
    };
    let first = cluster_scoped("ephemera");
    let second = cluster_scoped("team-b");
    assert!(first.len() >= 8, "{first:?}");
    assert!(first.iter().all(|name| !second.contains(name)), "{first:?}\n{second:?}");
}

#[test]
fn pod_and_service_account_options_reach_the_objects() {
    let objects = render(&[
        "--set",
        "imagePullSecrets[0].name=registry,priorityClassName=system-cluster-critical",
        "--set",
        "podAnnotations.owner=platform,podLabels.team=sre",
        "--set",
        "serviceAccount.annotations.iam\\.example\\.com/role=ephemera",
        "--set",
        "image.repository=registry.example.com/ephemera,image.tag=0.1.0-rc1",
        "--set-json",
        r#"hostAliases=[{"ip":"10.1.2.3","hostnames":["api.internal"]}]"#,
    ]);
    let deployment = find(&objects, "Deployment").unwrap();
    let template = &deployment["spec"]["template"];
    assert_eq!(template["metadata"]["annotations"]["owner"], "platform");
    assert_eq!(template["metadata"]["labels"]["team"], "sre");
    assert!(deployment["spec"]["selector"]["matchLabels"]["team"].is_null(), "podLabels stay out of the selector");
    let spec = &template["spec"];
    assert_eq!(spec["imagePullSecrets"][0]["name"], "registry");
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["hostAliases"][0]["hostnames"][0], "api.internal");
    assert_eq!(spec["containers"][0]["image"], "registry.example.com/ephemera:0.1.0-rc1");
    let account = find(&objects, "ServiceAccount").unwrap();
    assert_eq!(account["metadata"]["annotations"]["iam.example.com/role"], "ephemera");

    let defaults = render(&[]);
    let container = &pod_spec(&defaults)["containers"][0];
    assert_eq!(container["image"], format!("ghcr.io/ephemera-dev/ephemera:{}", env!("CARGO_PKG_VERSION")));
    for absent in ["imagePullSecrets", "priorityClassName", "hostAliases", "hostNetwork"] {
        assert!(pod_spec(&defaults)[absent].is_null(), "{absent} is rendered by default");
    }
}

#[test]
fn monitoring_watches_this_release_with_metrics_the_operator_exports() {
    let objects = render(&[
        "--set",
        "serviceMonitor.enabled=true,serviceMonitor.labels.release=prometheus",
        "--set",
        "prometheusRule.enabled=true,prometheusRule.labels.release=prometheus",
    ]);
    let service = find(&objects, "Service").unwrap();
    let monitor = find(&objects, "ServiceMonitor").expect("a ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"][0], "ops");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], service["spec"]["ports"][0]["name"]);
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (label, value) in selector {
        assert_eq!(&service["metadata"]["labels"][label], value, "the ServiceMonitor must select the Service");
    }

    let rule = find(&objects, "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(alerts, ["EphemeraReconcileErrors", "EphemeraSessionsStuck"]);

    // Every series an alert reads is one the operator exports, with label values it uses.
    let metrics = ephemera::metrics::Metrics::new();
    metrics.reconcile_errors.with_label_values(&["kube"]).inc();
    metrics.transitions.with_label_values(&["Failed", "StartTimeout"]).inc();
    let exported = metrics.render();
    let job = format!("job=\"{}\"", service["metadata"]["name"].as_str().unwrap());
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        assert!(expr.contains(&job) && expr.contains("namespace=\"ops\""), "only this release's series: {expr}");
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("ephemera_"))
            .collect::<Vec<_>>();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(exported.contains(&format!("\n{name}{{")), "{name} is not exported:\n{exported}");
        }
        assert!(rule["labels"]["severity"] == "warning" && rule["annotations"]["description"].is_string());
    }
    assert!(exported.contains(r#"phase="Failed",reason="StartTimeout""#));
    assert!(rules[1]["expr"].as_str().unwrap().contains(r#"phase="Failed", reason="StartTimeout""#));
    assert!(ephemera::crd::FailureReason::StartTimeout.as_str() == "StartTimeout");
}
