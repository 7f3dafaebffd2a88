//! The cluster's own daemons stop and start again under a running operator:
//! the API server, etcd, the kubelet (tests/cluster/restart.sh). These need
//! the cluster to themselves; `make test-faults` gives them an instance of
//! their own.

use std::process::Command;
use std::time::{Duration, Instant};

use ephemera::crd::{FailureReason, Phase};
use kube::Client;

use crate::common::cpu_time;
use crate::common::{
    Operator, TestEnv, busybox_session, client_for, cluster_dir, free_port, repo_root, sleeping_session,
};
use crate::proxy::{HttpProxy, Logged};
use crate::support::{self, Want, converge, create_sessions, operator, running_pods, secs};

/// `tests/cluster/restart.sh ARGS...` on this test binary's cluster.
fn restart(args: &[&str]) {
    let output = Command::new(repo_root().join("tests/cluster/restart.sh"))
        .args(args)
        .env("EPHEMERA_CLUSTER_DIR", cluster_dir())
        .output()
        .expect("run restart.sh");
    assert!(
        output.status.success(),
        "restart.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn readyz(client: &Client) -> bool {
    let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
    matches!(tokio::time::timeout(Duration::from_secs(2), client.request_text(request)).await, Ok(Ok(text)) if text == "ok")
}

/// Waits until the API server's /readyz says ok; returns when it first did.
async fn until_ready(client: &Client, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if readyz(client).await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "the API server was not ready again within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests per second in each whole second of `requests` from `from` on.
fn per_second(requests: &[Logged], from: Instant, to: Instant) -> Vec<usize> {
    let seconds = (to - from).as_secs() as usize;
    let mut counts = vec![0; seconds.max(1)];
    for r in requests {
        if let Some(i) = r.at.checked_duration_since(from).map(|d| d.as_secs() as usize)
            && i < counts.len()
        {
            counts[i] += 1;
        }
    }
    counts
}

/// Sessions in flight when `component` is killed; it stays down `down`, then
/// comes back. Returns the summary line and how long after /readyz new work was done.
async fn server_restart(test: &str, component: &str, down: Duration) -> (String, Duration) {
    let name = format!("restart-{component}");
    let mut env = support::env(&name).await;
    let pods = running_pods(&env, "web", 4).await;
    let proxy = HttpProxy::start().await;
    let port = free_port();
    env.operator = Some(operator(&env.namespace, &proxy.kubeconfig(&env.namespace), port, &[], ""));
    let pid = env.operator.as_ref().unwrap().pid();
    let session = |i: usize| sleeping_session(&format!("s-{i}"), &format!("{{ pod: {} }}", pods[i % pods.len()]), "");
    create_sessions(&env, (0..8).map(session).collect(), 8).await;
    let (census, _) = converge(&env, Duration::from_secs(60), |_| Want::RUNNING).await;
    assert!(census.clean(), "before the restart: {:?}", census.problems);

    // A second batch, and the component killed while it is being served.
    create_sessions(&env, (8..16).map(session).collect(), 8).await;
    restart(&["--stop", "--kill", component]);
    let stopped = Instant::now();
    let cpu_before = cpu_time(pid);
    tokio::time::sleep(down).await;
    let cpu_down = cpu_time(pid) - cpu_before;
    let down_until = Instant::now();
    restart(&["--start", component]);
    let admin = client_for("admin").await;
    let ready = until_ready(&admin, Duration::from_secs(120)).await;
    let exited = env.operator.as_mut().unwrap().try_wait();

    // New work: a session created as soon as the server is ready.
    env.create_session(&session(16)).await;
    proxy.write_log(&env.namespace, stopped);
    env.wait_session("s-16", "Injected or Running", Duration::from_secs(60), |s| {
        matches!(s.status.as_ref().and_then(|st| st.phase), Some(Phase::Injected | Phase::Running))
    })
    .await;
    let reported_at = Instant::now();
    // New work is the operator's write of the container into its pod; its
    // status follows once the kubelet has said a first word on it or been
    // silent for 2 s (docs/status.md), and a kubelet still starting the
    // containers added before the restart keeps talking.
    let injected = proxy
        .first_injection_done(&format!("{}/s-16", env.namespace), ready)
        .expect("s-16 is Injected or Running, so its container was written through the proxy");
    let new_work_after = injected - ready;
    let status_due = Want::running_added_at(Some(injected)).held_until.expect("a wait from the addition");
    let (census, times) = converge(&env, Duration::from_secs(90), |_| Want::RUNNING).await;

    // While the server was away: how many requests, and how they were spread.
    let log = proxy.log();
    let while_down: Vec<Logged> = log.iter().filter(|r| r.at >= stopped && r.at < down_until).cloned().collect();
    let rates = per_second(&while_down, stopped, down_until);
    // Bounded: in the second half of the outage, at most two tries per session
    // (each backs off exponentially) and a try per watch every 2 s.
    let half = rates.len() / 2;
    let second_half: usize = rates[half..].iter().sum();
    let bound = 2 * 16 + 2 * (half / 2 + 1);
    let line = format!(
        "{component} down {} (killed, then started with its recorded command line), /readyz {} after the start; operator: exited={} cpu while down={} requests while down={} ({:.1}/s; {second_half} in the second half, bound {bound}; per second: {rates:?}); new work in the pod {} after /readyz (its status said so {} after); {} sessions={} all running {} after /readyz (every container in its pod and every status true after {})",
        secs(down),
        secs(ready - down_until),
        exited.is_some(),
        secs(cpu_down),
        while_down.len(),
        while_down.len() as f64 / down.as_secs_f64(),
        secs(new_work_after),
        secs(reported_at - ready),
        census.figures(),
        census.sessions,
        times.clean.map_or("never".into(), |t| secs(t - ready)),
        times.operator_done.map_or("never".into(), |t| secs(t.saturating_duration_since(ready))),
    );
    support::summary(test, &line);
    proxy.write_log(&env.namespace, stopped);
    assert!(exited.is_none(), "the operator exited: {line}");
    assert!(census.clean(), "{line}\n{:?}\n{}", census.problems, env.operator_log_tail());
    assert!(second_half <= bound, "the operator kept asking the absent server: {line}");
    assert!(cpu_down < down / 10, "the operator spun while the server was away: {line}");
    assert!(reported_at <= status_due, "the status waited longer than the kubelet's first word may hold it: {line}");
    (line, new_work_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn api_server_restart() {
    let _cluster = support::exclusive_cluster().await;
    let (line, new_work) = server_restart("api-server-restart", "kube-apiserver", Duration::from_secs(20)).await;
    assert!(new_work <= Duration::from_secs(5), "new work more than 5 s after /readyz: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restart() {
    let _cluster = support::exclusive_cluster().await;
    server_restart("etcd-restart", "etcd", Duration::from_secs(20)).await;
}

/// What a session said at one moment.
fn phase_of(env_sessions: &[ephemera::crd::DebugSession], name: &str) -> (Option<Phase>, Option<FailureReason>) {
    env_sessions
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.status.as_ref())
        .map_or((None, None), |st| (st.phase, st.reason))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubelet_absent() {
    let _cluster = support::exclusive_cluster().await;
    let mut env: TestEnv = support::env("kubelet-absent").await;
    env.running_pod("web", &["app"], &[]).await;
    let port = free_port();
    env.operator = Some(Operator::start(&env.namespace, "admin", &format!("127.0.0.1:{port}")));
    // Before: one that keeps running, one whose process exits while the kubelet is away.
    env.create_session(&sleeping_session("running", "{ pod: web }", "")).await;
    env.create_session(&busybox_session("exits", "{ pod: web }", r#"["sh", "-c", "sleep 12; exit 7"]"#, "")).await;
    env.wait_phase("running", Phase::Running).await;
    env.wait_phase("exits", Phase::Running).await;

    restart(&["--stop", "kubelet"]);
    let stopped = Instant::now();
    // While it is away: one with a start timeout shorter than the outage, one without.
    env.create_session(&sleeping_session("short-timeout", "{ pod: web }", "  startTimeoutSeconds: 15\n")).await;
    env.create_session(&sleeping_session("waits", "{ pod: web }", "")).await;
    let timed_out = env
        .wait_session("short-timeout", "Failed/StartTimeout", Duration::from_secs(60), |s| {
            s.status.as_ref().is_some_and(|st| st.reason == Some(FailureReason::StartTimeout))
        })
        .await;
    let timeout_message = timed_out.status.unwrap().message.unwrap_or_default();
    let outage = Duration::from_secs(40);
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    let during = env.sessions.list(&Default::default()).await.unwrap().items;
    restart(&["--start", "kubelet"]);
    let back = Instant::now();

    let running = env.wait_phase("running", Phase::Running).await;
    let exited = env.wait_phase("exits", Phase::Terminated).await;
    let exits_after = back.elapsed();
    let recovered = env.wait_phase("short-timeout", Phase::Running).await;
    let recovered_after = back.elapsed();
    env.wait_phase("waits", Phase::Running).await;
    let waits_after = back.elapsed();
    let (census, _) = converge(&env, Duration::from_secs(30), |s| {
        if s.metadata.name.as_deref() == Some("exits") { Want::terminated() } else { Want::RUNNING }
    })
    .await;
    let line = format!(
        "kubelet away {}: while away running={:?} exits={:?} short-timeout={:?} waits={:?} (\"{}\"); after it came back: exits Terminated with {:?} after {}, short-timeout Running after {}, waits Running after {}; {}",
        secs(back - stopped),
        phase_of(&during, "running"),
        phase_of(&during, "exits"),
        phase_of(&during, "short-timeout"),
        phase_of(&during, "waits"),
        timeout_message,
        exited.status.as_ref().and_then(|s| s.exit_code),
        secs(exits_after),
        secs(recovered_after),
        secs(waits_after),
        census.figures(),
    );
    support::summary("kubelet-absent", &line);
    assert_eq!(phase_of(&during, "running").0, Some(Phase::Running), "{line}");
    assert_eq!(phase_of(&during, "exits").0, Some(Phase::Running), "what it last knew: {line}");
    assert_eq!(phase_of(&during, "short-timeout"), (Some(Phase::Failed), Some(FailureReason::StartTimeout)), "{line}");
    assert!(timeout_message.contains("never reported"), "{line}");
    assert_eq!(phase_of(&during, "waits").0, Some(Phase::Injected), "{line}");
    assert_eq!(exited.status.unwrap().exit_code, Some(7), "{line}");
    assert_eq!(running.status.unwrap().phase, Some(Phase::Running));
    assert_eq!(recovered.status.unwrap().reason, None, "{line}");
    assert!(census.clean(), "{line}\n{:?}", census.problems);
}
