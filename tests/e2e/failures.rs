//! Every `Failed` reason, provoked on the real cluster.

use std::process::Command;
use std::time::Duration;

use ephemera::crd::{FailureReason, Phase};
use kube::api::{DeleteParams, PostParams};

use crate::common::{TestEnv, busybox_session, grant, kubectl_patch_session, repo_root, sleeping_session};

async fn expect_failure(
    env: &TestEnv,
    session: &str,
    reason: FailureReason,
    message_part: &str,
) -> ephemera::crd::DebugSession {
    let session = env.wait_phase(session, Phase::Failed).await;
    let status = session.status.clone().unwrap();
    assert_eq!(status.reason, Some(reason), "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(message.contains(message_part), "message {message:?} lacks {message_part:?}");
    let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", reason.as_str()));
    env.expect_events(&session.metadata.name.clone().unwrap(), &[reason.as_str()]).await;
    session
}

#[tokio::test(flavor = "multi_thread")]
async fn target_problems_fail_before_anything_is_written() {
    let env = TestEnv::new("target-failures").await;
    env.running_pod("web", &["app"], &[]).await;
    // A pod that can never be scheduled stays Pending.
    let pending: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "pending" },
        "spec": { "nodeSelector": { "no-such": "node" }, "containers": [{ "name": "app", "image": "localhost/busybox:1.36" }] }
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &pending).await.unwrap();

    env.create_session(&sleeping_session("missing-pod", "{ pod: nope }", "")).await;
    env.create_session(&sleeping_session("missing-container", "{ pod: web, container: nope }", "")).await;
    env.create_session(&sleeping_session("not-running", "{ pod: pending }", "")).await;
    env.create_session(&sleeping_session("no-match", "{ selector: { matchLabels: { app: nothing } } }", "")).await;

    expect_failure(&env, "missing-pod", FailureReason::TargetNotFound, "pod nope does not exist").await;
    expect_failure(&env, "missing-container", FailureReason::TargetContainerNotFound, "its containers are: app").await;
    expect_failure(&env, "not-running", FailureReason::TargetNotRunning, "pod pending is Pending").await;
    expect_failure(&env, "no-match", FailureReason::TargetNotFound, "no pod matches the selector app=nothing").await;
    assert!(env.ephemeral_names("web").await.is_empty());
    assert!(env.ephemeral_names("pending").await.is_empty());

    // A failure is not retried on its own; raising attempt retries, here successfully.
    env.running_pod("nope", &["app"], &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let session = env.sessions.get("missing-pod").await.unwrap();
    assert_eq!(session.status.unwrap().phase, Some(Phase::Failed));
    let (ok, out) = kubectl_patch_session(None, &env.namespace, "missing-pod", r#"{"spec":{"attempt":1}}"#);
    assert!(ok, "{out}");
    let session = env.wait_phase("missing-pod", Phase::Running).await;
    assert_eq!(session.status.unwrap().container_name.map(|n| n.ends_with("-1")), Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_security_admission_refusal_is_forbidden() {
    let env = TestEnv::with_namespace_labels("psa", &[("pod-security.kubernetes.io/enforce", "baseline")]).await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&sleeping_session("root", "{ pod: web }", "  profile: sysadmin\n")).await;
    expect_failure(&env, "root", FailureReason::Forbidden, "violates PodSecurity").await;
    assert!(env.ephemeral_names("web").await.is_empty());
    // The same namespace takes a container that baseline allows.
    env.create_session(&sleeping_session("fine", "{ pod: web }", "  profile: baseline\n")).await;
    env.wait_phase("fine", Phase::Running).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rbac_refusal_is_forbidden() {
    let mut env = TestEnv::without_operator("rbac", &[]).await;
    // alice may run the controller in this namespace but not add ephemeral containers.
    grant(
        &env.namespace,
        "alice",
        serde_json::json!([
            { "apiGroups": ["ephemera.dev"], "resources": ["debugsessions"], "verbs": ["get", "list", "watch", "delete"] },
            { "apiGroups": ["ephemera.dev"], "resources": ["debugsessions/status"], "verbs": ["get", "patch", "update"] },
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] }
        ]),
    );
    env.running_pod("web", &["app"], &[]).await;
    env.start_operator("alice");
    env.create_session(&sleeping_session("denied", "{ pod: web }", "")).await;
    // The operator's own RBAC, not the user's profile: the reason says whose permission is missing.
    let failed = expect_failure(
        &env,
        "denied",
        FailureReason::OperatorForbidden,
        "cannot patch resource \"pods/ephemeralcontainers\"",
    )
    .await;
    assert!(failed.status.unwrap().message.unwrap().contains("grant ephemera's ServiceAccount"));
    assert!(env.ephemeral_names("web").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_container_is_reported_with_the_servers_message() {
    let env = TestEnv::new("invalid").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&sleeping_session("bad-env", "{ pod: web }", "  env: [{ name: \"A=B\", value: x }]\n")).await;
    expect_failure(&env, "bad-env", FailureReason::Invalid, "spec.ephemeralContainers[0].env[0].name").await;
    assert!(env.ephemeral_names("web").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn container_that_never_starts_shows_why_and_times_out() {
    let env = TestEnv::new("start-timeout").await;
    env.running_pod("web", &["app"], &[]).await;
    let missing_image = |name: &str, policy: &str, timeout: u32| {
        format!(
            "metadata: {{ name: {name} }}\nspec:\n  target: {{ pod: web }}\n  image: localhost/not-imported:1\n  imagePullPolicy: {policy}\n  startTimeoutSeconds: {timeout}\n"
        )
    };
    // A pull that keeps failing may still succeed later: it waits, with the kubelet's words, until the timeout.
    env.create_session(&missing_image("quick", "IfNotPresent", 20)).await;
    env.create_session(&missing_image("patient", "IfNotPresent", 600)).await;
    // An image that must not be pulled and is not there never will be: that fails at once.
    env.create_session(&missing_image("never", "Never", 600)).await;

    let waiting = env
        .wait_session("patient", "Injected, waiting on a pull", Duration::from_secs(90), |s| {
            s.status.as_ref().is_some_and(|st| {
                st.phase == Some(Phase::Injected)
                    && matches!(st.waiting_reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff"))
            })
        })
        .await;
    let status = waiting.status.unwrap();
    assert!(
        status.message.as_deref().unwrap().contains("localhost/not-imported"),
        "the kubelet's message: {:?}",
        status.message
    );
    let injected = status.conditions.iter().find(|c| c.type_ == "Injected").unwrap();
    assert_eq!(injected.status, "True");
    let failed =
        expect_failure(&env, "quick", FailureReason::StartTimeout, "did not start within 20s: it is still waiting")
            .await;
    assert_eq!(failed.status.unwrap().containers.len(), 1);

    let started = std::time::Instant::now();
    let never = expect_failure(&env, "never", FailureReason::CannotStart, "ErrImageNeverPull").await;
    assert!(started.elapsed() < Duration::from_secs(30), "not after the 600 s timeout");
    assert_eq!(never.status.unwrap().waiting_reason.as_deref(), Some("ErrImageNeverPull"));
}

#[tokio::test(flavor = "multi_thread")]
async fn container_that_starts_after_its_timeout_is_reported_as_it_is() {
    let env = TestEnv::new("late-start").await;
    env.running_pod("web", &["app"], &[]).await;
    // A tag no earlier run imported, so the kubelet cannot start the container yet.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let image = format!("localhost/late-{nanos}:1");
    env.create_session(&format!(
        "metadata: {{ name: late }}\nspec:\n  target: {{ pod: web }}\n  image: {image}\n  imagePullPolicy: Never\n  command: [\"sleep\", \"600\"]\n  startTimeoutSeconds: 3\n"
    ))
    .await;
    expect_failure(&env, "late", FailureReason::StartTimeout, "did not start within 3s").await;

    // The image arrives; the kubelet starts the container on its next try.
    let archive = repo_root().join(format!("target/e2e-image/late-{nanos}.tar"));
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let built = Command::new("python3")
        .arg(repo_root().join("tests/cluster/hack/mkimage.py"))
        .args(["--busybox", "--tag", &image, "--cmd", "sh", "--out"])
        .arg(&archive)
        .status()
        .unwrap();
    assert!(built.success(), "mkimage.py");
    let imported = Command::new(repo_root().join("tests/cluster/import-image.sh")).arg(&archive).status().unwrap();
    assert!(imported.success(), "import-image.sh");
    let _ = std::fs::remove_file(&archive);

    let session = env.wait_phase("late", Phase::Running).await;
    let status = session.status.unwrap();
    assert_eq!(status.reason, None);
    assert!(status.attach_command.is_some());
    assert_eq!(status.containers.len(), 1, "the same container, not a new one");
    env.expect_events("late", &["StartTimeout", "Running"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_or_replaced_pod_is_target_gone() {
    let env = TestEnv::new("gone").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&sleeping_session("orphan", "{ pod: web }", "")).await;
    env.wait_phase("orphan", Phase::Running).await;
    env.pods.delete("web", &DeleteParams::default().grace_period(0)).await.unwrap();
    // Which the operator sees first, the pod marked for deletion or the pod gone, is a race
    // (the API server may answer the delete before the kubelet has let the pod go): both are true.
    let session = expect_failure(&env, "orphan", FailureReason::TargetGone, "pod web ").await;
    let message = session.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        message.starts_with("pod web was deleted")
            || (message.starts_with("pod web is being deleted, ") && message.contains("debug container debugger-")),
        "{message}"
    );

    // A new pod of the same name does not revive the session.
    env.wait_pod_gone("web").await;
    env.running_pod("web", &["app"], &[]).await;
    let (ok, out) = kubectl_patch_session(None, &env.namespace, "orphan", r#"{"spec":{"attempt":1}}"#);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let session = env.sessions.get("orphan").await.unwrap();
    assert_eq!(session.status.unwrap().reason, Some(FailureReason::TargetGone), "TargetGone is permanent");
    assert!(env.ephemeral_names("web").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_replaced_while_the_operator_was_down_is_target_gone() {
    let mut env = TestEnv::new("replaced").await;
    env.running_pod("api", &["app"], &[]).await;
    env.create_session(&sleeping_session("swapped", "{ pod: api }", "")).await;
    env.wait_phase("swapped", Phase::Running).await;
    // The operator never sees the deletion: only the pinned UID can tell the pods apart.
    env.operator.as_mut().unwrap().kill();
    env.pods.delete("api", &DeleteParams::default().grace_period(0)).await.unwrap();
    env.wait_pod_gone("api").await;
    env.running_pod("api", &["app"], &[]).await;
    env.start_operator("admin");
    expect_failure(&env, "swapped", FailureReason::TargetGone, "pod api was replaced by a new pod of the same name")
        .await;
    assert!(env.ephemeral_names("api").await.is_empty(), "nothing goes into the new pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_session_stays_terminated_when_its_pod_goes() {
    let mut env = TestEnv::new("outlived").await;
    env.running_pod("batch", &["app"], &[]).await;
    env.create_session(&busybox_session("done", "{ pod: batch }", r#"["sh", "-c", "exit 2"]"#, "")).await;
    let finished = env.wait_phase("done", Phase::Terminated).await;
    env.pods.delete("batch", &DeleteParams::default().grace_period(0)).await.unwrap();
    env.wait_pod_gone("batch").await;
    // A finished session does not even listen to its pod any more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = env.sessions.get("done").await.unwrap();
    assert_eq!(untouched.metadata.resource_version, finished.metadata.resource_version, "no write, no reason to");
    // An operator that did not write that status itself checks it against the pod once.
    env.operator.as_mut().unwrap().kill();
    env.start_operator("admin");
    let session = env
        .wait_session("done", "the deletion noted", Duration::from_secs(60), |s| {
            s.status.as_ref().and_then(|st| st.message.as_deref()).is_some_and(|m| m.contains("since then, pod batch"))
        })
        .await;
    let status = session.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Terminated));
    assert_eq!(status.exit_code, Some(2));
    assert_eq!(
        status.finished_at,
        finished.status.unwrap().finished_at,
        "ttlSecondsAfterFinished still counts from the exit"
    );
}

/// Removes a static pod manifest from the kubelet's directory, even when the test fails.
struct StaticPodManifest(std::path::PathBuf);

impl Drop for StaticPodManifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn static_pod_is_refused_before_writing() {
    let env = TestEnv::new("static").await;
    let manifest = StaticPodManifest(crate::common::cluster_dir().join(format!("manifests/{}.yaml", env.namespace)));
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: node-agent\n  namespace: {}\nspec:\n  containers:\n  - name: agent\n    image: localhost/busybox:1.36\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n",
        env.namespace
    );
    std::fs::write(&manifest.0, pod).unwrap();
    // The kubelet publishes the static pod as the mirror pod <name>-<node>.
    env.wait_pod("node-agent-127.0.0.1", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    env.create_session(&sleeping_session("mirror", "{ pod: node-agent-127.0.0.1 }", "")).await;
    expect_failure(&env, "mirror", FailureReason::StaticPodUnsupported, "mirror of a static pod").await;
    assert!(env.ephemeral_names("node-agent-127.0.0.1").await.is_empty());
    drop(manifest);
}
