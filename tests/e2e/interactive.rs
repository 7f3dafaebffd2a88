//! An interactive session driven like a person would: `kubectl attach -it` in tmux.

use std::time::Duration;

use ephemera::crd::Phase;

use crate::common::{TestEnv, busybox_session, cluster_dir, kubeconfig, kubectl, tmux, tmux_kill, wait_for_screen};

#[tokio::test(flavor = "multi_thread")]
async fn interactive_session_is_attached_exited_and_then_not_attachable() {
    let env = TestEnv::new("interactive").await;
    env.running_pod("web", &["app"], &[]).await;
    env.create_session(&busybox_session("shell", "{ pod: web }", r#"["sh"]"#, "")).await;
    let session = env.wait_phase("shell", Phase::Running).await;
    let status = session.status.unwrap();
    let attach = status.attach_command.clone().unwrap();
    assert!(attach.starts_with("kubectl attach -it "), "{attach}");

    // Run exactly the attach command the status offers, with the cluster's kubectl.
    let kubectl_bin = cluster_dir().join("bin/kubectl");
    let command =
        attach.replacen("kubectl", &format!("{} --kubeconfig {}", kubectl_bin.display(), kubeconfig().display()), 1);
    let tmux_session = format!("ephemera-{}", env.namespace);
    tmux_kill(&tmux_session);
    let shell = format!("{command}; echo attach-exited-$?; sleep 60");
    tmux(&["new-session", "-d", "-s", &tmux_session, "-x", "200", "-y", "50", &shell]);
    // kubectl attach prints a hint, then the shell answers what we type.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tmux(&["send-keys", "-t", &tmux_session, "echo hello-$((6*7)) $EPHEMERA_SESSION", "Enter"]);
    wait_for_screen(&tmux_session, &format!("hello-42 {}/shell", env.namespace)).await;
    tmux(&["send-keys", "-t", &tmux_session, "exit 7", "Enter"]);
    let screen = wait_for_screen(&tmux_session, "attach-exited-").await;
    tmux_kill(&tmux_session);

    let session = env.wait_phase("shell", Phase::Terminated).await;
    let status = session.status.unwrap();
    assert_eq!(status.exit_code, Some(7), "screen:\n{screen}");
    assert_eq!(status.attach_command, None);
    let attachable = status.conditions.iter().find(|c| c.type_ == "Attachable").unwrap();
    assert_eq!(attachable.status, "False");
    let name = status.container_name.unwrap();
    let (ok, out) = kubectl(&["attach", "-n", &env.namespace, "web", "-c", &name]);
    assert!(!ok, "attach after exit must fail: {out}");
}
