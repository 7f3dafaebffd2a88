//! The controller trusts nothing it did not check: a forged status redirects
//! nothing, bad input ends in a clear answer, one bad object blinds nothing,
//! and every request earns its place.

use std::process::Command;
use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, FailureReason, Phase};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::api_proxy::{Mode, start_operator_behind_proxy};
use crate::common::{
    IMAGE, Operator, TestEnv, busybox_session, client_for, grant, kubectl, repo_root, sleeping_session,
};

/// Writes `status` (a JSON object) onto a session as `client` would, bypassing the operator.
async fn forge_status(sessions: &Api<DebugSession>, name: &str, status: serde_json::Value) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "status": status });
    sessions.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_status_redirects_nothing_and_is_corrected() {
    let env = TestEnv::new("forged-status").await;
    let victim = env.running_pod("payments", &["app"], &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    // alice may write the status of sessions, and nothing else.
    grant(
        &env.namespace,
        "alice",
        serde_json::json!([{ "apiGroups": ["ephemera.dev"], "resources": ["debugsessions", "debugsessions/status"], "verbs": ["get", "patch"] }]),
    );
    env.create_session(&sleeping_session("s", "{ pod: web }", "  profile: sysadmin\n")).await;
    env.wait_phase("s", Phase::Running).await;
    let alice: Api<DebugSession> = Api::namespaced(client_for("alice").await, &env.namespace);
    forge_status(
        &alice,
        "s",
        serde_json::json!({
            "podName": "payments", "podUID": victim.uid().unwrap(), "attempt": 0, "phase": "Terminated",
            "containers": [{ "name": "debugger-fake", "attempt": 0, "state": "Terminated" }],
        }),
    )
    .await
    .expect("alice may write the status");
    // Then the author asks for a fresh container: it must go to the spec's pod only.
    env.sessions
        .patch("s", &PatchParams::default(), &Patch::Merge(serde_json::json!({ "spec": { "attempt": 1 } })))
        .await
        .unwrap();
    let session = env
        .wait_session("s", "corrected", Duration::from_secs(30), |s| {
            s.status.as_ref().is_some_and(|st| {
                st.pod_name.as_deref() == Some("web")
                    && st.containers.iter().all(|c| c.name != "debugger-fake")
                    && st.observed_generation == s.metadata.generation
            })
        })
        .await;
    let status = session.status.unwrap();
    assert_eq!(status.pod_uid, env.pods.get("web").await.unwrap().uid(), "the status names the real pod again");
    assert_eq!(status.phase, Some(Phase::Running), "attempt 0 still runs, as the pod says");
    let reconciling = status.conditions.iter().find(|c| c.type_ == "Reconciling").unwrap();
    assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", "AttemptPending"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.ephemeral_names("payments").await.is_empty(), "nothing ever went into the victim pod");
    assert_eq!(env.ephemeral_names("web").await.len(), 1, "attempt 1 waits for the running attempt 0, as it should");
}

/// A script that stands in for kubectl and records how it was called.
fn recording_kubectl(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let script = dir.join("kubectl-recorder");
    let record = dir.join("kubectl-args");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", record.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(&record);
    (script, record)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plugin_never_runs_a_command_from_the_status() {
    let env = TestEnv::without_operator("forged-attach", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let session = env.create_session(&sleeping_session("s", "{ pod: web }", "")).await;
    let dir = repo_root().join("target").join(&env.namespace);
    std::fs::create_dir_all(&dir).unwrap();
    let (script, record) = recording_kubectl(&dir);
    let evil = "create clusterrolebinding evil --clusterrole=cluster-admin --user=alice";
    let plugin = |ns: &str| {
        Command::new(env!("CARGO_BIN_EXE_kubectl-ephemera"))
            .args(["attach", "s", "-n", ns, "--timeout", "5s"])
            .env("KUBECONFIG", crate::common::kubeconfig())
            .env("KUBECTL", &script)
            .output()
            .unwrap()
    };

    // A status that names a container the pod does not hold: refused.
    let forged = |container: &str| serde_json::json!({ "phase": "Running", "attempt": 0, "podName": "web", "containerName": container, "attachCommand": evil });
    forge_status(&env.sessions, "s", forged("debugger-none")).await.unwrap();
    let output = plugin(&env.namespace);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("refusing to attach"), "{text}");
    assert!(!record.exists(), "kubectl must not have run");

    // The real container of the session: kubectl gets arguments built from names, not the forged line.
    let name = env.inject_as(&session, "web").await;
    forge_status(&env.sessions, "s", forged(&name)).await.unwrap();
    let output = plugin(&env.namespace);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let args = std::fs::read_to_string(&record).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args, ["attach", "-it", "-n", env.namespace.as_str(), "web", "-c", name.as_str()]);
    let (_, bindings) = kubectl(&["get", "clusterrolebinding", "evil"]);
    assert!(bindings.contains("NotFound"), "{bindings}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_at_admission_or_fails_within_seconds() {
    let env = TestEnv::new("bad-input").await;
    env.running_pod("web", &["app"], &[]).await;
    // (name, target, extra spec lines, the reason if admission lets it through)
    let cases: &[(&str, &str, &str, Option<FailureReason>)] = &[
        ("empty-pod", r#"{ pod: "" }"#, "", None),
        ("dotdot", r#"{ pod: "../../x" }"#, "", None),
        ("space", r#"{ pod: "a b" }"#, "", None),
        ("nul", "{ pod: \"a\\0b\" }", "", None),
        ("subresource", r#"{ pod: "tgt/ephemeralcontainers" }"#, "", None),
        ("both", r#"{ pod: web, selector: { matchLabels: { app: web } } }"#, "", None),
        ("neither", "{ container: app }", "", None),
        ("selector-key", r#"{ selector: { matchLabels: { "a b": x } } }"#, "", None),
        ("selector-value", r#"{ selector: { matchLabels: { app: "x y" } } }"#, "", None),
        ("selector-op", r#"{ selector: { matchExpressions: [{ key: app, operator: Near, values: [x] }] } }"#, "", None),
        ("selector-empty", "{ selector: {} }", "", None),
        ("container", r#"{ pod: web, container: "A B" }"#, "", None),
        ("container-name", "{ pod: web }", "  containerName: Not_A_Label\n", None),
        ("ttl-overflow", "{ pod: web }", "  ttlSecondsAfterFinished: 99999999999\n", None),
        ("attempt-negative", "{ pod: web }", "  attempt: -1\n", None),
        ("timeout-zero", "{ pod: web }", "  startTimeoutSeconds: 0\n", None),
        ("image-uppercase", "{ pod: web }", "", Some(FailureReason::Invalid)),
        ("no-such-container", r#"{ pod: web, container: nope }"#, "", Some(FailureReason::TargetContainerNotFound)),
        ("no-such-pod", "{ pod: nope }", "", Some(FailureReason::TargetNotFound)),
        ("env-name", "{ pod: web }", "  env: [{ name: \"A=B\", value: x }]\n", Some(FailureReason::Invalid)),
    ];
    for (name, target, extra, reason) in cases {
        let image = if *name == "image-uppercase" { "Localhost/BusyBox:1.36" } else { IMAGE };
        let yaml = format!(
            "metadata: {{ name: {name} }}\nspec:\n  target: {target}\n  image: {image}\n  command: [sleep, \"60\"]\n{extra}"
        );
        let session: Result<DebugSession, _> = serde_saphyr::from_str(&yaml);
        let created = match session {
            // Some of these do not even make a DebugSession in Rust; send them as JSON as kubectl would.
            Ok(session) => env.sessions.create(&PostParams::default(), &session).await.map(|_| ()),
            Err(_) => {
                let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
                let mut object = value.clone();
                object["apiVersion"] = "ephemera.dev/v1alpha1".into();
                object["kind"] = "DebugSession".into();
                let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
                    env.client.clone(),
                    &env.namespace,
                    &kube::discovery::ApiResource::erase::<DebugSession>(&()),
                );
                raw.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.map(|_| ())
            }
        };
        match (reason, created) {
            (None, Err(kube::Error::Api(status))) => {
                assert!(status.code == 422 || status.code == 400, "{name}: {status:?}");
            }
            (None, other) => panic!("{name}: admission should have refused it, got {other:?}"),
            (Some(reason), Ok(())) => {
                let started = Instant::now();
                let session = env
                    .wait_session(name, "Failed", Duration::from_secs(10), |s| {
                        s.status.as_ref().is_some_and(|st| st.phase == Some(Phase::Failed))
                    })
                    .await;
                assert_eq!(session.status.unwrap().reason, Some(*reason), "{name}");
                assert!(started.elapsed() < Duration::from_secs(10), "{name}");
            }
            (Some(_), Err(error)) => panic!("{name}: should pass admission and fail in the controller: {error}"),
        }
    }
    assert!(env.ephemeral_names("web").await.is_empty(), "no bad input reached the pod");
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_deleted_while_the_container_waits_is_target_gone() {
    let env = TestEnv::new("gone-waiting").await;
    env.running_pod("web", &["app"], &[]).await;
    // A pull that never succeeds keeps the container waiting.
    env.create_session(
        "metadata: { name: s }\nspec:\n  target: { pod: web }\n  image: localhost/not-imported:1\n  imagePullPolicy: IfNotPresent\n",
    )
    .await;
    env.wait_phase("s", Phase::Injected).await;
    env.pods.delete("web", &DeleteParams::default()).await.unwrap();
    let session = env.wait_phase("s", Phase::Failed).await;
    let status = session.status.unwrap();
    assert_eq!(status.reason, Some(FailureReason::TargetGone), "{:?}", status.message);
    let message = status.message.unwrap();
    assert!(message.contains("pod web is being deleted") || message.contains("pod web was deleted"), "{message}");
    assert!(!message.contains("is Running"), "the message states what was observed: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_deleted_before_its_claim_gets_no_container() {
    let mut env = TestEnv::without_operator("deleted-early", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    // Every status write, the claim too, is held back by the proxy; each session
    // is deleted while its claim is held, so the deletion lands between the
    // operator's decision and its claim: the claim must fail, and nothing be added.
    let proxy = start_operator_behind_proxy(&mut env, Mode::SlowStatusWrites(Duration::from_secs(1))).await;
    for i in 0..20 {
        let name = format!("early-{i}");
        env.create_session(&sleeping_session(&name, "{ pod: web }", "")).await;
        proxy.wait_held(&format!("/debugsessions/{name}/status")).await;
        env.sessions.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    // One that is not deleted shows the operator was at work all along.
    env.create_session(&sleeping_session("kept", "{ pod: web }", "")).await;
    let kept = env.wait_phase("kept", Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.ephemeral_names("web").await, vec![kept.status.unwrap().container_name.unwrap()]);
    // The race was run every time: each deleted session's claim was refused.
    let refused: std::collections::BTreeSet<String> = proxy
        .requests
        .since(0)
        .iter()
        .filter(|r| {
            r.method == http::Method::PATCH && r.bare_path().ends_with("/status") && [404, 409].contains(&r.status)
        })
        .filter_map(|r| r.bare_path().strip_suffix("/status")?.rsplit('/').next().map(str::to_string))
        .collect();
    assert_eq!(refused.len(), 20, "refused claims: {refused:?}; {:?}", proxy.non_watch_requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_waits_for_the_first_sync_and_a_taken_port_stops_startup() {
    let env = TestEnv::without_operator("health", &[]).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    let mut operator = Operator::start(&env.namespace, "admin", &taken);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = operator.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the operator kept running on a taken port");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(log.contains(&format!("cannot serve /metrics, /healthz and /readyz on {taken}")), "{log}");
    assert!(log.contains("ERROR ephemera: cannot go on: cannot serve"), "worded in the log, not dumped: {log}");
    drop(listener);

    // Ready only once the sessions are listed and the pod watch has its starting
    // point: never before, always after. The pods' version (a list of one pod)
    // takes two seconds here, so "before" lasts long enough to see.
    let mut env = env;
    let port = crate::common::free_port();
    let _proxy = crate::api_proxy::start_operator_behind_proxy_with_metrics(
        &mut env,
        Mode::SlowPodLists(Duration::from_secs(2)),
        port,
    )
    .await;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/readyz")])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&output.stdout).to_string();
        if seen.last() != Some(&code) {
            seen.push(code.clone());
        }
        if code == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {seen:?}\n{}", env.operator_log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_ready = seen.iter().position(|c| c == "200").unwrap();
    assert!(seen[..first_ready].contains(&"503".to_string()), "not ready until the lists are in: {seen:?}");
    // Its log goes to a file, as `kubectl logs` shows it: plain text, no terminal colour codes.
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(log.contains("INFO ephemera::controller: watching"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log that is no terminal: {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_earns_its_place() {
    let mut env = TestEnv::without_operator("api-cost", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    let port = crate::common::free_port();
    let proxy = crate::api_proxy::start_operator_behind_proxy_with_metrics(&mut env, Mode::PassThrough, port).await;
    let kubelet_delays = tokio::spawn(kubelet_delays(env.pods.clone(), "web"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.create_session(&busybox_session(
        "one",
        "{ pod: web }",
        r#"["sh", "-c", "sleep 2"]"#,
        "  stdin: false\n  tty: false\n",
    ))
    .await;
    env.wait_phase("one", Phase::Terminated).await;
    // The claim, Running, Terminated. Injected is written too when the kubelet starts
    // the container later than the operator waits, and a waiting reason of its own
    // when the kubelet is silent for that long.
    let delays = kubelet_delays.await.unwrap();
    let status_writes = proxy.count(&http::Method::PATCH, "/debugsessions/one/status");
    eprintln!("status writes: {status_writes}; after the container was added, the kubelet {delays:?}");
    let in_time = |delay: Duration| delay + Duration::from_millis(500) < ephemera::first_report::WAIT;
    let allowed = match (in_time(delays.first_report), in_time(delays.started)) {
        (_, true) => 3,
        (true, false) => 4,
        (false, false) => 5,
    };
    assert!(
        status_writes <= allowed,
        "{status_writes} status writes (after the container was added, the kubelet {delays:?}): {:#?}",
        proxy.non_watch_requests()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = crate::common::scrape(port).await;
    let reconciles = crate::common::metric(&metrics, "ephemera_reconciliations_total");
    let pod_gets = proxy.count(&http::Method::GET, "/pods/web");
    assert!(
        pod_gets as f64 <= reconciles,
        "{pod_gets} pod reads in {reconciles} reconciles: {:#?}",
        proxy.non_watch_requests()
    );
    assert_eq!(proxy.count(&http::Method::PATCH, "/ephemeralcontainers"), 1, "one write per container");

    // Fifty finished sessions (and the one above) sit idle: nothing is asked of the API server.
    for i in 0..50 {
        env.create_session(&busybox_session(
            &format!("idle-{i}"),
            "{ pod: web }",
            r#"["true"]"#,
            "  stdin: false\n  tty: false\n",
        ))
        .await;
    }
    for i in 0..50 {
        env.wait_phase(&format!("idle-{i}"), Phase::Terminated).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proxy.non_watch_requests().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during: Vec<_> = proxy.non_watch_requests().into_iter().skip(before).collect();
    assert!(during.is_empty(), "requests while idle: {during:#?}");
}

#[derive(Debug)]
struct KubeletDelays {
    /// From the container in the pod's spec to the kubelet's first report on it.
    first_report: Duration,
    /// From the container in the pod's spec to the kubelet reporting it started.
    started: Duration,
}

/// How long the kubelet took to report on, and to start, the first debug container of pod `name`.
async fn kubelet_delays(pods: Api<k8s_openapi::api::core::v1::Pod>, name: &str) -> KubeletDelays {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(pods, config).default_backoff().applied_objects().boxed();
    let (mut added, mut first_report) = (None, None);
    let watched = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(pod) = events.try_next().await.ok().flatten() {
            let in_spec =
                pod.spec.as_ref().and_then(|s| s.ephemeral_containers.as_ref()).is_some_and(|c| !c.is_empty());
            let reports = pod.status.as_ref().and_then(|s| s.ephemeral_container_statuses.clone()).unwrap_or_default();
            let started = reports
                .iter()
                .any(|r| r.state.as_ref().is_some_and(|state| state.running.is_some() || state.terminated.is_some()));
            if in_spec && added.is_none() {
                added = Some(Instant::now());
            }
            let Some(at) = added else { continue };
            if !reports.is_empty() && first_report.is_none() {
                first_report = Some(at.elapsed());
            }
            if let (true, Some(first_report)) = (started, first_report) {
                return KubeletDelays { first_report, started: at.elapsed() };
            }
        }
        panic!("the pod watch ended");
    });
    watched.await.expect("the kubelet started the debug container within 90 s")
}
