//! Pod Security Admission judges each debug container, as it judges
//! `kubectl debug`'s: every profile in a namespace of each level. The table is
//! the one in docs/security.md.

use ephemera::crd::{FailureReason, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;

use crate::common::{IMAGE, TestEnv, sleeping_session};

/// A pod that every level admits: a non-root user, no privilege escalation,
/// no capabilities, the RuntimeDefault seccomp profile.
async fn restricted_pod(env: &TestEnv) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                "securityContext": { "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } },
            }],
        }
    }))
    .unwrap();
    env.pods.create(&PostParams::default(), &pod).await.expect("create pod");
    env.wait_pod("web", "Running", |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).await;
}

/// What each profile gets in a namespace of `level`: Running, or refused by Pod Security.
const EXPECTED: [(&str, [bool; 3]); 5] = [
    //            restricted, baseline, privileged
    ("general", [false, false, true]),
    ("baseline", [false, true, true]),
    ("restricted", [true, true, true]),
    ("netadmin", [false, false, true]),
    ("sysadmin", [false, false, true]),
];

async fn try_every_profile(level: &str, column: usize) -> Vec<String> {
    let env =
        TestEnv::with_namespace_labels(&format!("psa-{level}"), &[("pod-security.kubernetes.io/enforce", level)]).await;
    restricted_pod(&env).await;
    for (profile, _) in EXPECTED {
        env.create_session(&sleeping_session(profile, "{ pod: web }", &format!("  profile: {profile}\n"))).await;
    }
    let mut row = Vec::new();
    for (profile, allowed) in EXPECTED {
        let session = env
            .wait_session(profile, "settled", std::time::Duration::from_secs(90), |s| {
                s.status.as_ref().is_some_and(|st| matches!(st.phase, Some(Phase::Running | Phase::Failed)))
            })
            .await;
        let status = session.status.unwrap();
        if allowed[column] {
            assert_eq!(status.phase, Some(Phase::Running), "{profile} in a {level} namespace: {:?}", status.message);
        } else {
            assert_eq!(
                status.reason,
                Some(FailureReason::Forbidden),
                "{profile} in a {level} namespace: {:?}",
                status.message
            );
            let message = status.message.unwrap();
            assert!(message.contains(&format!("violates PodSecurity \"{level}:latest\"")), "{message}");
        }
        row.push(format!("{profile}: {}", if allowed[column] { "Running" } else { "Forbidden" }));
    }
    let running = EXPECTED.iter().filter(|(_, a)| a[column]).count();
    assert_eq!(env.ephemeral_names("web").await.len(), running, "only what Pod Security admitted");
    row
}

#[tokio::test(flavor = "multi_thread")]
async fn every_profile_in_a_restricted_namespace() {
    eprintln!("restricted: {:?}", try_every_profile("restricted", 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_profile_in_a_baseline_namespace() {
    eprintln!("baseline: {:?}", try_every_profile("baseline", 1).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_profile_in_a_privileged_namespace() {
    eprintln!("privileged: {:?}", try_every_profile("privileged", 2).await);
}
