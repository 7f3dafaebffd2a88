//! Target churn: the pod goes away, or comes back under the same name, at
//! every point of a session's life. The reason is the documented one, the
//! message says what was observed, and nothing is ever added to a new pod.

use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, FailureReason, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};

use crate::common::{IMAGE, TestEnv, free_port, sleeping_session};
use crate::proxy::{HoldPoint, HttpProxy};
use crate::support::{self, operator, secs};

/// A pod whose container ignores TERM, so that a graceful deletion takes `grace` seconds.
fn stubborn_pod(name: &str, grace: i64) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "app", "image": IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
            }],
        }
    }))
    .unwrap()
}

async fn running(env: &TestEnv, pod: Pod) -> Pod {
    let name = pod.metadata.name.clone().unwrap();
    env.pods.create(&PostParams::default(), &pod).await.expect("create pod");
    env.wait_pod(&name, "Running", |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).await
}

async fn delete(env: &TestEnv, pod: &str, grace: Option<u32>) -> Instant {
    let params = DeleteParams { grace_period_seconds: grace, ..Default::default() };
    env.pods.delete(pod, &params).await.expect("delete pod");
    Instant::now()
}

/// Waits for the session to finish (Failed, or Terminated); returns it and how long after `since` that was seen.
async fn failed(env: &TestEnv, name: &str, since: Instant) -> (DebugSession, Duration) {
    let session = env
        .wait_session(name, "Failed or Terminated", Duration::from_secs(60), |s| {
            matches!(s.status.as_ref().and_then(|st| st.phase), Some(Phase::Failed | Phase::Terminated))
        })
        .await;
    (session, since.elapsed())
}

struct Case {
    name: &'static str,
    phase: Option<Phase>,
    reason: Option<FailureReason>,
    message: String,
    after: Duration,
    added_to_new_pod: usize,
}

/// The case ended Failed with `reason`, its message says one of `says` and none of `never`.
fn check(case: &Case, reason: FailureReason, says: &[&str], never: &[&str]) {
    assert_eq!((case.phase, case.reason), (Some(Phase::Failed), Some(reason)), "{}: {}", case.name, case.message);
    assert!(
        says.iter().any(|text| case.message.contains(text)),
        "{}: the message should say one of {says:?}: {}",
        case.name,
        case.message
    );
    for text in never {
        assert!(!case.message.contains(text), "{}: the message must not say {text:?}: {}", case.name, case.message);
    }
    assert_eq!(case.added_to_new_pod, 0, "{}: something was added to the new pod", case.name);
}

fn outcome(name: &'static str, session: &DebugSession, after: Duration, added_to_new_pod: usize) -> Case {
    let status = session.status.clone().unwrap_or_default();
    Case {
        name,
        phase: status.phase,
        reason: status.reason,
        message: status.message.unwrap_or_default(),
        after,
        added_to_new_pod,
    }
}

/// Before injection: the claim is written, the write to the pod is held while
/// the pod is deleted (and, with `recreate`, created again), then sent on.
async fn before_injection(
    env: &TestEnv,
    proxy: &HttpProxy,
    pod: &str,
    recreate: bool,
) -> (DebugSession, Duration, usize) {
    running(env, stubborn_pod(pod, 0)).await;
    proxy.arm(HoldPoint::BeforeInjection);
    env.create_session(&sleeping_session(pod, &format!("{{ pod: {pod} }}"), "")).await;
    let held = proxy.held(Duration::from_secs(30)).await;
    assert!(held.is_some(), "{pod}: the write to the pod was never sent");
    let gone = delete(env, pod, Some(0)).await;
    env.wait_pod_gone(pod).await;
    if recreate {
        running(env, stubborn_pod(pod, 0)).await;
    }
    proxy.pass();
    let (session, after) = failed(env, pod, gone).await;
    let added = if recreate { env.ephemeral_names(pod).await.len() } else { 0 };
    (session, after, added)
}

/// After injection: the session runs, then its pod is deleted (gracefully,
/// or at once), and with `recreate` created again under the same name.
async fn after_injection(
    env: &TestEnv,
    pod: &str,
    grace: Option<u32>,
    recreate: bool,
) -> (DebugSession, Duration, usize) {
    running(env, stubborn_pod(pod, 2)).await;
    env.create_session(&sleeping_session(pod, &format!("{{ pod: {pod} }}"), "")).await;
    env.wait_phase(pod, Phase::Running).await;
    let gone = delete(env, pod, grace).await;
    if recreate {
        env.wait_pod_gone(pod).await;
        running(env, stubborn_pod(pod, 2)).await;
    }
    let (session, after) = failed(env, pod, gone).await;
    let added = if recreate {
        // Give a wrong injection time to happen.
        tokio::time::sleep(Duration::from_secs(3)).await;
        env.ephemeral_names(pod).await.len()
    } else {
        0
    };
    (session, after, added)
}

/// While the debug container waits for an image that never comes, the pod is deleted.
async fn while_waiting(env: &TestEnv, pod: &str, grace: Option<u32>) -> (DebugSession, Duration, usize) {
    running(env, stubborn_pod(pod, 30)).await;
    let yaml = format!(
        "metadata: {{ name: {pod} }}\nspec:\n  target: {{ pod: {pod} }}\n  image: localhost/faults-no-such-image:1\n  imagePullPolicy: IfNotPresent\n"
    );
    env.create_session(&yaml).await;
    env.wait_session(pod, "waiting for its image", Duration::from_secs(60), |s| {
        s.status.as_ref().is_some_and(|st| st.phase == Some(Phase::Injected) && st.waiting_reason.is_some())
    })
    .await;
    let gone = delete(env, pod, grace).await;
    let (session, after) = failed(env, pod, gone).await;
    (session, after, 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn target_churn() {
    let _cluster = support::shared_cluster().await;
    let mut env = support::env("churn").await;
    let proxy = HttpProxy::start().await;
    env.operator = Some(operator(&env.namespace, &proxy.kubeconfig(&env.namespace), free_port(), &[], ""));
    let env = &env;

    // The two held cases share the proxy: one after the other, the rest meanwhile.
    let held = async {
        let (s, t, n) = before_injection(env, &proxy, "deleted-before", false).await;
        let first = outcome("deleted before injection", &s, t, n);
        let (s, t, n) = before_injection(env, &proxy, "recreated-before", true).await;
        (first, outcome("deleted and re-created before injection", &s, t, n))
    };
    let others = async {
        futures::join!(
            after_injection(env, "deleted-after", Some(0), false),
            after_injection(env, "graceful-after", None, false),
            after_injection(env, "recreated-after", Some(0), true),
            while_waiting(env, "graceful-waiting", None),
            while_waiting(env, "forced-waiting", Some(0)),
        )
    };
    let ((before, recreated_before), (deleted, graceful, recreated, graceful_waiting, forced_waiting)) =
        futures::join!(held, others);
    let cases = [
        before,
        recreated_before,
        outcome("deleted after injection", &deleted.0, deleted.1, deleted.2),
        outcome("deleted gracefully after injection", &graceful.0, graceful.1, graceful.2),
        outcome("deleted and re-created after injection", &recreated.0, recreated.1, recreated.2),
        outcome("deleted gracefully while the container waits", &graceful_waiting.0, graceful_waiting.1, 0),
        outcome("deleted at once while the container waits", &forced_waiting.0, forced_waiting.1, 0),
    ];
    let line = cases
        .iter()
        .map(|c| format!("{}: {:?}/{:?} after {} ({:?})", c.name, c.phase, c.reason, secs(c.after), c.message))
        .collect::<Vec<_>>()
        .join("; ");
    support::summary("target-churn", &line);
    check(&cases[0], FailureReason::TargetNotFound, &["pod deleted-before does not exist"], &[]);
    check(&cases[1], FailureReason::TargetNotFound, &["recreated-before"], &[]);
    check(
        &cases[2],
        FailureReason::TargetGone,
        &["pod deleted-after was deleted", "pod deleted-after is being deleted"],
        &[],
    );
    check(&cases[3], FailureReason::TargetGone, &["pod graceful-after is being deleted"], &["exited"]);
    // Deleted, then created again: the operator says what it saw, the gap or the new pod.
    check(
        &cases[4],
        FailureReason::TargetGone,
        // The first verdict stands: what was seen first, the deletion under way, the gap or the new pod.
        &[
            "pod recreated-after was deleted",
            "replaced by a new pod of the same name",
            "pod recreated-after is being deleted",
        ],
        &[],
    );
    check(&cases[5], FailureReason::TargetGone, &["pod graceful-waiting is being deleted"], &["is Running"]);
    check(&cases[6], FailureReason::TargetGone, &["pod forced-waiting"], &["is Running"]);
}
