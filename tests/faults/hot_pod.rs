//! A hot pod: fifty sessions on one pod while another client keeps adding
//! ephemeral containers of its own, as `kubectl debug` does.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use crate::common::{IMAGE, free_port, metric, scrape, sleeping_session};
use crate::proxy::HttpProxy;
use crate::support::{self, Want, converge, create_sessions, operator, running_pods, secs};

/// The rival's n-th container, as it sends it.
fn rival(n: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("rival-{n}"), "image": IMAGE, "imagePullPolicy": "Never",
        "command": ["sleep", format!("{}", 600 + n)], "stdin": false, "tty": false,
        "targetContainerName": "app",
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_pod() {
    let _cluster = support::shared_cluster().await;
    let sessions = std::env::var("FAULTS_HOT_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50usize);
    let mut env = support::env("hot-pod").await;
    running_pods(&env, "hot", 1).await;
    let proxy = HttpProxy::start().await;
    let port = free_port();
    env.operator = Some(operator(&env.namespace, &proxy.kubeconfig(&env.namespace), port, &[], ""));

    // The rival adds a container every 200 ms, by strategic merge patch as
    // `kubectl debug` does, until the sessions are done.
    let pods: Api<Pod> = env.pods.clone();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let rival_writes = tokio::spawn(async move {
        let mut n = 0;
        while !*stopped.borrow() {
            let patch = serde_json::json!({ "spec": { "ephemeralContainers": [rival(n)] } });
            pods.patch_ephemeral_containers("hot-0", &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .expect("the rival's write");
            n += 1;
            let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
        }
        n
    });
    let began = Instant::now();
    let yamls = (0..sessions).map(|i| sleeping_session(&format!("s-{i}"), "{ pod: hot-0 }", "")).collect();
    create_sessions(&env, yamls, 25).await;
    let (census, times) = converge(&env, Duration::from_secs(180), |_| Want::RUNNING).await;
    let _ = stop.send(true);
    let rivals = rival_writes.await.unwrap();

    // Every rival container is there once, exactly as it was sent.
    let pod = env.pods.get("hot-0").await.unwrap();
    let in_pod = pod.spec.unwrap().ephemeral_containers.unwrap_or_default();
    let mut rivals_altered = 0;
    let mut rivals_missing = 0;
    for n in 0..rivals {
        let sent = rival(n);
        let found: Vec<_> = in_pod.iter().filter(|c| c.name == sent["name"]).collect();
        match found.as_slice() {
            [one] => {
                let mine = serde_json::to_value(one).unwrap();
                for field in ["image", "imagePullPolicy", "command", "stdin", "tty", "targetContainerName"] {
                    // The API server omits false booleans.
                    let stored =
                        if mine[field].is_null() && sent[field] == false { &sent[field] } else { &mine[field] };
                    if *stored != sent[field] {
                        rivals_altered += 1;
                    }
                }
                if one.env.is_some() {
                    rivals_altered += 1;
                }
            }
            _ => rivals_missing += 1,
        }
    }
    let metrics = scrape(port).await;
    let woken = metric(&metrics, "ephemera_pod_event_wakes_total{outcome=\"woken\"}");
    let unchanged = metric(&metrics, "ephemera_pod_event_wakes_total{outcome=\"unchanged\"}");
    let subresource_writes = proxy
        .log()
        .iter()
        .filter(|r| r.method == http::Method::PATCH && r.path.contains("/ephemeralcontainers"))
        .count();
    let refused = proxy
        .log()
        .iter()
        .filter(|r| r.path.contains("/ephemeralcontainers") && r.status.is_some_and(|s| s >= 400))
        .count();
    let status_writes = proxy
        .log()
        .iter()
        .filter(|r| {
            r.method == http::Method::PATCH && r.path.split('?').next().unwrap_or_default().ends_with("/status")
        })
        .count();
    // Every write that carried each session's container, with when it went and what it was answered.
    let mut writes_by_session: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut largest_write = 0;
    for r in proxy.log().iter().filter(|r| r.method == http::Method::PATCH && r.path.contains("/ephemeralcontainers")) {
        let what = format!("at {} answered {:?} after {:?}", secs(r.at - began), r.status, r.took);
        largest_write = largest_write.max(r.injects_for.len());
        for session in &r.injects_for {
            writes_by_session.entry(session.clone()).or_default().push(what.clone());
        }
    }
    let carried = writes_by_session.len();
    writes_by_session.retain(|_, writes| writes.len() > 1);
    // Its 50 sleeping containers ignore SIGTERM: without this a rerun waits for the namespace.
    let _ = env
        .pods
        .delete("hot-0", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await;
    let line = format!(
        "sessions={sessions} rival containers={rivals} (missing {rivals_missing}, altered {rivals_altered}) {} containers={} subresource writes={subresource_writes} (refused {refused}; at most {largest_write} containers in one) busy-pod give-ups={} reconciles/session={:.1} (pod changes woke {} and left {} alone) status writes/session={:.1} all running after {} (every container in the pod after {})",
        census.figures(),
        census.containers,
        metric(&metrics, "ephemera_reconcile_errors_total{error=\"busy_pod\"}"),
        metric(&metrics, "ephemera_reconciliations_total") / sessions as f64,
        woken,
        unchanged,
        status_writes as f64 / sessions as f64,
        times.clean.map_or("never".into(), |t| secs(t - began)),
        times.operator_done.map_or("never".into(), |t| secs(t - began)),
    );
    support::summary("hot-pod", &line);
    assert!(census.clean(), "{line}\n{:#?}", census.problems);
    assert_eq!(census.containers, sessions, "{line}");
    assert_eq!((rivals_missing, rivals_altered), (0, 0), "{line}");
    assert!(rivals >= 10, "the rival kept writing while the sessions went in: {line}");
    // The rival's containers, and the sessions' own, going in and starting: a session
    // whose container is in the pod already reads none of those, and is not woken by them.
    assert!(unchanged > woken, "{line}");
    assert_eq!(metric(&metrics, "ephemera_reconcile_errors_total{error=\"busy_pod\"}"), 0.0, "{line}");
    // Every container in exactly one write, none refused; adds that waited
    // for a write to the pod went out together. The operator counts what the proxy saw.
    let counted = metric(&metrics, "ephemera_api_requests_total{resource=\"pods/ephemeralcontainers\",verb=\"patch\"}");
    assert_eq!(counted, subresource_writes as f64, "{line}");
    assert_eq!((carried, refused), (sessions, 0), "{line}");
    assert!(writes_by_session.is_empty(), "{line}\nwritten more than once: {writes_by_session:#?}");
    assert!(subresource_writes < sessions, "{line}");
    // Pending, Injected with the kubelet's first report, Running (one more for a kubelet
    // slower than the operator waits for): others' containers add none.
    assert!(status_writes <= 4 * sessions, "{line}");
}
