//! Replicas with leader election: one reconciles, a standby takes over when it dies.

use std::time::{Duration, Instant};

use ephemera::crd::Phase;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::common::{Operator, TestEnv, kubeconfig, sleeping_session};

fn replica(namespace: &str, identity: &str) -> Operator {
    let args = [
        "--leader-elect",
        "--leader-election-namespace",
        namespace,
        "--leader-election-lease-seconds",
        "4",
        "--leader-election-identity",
        identity,
    ];
    Operator::start_with_args(namespace, &kubeconfig(), "admin", "127.0.0.1:0", &args, &format!("-{identity}"))
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt("ephemera-controller").await.unwrap()?.spec?.holder_identity
}

fn log(operator: &Operator) -> String {
    std::fs::read_to_string(&operator.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_takes_over_when_the_leader_dies() {
    let env = TestEnv::without_operator("leader", &[]).await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut first = replica(&env.namespace, "first");
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(&leases).await.as_deref() != Some("first") {
        assert!(Instant::now() < deadline, "first replica never took the lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = replica(&env.namespace, "second");
    env.running_pod("web", &["app"], &[]).await;
    let session = |name: &str| sleeping_session(name, "{ pod: web }", "");
    env.create_session(&session("before")).await;
    env.wait_phase("before", Phase::Running).await;
    assert!(log(&second).contains("waiting to become the leader"), "{}", log(&second));
    assert!(!log(&second).contains("became the leader"), "the standby must not lead while the leader lives");

    // The leader dies without releasing the lease; the standby waits out the lease.
    first.kill();
    let killed = Instant::now();
    env.create_session(&session("after")).await;
    env.wait_phase("after", Phase::Running).await;
    let took_over = killed.elapsed();
    assert_eq!(holder(&leases).await.as_deref(), Some("second"));
    assert!(log(&second).contains("became the leader"), "{}", log(&second));
    assert!(took_over < Duration::from_secs(20), "takeover took {took_over:?}");
    assert_eq!(env.ephemeral_names("web").await.len(), 2);
    println!("standby took over and served a new session {took_over:?} after the leader was killed");
}
