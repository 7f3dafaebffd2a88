//! Every file in examples/ is applied to the cluster as it is, and every
//! DebugSession among them reaches Running.

use ephemera::crd::Phase;

use crate::common::{TestEnv, kubectl, repo_root};

#[tokio::test(flavor = "multi_thread")]
async fn every_example_applies_and_its_sessions_run() {
    let env = TestEnv::new("examples").await;
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let kind_of = |path: &std::path::Path| {
        let object: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        (object["kind"].as_str().unwrap().to_string(), object["metadata"]["name"].as_str().unwrap().to_string())
    };
    // The pods first, so the sessions find them.
    files.sort_by_key(|path| kind_of(path).0 != "Pod");
    for file in &files {
        let (ok, out) = kubectl(&["apply", "-n", &env.namespace, "-f", file.to_str().unwrap()]);
        assert!(ok, "{}: {out}", file.display());
        let (kind, name) = kind_of(file);
        if kind == "Pod" {
            let (ok, out) = kubectl(&[
                "wait",
                "-n",
                &env.namespace,
                "--for=condition=Ready",
                "--timeout=120s",
                &format!("pod/{name}"),
            ]);
            assert!(ok, "{out}");
        }
    }
    for file in &files {
        let (kind, name) = kind_of(file);
        if kind == "DebugSession" {
            let session = env.wait_phase(&name, Phase::Running).await;
            assert!(session.status.unwrap().pod_name.is_some(), "{}", file.display());
        }
    }
    // What the README's `kubectl wait` promises: Ready once it runs.
    let (ok, out) =
        kubectl(&["wait", "-n", &env.namespace, "--for=condition=Ready", "--timeout=30s", "debugsession/tomcat-debug"]);
    assert!(ok, "{out}");
}
