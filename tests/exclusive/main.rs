//! End-to-end tests that change what every test shares (the CRD), so they
//! run on their own, after the parallel suite in tests/e2e.

#[allow(dead_code)]
#[path = "../e2e/common.rs"]
mod common;

use std::time::Duration;

use ephemera::crd::{DebugSession, Phase};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::common::{IMAGE, TestEnv, sleeping_session};

/// The shared CRD with the bounds of `spec.ttlSecondsAfterFinished` removed, as
/// a CRD of an older ephemera might have been; restored on drop.
struct LooserCrd {
    crds: Api<CustomResourceDefinition>,
}

impl LooserCrd {
    async fn install(client: &kube::Client) -> Self {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut crd = ephemera::crd::crd();
        let schema = crd.spec.versions[0].schema.as_mut().unwrap().open_api_v3_schema.as_mut().unwrap();
        let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
        let ttl = spec.properties.as_mut().unwrap().get_mut("ttlSecondsAfterFinished").unwrap();
        ttl.maximum = None;
        ttl.format = None;
        crds.patch(&crd.name_any(), &PatchParams::apply("ephemera-e2e").force(), &Patch::Apply(&crd)).await.unwrap();
        Self { crds }
    }

    async fn restore(self) {
        let crd = ephemera::crd::crd();
        self.crds
            .patch(&crd.name_any(), &PatchParams::apply("ephemera-e2e").force(), &Patch::Apply(&crd))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_session_blinds_nothing() {
    let mut env = TestEnv::without_operator("undecodable", &[]).await;
    env.running_pod("web", &["app"], &[]).await;
    // Stored while the CRD had no bound: a value that fits no int32.
    let looser = LooserCrd::install(&env.client).await;
    let mut stored = Err(String::new());
    for _ in 0..50 {
        let bad = serde_json::json!({
            "apiVersion": "ephemera.dev/v1alpha1", "kind": "DebugSession",
            "metadata": { "name": "overflow" },
            "spec": { "target": { "pod": "web" }, "image": IMAGE, "ttlSecondsAfterFinished": 99999999999u64 },
        });
        let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
            env.client.clone(),
            &env.namespace,
            &kube::discovery::ApiResource::erase::<DebugSession>(&()),
        );
        match raw.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await {
            Ok(_) => {
                stored = Ok(());
                break;
            }
            // The looser schema takes a moment to be in force.
            Err(error) => stored = Err(error.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    looser.restore().await;
    stored.expect("store the overflowing session");
    env.create_session(&sleeping_session("good", "{ pod: web }", "")).await;
    env.start_operator("admin");
    env.wait_phase("good", Phase::Running).await;
    env.expect_events("overflow", &["Undecodable"]).await;
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &kube::discovery::ApiResource::erase::<DebugSession>(&()),
    );
    let overflow = raw.get("overflow").await.unwrap();
    assert_eq!(overflow.data["status"]["reason"], "Invalid", "{:?}", overflow.data["status"]);
    assert!(overflow.data["status"]["message"].as_str().unwrap().contains("cannot read this DebugSession"));
    let log = std::fs::read_to_string(&env.operator.as_ref().unwrap().log).unwrap();
    assert_eq!(log.matches("cannot be read; skipping it").count(), 1, "reported once:\n{log}");
    assert!(log.len() < 200_000, "the log must not fill with list bodies");
}
