//! What the plugin decides and tells from a session's status: whether
//! `renew` can help, the `ls` table, the `explain` story, and what a finished
//! or still running container means for the user.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{ContainerState, DebugSession, DebugSessionStatus, FailureReason, Phase};
use crate::debug_container::{attach_command, marked_containers};

/// What `kubectl ephemera renew` does with a session as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Raise `spec.attempt` to this, at the resourceVersion read.
    Raise(i32),
    /// A newer attempt is already requested (by someone else, or a renew that
    /// won a race): wait for it instead of queueing yet another container.
    AlreadyRequested(i32),
    /// The current attempt's container still runs; a new attempt would only wait for it to exit.
    StillRunning { pod: String, container: String },
    /// The current attempt has not started yet.
    StillStarting,
    /// Nothing a new attempt of the same spec can change.
    CannotHelp(String),
}

/// Failures that the same spec, tried again, cannot get past.
fn renewable(reason: FailureReason) -> bool {
    !matches!(
        reason,
        FailureReason::TargetGone
            | FailureReason::Invalid
            | FailureReason::TargetContainerNotFound
            | FailureReason::ContainerMismatch
            | FailureReason::StaticPodUnsupported
    )
}

pub fn renewal(session: &DebugSession) -> Renewal {
    let status = session.status.clone().unwrap_or_default();
    if session.spec.attempt > status.attempt {
        return Renewal::AlreadyRequested(session.spec.attempt);
    }
    match status.phase {
        None | Some(Phase::Pending | Phase::Injected) => Renewal::StillStarting,
        Some(Phase::Running) => Renewal::StillRunning {
            pod: status.pod_name.unwrap_or_default(),
            container: status.container_name.unwrap_or_default(),
        },
        Some(Phase::Failed) => match status.reason {
            Some(reason) if !renewable(reason) => Renewal::CannotHelp(format!(
                "{}: {}\nrenew cannot help: a new attempt of the same spec ends the same way; {}",
                reason.as_str(),
                status.message.as_deref().unwrap_or_default(),
                reason.hint()
            )),
            _ => Renewal::Raise(session.spec.attempt + 1),
        },
        Some(Phase::Terminated) => Renewal::Raise(session.spec.attempt + 1),
    }
}

/// kubectl's way of showing an age: `45s`, `3m12s`, `25m`, `5h3m`, `30h`, `3d4h`, `20d`, `2y`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 != 0 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 != 0 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn age(since: Option<Timestamp>, now: Timestamp) -> String {
    since.map_or_else(|| "<unknown>".into(), |t| human_duration(now.duration_since(t).as_secs()))
}

/// One line of `kubectl ephemera ls`: one attempt of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub namespace: String,
    pub session: String,
    pub attempt: i32,
    pub phase: String,
    pub pod: String,
    pub container: String,
    pub attachable: bool,
    pub exit_code: Option<i32>,
    pub age: String,
}

/// The attempts of a session, oldest first: each container it added to the
/// pod, and the current attempt when it has none (not injected, failed
/// before, or waiting for its turn).
pub fn attempt_rows(session: &DebugSession, now: Timestamp) -> Vec<AttemptRow> {
    let status = session.status.clone().unwrap_or_default();
    let namespace = session.metadata.namespace.clone().unwrap_or_default();
    let name = session.metadata.name.clone().unwrap_or_default();
    let pod = status.pod_name.clone().unwrap_or_else(|| "<none>".into());
    let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut rows: Vec<AttemptRow> = status
        .containers
        .iter()
        .map(|c| {
            let current = c.attempt == status.attempt;
            let phase = match (current, status.phase, c.state) {
                (true, Some(phase), _) => phase.as_str().to_string(),
                (_, _, ContainerState::Running) => "Running".into(),
                (_, _, ContainerState::Terminated) => "Terminated".into(),
                _ => "Injected".into(),
            };
            AttemptRow {
                namespace: namespace.clone(),
                session: name.clone(),
                attempt: c.attempt,
                phase,
                pod: pod.clone(),
                container: c.name.clone(),
                attachable: c.state == ContainerState::Running,
                exit_code: c.exit_code,
                age: age(c.injected_at.as_ref().map(|t| t.0).or(created), now),
            }
        })
        .collect();
    let latest = session.spec.attempt.max(status.attempt);
    if !rows.iter().any(|r| r.attempt == latest) {
        let phase = if latest > status.attempt {
            "Requested".to_string()
        } else {
            status.phase.map_or("<none>", Phase::as_str).to_string()
        };
        rows.push(AttemptRow {
            namespace,
            session: name,
            attempt: latest,
            phase,
            pod,
            container: "<none>".into(),
            attachable: false,
            exit_code: None,
            age: age(created, now),
        });
    }
    rows.sort_by_key(|r| r.attempt);
    rows
}

/// The `ls` table, in kubectl's column style.
pub fn render_table(rows: &[AttemptRow], all_namespaces: bool) -> String {
    let mut lines: Vec<Vec<String>> = vec![
        ["NAMESPACE", "NAME", "ATTEMPT", "PHASE", "POD", "CONTAINER", "ATTACHABLE", "EXIT", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        lines.push(vec![
            r.namespace.clone(),
            r.session.clone(),
            r.attempt.to_string(),
            r.phase.clone(),
            r.pod.clone(),
            r.container.clone(),
            if r.attachable { "yes" } else { "no" }.into(),
            r.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            r.age.clone(),
        ]);
    }
    if !all_namespaces {
        lines.iter_mut().for_each(|l| drop(l.remove(0)));
    }
    let columns = lines[0].len();
    let widths: Vec<usize> =
        (0..columns).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    lines
        .iter()
        .map(|l| {
            let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("   ").trim_end().to_string() + "\n"
        })
        .collect()
}

/// What `attach` says when the container already exited, before its output.
pub fn exited_summary(session: &DebugSession) -> String {
    let status = session.status.clone().unwrap_or_default();
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let code = status.exit_code.map_or_else(|| "unknown".into(), |c| c.to_string());
    let reason = status.exit_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    let when = status.finished_at.as_ref().map(|t| format!(" at {}", t.0)).unwrap_or_default();
    format!(
        "Debug container {} (attempt {}) in pod {} exited with code {code}{reason}{when}.\n\
         Ephemeral containers never restart, so it cannot be attached to again; \
         `kubectl ephemera renew {name}` starts a fresh one. Its output:",
        status.container_name.as_deref().unwrap_or("<unknown>"),
        status.attempt,
        status.pod_name.as_deref().unwrap_or("<unknown>"),
    )
}

/// Terminal control in a TTY session's log: escape sequences (colours, cursor
/// moves, and the queries a terminal answers by typing into the next
/// command) and control characters other than tab and newline.
static TERMINAL_CONTROL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
        .expect("a valid pattern")
});

/// A log line as it is safe to show on a terminal: without control sequences.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    TERMINAL_CONTROL.replace_all(line, "")
}

/// The session's debug containers that the pod reports as running.
pub fn running_containers(session: &DebugSession, pod: &Pod) -> Vec<String> {
    let running: Vec<&str> = pod
        .status
        .iter()
        .flat_map(|s| s.ephemeral_container_statuses.iter().flatten())
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .map(|s| s.name.as_str())
        .collect();
    marked_containers(session, pod)
        .into_iter()
        .map(|m| m.container.name.clone())
        .filter(|name| running.contains(&name.as_str()))
        .collect()
}

/// Printed after `delete` when a debug process of the session still runs.
pub fn still_running_warning(session: &DebugSession, pod: &str, containers: &[String]) -> String {
    let namespace = session.metadata.namespace.as_deref().unwrap_or_default();
    let last = containers.last().map_or("", String::as_str);
    let attach = attach_command(namespace, pod, last, session.spec.stdin, session.spec.tty);
    format!(
        "The debug process in pod {pod} (container {}) keeps running: deleting a DebugSession cannot stop it, \
         and the API can neither stop nor remove an ephemeral container. Exit it ({attach}) or it ends with the pod.",
        containers.join(", ")
    )
}

/// One Kubernetes Event about the session, as `explain` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLine {
    pub time: Option<Timestamp>,
    /// How often it happened (an Event series), and when last.
    pub count: i32,
    pub last: Option<Timestamp>,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// A readable account of the session: what it asks for, what happened (its
/// Events), each attempt, where it stands and what can be done next.
pub fn story(session: &DebugSession, events: &[EventLine], now: Timestamp) -> String {
    let spec = &session.spec;
    let status: DebugSessionStatus = session.status.clone().unwrap_or_default();
    let name = session.metadata.name.as_deref().unwrap_or_default();
    let namespace = session.metadata.namespace.as_deref().unwrap_or_default();
    let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };

    line(format!("DebugSession {name} in namespace {namespace}, created {} ago.", age(created, now)));
    let target = match (&spec.target.pod, &spec.target.selector) {
        (Some(pod), _) => format!("pod {pod}"),
        (None, Some(selector)) => {
            format!("a Running pod matching {}", serde_json::to_string(selector).unwrap_or_default().replace('"', ""))
        }
        _ => "nothing".into(),
    };
    let shared = spec.target.container.as_deref().map_or("the pod's first container".to_string(), |c| c.to_string());
    let command = spec.command.as_ref().map(|c| format!(" running {}", c.join(" "))).unwrap_or_default();
    line(format!(
        "It debugs {target}, sharing the processes of {shared}, with {}{command} (profile {}).",
        spec.image,
        serde_json::to_value(spec.profile).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    ));
    if let Some(pod) = &status.pod_name {
        line(format!(
            "The pod is {pod}{}.",
            status.pod_uid.as_deref().map(|u| format!(" (UID {u})")).unwrap_or_default()
        ));
    }

    line(String::new());
    line("What happened:".into());
    if events.is_empty() {
        line("  (no Events: they expire after an hour, or the operator has not acted yet)".into());
    }
    for event in events {
        let when = event.time.map_or_else(|| "?".into(), |t| format!("{} ago", age(Some(t), now)));
        let marker = if event.warning { "Warning " } else { "" };
        let repeated = match (event.count, event.last) {
            (count, Some(last)) if count > 1 => format!(" ({count} times, last {} ago)", age(Some(last), now)),
            (count, None) if count > 1 => format!(" ({count} times)"),
            _ => String::new(),
        };
        line(format!("  {when:>9}  {marker}{}{repeated}: {}", event.reason, event.message));
    }

    if !status.containers.is_empty() {
        line(String::new());
        line("Attempts (every debug container stays in the pod; none can be removed):".into());
        for c in &status.containers {
            let state = match c.state {
                ContainerState::Terminated => format!(
                    "exited with code {}{}",
                    c.exit_code.map_or_else(|| "?".into(), |e| e.to_string()),
                    c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                ),
                ContainerState::Running => "running".into(),
                ContainerState::Waiting => {
                    format!("waiting{}", c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
                }
                ContainerState::Unknown => "not reported by the kubelet yet".into(),
            };
            line(format!("  attempt {}: container {}, {state}", c.attempt, c.name));
        }
    }

    line(String::new());
    let phase = status.phase.map_or("not taken up by the operator yet", Phase::as_str);
    let observed = match (status.observed_generation, session.metadata.generation) {
        (Some(o), Some(g)) if o < g => " (the operator has not seen the latest change yet)",
        _ => "",
    };
    line(format!("Now: attempt {} is {phase}{observed}.", status.attempt));
    if let Some(message) = status.message.as_deref().filter(|m| !m.is_empty()) {
        line(format!("  {message}"));
    }
    let next = match renewal(session) {
        Renewal::AlreadyRequested(attempt) => {
            format!("Attempt {attempt} is requested; it starts once the current container has exited.")
        }
        Renewal::StillStarting => format!("Wait for it: kubectl ephemera attach {name}"),
        Renewal::StillRunning { .. } => format!("Attach to it: kubectl ephemera attach {name}"),
        Renewal::Raise(_) => format!("A fresh debug container: kubectl ephemera renew {name}"),
        Renewal::CannotHelp(_) => status.reason.map_or_else(String::new, |r| format!("What can help: {}.", r.hint())),
    };
    if !next.is_empty() {
        line(format!("Next: {next}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DebugContainerStatus, DebugSessionSpec, Target};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn session(attempt: i32, status: DebugSessionStatus) -> DebugSession {
        let mut s = DebugSession::new(
            "shell",
            DebugSessionSpec {
                target: Target { pod: Some("web".into()), container: Some("app".into()), ..Default::default() },
                image: "busybox:1.36".into(),
                image_pull_policy: None,
                command: Some(vec!["sh".into()]),
                args: None,
                env: None,
                working_dir: None,
                stdin: true,
                tty: true,
                profile: Default::default(),
                container_name: None,
                attempt,
                start_timeout_seconds: 120,
                ttl_seconds_after_finished: None,
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.creation_timestamp = Some(Time(at(0)));
        s.metadata.generation = Some(1);
        s.status = Some(status);
        s
    }

    fn container(attempt: i32, state: ContainerState, exit_code: Option<i32>) -> DebugContainerStatus {
        DebugContainerStatus {
            name: if attempt == 0 { "debugger-abcde".into() } else { format!("debugger-abcde-{attempt}") },
            attempt,
            state,
            exit_code,
            injected_at: Some(Time(at(10 * i64::from(attempt)))),
            ..Default::default()
        }
    }

    fn status(attempt: i32, phase: Phase, reason: Option<FailureReason>) -> DebugSessionStatus {
        DebugSessionStatus {
            attempt,
            phase: Some(phase),
            reason,
            message: Some("what happened".into()),
            pod_name: Some("web".into()),
            container_name: Some("debugger-abcde".into()),
            ..Default::default()
        }
    }

    #[test]
    fn renew_raises_only_where_a_new_attempt_can_help() {
        let table = [
            (session(0, status(0, Phase::Terminated, None)), Renewal::Raise(1)),
            (session(2, status(2, Phase::Failed, Some(FailureReason::StartTimeout))), Renewal::Raise(3)),
            (session(1, status(0, Phase::Terminated, None)), Renewal::AlreadyRequested(1)),
            (session(1, status(0, Phase::Running, None)), Renewal::AlreadyRequested(1)),
            (
                session(0, status(0, Phase::Running, None)),
                Renewal::StillRunning { pod: "web".into(), container: "debugger-abcde".into() },
            ),
            (session(0, status(0, Phase::Injected, None)), Renewal::StillStarting),
            (session(0, DebugSessionStatus::default()), Renewal::StillStarting),
        ];
        for (session, expected) in table {
            assert_eq!(renewal(&session), expected, "{:?}", session.status);
        }
        for reason in [FailureReason::TargetGone, FailureReason::Invalid, FailureReason::TargetContainerNotFound] {
            let Renewal::CannotHelp(message) = renewal(&session(0, status(0, Phase::Failed, Some(reason)))) else {
                panic!("{reason:?} cannot be renewed");
            };
            assert!(message.starts_with(reason.as_str()) && message.contains("renew cannot help"), "{message}");
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        let table = [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (600, "10m"),
            (3600, "60m"),
            (3 * 3600 + 120, "3h2m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (20 * 86400, "20d"),
            (800 * 86400, "2y"),
        ];
        for (seconds, text) in table {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn ls_shows_every_attempt() {
        let mut s = status(1, Phase::Running, None);
        s.containers =
            vec![container(0, ContainerState::Terminated, Some(3)), container(1, ContainerState::Running, None)];
        let rows = attempt_rows(&session(1, s), at(70));
        let table = render_table(&rows, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("NAME    ATTEMPT   PHASE"), "{table}");
        assert!(lines[1].split_whitespace().eq([
            "shell",
            "0",
            "Terminated",
            "web",
            "debugger-abcde",
            "no",
            "3",
            "70s"
        ]));
        assert!(lines[2].split_whitespace().eq([
            "shell",
            "1",
            "Running",
            "web",
            "debugger-abcde-1",
            "yes",
            "-",
            "60s"
        ]));
        assert!(render_table(&rows, true).starts_with("NAMESPACE   NAME"));

        // Failed before anything was added; and a raised attempt that waits.
        let rows = attempt_rows(&session(0, status(0, Phase::Failed, Some(FailureReason::TargetNotFound))), at(5));
        assert_eq!((rows.len(), rows[0].phase.as_str(), rows[0].container.as_str()), (1, "Failed", "<none>"));
        let mut s = status(0, Phase::Running, None);
        s.containers = vec![container(0, ContainerState::Running, None)];
        let rows = attempt_rows(&session(1, s), at(5));
        assert_eq!(rows.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>(), ["Running", "Requested"]);
    }

    #[test]
    fn the_story_tells_events_attempts_and_what_next() {
        let mut s = status(0, Phase::Terminated, None);
        s.exit_code = Some(3);
        s.containers = vec![container(0, ContainerState::Terminated, Some(3))];
        let events = [
            EventLine {
                time: Some(at(1)),
                count: 2,
                last: Some(at(30)),
                warning: false,
                reason: "Injected".into(),
                message: "added".into(),
            },
            EventLine {
                time: Some(at(9)),
                count: 1,
                last: None,
                warning: true,
                reason: "Terminated".into(),
                message: "exit 3".into(),
            },
        ];
        let text = story(&session(0, s), &events, at(60));
        for expected in [
            "DebugSession shell in namespace ns, created 60s ago.",
            "It debugs pod web, sharing the processes of app, with busybox:1.36 running sh (profile general).",
            "59s ago  Injected (2 times, last 30s ago): added",
            "51s ago  Warning Terminated: exit 3",
            "attempt 0: container debugger-abcde, exited with code 3",
            "Now: attempt 0 is Terminated.",
            "Next: A fresh debug container: kubectl ephemera renew shell",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        let gone = story(&session(0, status(0, Phase::Failed, Some(FailureReason::TargetGone))), &[], at(5));
        assert!(gone.contains("What can help: create a new DebugSession"), "{gone}");
    }

    #[test]
    fn logs_shown_on_a_terminal_cannot_drive_it() {
        let line = "\x1b[6n/ # \x1b[1;32mecho\x1b[0m hi\x07\r\x1b]0;title\x07 done\x1b[23;5R\t.";
        assert_eq!(printable(line), "/ # echo hi done\t.");
        assert_eq!(printable("plain text"), "plain text");
    }

    #[test]
    fn exited_summary_names_code_reason_and_renew() {
        let mut s = status(0, Phase::Terminated, None);
        s.exit_code = Some(3);
        s.exit_reason = Some("Error".into());
        let text = exited_summary(&session(0, s));
        assert!(text.contains("exited with code 3 (Error)") && text.contains("kubectl ephemera renew shell"), "{text}");
    }
}
