//! A flapping network between the operator and the API server: every
//! connection dropped for 20 s, twice; then the open connections black-holed
//! for minutes while new ones pass, as a NAT or load balancer that forgot them
//! does. Nothing is lost, and every session's own deadlines hold meanwhile.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ephemera::crd::{DebugSession, FailureReason, Phase};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::common::{TestEnv, busybox_session, free_port, metric, scrape, sleeping_session};
use crate::proxy::{Net, TcpProxy, apiserver_address};
use crate::support::{self, Want, operator, running_pods, secs};

// Long enough that setting up all of them on a busy machine ends before the first fires:
// their deadlines must fall into the black hole.
const START_TIMEOUT: i64 = 60;
const TTL: i64 = 60;
/// How late a deadline of a session may be met.
const SLACK: Duration = Duration::from_secs(30);

fn black_hole() -> Duration {
    Duration::from_secs(std::env::var("FAULTS_BLACKHOLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300))
}

/// The operator has done its part for the session: its container is in the pod.
fn served(session: &DebugSession) -> bool {
    matches!(session.status.as_ref().and_then(|s| s.phase), Some(Phase::Injected | Phase::Running))
}

/// Creates `names` on the pods in turn and returns when each was created.
async fn create(env: &TestEnv, names: &[String], pods: &[String]) -> HashMap<String, Instant> {
    let mut created = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        env.create_session(&sleeping_session(name, &format!("{{ pod: {} }}", pods[i % pods.len()]), "")).await;
        created.insert(name.clone(), Instant::now());
    }
    created
}

/// Waits until every one of `names` is served; returns how long after `since` the last one was.
async fn all_served(env: &TestEnv, names: &[String], since: Instant, timeout: Duration) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
        if names.iter().all(|n| sessions.iter().any(|s| s.name_any() == *n && served(s))) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "sessions {names:?} not served within {timeout:?}\n{}",
            env.operator_log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A drop of every connection for 20 s, with sessions created meanwhile; how
/// long after the network came back they were served.
async fn drop_all(env: &TestEnv, proxy: &TcpProxy, round: usize, pods: &[String]) -> Duration {
    proxy.set(Net::Drop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let names: Vec<String> = (0..pods.len()).map(|i| format!("s-drop{round}-{i}")).collect();
    create(env, &names, pods).await;
    tokio::time::sleep(Duration::from_secs(18)).await;
    proxy.set(Net::Pass);
    all_served(env, &names, Instant::now(), Duration::from_secs(120)).await
}

/// How late a deadline was met, by the session's own record (0 when early).
fn late(deadline: Timestamp, met: Timestamp) -> Duration {
    Duration::try_from(met.duration_since(deadline)).unwrap_or(Duration::ZERO)
}

#[tokio::test(flavor = "multi_thread")]
async fn flapping_network() {
    let _cluster = support::shared_cluster().await;
    let mut env = support::env("network").await;
    let pods = running_pods(&env, "net", 4).await;
    let proxy = TcpProxy::start(apiserver_address()).await;
    let port = free_port();
    env.operator = Some(operator(&env.namespace, &proxy.kubeconfig(&env.namespace), port, &[], ""));
    let first: Vec<String> = (0..4).map(|i| format!("s-first-{i}")).collect();
    create(&env, &first, &pods).await;
    all_served(&env, &first, Instant::now(), Duration::from_secs(60)).await;

    let drops = [drop_all(&env, &proxy, 1, &pods).await, drop_all(&env, &proxy, 2, &pods).await];

    // Sessions whose deadlines fall into the black hole: containers that wait
    // for an image that never comes (start timeout), and finished ones with a TTL.
    let mut retired = HashSet::new();
    for i in 0..4 {
        let pod = &pods[i % pods.len()];
        let extra = format!("  startTimeoutSeconds: {START_TIMEOUT}\n");
        let yaml = format!(
            "metadata: {{ name: timeout-{i} }}\nspec:\n  target: {{ pod: {pod} }}\n  image: localhost/faults-no-such-image:1\n  imagePullPolicy: IfNotPresent\n{extra}"
        );
        env.create_session(&yaml).await;
        let ttl = format!("  ttlSecondsAfterFinished: {TTL}\n");
        let session = env
            .create_session(&busybox_session(&format!("ttl-{i}"), &format!("{{ pod: {pod} }}"), r#"["true"]"#, &ttl))
            .await;
        retired.insert(session.metadata.uid.unwrap());
    }
    for i in 0..4 {
        env.wait_phase(&format!("timeout-{i}"), Phase::Injected).await;
        env.wait_phase(&format!("ttl-{i}"), Phase::Terminated).await;
    }

    let before = scrape(port).await;
    proxy.set(Net::BlackHole);
    let holed = Instant::now();
    let length = black_hole();
    let mut during: Vec<String> = Vec::new();
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut served_after: HashMap<String, Duration> = HashMap::new();
    let mut timeouts: HashMap<String, Duration> = HashMap::new();
    let mut ttls: HashMap<String, Duration> = HashMap::new();
    let mut ttl_deadlines: HashMap<String, Timestamp> = HashMap::new();
    let mut next_session = Instant::now() + Duration::from_secs(5);
    while holed.elapsed() < length {
        if Instant::now() >= next_session && during.len() < 8 {
            let name = format!("s-hole-{}", during.len());
            created.extend(create(&env, std::slice::from_ref(&name), &pods[during.len() % pods.len()..]).await);
            during.push(name);
            next_session += length / 8;
        }
        let now = Timestamp::now();
        let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
        for session in &sessions {
            let name = session.name_any();
            let status = session.status.clone().unwrap_or_default();
            if name.starts_with("s-hole-") && served(session) {
                served_after.entry(name.clone()).or_insert_with(|| created[&name].elapsed());
            }
            if name.starts_with("timeout-") && status.reason == Some(FailureReason::StartTimeout) {
                let injected = status.containers.first().and_then(|c| c.injected_at.clone()).unwrap().0;
                let deadline = injected + k8s_openapi::jiff::SignedDuration::from_secs(START_TIMEOUT);
                timeouts.entry(name.clone()).or_insert_with(|| late(deadline, status.finished_at.clone().unwrap().0));
            }
            if name.starts_with("ttl-")
                && let Some(finished) = status.finished_at.clone()
            {
                ttl_deadlines.insert(name, finished.0 + k8s_openapi::jiff::SignedDuration::from_secs(TTL));
            }
        }
        for (name, deadline) in &ttl_deadlines {
            if !sessions.iter().any(|s| s.name_any() == *name) {
                ttls.entry(name.clone()).or_insert_with(|| late(*deadline, now));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let counts = proxy.counts();
    let frozen = counts.frozen;
    let after = scrape(port).await;
    proxy.set(Net::Pass);
    let back = Instant::now();
    let last = vec!["s-after".to_string()];
    create(&env, &last, &pods).await;
    let recovered = all_served(&env, &last, back, Duration::from_secs(60)).await;
    for name in &during {
        if !served_after.contains_key(name) {
            all_served(&env, std::slice::from_ref(name), back, Duration::from_secs(60)).await;
            served_after.insert(name.clone(), created[name].elapsed());
        }
    }
    let (census, _) = support::converge_with(&env, Duration::from_secs(60), &retired, |s| {
        if s.name_any().starts_with("timeout-") {
            Want::failed(FailureReason::StartTimeout, true)
        } else {
            Want::RUNNING
        }
    })
    .await;
    let requests = metric(&after, "ephemera_api_requests_total") - metric(&before, "ephemera_api_requests_total");
    let worst = |m: &HashMap<String, Duration>| m.values().max().copied().unwrap_or_default();
    let line = format!(
        "drops of 20 s: served {} and {} after the network came back; black hole of {} ({frozen} connections frozen, new ones passed; {} connections in all, {} refused during the drops; {requests} requests meanwhile): start timeouts {}/4 met at most {} late, TTLs {}/4 met at most {} late, {} sessions created during it served after at most {}; after it: served {} later; {}",
        secs(drops[0]),
        secs(drops[1]),
        secs(length),
        counts.accepted,
        counts.refused,
        timeouts.len(),
        secs(worst(&timeouts)),
        ttls.len(),
        secs(worst(&ttls)),
        during.len(),
        secs(worst(&served_after)),
        secs(recovered),
        census.figures(),
    );
    support::summary("flapping-network", &line);
    assert_eq!((timeouts.len(), ttls.len()), (4, 4), "every deadline met during the black hole: {line}");
    assert!(worst(&timeouts) <= SLACK && worst(&ttls) <= SLACK, "{line}");
    assert!(census.clean(), "{line}\n{:?}", census.problems);
    assert!(frozen >= 2, "the black hole froze the watches at least: {line}");
}
