//! The chart's admission policy: a DebugSession can only do what its author may do.

use std::process::Command;
use std::time::{Duration, Instant};

use ephemera::crd::Phase;

use crate::common::{TestEnv, grant, kubectl, kubectl_patch_session, repo_root, sleeping_session};
use crate::in_cluster::helm;

/// Deletes the objects of a file from the cluster, even when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "--ignore-not-found", "-f", self.0.to_str().unwrap()]);
    }
}

/// `kubectl apply` of a session as `user`.
fn apply_session_as(user: &str, namespace: &str, name: &str, target: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("{namespace}-{name}.yaml"));
    let yaml = format!("apiVersion: ephemera.dev/v1alpha1\nkind: DebugSession\n{}", sleeping_session(name, target, ""));
    std::fs::write(&path, yaml).unwrap();
    kubectl(&["--context", user, "apply", "-n", namespace, "-f", path.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn only_authors_who_may_debug_can_create_sessions() {
    let env = TestEnv::new("admission").await;
    // The policy from the chart, exactly as shipped.
    let policy = Command::new(helm())
        .args([
            "template",
            "ephemera",
            repo_root().join("charts/ephemera").to_str().unwrap(),
            "--show-only",
            "templates/admission-policy.yaml",
            "--kube-version",
            "1.34",
            // Scoped to this test's namespace, like a release that watches one: other tests run beside it.
            "--set",
            &format!("watchNamespace={}", env.namespace),
        ])
        .output()
        .unwrap();
    assert!(policy.status.success(), "{}", String::from_utf8_lossy(&policy.stderr));
    let policy_file = repo_root().join("target/e2e-admission-policy.yaml");
    std::fs::write(&policy_file, &policy.stdout).unwrap();
    let (ok, out) = kubectl(&["apply", "--server-side", "-f", policy_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let _remove_policy = RemoveOnDrop(policy_file);

    env.running_pod("web", &["app"], &[]).await;
    let sessions = serde_json::json!({ "apiGroups": ["ephemera.dev"], "resources": ["debugsessions"], "verbs": ["get", "list", "create", "update", "patch"] });
    // alice may manage sessions (as edit/admin would let her) but not debug.
    grant(&env.namespace, "alice", serde_json::json!([sessions]));
    // bob may also add ephemeral containers, to pod web only, and (RBAC alone would let him) write statuses.
    grant(
        &env.namespace,
        "bob",
        serde_json::json!([
            sessions,
            { "apiGroups": ["ephemera.dev"], "resources": ["debugsessions/status"], "verbs": ["get", "patch"] },
            { "apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "resourceNames": ["web"], "verbs": ["patch"] }
        ]),
    );

    // The policy takes effect within a few seconds of being created.
    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let (ok, out) = apply_session_as("alice", &env.namespace, "by-alice", "{ pod: web }");
        if !ok {
            break out;
        }
        let _ = kubectl(&["delete", "dbgs", "by-alice", "-n", &env.namespace, "--wait=false"]);
        assert!(Instant::now() < deadline, "the admission policy never denied alice: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(denied.contains("alice may not patch pods/ephemeralcontainers of pod web"), "{denied}");
    assert!(denied.contains("can only do what its author may do"), "{denied}");

    let (ok, out) = apply_session_as("bob", &env.namespace, "by-bob", "{ pod: web }");
    assert!(ok, "bob may debug pod web: {out}");
    env.wait_phase("by-bob", Phase::Running).await;
    // bob's right covers pod web only, not whichever pod a selector picks.
    let (ok, out) =
        apply_session_as("bob", &env.namespace, "by-bob-anywhere", "{ selector: { matchLabels: { app: x } } }");
    assert!(!ok && out.contains("bob may not patch pods/ephemeralcontainers in namespace"), "{out}");
    // Raising attempt is an update, checked the same way.
    let (ok, out) = kubectl_patch_session(Some("bob"), &env.namespace, "by-bob", r#"{"spec":{"attempt":1}}"#);
    assert!(ok, "{out}");

    // The status is ephemera's to write: the redirect attack is refused before the operator sees it.
    let (ok, out) = kubectl(&[
        "--context",
        "bob",
        "patch",
        "dbgs",
        "by-bob",
        "-n",
        &env.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"podName":"payments"}}"#,
    ]);
    assert!(
        !ok && out.contains("only ephemera") && out.contains("writes the status of a DebugSession, not bob"),
        "{out}"
    );
}
