//! Who can do what through ephemera, with the chart's admission policies and
//! roles as shipped: every persona is tried, and nobody gets through ephemera
//! what they could not do by hand.

use std::process::Command;
use std::time::Duration;

use ephemera::crd::{FailureReason, Phase};
use ephemera::requester::USERNAME_ANNOTATION;

use crate::common::{TestEnv, apply_json, kubeconfig, kubectl, repo_root, sleeping_session};
use crate::in_cluster::helm;

/// The chart's admission policies and user roles, rendered for `namespace`
/// under a release name of the test's own; deleted on drop.
struct ChartPolicies {
    file: std::path::PathBuf,
}

impl ChartPolicies {
    fn install(release: &str, namespace: &str) -> Self {
        let output = Command::new(helm())
            .args([
                "template",
                release,
                repo_root().join("charts/ephemera").to_str().unwrap(),
                "--namespace",
                namespace,
            ])
            .args([
                "--kube-version",
                "1.34",
                "--api-versions",
                "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy",
            ])
            .args(["--set", &format!("watchNamespace={namespace}")])
            .args(["--show-only", "templates/admission-policy.yaml"])
            .args(["--show-only", "templates/requester-policy.yaml"])
            .args(["--show-only", "templates/user-roles.yaml"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let file = repo_root().join(format!("target/{release}-policies.yaml"));
        std::fs::write(&file, &output.stdout).unwrap();
        let (ok, out) = kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
        assert!(ok, "{out}");
        Self { file }
    }
}

impl Drop for ChartPolicies {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "--ignore-not-found", "-f", self.file.to_str().unwrap()]);
    }
}

/// `kubectl` as `who`: a context of the cluster's kubeconfig, or an impersonated user or ServiceAccount.
fn kubectl_as(who: &str, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = if ["alice", "bob"].contains(&who) {
        vec!["--context", who]
    } else {
        vec!["--as", who, "--as-group", "system:authenticated"]
    };
    all.extend_from_slice(args);
    kubectl(&all)
}

fn session_file(namespace: &str, name: &str, target: &str) -> std::path::PathBuf {
    let yaml = format!("apiVersion: ephemera.dev/v1alpha1\nkind: DebugSession\n{}", sleeping_session(name, target, ""));
    let file = std::env::temp_dir().join(format!("{namespace}-{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    file
}

fn create_as(who: &str, namespace: &str, name: &str) -> (bool, String) {
    let file = session_file(namespace, name, "{ pod: web }");
    kubectl_as(who, &["create", "-n", namespace, "-f", file.to_str().unwrap()])
}

fn bind(namespace: &str, name: &str, subject: serde_json::Value, cluster_role: &str) {
    apply_json(
        namespace,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": name, "namespace": namespace },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role },
            "subjects": [subject],
        }),
    );
}

fn user(name: &str) -> serde_json::Value {
    serde_json::json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name })
}

fn service_account(namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({ "kind": "ServiceAccount", "name": name, "namespace": namespace })
}

#[tokio::test(flavor = "multi_thread")]
async fn personas_get_no_more_through_ephemera_than_by_hand() {
    let mut env = TestEnv::without_operator("personas", &[]).await;
    let elsewhere = TestEnv::without_operator("personas-elsewhere", &[]).await;
    let ns = env.namespace.clone();
    let release = "personas";
    let _policies = ChartPolicies::install(release, &ns);
    let debugger = format!("{release}-ephemera-debugger");
    let editor = format!("{release}-ephemera-debugsession-editor");
    env.running_pod("web", &["app"], &[]).await;
    for account in ["sa-debug", "sa-edit"] {
        apply_json(
            &ns,
            serde_json::json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": account, "namespace": ns } }),
        );
    }
    // alice may manage sessions (the editor role) and nothing else.
    bind(&ns, "alice", user("alice"), &editor);
    bind(&ns, "bob", user("bob"), &debugger);
    bind(&elsewhere.namespace, "carol", user("carol"), &debugger);
    bind(&ns, "dave", user("dave"), "edit");
    bind(&ns, "erin", user("erin"), "admin");
    bind(&ns, "frank", user("frank"), &debugger);
    bind(&ns, "sa-debug", service_account(&ns, "sa-debug"), &debugger);
    bind(&ns, "sa-edit", service_account(&ns, "sa-edit"), "edit");
    // Policies, role aggregation and bindings take a moment to be in force.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // frank asks while no operator runs, then loses the right before anything was added.
    let (ok, out) = create_as("frank", &ns, "by-frank");
    assert!(ok, "frank may debug: {out}");
    let (ok, out) = kubectl(&["delete", "rolebinding", "frank", "-n", &ns]);
    assert!(ok, "{out}");
    env.operator = Some(crate::common::Operator::start_with_args(
        &ns,
        &kubeconfig(),
        "admin",
        "127.0.0.1:0",
        &["--require-requester=true"],
        "",
    ));

    let sa_debug = format!("system:serviceaccount:{ns}:sa-debug");
    let sa_edit = format!("system:serviceaccount:{ns}:sa-edit");
    // (persona, session, may create it, the outcome)
    let cases: [(&str, &str, bool); 8] = [
        ("alice", "by-alice", false),
        ("bob", "by-bob", true),
        ("carol", "by-carol", false),
        ("dave", "by-dave", false),
        ("erin", "by-erin", false),
        (&sa_debug, "by-sa-debug", true),
        (&sa_edit, "by-sa-edit", false),
        ("mallory", "by-mallory", false),
    ];
    let mut table = Vec::new();
    for (who, name, allowed) in cases {
        let (ok, out) = create_as(who, &ns, name);
        assert_eq!(ok, allowed, "{who} creating {name}: {out}");
        if !allowed {
            assert!(
                out.contains("may not patch pods/ephemeralcontainers") || out.contains("forbidden"),
                "{who}: {out}"
            );
        }
        table.push(format!("{who:<45} create session: {}", if ok { "allowed" } else { "denied at admission" }));
    }
    for (who, name) in [("bob", "by-bob"), (sa_debug.as_str(), "by-sa-debug")] {
        let session = env.wait_phase(name, Phase::Running).await;
        assert_eq!(session.status.unwrap().requester.as_deref(), Some(who), "recorded by admission");
    }
    let frank = env.wait_phase("by-frank", Phase::Failed).await.status.unwrap();
    assert_eq!(frank.reason, Some(FailureReason::Forbidden));
    assert!(frank.message.unwrap().contains("frank may not patch pods/ephemeralcontainers of pod web"));
    table.push(
        "frank (right revoked after asking)              Failed/Forbidden when the container was to be added".into(),
    );

    // bob cannot make ephemera believe someone else asked, nor write the status.
    let (ok, out) = kubectl_as(
        "bob",
        &["annotate", "dbgs", "by-bob", "-n", &ns, &format!("{USERNAME_ANNOTATION}=erin"), "--overwrite"],
    );
    assert!(!ok && out.contains("the requester recorded on a DebugSession must be the user who asks for it"), "{out}");
    table.push("bob forging the requester                        denied at admission".into());
    apply_json(
        &ns,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "status-writer", "namespace": ns },
            "rules": [{ "apiGroups": ["ephemera.dev"], "resources": ["debugsessions/status"], "verbs": ["get", "patch"] }],
        }),
    );
    apply_json(
        &ns,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "bob-status-writer", "namespace": ns },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "status-writer" },
            "subjects": [user("bob")],
        }),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, out) = kubectl_as(
        "bob",
        &[
            "patch",
            "dbgs",
            "by-bob",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"podName":"elsewhere"}}"#,
        ],
    );
    assert!(!ok && out.contains("writes the status of a DebugSession"), "{out}");
    table.push("bob writing a session's status                   denied at admission".into());

    // Zero escalations: only bob's and sa-debug's containers are in the pod.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_pod = env.ephemeral_names("web").await;
    assert_eq!(in_pod.len(), 2, "{in_pod:?}");
    eprintln!("personas:\n  {}\n  0 escalations", table.join("\n  "));
}
