//! Waiting for a session by watching it (no polling), echoing each phase.

use std::time::Duration;

use ephemera::crd::{DebugSession, Phase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Error;

/// The current attempt ran, ended or failed: nothing more to wait for.
pub fn is_settled(session: &DebugSession) -> bool {
    let status = session.status.clone().unwrap_or_default();
    status.attempt == session.spec.attempt
        && matches!(status.phase, Some(Phase::Running | Phase::Terminated | Phase::Failed))
}

/// What is worth echoing about a session, so each change is shown once.
fn progress(session: &DebugSession) -> Option<String> {
    let status = session.status.as_ref()?;
    if status.attempt < session.spec.attempt {
        // While the previous container runs, the status says why the new one waits.
        let why = match status.phase {
            Some(Phase::Running) => format!(": {}", status.message.as_deref().unwrap_or_default()),
            _ => String::new(),
        };
        return Some(format!("attempt {} requested{why}", session.spec.attempt));
    }
    let phase = status.phase?;
    let detail = match (phase, status.waiting_reason.as_deref()) {
        (Phase::Injected, Some(reason)) => format!(" ({reason})"),
        _ => String::new(),
    };
    Some(format!("{}{detail}", phase.as_str()))
}

/// Watches the session until [`is_settled`], printing its progress to stderr
/// unless `quiet`. Fails after `timeout`, or when the session is deleted.
pub async fn until_settled(
    sessions: &Api<DebugSession>,
    name: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<DebugSession, Error> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(sessions.clone(), config).default_backoff().boxed();
    let mut shown: Option<String> = None;
    let mut last: Option<DebugSession> = None;
    let watching = async {
        while let Some(event) = events.next().await {
            let session = match event? {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => s,
                watcher::Event::Delete(_) => return Err(format!("debugsession {name} was deleted").into()),
                watcher::Event::Init | watcher::Event::InitDone => continue,
            };
            let now = progress(&session);
            if now.is_some() && now != shown {
                if !quiet {
                    eprintln!("{name}: {}", now.as_deref().unwrap_or_default());
                }
                shown = now;
            }
            if is_settled(&session) {
                return Ok(session);
            }
            last = Some(session);
        }
        Err::<DebugSession, Error>("the watch ended".into())
    };
    match tokio::time::timeout(timeout, watching).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{name} is not running after {} ({}); `kubectl ephemera explain {name}` tells more",
            humantime::format_duration(timeout),
            last.as_ref().and_then(progress).unwrap_or_else(|| "no status yet".into()),
        )
        .into()),
    }
}

/// Watches the pod until its container `container` has terminated, for at
/// most `timeout`; its exit code, or `None` if it still runs.
pub async fn exit_code_of(pods: &Api<Pod>, pod: &str, container: &str, timeout: Duration) -> Option<i32> {
    let terminated = |pod: &Pod| {
        pod.status
            .iter()
            .flat_map(|s| s.ephemeral_container_statuses.iter().flatten())
            .find(|s| s.name == container)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={pod}"));
    let mut pods = watcher(pods.clone(), config).default_backoff().applied_objects().boxed();
    let found = async {
        while let Some(Ok(pod)) = pods.next().await {
            if let Some(code) = terminated(&pod) {
                return Some(code);
            }
        }
        None
    };
    tokio::time::timeout(timeout, found).await.ok().flatten()
}
