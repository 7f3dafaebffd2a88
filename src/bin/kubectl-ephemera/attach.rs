//! Attaching with kubectl, and showing what a finished container printed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ephemera::crd::DebugSession;
use ephemera::debug_container::is_from_session;
use ephemera::plugin::cli::KubeFlags;
use ephemera::validation::{is_dns1123_label, is_dns1123_subdomain};
use std::io::IsTerminal;

use ephemera::plugin::report::printable;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;

use crate::Error;

/// Is this the path of a kubectl (and not of a plugin such as us)?
fn is_kubectl(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name == "kubectl" || (name.starts_with("kubectl") && !name.starts_with("kubectl-"))
}

/// The kubectl to run: the one that invoked us where it can be found, else
/// `$KUBECTL`, else `kubectl` from PATH.
///
/// Where kubectl runs the plugin as a child process (as on Windows, or a
/// wrapper that does), it is our parent. kubectl on Linux replaces itself with
/// the plugin instead; then the shell that ran kubectl has recorded kubectl's
/// path in `$_`, which kubectl passes on.
pub fn kubectl() -> PathBuf {
    let parent = std::fs::read_link(format!("/proc/{}/exe", std::os::unix::process::parent_id()));
    let invoker = parent
        .ok()
        .filter(|p| is_kubectl(p))
        .or_else(|| std::env::var_os("_").map(PathBuf::from).filter(|p| is_kubectl(p) && p.is_file()));
    invoker
        .or_else(|| std::env::var_os("KUBECTL").filter(|k| !k.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// kubectl's connection flags as the user gave them to us.
pub fn connection_args(flags: &KubeFlags) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut pass = |flag: &str, value: &str| args.extend([flag.into(), value.into()]);
    if let Some(kubeconfig) = &flags.kubeconfig {
        pass("--kubeconfig", kubeconfig);
    }
    if let Some(context) = &flags.context {
        pass("--context", context);
    }
    if let Some(user) = &flags.as_user {
        pass("--as", user);
    }
    for group in &flags.as_group {
        pass("--as-group", group);
    }
    if let Some(uid) = &flags.as_uid {
        pass("--as-uid", uid);
    }
    args
}

/// The pod and container of the session's current attempt, checked: valid
/// names, and the pod holds that container with this session's UID marker.
/// Nothing read from the API is ever run; only these names are passed on.
pub async fn current_container(pods: &Api<Pod>, session: &DebugSession) -> Result<(String, String), Error> {
    let status = session.status.clone().unwrap_or_default();
    let (Some(pod), Some(container)) = (status.pod_name, status.container_name) else {
        return Err("the session's status names no pod and container".into());
    };
    if !(is_dns1123_subdomain(&pod) && is_dns1123_label(&container)) {
        return Err(format!("refusing to attach: {pod:?}/{container:?} are not valid names").into());
    }
    let found = pods.get(&pod).await?;
    let uid = session.metadata.uid.as_deref().unwrap_or_default();
    let ours = found
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .any(|c| c.name == container && is_from_session(c, uid));
    if !ours {
        return Err(
            format!("refusing to attach: pod {pod} holds no debug container {container} of this session").into()
        );
    }
    Ok((pod, container))
}

/// `kubectl attach` arguments for the session's container.
pub fn attach_args(namespace: &str, pod: &str, container: &str, session: &DebugSession, quiet: bool) -> Vec<String> {
    let mut args = vec!["attach".to_string()];
    match (session.spec.stdin, session.spec.tty) {
        (true, true) => args.push("-it".into()),
        (true, false) => args.push("-i".into()),
        (false, true) => args.push("-t".into()),
        (false, false) => {}
    }
    if quiet {
        args.push("-q".into());
    }
    args.extend(["-n".into(), namespace.into(), pod.into(), "-c".into(), container.into()]);
    args
}

/// Runs kubectl attach; then the container's own exit code, as kubectl debug
/// gives it (or kubectl's, if the container still runs: the user detached).
pub async fn run_attach(
    pods: &Api<Pod>,
    flags: &KubeFlags,
    args: &[String],
    pod: &str,
    container: &str,
    quiet: bool,
) -> Result<u8, Error> {
    let kubectl = kubectl();
    let mut command = Command::new(&kubectl);
    command.args(connection_args(flags)).args(args);
    let status = tokio::task::spawn_blocking(move || command.status())
        .await?
        .map_err(|e| format!("running {}: {e}", kubectl.display()))?;
    match exit_code_after_stream(pods, pod, container).await {
        Some(code) => Ok(exit_status(Some(code))),
        None => {
            if !quiet {
                eprintln!("The debug container {container} still runs; attach again with the same command.");
            }
            Ok(exit_status(status.code()))
        }
    }
}

/// Follows the log of a container that reads no input until it exits; then
/// its exit code, as [`run_attach`] gives it.
pub async fn follow_output(pods: &Api<Pod>, pod: &str, container: &str, quiet: bool) -> Result<u8, Error> {
    print_logs(pods, pod, container, true).await?;
    match exit_code_after_stream(pods, pod, container).await {
        Some(code) => Ok(exit_status(Some(code))),
        None => {
            if !quiet {
                eprintln!("The log of {container} ended while it still runs; follow it again with the same command.");
            }
            Ok(1)
        }
    }
}

/// The container's exit code once an attach or a followed log has ended, or
/// `None` if it still runs: the kubelet reports the exit a moment after the
/// stream closes.
async fn exit_code_after_stream(pods: &Api<Pod>, pod: &str, container: &str) -> Option<i32> {
    crate::wait::exit_code_of(pods, pod, container, Duration::from_secs(5)).await
}

/// An exit code as a process exit status (1 when unknown or out of range).
pub fn exit_status(code: Option<i32>) -> u8 {
    code.map_or(1, |c| u8::try_from(c).unwrap_or(1))
}

/// Copies the container's log to stdout (following it while it runs if `follow`).
pub async fn print_logs(pods: &Api<Pod>, pod: &str, container: &str, follow: bool) -> Result<(), Error> {
    let params = LogParams { container: Some(container.to_string()), follow, ..Default::default() };
    let mut lines = pods.log_stream(pod, &params).await?.lines();
    // A TTY session's log holds what the terminal was sent: replayed on a
    // terminal it would move the cursor and make the terminal answer queries
    // into the next command. Piped elsewhere, the log is passed on as it is.
    let terminal = std::io::stdout().is_terminal();
    while let Some(line) = lines.next().await {
        let line = line?;
        let line = if terminal { printable(&line) } else { line.into() };
        crate::print_out(&format!("{line}\n"))?;
    }
    Ok(())
}
