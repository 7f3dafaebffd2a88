//! The shipped artifacts work: the Helm chart installs an operator that runs
//! in the cluster (from a locally built image) and serves sessions; the plain
//! manifests are accepted by the API server.

use std::path::PathBuf;
use std::process::Command;

use ephemera::crd::Phase;

use crate::common::{TestEnv, kubeconfig, kubectl, repo_root, sleeping_session};

pub fn helm() -> PathBuf {
    std::env::var_os("EPHEMERA_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ephemera/helm-v3.22.0/helm"))
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

/// Builds `localhost/ephemera:e2e` from the test's own binary (and the shared
/// libraries it links) and imports it into the cluster's containerd.
fn build_and_import_image() {
    let dir = repo_root().join("target/e2e-image");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("ephemera");
    run(Command::new("strip").arg("-o").arg(&binary).arg(env!("CARGO_BIN_EXE_ephemera")));
    let mut mkimage = Command::new("python3");
    mkimage
        .arg(repo_root().join("tests/cluster/hack/mkimage.py"))
        .args(["--tag", "localhost/ephemera:e2e", "--user", "65532:65532", "--entrypoint", r#"["/ephemera"]"#])
        .arg("--out")
        .arg(dir.join("ephemera.tar"))
        .arg("--file")
        .arg(format!("{}:/ephemera:0755", binary.display()));
    let ldd = run(Command::new("ldd").arg(&binary));
    for library in ldd.split_whitespace().filter(|word| word.starts_with('/')) {
        mkimage.arg("--file").arg(format!("{library}:{library}"));
    }
    run(&mut mkimage);
    run(Command::new(repo_root().join("tests/cluster/import-image.sh")).arg(dir.join("ephemera.tar")));
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_chart_runs_the_operator_in_the_cluster() {
    assert!(helm().exists(), "helm is missing at {}: run `make {}`", helm().display(), helm().display());
    build_and_import_image();
    let env = TestEnv::without_operator("helm", &[]).await;
    let port = 19000 + (std::process::id() % 1000);
    // The local cluster has no Service routing: the operator uses the host
    // network and reaches the API server on loopback.
    let extra_env = r#"[{"name":"KUBERNETES_SERVICE_HOST","value":"127.0.0.1"},{"name":"KUBERNETES_SERVICE_PORT","value":"16443"}]"#;
    let release = "ephemera-e2e";
    let install = |args: &[&str]| {
        let mut command = Command::new(helm());
        command.arg("--kubeconfig").arg(kubeconfig()).args(args);
        run(&mut command)
    };
    let _ = Command::new(helm())
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["uninstall", release, "-n", &env.namespace])
        .output();
    install(&[
        "install",
        release,
        repo_root().join("charts/ephemera").to_str().unwrap(),
        "-n",
        &env.namespace,
        "--set",
        "image.repository=localhost/ephemera,image.tag=e2e,image.pullPolicy=Never,hostNetwork=true,logFormat=text,replicaCount=1",
        "--set",
        &format!("watchNamespace={},metricsPort={port}", env.namespace),
        "--set-json",
        &format!("extraEnv={extra_env}"),
        "--wait",
        "--timeout",
        "120s",
    ]);

    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&sleeping_session("in-cluster", "{ pod: web }", "")).await;
    let session = env.wait_phase("in-cluster", Phase::Running).await;
    assert_eq!(env.ephemeral_names("web").await, vec![session.status.unwrap().container_name.unwrap()]);

    // The operator's pod serves its probes and metrics.
    let (ok, pods) = kubectl(&[
        "get",
        "pods",
        "-n",
        &env.namespace,
        "-l",
        "app.kubernetes.io/name=ephemera",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].ready}",
    ]);
    assert!(ok && pods == "true", "operator pod not ready: {pods}");
    let metrics = run(Command::new("curl").args(["-fsS", &format!("http://127.0.0.1:{port}/metrics")]));
    assert!(metrics.contains("ephemera_injections_total{result=\"injected\"} 1"), "{metrics}");

    install(&["uninstall", release, "-n", &env.namespace, "--wait"]);
    let (_, left) = kubectl(&["get", "clusterrole", &format!("{release}-ephemera")]);
    assert!(left.contains("NotFound"), "uninstall leaves no cluster role: {left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_manifests_are_accepted_by_the_api_server() {
    // A server-side dry run checks every object against the real API. The
    // namespaced ones need an existing namespace: the test's own stands in.
    let env = TestEnv::without_operator("manifests", &[]).await;
    let manifests = std::fs::read_to_string(repo_root().join("deploy/ephemera.yaml")).unwrap();
    assert!(manifests.contains("namespace: ephemera-system"));
    let path = repo_root().join("target/e2e-manifests.yaml");
    std::fs::write(&path, manifests.replace("ephemera-system", &env.namespace)).unwrap();
    let (ok, out) = kubectl(&["apply", "--server-side", "--dry-run=server", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    for kind in ["customresourcedefinition", "serviceaccount/ephemera", "clusterrole", "deployment.apps/ephemera"] {
        assert!(out.contains(kind), "{kind} missing in:\n{out}");
    }
}
