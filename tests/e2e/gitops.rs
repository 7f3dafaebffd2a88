//! What GitOps tools make of real sessions, computed with those tools' own
//! code (tests/gitops, a Go module): kstatus (cli-utils, as Flux uses it
//! without custom rules), Argo CD's verdict from deploy/argocd/argocd-cm.yaml
//! run by gopher-lua, and Flux's from the healthCheckExprs of
//! deploy/flux/kustomization.yaml run by cel-go.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, Phase};
use kube::api::{Patch, PatchParams};

use crate::api_proxy::{Mode, start_operator_behind_proxy};
use crate::common::{TestEnv, busybox_session, kubectl, repo_root, sleeping_session};

/// The session-health tool (built once, cached by the hash of its sources).
fn session_health() -> PathBuf {
    let output = Command::new(repo_root().join("hack/go-tool.sh"))
        .args(["tests/gitops", "session-health"])
        .output()
        .expect("run hack/go-tool.sh");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A captured object, as a file the Go tool reads.
struct Captured {
    state: &'static str,
    file: PathBuf,
}

fn capture(dir: &Path, state: &'static str, session: &DebugSession) -> Captured {
    let mut object = serde_json::to_value(session).unwrap();
    object["apiVersion"] = "ephemera.dev/v1alpha1".into();
    object["kind"] = "DebugSession".into();
    let file = dir.join(format!("{state}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&object).unwrap()).unwrap();
    Captured { state, file }
}

/// The three verdicts for each captured object: (state, kstatus, Argo CD, Flux).
fn verdicts(captured: &[Captured]) -> Vec<(&'static str, String, String, String)> {
    let output = Command::new(session_health())
        .arg("-argocd-cm")
        .arg(repo_root().join("deploy/argocd/argocd-cm.yaml"))
        .arg("-flux")
        .arg(repo_root().join("deploy/flux/kustomization.yaml"))
        .args(captured.iter().map(|c| &c.file))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("{lines}");
    captured
        .iter()
        .zip(lines.lines())
        .map(|(c, line)| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| v[name].as_str().unwrap().to_string();
            (c.state, field("kstatus"), field("argocd"), field("flux"))
        })
        .collect()
}

/// The API server's own answer for a session that no longer exists (its 404 Status).
async fn capture_gone(env: &TestEnv, dir: &Path, state: &'static str, name: &str) -> Captured {
    let uri = format!("/apis/ephemera.dev/v1alpha1/namespaces/{}/debugsessions/{name}", env.namespace);
    let request = http::Request::get(uri).body(kube::client::Body::empty()).unwrap();
    let response = env.client.send(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
    let body = response.into_body().collect_bytes().await.unwrap();
    let file = dir.join(format!("{state}.json"));
    std::fs::write(&file, &body).unwrap();
    Captured { state, file }
}

/// Argo CD, kstatus and Flux on real sessions in nine states. Pending lasts
/// milliseconds, so it is held: the operator sees the cluster through the
/// test proxy, which sends the pod write on only after a minute; the
/// session is captured as the operator left it, its claim written.
#[tokio::test(flavor = "multi_thread")]
async fn argocd_kstatus_and_flux_read_sessions_as_they_are() {
    let mut env = TestEnv::without_operator("gitops-health", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    env.running_pod("held", &["app"], &[]).await;
    let dir = repo_root().join("target/gitops-objects");
    std::fs::create_dir_all(&dir).unwrap();
    let mut captured = Vec::new();

    start_operator_behind_proxy(&mut env, Mode::SlowEphemeralWrites(Duration::from_secs(60))).await;
    env.create_session(&sleeping_session("claimed", "{ pod: held }", "")).await;
    captured.push(capture(&dir, "pending", &env.wait_phase("claimed", Phase::Pending).await));
    env.operator.take();
    env.start_operator("admin");

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

    // Deleted by its TTL once finished.
    env.create_session(&busybox_session(
        "expires",
        "{ pod: web }",
        r#"["true"]"#,
        "  stdin: false\n  tty: false\n  ttlSecondsAfterFinished: 1\n",
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while env.sessions.get_opt("expires").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the TTL never deleted the session");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    captured.push(capture_gone(&env, &dir, "ttl-deleted", "expires").await);

    // A change the operator has not seen yet, and a session it has not seen at all.
    env.operator.as_mut().unwrap().kill();
    env.sessions.patch("ends", &PatchParams::default(), &Patch::Merge(&raise)).await.unwrap();
    captured.push(capture(&dir, "generation-not-observed", &env.sessions.get("ends").await.unwrap()));
    captured.push(capture(
        &dir,
        "not-seen-yet",
        &env.create_session(&sleeping_session("new", "{ pod: web }", "")).await,
    ));

    let expected = [
        ("pending", "InProgress", "Progressing", "InProgress"),
        ("injected", "InProgress", "Progressing", "InProgress"),
        ("running", "Current", "Healthy", "Current"),
        // A debug run that ended did what it was asked: healthy, not degraded.
        ("terminated", "Current", "Healthy", "Current"),
        ("failed", "Failed", "Degraded", "Failed"),
        ("attempt-pending", "InProgress", "Progressing", "InProgress"),
        ("ttl-deleted", "NotFound", "Missing", "NotFound"),
        ("generation-not-observed", "InProgress", "Progressing", "InProgress"),
        // Without a status, kstatus finds nothing wrong; the Lua check and the
        // CEL expressions wait for ephemera (Flux keeps polling while an
        // expression cannot be evaluated). See docs/gitops.md.
        ("not-seen-yet", "Current", "Progressing", "Unknown"),
    ];
    let expected: Vec<_> =
        expected.iter().map(|(s, k, a, f)| (*s, k.to_string(), a.to_string(), f.to_string())).collect();
    assert_eq!(verdicts(&captured), expected);
}

/// The argocd-cm snippet is a ConfigMap the API server takes, holding health.lua verbatim.
#[tokio::test(flavor = "multi_thread")]
async fn the_argocd_snippet_applies_and_holds_the_health_check() {
    let env = TestEnv::without_operator("gitops-argocd-cm", &[]).await;
    let snippet = repo_root().join("deploy/argocd/argocd-cm.yaml");
    let (ok, out) = kubectl(&["apply", "-n", &env.namespace, "-f", snippet.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, script) = kubectl(&[
        "get",
        "configmap",
        "argocd-cm",
        "-n",
        &env.namespace,
        "-o",
        r"jsonpath={.data.resource\.customizations\.health\.ephemera\.dev_DebugSession}",
    ]);
    assert!(ok, "{script}");
    let file = std::fs::read_to_string(repo_root().join("deploy/argocd/health.lua")).unwrap();
    assert_eq!(script.trim_end(), file.trim_end());
}
