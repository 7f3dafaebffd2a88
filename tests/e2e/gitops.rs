//! What GitOps tools make of real sessions, computed with those tools' own
//! code (tests/gitops, a Go module): kstatus, as Flux and cli-utils use it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ephemera::crd::{DebugSession, Phase};
use kube::api::{Patch, PatchParams};

use crate::common::{TestEnv, busybox_session, repo_root, sleeping_session};

/// The session-health tool (built once, cached by the hash of its sources).
fn session_health() -> PathBuf {
    let output = Command::new(repo_root().join("hack/go-tool.sh"))
        .args(["tests/gitops", "session-health"])
        .output()
        .expect("run hack/go-tool.sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A captured session, as a file the Go tools read.
struct Captured {
    state: &'static str,
    file: PathBuf,
}

fn capture(dir: &std::path::Path, state: &'static str, session: &DebugSession) -> Captured {
    let mut object = serde_json::to_value(session).unwrap();
    object["apiVersion"] = "ephemera.dev/v1alpha1".into();
    object["kind"] = "DebugSession".into();
    let file = dir.join(format!("{state}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
    Captured { state, file }
}

/// kstatus of each captured session, by state.
fn kstatus(captured: &[Captured]) -> Vec<(&'static str, String)> {
    let output = Command::new(session_health()).args(captured.iter().map(|c| &c.file)).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = String::from_utf8_lossy(&output.stdout).to_string();
    captured
        .iter()
        .zip(lines.lines())
        .map(|(c, line)| {
            let verdict: serde_json::Value = serde_json::from_str(line).unwrap();
            (c.state, verdict["kstatus"].as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kstatus_reads_sessions_as_they_are() {
    let mut env = TestEnv::new("kstatus").await;
    env.running_pod("web", &["app"], &[]).await;
    let dir = repo_root().join("target/gitops-objects");
    std::fs::create_dir_all(&dir).unwrap();
    let mut captured = Vec::new();

    env.create_session(
        "metadata: { name: pulling }\nspec:\n  target: { pod: web }\n  image: localhost/not-imported:1\n  imagePullPolicy: IfNotPresent\n",
    )
    .await;
    captured.push(capture(&dir, "injected", &env.wait_phase("pulling", Phase::Injected).await));

    env.create_session(&sleeping_session("runs", "{ pod: web }", "")).await;
    captured.push(capture(&dir, "running", &env.wait_phase("runs", Phase::Running).await));

    env.create_session(&busybox_session("ends", "{ pod: web }", r#"["true"]"#, "  stdin: false\n  tty: false\n")).await;
    captured.push(capture(&dir, "terminated", &env.wait_phase("ends", Phase::Terminated).await));

    env.create_session(&sleeping_session("fails", "{ pod: nope }", "")).await;
    captured.push(capture(&dir, "failed", &env.wait_phase("fails", Phase::Failed).await));

    // A raised attempt that waits for the running container.
    let raise = serde_json::json!({ "spec": { "attempt": 1 } });
    env.sessions.patch("runs", &PatchParams::default(), &Patch::Merge(&raise)).await.unwrap();
    let pending = env
        .wait_session("runs", "attempt 1 seen", Duration::from_secs(30), |s| {
            s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
        })
        .await;
    captured.push(capture(&dir, "attempt-pending", &pending));

    // A change the operator has not seen yet.
    env.operator.as_mut().unwrap().kill();
    env.sessions.patch("ends", &PatchParams::default(), &Patch::Merge(&raise)).await.unwrap();
    captured.push(capture(&dir, "generation-not-observed", &env.sessions.get("ends").await.unwrap()));

    let expected = [
        ("injected", "InProgress"),
        ("running", "Current"),
        ("terminated", "Current"),
        ("failed", "Failed"),
        ("attempt-pending", "InProgress"),
        ("generation-not-observed", "InProgress"),
    ];
    assert_eq!(kstatus(&captured), expected.map(|(s, k)| (s, k.to_string())).to_vec());
}
