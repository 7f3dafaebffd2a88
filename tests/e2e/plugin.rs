//! The kubectl plugin, invoked the way users do: `kubectl ephemera ...`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ephemera::crd::Phase;

use crate::common::{TestEnv, cluster_dir, kubeconfig, tmux, tmux_kill, wait_for_screen};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-ephemera");

/// `kubectl ephemera ARGS` with the plugin on PATH, as kubectl finds plugins.
fn kubectl_ephemera(args: &[&str]) -> Output {
    let plugin_dir = Path::new(PLUGIN).parent().unwrap();
    let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
    Command::new(cluster_dir().join("bin/kubectl"))
        .arg("ephemera")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig())
        .env("KUBECTL", cluster_dir().join("bin/kubectl"))
        .output()
        .expect("run kubectl ephemera")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_creates_waits_and_prints_or_explains() {
    let env = TestEnv::new("plugin").await;
    env.running_pod("web", &["app"], &[]).await;
    let ns = env.namespace.as_str();
    let output = kubectl_ephemera(&[
        "debug",
        "web",
        "-n",
        ns,
        "--image",
        "localhost/busybox:1.36",
        "--image-pull-policy",
        "Never",
        "--no-attach",
        "--",
        "sleep",
        "600",
    ]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    let attach = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(attach.starts_with(&format!("kubectl attach -it -n {ns} web -c debugger-")), "{out}");
    assert!(out.contains("Running"), "phases are echoed: {out}");
    let sessions = env.sessions.list(&Default::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].metadata.name.as_deref().unwrap().starts_with("web-debug-"));

    let output = kubectl_ephemera(&["debug", "nope", "-n", ns, "--image", "localhost/busybox:1.36", "--no-attach"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("TargetNotFound: pod nope does not exist"), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_attaches_and_renews_after_exit() {
    let env = TestEnv::new("plugin-attach").await;
    env.running_pod("web", &["app"], &[]).await;
    let ns = env.namespace.clone();
    let tmux_session = format!("ephemera-{ns}");
    tmux_kill(&tmux_session);
    let plugin_dir = Path::new(PLUGIN).parent().unwrap().display().to_string();
    let shell = format!(
        "PATH={plugin_dir}:$PATH KUBECONFIG={} KUBECTL={kubectl} {kubectl} ephemera debug web -n {ns} --name shell --image localhost/busybox:1.36 --image-pull-policy Never -- sh; echo plugin-exited-$?; sleep 60",
        kubeconfig().display(),
        kubectl = cluster_dir().join("bin/kubectl").display(),
    );
    tmux(&["new-session", "-d", "-s", &tmux_session, "-x", "200", "-y", "50", &shell]);
    wait_for_screen(&tmux_session, "shell: Running").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    tmux(&["send-keys", "-t", &tmux_session, "echo plugin-$((2*21))", "Enter"]);
    wait_for_screen(&tmux_session, "plugin-42").await;
    tmux(&["send-keys", "-t", &tmux_session, "exit 3", "Enter"]);
    wait_for_screen(&tmux_session, "plugin-exited-").await;
    tmux_kill(&tmux_session);
    let session = env.wait_phase("shell", Phase::Terminated).await;
    assert_eq!(session.status.unwrap().exit_code, Some(3));

    // Renewing starts a fresh container (the old one stays) and hands its attach command back.
    let output = kubectl_ephemera(&["renew", "shell", "-n", &ns, "--no-attach"]);
    assert!(output.status.success(), "{}", text(&output));
    let attach = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(attach.ends_with("-1"), "{attach}");
    let names = env.ephemeral_names("web").await;
    assert_eq!(names.len(), 2);
    assert_eq!(attach, format!("kubectl attach -it -n {ns} web -c {}", names[1]));
}
