//! The plugin's commands.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use ephemera::crd::{DebugSession, DebugSessionSpec, Phase, Target};
use ephemera::debug_container::marked_containers;
use ephemera::plugin::cli::{DebugArgs, KubeFlags};
use ephemera::plugin::report::{self, EventLine, Renewal};
use ephemera::plugin::target::{TargetRef, WorkloadKind, parse_selector};
use ephemera::validation::{is_dns1123_label, is_dns1123_subdomain};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{EnvVar, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::attach;
use crate::connect::Connection;
use crate::wait;

pub struct Context {
    pub connection: Connection,
    pub flags: KubeFlags,
    pub quiet: bool,
    pub timeout: Duration,
}

impl Context {
    fn client(&self) -> Client {
        self.connection.client.clone()
    }

    fn namespace(&self) -> &str {
        &self.connection.namespace
    }

    fn sessions(&self) -> Api<DebugSession> {
        Api::namespaced(self.client(), self.namespace())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client(), self.namespace())
    }

    /// Informational output (stderr), silenced by -q.
    fn say(&self, text: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", text.as_ref());
        }
    }
}

/// `kubectl ephemera debug`.
pub async fn debug(cx: &Context, args: DebugArgs) -> Result<u8, Error> {
    args.validate()?;
    let (pod, selector, base) = match (&args.target, &args.selector) {
        (Some(text), _) => match TargetRef::parse(text)? {
            TargetRef::Pod(pod) => (Some(pod.clone()), None, pod),
            TargetRef::Workload(kind, name) => (None, Some(workload_selector(cx, kind, &name).await?), name),
        },
        (None, Some(text)) => {
            let selector = parse_selector(text)?;
            // Named after the first label value, as app=web gives web-debug-xxxxx.
            let first = selector.match_labels.iter().flatten().map(|(_, v)| v.clone()).find(|v| is_dns1123_label(v));
            (None, Some(selector), first.unwrap_or_default())
        }
        (None, None) => unreachable!("validate() requires a target"),
    };
    let env: Vec<EnvVar> = args
        .env_vars()?
        .into_iter()
        .map(|(name, value)| EnvVar { name, value: Some(value), value_from: None })
        .collect();
    let (command, arguments) = args.command_and_args();
    let seconds = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let spec = DebugSessionSpec {
        target: Target { pod, selector, container: args.target_container.clone(), ..Default::default() },
        image: args.image.clone().unwrap_or_default(),
        image_pull_policy: args.image_pull_policy,
        command,
        args: arguments,
        env: (!env.is_empty()).then_some(env),
        working_dir: None,
        stdin: args.stdin,
        tty: args.tty,
        profile: args.profile,
        container_name: args.container.clone(),
        attempt: 0,
        start_timeout_seconds: args.start_timeout.map_or(120, |d| seconds(d).max(1)),
        ttl_seconds_after_finished: args.ttl.map(seconds),
        ..DebugSessionSpec::default()
    };
    let mut session = DebugSession::new(args.name.as_deref().unwrap_or_default(), spec);
    if args.name.is_none() {
        // generateName adds 5 characters; names stay within 63 for readability.
        let base: String = base.chars().take(50).collect();
        let base = base.trim_end_matches(['-', '.']);
        session.metadata.name = None;
        session.metadata.generate_name =
            Some(if base.is_empty() { "debug-".to_string() } else { format!("{base}-debug-") });
    }
    let created = cx.sessions().create(&PostParams::default(), &session).await?;
    let name = created.name_any();
    cx.say(format!("debugsession.ephemera.dev/{name} created"));
    let settled = wait::until_settled(&cx.sessions(), &name, cx.timeout, cx.quiet).await?;
    conclude(cx, &settled, args.attaches()).await
}

/// The selector of a workload, which picks the pod to debug.
async fn workload_selector(cx: &Context, kind: WorkloadKind, name: &str) -> Result<LabelSelector, Error> {
    let client = cx.client();
    let ns = cx.namespace();
    let selector = match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client, ns).get(name).await?.spec.map(|s| s.selector),
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client, ns).get(name).await?.spec.map(|s| s.selector)
        }
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client, ns).get(name).await?.spec.map(|s| s.selector),
        WorkloadKind::ReplicaSet => Api::<ReplicaSet>::namespaced(client, ns).get(name).await?.spec.map(|s| s.selector),
    };
    selector.ok_or_else(|| format!("{}/{name} has no selector", kind.short_name()).into())
}

/// What a settled session leads to: an attach, the output of a container
/// that already exited, or the failure and what can help.
async fn conclude(cx: &Context, session: &DebugSession, attach: bool) -> Result<u8, Error> {
    let name = session.name_any();
    let status = session.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Running) => {
            let pods = cx.pods();
            let (pod, container) = attach::current_container(&pods, session).await?;
            let args = attach::attach_args(cx.namespace(), &pod, &container, session, cx.quiet);
            if !attach {
                crate::print_out(&format!("kubectl {}\n", args.join(" ")))?;
                return Ok(0);
            }
            if !session.spec.stdin {
                // Nothing to type into: the log has all the output, from its
                // first line, where an attach sees only what follows it.
                return attach::follow_output(&pods, &pod, &container, cx.quiet).await;
            }
            attach::run_attach(&pods, &cx.flags, &args, &pod, &container, cx.quiet).await
        }
        Some(Phase::Terminated) => {
            let pods = cx.pods();
            let (pod, container) = attach::current_container(&pods, session).await?;
            eprintln!("{}", report::exited_summary(session));
            attach::print_logs(&pods, &pod, &container, false).await?;
            Ok(attach::exit_status(status.exit_code))
        }
        _ => {
            let reason = status.reason.map_or("Failed", |r| r.as_str());
            eprintln!("{name}: {reason}: {}", status.message.unwrap_or_default());
            Ok(1)
        }
    }
}

/// `kubectl ephemera attach`.
pub async fn attach(cx: &Context, name: &str) -> Result<u8, Error> {
    let session = cx.sessions().get(name).await?;
    let session = if wait::is_settled(&session) {
        session
    } else {
        wait::until_settled(&cx.sessions(), name, cx.timeout, cx.quiet).await?
    };
    conclude(cx, &session, true).await
}

/// `kubectl ephemera renew`: raises spec.attempt on the version read (the
/// API server refuses the write if the session changed since), and decides
/// again from a fresh read when it was refused.
pub async fn renew(cx: &Context, name: &str, attach: bool) -> Result<u8, Error> {
    let sessions = cx.sessions();
    for _ in 0..10 {
        let session = sessions.get(name).await?;
        let current = session.status.as_ref().map_or(0, |s| s.attempt);
        match report::renewal(&session) {
            Renewal::Raise(attempt) => {
                let patch = serde_json::json!({
                    "metadata": { "resourceVersion": session.resource_version() },
                    "spec": { "attempt": attempt },
                });
                match sessions.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => cx.say(format!("debugsession.ephemera.dev/{name} renewed (attempt {attempt})")),
                    Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                    Err(error) => return Err(error.into()),
                }
            }
            Renewal::AlreadyRequested(attempt) => {
                cx.say(format!("{name}: attempt {attempt} is already requested; waiting for it"));
            }
            Renewal::StillStarting => cx.say(format!("{name}: attempt {current} is still starting; waiting for it")),
            Renewal::StillRunning { pod, container } => {
                eprintln!(
                    "{name}: the debug container {container} of attempt {current} still runs in pod {pod}. \
                     Ephemeral containers cannot be stopped, so a new attempt would only wait for it to exit."
                );
                if attach && std::io::stdin().is_terminal() && confirm("Attach to it instead? [Y/n] ")? {
                    return conclude(cx, &session, true).await;
                }
                eprintln!("Attach to it: kubectl ephemera attach {name}");
                return Ok(1);
            }
            Renewal::CannotHelp(why) => {
                eprintln!("{name}: {why}");
                return Ok(1);
            }
        }
        let settled = wait::until_settled(&sessions, name, cx.timeout, cx.quiet).await?;
        return conclude(cx, &settled, attach).await;
    }
    Err(format!("{name} kept changing while renewing it; try again").into())
}

fn confirm(question: &str) -> Result<bool, Error> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "" | "y" | "Y" | "yes"))
}

/// `kubectl ephemera ls`.
pub async fn ls(cx: &Context, all_namespaces: bool) -> Result<u8, Error> {
    let sessions: Api<DebugSession> = if all_namespaces { Api::all(cx.client()) } else { cx.sessions() };
    let mut list = sessions.list(&ListParams::default()).await?.items;
    if list.is_empty() {
        if all_namespaces {
            eprintln!("No debug sessions found.");
        } else {
            eprintln!("No debug sessions found in {} namespace.", cx.namespace());
        }
        return Ok(0);
    }
    list.sort_by_key(|s| (s.namespace(), s.name_any()));
    let now = Timestamp::now();
    let rows: Vec<_> = list.iter().flat_map(|s| report::attempt_rows(s, now)).collect();
    crate::print_out(&report::render_table(&rows, all_namespaces))?;
    Ok(0)
}

/// The session's pod, by the name in its status (checked before it goes into a URL).
async fn session_pod(cx: &Context, session: &DebugSession) -> Result<Option<Pod>, Error> {
    let Some(pod) = session.status.as_ref().and_then(|s| s.pod_name.clone()) else { return Ok(None) };
    if !is_dns1123_subdomain(&pod) {
        return Err(format!("the session's status names an invalid pod {pod:?}").into());
    }
    Ok(cx.pods().get_opt(&pod).await?)
}

/// `kubectl ephemera logs`: the output of one attempt's container, found in
/// the pod by the session's markers.
pub async fn logs(cx: &Context, name: &str, attempt: Option<i32>, follow: bool) -> Result<u8, Error> {
    let session = cx.sessions().get(name).await?;
    let attempt = attempt.unwrap_or_else(|| session.status.as_ref().map_or(0, |s| s.attempt));
    let Some(pod) = session_pod(cx, &session).await? else {
        // The pod is gone; with captureOutput its output outlived it.
        if let Some(output) = captured_output(cx, &session, attempt).await? {
            crate::print_out(&output)?;
            return Ok(0);
        }
        return Err(
            format!("{name} has no pod (any more) to read logs from, and kept no output of attempt {attempt}").into()
        );
    };
    let container = marked_containers(&session, &pod)
        .into_iter()
        .find(|m| m.attempt == attempt)
        .map(|m| m.container.name.clone())
        .filter(|c| is_dns1123_label(c))
        .ok_or_else(|| format!("pod {} holds no debug container of {name}'s attempt {attempt}", pod.name_any()))?;
    attach::print_logs(&cx.pods(), &pod.name_any(), &container, follow).await?;
    Ok(0)
}

/// The output `captureOutput` kept of `attempt`, from its ConfigMap (named by
/// the session, checked to be owned by it).
async fn captured_output(cx: &Context, session: &DebugSession, attempt: i32) -> Result<Option<String>, Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let name = ephemera::status::output_config_map(session, attempt);
    let config_maps: Api<ConfigMap> = Api::namespaced(cx.client(), cx.namespace());
    let Some(kept) = config_maps.get_opt(&name).await? else { return Ok(None) };
    let owned = kept.metadata.owner_references.iter().flatten().any(|o| Some(&o.uid) == session.metadata.uid.as_ref());
    if !owned {
        return Err(format!("ConfigMap {name} is not this session's; not showing it").into());
    }
    let mut text = match (
        kept.data.as_ref().and_then(|d| d.get("output")),
        kept.binary_data.as_ref().and_then(|d| d.get("output")),
    ) {
        (Some(text), _) => text.clone(),
        (None, Some(bytes)) => String::from_utf8_lossy(&bytes.0).into_owned(),
        (None, None) => String::new(),
    };
    if kept.metadata.annotations.as_ref().and_then(|a| a.get("ephemera.dev/truncated")).map(String::as_str)
        == Some("true")
    {
        text.push_str("\n[output truncated: captureOutput.maxBytes was reached]\n");
    }
    Ok(Some(text))
}

/// `kubectl ephemera delete`.
pub async fn delete(cx: &Context, name: &str) -> Result<u8, Error> {
    let session = cx.sessions().get(name).await?;
    let pod = session_pod(cx, &session).await.ok().flatten();
    cx.sessions().delete(name, &DeleteParams::default()).await?;
    crate::print_out(&format!("debugsession.ephemera.dev/{name} deleted\n"))?;
    if let Some(pod) = pod {
        let running = report::running_containers(&session, &pod);
        if !running.is_empty() {
            eprintln!("{}", report::still_running_warning(&session, &pod.name_any(), &running));
        } else {
            cx.say(format!(
                "Its debug containers stay in pod {} as a record: ephemeral containers cannot be removed.",
                pod.name_any()
            ));
        }
    }
    Ok(0)
}

/// `kubectl ephemera explain`.
pub async fn explain(cx: &Context, name: &str) -> Result<u8, Error> {
    let session = cx.sessions().get(name).await?;
    let events: Api<Event> = Api::namespaced(cx.client(), cx.namespace());
    let selector = format!("involvedObject.name={name},involvedObject.kind=DebugSession");
    let uid = session.uid();
    // Without the right to read Events the story is told from the status alone.
    let listed = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.is_forbidden() => {
            cx.say(format!("(Events are not readable: {})", status.message));
            Vec::new()
        }
        Err(error) => return Err(error.into()),
    };
    let mut lines: Vec<EventLine> = listed
        .into_iter()
        .filter(|e| e.involved_object.uid == uid)
        .map(|e| EventLine {
            time: e.event_time.map(|t| t.0).or(e.first_timestamp.as_ref().map(|t| t.0)).or(e
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)),
            count: e.series.as_ref().map_or(e.count.unwrap_or(1), |s| s.count.unwrap_or(1)),
            last: e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
                .or(e.last_timestamp.as_ref().map(|t| t.0)),
            warning: e.type_.as_deref() == Some("Warning"),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
        })
        .collect();
    lines.sort_by_key(|e| e.time);
    crate::print_out(&report::story(&session, &lines, Timestamp::now()))?;
    Ok(0)
}
