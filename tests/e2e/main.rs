//! End-to-end tests of the controller against the real local cluster
//! (tests/cluster, full mode: kube-apiserver, kubelet, containerd).

mod admission;
mod api_proxy;
mod common;
mod corpus;
mod examples;
mod failures;
mod gitops;
mod in_cluster;
mod interactive;
mod leader;
#[path = "../support/markdown.rs"]
mod markdown;
mod personas;
mod plugin;
mod pod_security;
#[allow(dead_code)] // shared with benches/ephemera, which uses the rest of it
mod proxy;
mod reach;
mod security;
mod terminal;
mod trust;
mod tutorial;

use std::time::Duration;

use common::{IMAGE, TestEnv, kubectl, kubectl_patch_session, sleeping_session};
use ephemera::crd::{ContainerState, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};

fn condition(session: &ephemera::crd::DebugSession, type_: &str) -> String {
    let status = session.status.as_ref().expect("status");
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn session_goes_through_every_phase_to_terminated() {
    let env = TestEnv::new("lifecycle").await;
    env.running_pod("web", &["app", "sidecar"], &[]).await;
    let recorder =
        tokio::spawn(common::record_phases(env.sessions.clone(), "dbg", Phase::Terminated, Duration::from_secs(90)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.create_session(
        r#"
metadata: { name: dbg }
spec:
  target: { pod: web }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  command: ["sh", "-c", "ps; sleep 3; exit 3"]
  stdin: false
  tty: false
"#,
    )
    .await;
    let phases = recorder.await.unwrap();
    // Injected is written only when the kubelet takes longer than the operator
    // waits for it to start the container; otherwise the Injected event tells it.
    let without_injected: Vec<_> = phases.iter().copied().filter(|p| *p != Phase::Injected).collect();
    assert_eq!(without_injected, vec![Phase::Pending, Phase::Running, Phase::Terminated], "{phases:?}");
    assert!(phases.iter().filter(|p| **p == Phase::Injected).count() <= 1, "{phases:?}");

    let session = env.wait_phase("dbg", Phase::Terminated).await;
    let status = session.status.clone().unwrap();
    let name = status.container_name.clone().unwrap();
    assert!(name.starts_with("debugger-") && name.len() == "debugger-".len() + 5, "{name}");
    assert_eq!(status.pod_name.as_deref(), Some("web"));
    assert_eq!(status.pod_uid, env.pods.get("web").await.unwrap().metadata.uid);
    assert_eq!(status.target_container_name.as_deref(), Some("app"), "defaults to the first container");
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.exit_reason.as_deref(), Some("Error"), "the kubelet's reason");
    assert!(status.finished_at.is_some() && status.started_at.is_some());
    assert_eq!(status.attach_command, None);
    assert!(status.message.as_deref().unwrap().contains("cannot be restarted or removed"));
    assert_eq!(condition(&session, "Attachable"), "False");
    assert_eq!(condition(&session, "Ready"), "True");
    assert_eq!(status.containers.len(), 1);
    assert_eq!(status.containers[0].state, ContainerState::Terminated);
    assert_eq!(status.containers[0].exit_code, Some(3));
    assert_eq!(status.observed_generation, session.metadata.generation);
    assert_eq!(env.ephemeral_names("web").await, vec![name.clone()]);

    // The debug container saw the target's processes (shared process namespace).
    let (ok, logs) = kubectl(&["logs", "-n", &env.namespace, "web", "-c", &name]);
    assert!(ok, "{logs}");
    assert!(logs.contains("sleep 3600"), "ps should list the target's sleep:\n{logs}");
    let (attached, output) = kubectl(&["attach", "-n", &env.namespace, "web", "-c", &name]);
    assert!(!attached, "attaching to a terminated ephemeral container must fail: {output}");

    let events = env.expect_events("dbg", &["Injected", "Running", "Terminated"]).await;
    assert!(!events.iter().any(|e| e == "TargetSelected"), "the pod the spec names is not announced: {events:?}");
    let (_, wide) = kubectl(&["get", "dbgs", "-n", &env.namespace, "-o", "wide"]);
    assert!(wide.contains("Terminated") && wide.contains(&name), "{wide}");
}

#[tokio::test(flavor = "multi_thread")]
async fn raising_attempt_adds_a_fresh_container_and_keeps_the_old() {
    let env = TestEnv::new("renew").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(
        r#"
metadata: { name: renew }
spec:
  target: { pod: web }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  containerName: dbg
  command: ["sh", "-c", "exit 0"]
  stdin: false
  tty: false
"#,
    )
    .await;
    env.wait_phase("renew", Phase::Terminated).await;

    // Only spec.attempt may change, and only upwards (CEL in the CRD).
    let (ok, out) = kubectl_patch_session(None, &env.namespace, "renew", r#"{"spec":{"image":"other"}}"#);
    assert!(!ok && out.contains("spec is immutable except for spec.attempt"), "{out}");

    let raise = |attempt: i32| serde_json::json!({ "spec": { "attempt": attempt } });
    env.sessions.patch("renew", &PatchParams::default(), &Patch::Merge(raise(1))).await.unwrap();
    let session = env
        .wait_session("renew", "Terminated at attempt 1", Duration::from_secs(90), |s| {
            s.status.as_ref().is_some_and(|st| st.attempt == 1 && st.phase == Some(Phase::Terminated))
        })
        .await;
    let status = session.status.unwrap();
    assert_eq!(status.container_name.as_deref(), Some("dbg-1"));
    let recorded: Vec<_> = status.containers.iter().map(|c| (c.name.as_str(), c.attempt, c.state)).collect();
    assert_eq!(recorded, vec![("dbg", 0, ContainerState::Terminated), ("dbg-1", 1, ContainerState::Terminated)]);
    let mut in_pod = env.ephemeral_names("web").await;
    in_pod.sort();
    assert_eq!(in_pod, vec!["dbg", "dbg-1"]);

    let (ok, out) = kubectl_patch_session(None, &env.namespace, "renew", r#"{"spec":{"attempt":0}}"#);
    assert!(!ok && out.contains("spec.attempt may only be raised"), "{out}");

    let (ok, explained) = kubectl(&["explain", "debugsession.spec.attempt"]);
    // kubectl wraps the text; compare it unwrapped.
    let explained = explained.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(ok && explained.contains("The only field that may change, and only upwards."), "{explained}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sessions_and_kubectl_debug_on_one_pod_all_land() {
    let env = TestEnv::new("concurrent").await;
    env.running_pod("web", &["app"], &[]).await;
    let session = |name: &str| sleeping_session(name, "{ pod: web }", "");
    let namespace = env.namespace.clone();
    let human = tokio::task::spawn_blocking(move || {
        kubectl(&[
            "debug",
            "-n",
            &namespace,
            "web",
            "--image=localhost/busybox:1.36",
            "--image-pull-policy=Never",
            "-c",
            "human",
            "--",
            "sleep",
            "600",
        ])
    });
    let yamls = [session("one"), session("two"), session("three")];
    tokio::join!(env.create_session(&yamls[0]), env.create_session(&yamls[1]), env.create_session(&yamls[2]));
    let (ok, out) = human.await.unwrap();
    assert!(ok, "{out}");
    let mut names = Vec::new();
    for s in ["one", "two", "three"] {
        let session = env.wait_phase(s, Phase::Running).await;
        assert_eq!(condition(&session, "Attachable"), "True");
        let status = session.status.unwrap();
        assert_eq!(
            status.attach_command.as_deref(),
            Some(
                format!("kubectl attach -it -n {} web -c {}", env.namespace, status.container_name.as_deref().unwrap())
                    .as_str()
            )
        );
        names.push(status.container_name.unwrap());
    }
    let mut in_pod = env.ephemeral_names("web").await;
    in_pod.sort();
    let mut expected = names.clone();
    expected.push("human".into());
    expected.sort();
    assert_eq!(in_pod, expected, "every writer's container is in the pod, each exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn selector_picks_a_running_ready_pod_and_pins_it() {
    let env = TestEnv::new("selector").await;
    env.running_pod("old", &["app"], &[("app", "web")]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.running_pod("new", &["app"], &[("app", "web")]).await;
    env.running_pod("other", &["app"], &[("app", "db")]).await;
    // The newest of all runs but is never Ready: Ready wins over new.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unready: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "newest-unready", "labels": { "app": "web" } },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "600"],
                "readinessProbe": { "exec": { "command": ["false"] }, "periodSeconds": 1 },
            }],
        }
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &unready).await.unwrap();
    env.wait_pod("newest-unready", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    env.create_session(
        r#"
metadata: { name: pick }
spec:
  target: { selector: { matchLabels: { app: web } } }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  command: ["sleep", "600"]
"#,
    )
    .await;
    let session = env.wait_phase("pick", Phase::Running).await;
    let status = session.status.unwrap();
    assert_eq!(status.pod_name.as_deref(), Some("new"), "the newest Ready pod");
    assert_eq!(env.ephemeral_names("new").await.len(), 1);
    assert!(env.ephemeral_names("old").await.is_empty());
    assert!(env.ephemeral_names("newest-unready").await.is_empty());
    env.expect_events("pick", &["TargetSelected"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_session_is_deleted_after_its_ttl() {
    let env = TestEnv::new("ttl").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(
        r#"
metadata: { name: short }
spec:
  target: { pod: web }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  command: ["true"]
  stdin: false
  tty: false
  ttlSecondsAfterFinished: 3
"#,
    )
    .await;
    let session = env.wait_phase("short", Phase::Terminated).await;
    let finished = session.status.unwrap().finished_at.unwrap().0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while env.sessions.get_opt("short").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "session not deleted after its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deleted_after = k8s_openapi::jiff::Timestamp::now().duration_since(finished);
    assert!(deleted_after.as_secs_f64() >= 3.0, "deleted too early: {deleted_after:?} after finishing");
    assert_eq!(env.ephemeral_names("web").await.len(), 1, "the container stays in the pod (it cannot be removed)");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_restart_mid_session_does_not_inject_twice() {
    let mut env = TestEnv::new("restart").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(
        r#"
metadata: { name: survive }
spec:
  target: { pod: web }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  command: ["sh", "-c", "sleep 8; exit 4"]
"#,
    )
    .await;
    env.wait_phase("survive", Phase::Running).await;
    env.operator.as_mut().unwrap().kill();
    env.start_operator("admin");
    let session = env.wait_phase("survive", Phase::Terminated).await;
    assert_eq!(session.status.unwrap().exit_code, Some(4));
    assert_eq!(env.ephemeral_names("web").await.len(), 1, "no duplicate after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_injected_before_a_crash_is_adopted() {
    let mut env = TestEnv::without_operator("adopt", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let session = env
        .create_session(
            r#"
metadata: { name: crashed }
spec:
  target: { pod: web }
  image: localhost/busybox:1.36
  imagePullPolicy: Never
  command: ["sleep", "600"]
"#,
        )
        .await;
    // What an operator that crashed right after its patch leaves behind: the
    // container in the pod, no status on the session.
    let name = env.inject_as(&session, "web").await;
    env.start_operator("admin");
    let session = env.wait_phase("crashed", Phase::Running).await;
    assert_eq!(session.status.unwrap().container_name.as_deref(), Some(name.as_str()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.ephemeral_names("web").await, vec![name], "adopted, not injected again");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served() {
    let mut env = TestEnv::without_operator("metrics", &[]).await;
    let port = common::free_port();
    env.operator = Some(common::Operator::start(&env.namespace, "admin", &format!("127.0.0.1:{port}")));
    env.running_pod("web", &["app"], &[]).await;
    env.create_session("metadata: { name: m }\nspec:\n  target: { pod: nope }\n  image: localhost/busybox:1.36\n")
        .await;
    env.wait_phase("m", Phase::Failed).await;
    // The transition is counted once the status write is answered: the test's
    // watch can see the write before the operator has read the answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut body = common::scrape(port).await;
    while common::metric(&body, "ephemera_reconciles_in_flight") > 0.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        body = common::scrape(port).await;
    }
    assert!(body.contains("ephemera_reconciliations_total"), "{body}");
    assert!(body.contains(r#"ephemera_session_transitions_total{phase="Failed",reason="TargetNotFound"} 1"#), "{body}");

    // A pod is kept in memory only while an unfinished session targets it: once its last
    // session finishes, the copy goes, though the pod lives on and sends no further event.
    env.create_session(&common::busybox_session("done", "{ pod: web }", r#"["true"]"#, "")).await;
    env.wait_phase("done", Phase::Terminated).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = common::scrape(port).await;
        if common::metric(&text, "ephemera_pods_cached") == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the finished session's pod is still kept:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.pods.get("web").await.unwrap().status.unwrap().phase.as_deref(), Some("Running"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_operators_racing_never_inject_twice() {
    let mut env = TestEnv::new("two-operators").await;
    let second = common::Operator::start(&env.namespace, "admin", "127.0.0.1:0");
    env.running_pod("web-a", &["app"], &[("app", "web")]).await;
    env.running_pod("web-b", &["app"], &[("app", "web")]).await;
    let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    for name in &names {
        // Half by name, half by selector (where two racing operators could pick different pods).
        let target = if name.ends_with(['0', '2', '4']) {
            "{ pod: web-a }"
        } else {
            "{ selector: { matchLabels: { app: web } } }"
        };
        env.create_session(&sleeping_session(name, target, "")).await;
    }
    for name in &names {
        env.wait_phase(name, Phase::Running).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let in_pods = [env.ephemeral_names("web-a").await, env.ephemeral_names("web-b").await].concat();
    assert_eq!(in_pods.len(), names.len(), "one container per session, no more: {in_pods:?}");
    let mut unique = in_pods.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), in_pods.len(), "{in_pods:?}");
    drop(second);
    env.operator.take();
}
