//! The figures: ratios against the floor, costs per session, the scale
//! scenario, docs/benchmarks.md and its plots.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::Plan;
use crate::cluster::Bench;
use crate::latency::{PerPod, ScenarioResult, TrialResult, Who};
use crate::requests::percentile;
use crate::scale::{OperatorFigures, ScaleResult};
use crate::server_cost::{EPHEMERA_PATH, FLOOR_PATH, RequestKind, ServerCost};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Results {
    pub plan: Plan,
    pub commit: String,
    pub date: String,
    pub machine: String,
    pub kubernetes: String,
    pub scenarios: Vec<ScenarioResult>,
    pub per_pod: Option<PerPod>,
    pub scale: Option<ScaleResult>,
    pub server_cost: Option<ServerCost>,
    pub seconds: f64,
    pub load: (f64, f64),
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(crate::common::repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpus} CPUs, {mem_gib:.0} GiB, Linux {}", command_output("uname", &["-r"]))
}

impl Results {
    /// Keeps a scenario's outcome, and says it at once.
    pub fn add_scenario(&mut self, result: ScenarioResult) {
        print_scenario(&result);
        self.scenarios.push(result);
    }

    pub async fn new(plan: &Plan, bench: &Bench) -> Self {
        crate::requests::self_check();
        let dirty = !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
        Results {
            plan: plan.clone(),
            commit: if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine: machine(),
            kubernetes: bench.kube_version.clone(),
            scenarios: Vec::new(),
            per_pod: None,
            scale: None,
            server_cost: None,
            seconds: 0.0,
            load: (crate::latency::load_average(), 0.0),
        }
    }

    pub fn finish(&mut self, took: Duration) {
        self.seconds = took.as_secs_f64();
        self.load.1 = crate::latency::load_average();
    }

    /// Scenarios whose debug containers did not all reach their pod, ephemera's or the floor's.
    pub fn failures(&self) -> Vec<String> {
        let mut failures: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| {
                s.trials.iter().filter(|t| t.in_spec_ms.is_none()).map(move |t| {
                    format!(
                        "{}: {:?} {} in {}: {}",
                        s.key,
                        t.who,
                        t.name,
                        t.pod,
                        t.error.as_deref().unwrap_or("never in the pod spec")
                    )
                })
            })
            .collect();
        if let Some(scale) = &self.scale {
            let terminated = scale.finished.get("Terminated").copied().unwrap_or(0);
            if terminated != scale.sessions {
                failures.push(format!("scale: {} sessions ended {:?}", scale.sessions, scale.finished));
            }
        }
        failures
    }

    /// The tables, as markdown (they read well in a terminal too).
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.scenarios.is_empty() {
            out += &latency_table(&self.scenarios);
            out += "\n";
            out += &round_table(&self.scenarios);
            out += "\n";
            out += &path_table(&self.scenarios);
            out += "\n";
        }
        if let Some(cost) = &self.server_cost {
            out += &server_cost_table(cost, &self.scenarios);
            out += "\n";
        }
        if !self.scenarios.is_empty() {
            out += &cost_table(&self.scenarios);
            out += "\n";
            out += &request_lists(&self.scenarios);
        }
        if let Some(per_pod) = &self.per_pod {
            out += "\n";
            out += &per_pod_table(per_pod);
        }
        if let Some(scale) = &self.scale {
            out += "\n";
            out += &scale_tables(scale);
        }
        out
    }

    /// Writes benchmarks.md, the plots and results.json into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let mut plots = Vec::new();
        if !self.scenarios.is_empty() {
            let path = dir.join("bench-latency-cdf.svg");
            latency_plot(&path, &self.scenarios)?;
            plots.push(("Latency CDFs, ephemera against the floor", "bench-latency-cdf.svg"));
            written.push(path.display().to_string());
        }
        if let Some(per_pod) = &self.per_pod {
            let path = dir.join("bench-requests-per-pod.svg");
            per_pod_plot(&path, per_pod, self.floor_requests_per_container())?;
            plots.push(("Requests per session against sessions per pod", "bench-requests-per-pod.svg"));
            written.push(path.display().to_string());
        }
        let path = dir.join("benchmarks.md");
        std::fs::write(&path, self.markdown(&plots))?;
        written.push(path.display().to_string());
        Ok(written)
    }

    /// Keeps the figures in target/bench-results-MODE.json, from which `--render` writes the report again.
    pub fn save(&self) -> Result<String, Box<dyn std::error::Error>> {
        let path = crate::common::repo_root().join(format!("target/bench-results-{}.json", self.plan.mode));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path.display().to_string())
    }

    fn floor_requests_per_container(&self) -> Option<f64> {
        let requests: usize = self.scenarios.iter().map(|s| s.floor.requests()).sum();
        let containers: usize = self.scenarios.iter().map(|s| s.floor_containers).sum();
        (containers > 0).then(|| requests as f64 / containers as f64)
    }

    fn markdown(&self, plots: &[(&str, &str)]) -> String {
        let mut md = String::new();
        md += "# Benchmarks\n\n";
        md += "Generated by `make bench` (`benches/ephemera/`); do not edit by hand.\n\n";
        let _ = writeln!(
            md,
            "Run: {} ({} mode, {:.0} min), commit {}, Kubernetes {}, {}; load average {:.1} at the start, {:.1} at the end.\n",
            self.date,
            self.plan.mode,
            self.seconds / 60.0,
            self.commit,
            self.kubernetes,
            self.machine,
            self.load.0,
            self.load.1
        );
        md += METHOD;
        md += "\n";
        if self.plan.mode == "smoke" {
            md += "**A smoke run: a few sessions of each scenario, to keep the benchmark working. Its figures mean nothing.**\n\n";
        }
        md += &self.table();
        for (title, file) in plots {
            let _ = writeln!(md, "\n## {title}\n\n![{title}]({file})");
        }
        md
    }
}

const METHOD: &str = "\
## How it measures

- **The floor** is what `kubectl debug` does: GET the pod, then one
  strategic-merge PATCH of `pods/ephemeralcontainers`, over a kept-alive
  connection, done in the bench's process with the same container (image,
  command, `general` profile) as the DebugSession asks for.
- Ephemera and the floor run **interleaved in one run** (alternating one by one,
  or burst by burst, with the first kind alternating) and are **timed by the same
  pod watch**: from the DebugSession create (or the floor's GET) to the container
  in the pod spec, and to its `ephemeralContainerStatuses` Running.
- A **burst starts on a quiet cluster**: once the containers of every earlier
  burst have exited (and their sessions say so) and the operator has been quiet
  for 300 ms, so no burst shares the API server with another's wave of exits.
  A scenario starts once the pods of the one before are gone: the kubelet
  kills a deleted pod's containers for seconds, and no burst shares the node
  with that.
- The operator runs as its own process (the same build) and talks to the API
  server through a **counting proxy on loopback**; the floor talks through an
  identical one, so both pay the same hop. Each proxy forwards over one HTTP/2
  connection, as `kubectl` and the operator in a cluster talk to the API
  server. The proxies count every request by
  verb and resource; the operator's own `/metrics` is read as well.
- Each debug container sleeps, then exits, so a session goes through its whole
  life (Pending, Injected, Running, Terminated); a scenario's requests are
  counted until every session has finished and the operator is quiet.
- A session's **status-write budget** is the normal path's three writes plus
  one for each waiting reason the kubelet reported for its container (as the
  bench's pod watch saw them); the cost table counts the sessions over it.
- **Subresource writes per container** can be below 1: adds for a pod that
  come while two writes to it are under way share the next write. \"Containers
  written twice\" counts the containers that more than one accepted write added.
- **What a request costs the API server** is measured first, on a quiet
  cluster: each kind of request on a debug container's way, sent many times in
  a row with the operator's (or the floor's) body, and the CPU time that
  kube-apiserver and etcd spent on it. In a burst the requests wait for that
  CPU, so it says what a burst's ratio can be, whatever the operator does.
- Ratios are ephemera / floor. Latencies are in ms; p99 is the nearest rank.
- **The machine is shared** (2 cores, other builds and tests on the same
  cluster): absolute times are noisy; ratios from one interleaved run much less so.
";

fn values(trials: &[TrialResult], who: Who, field: fn(&TrialResult) -> Option<f64>) -> Vec<f64> {
    trials.iter().filter(|t| t.who == who).filter_map(field).collect()
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") })
}

/// "e / f = r×"
fn ratio_cell(e: Option<f64>, f: Option<f64>) -> String {
    match (e, f) {
        (Some(e), Some(f)) if f > 0.0 => format!("{} / {} = **{:.2}×**", ms(Some(e)), ms(Some(f)), e / f),
        _ => format!("{} / {}", ms(e), ms(f)),
    }
}

fn latency_table(scenarios: &[ScenarioResult]) -> String {
    let mut out = String::from("## Latency: ephemera / floor (ms)\n\n");
    out += "| scenario | trials (e/f), missing | create→in spec median | p99 | create→running median | p99 | session says Running, median / p99 |\n";
    out += "|---|---|---|---|---|---|---|\n";
    for s in scenarios {
        let in_spec = |who| values(&s.trials, who, |t| t.in_spec_ms);
        let running = |who| values(&s.trials, who, |t| t.running_ms);
        let count = |who| s.trials.iter().filter(|t| t.who == who).count();
        let missing = s.trials.iter().filter(|t| t.running_ms.is_none()).count();
        let session = values(&s.trials, Who::Ephemera, |t| t.session_running_ms);
        let (ei, fi, er, fr) =
            (in_spec(Who::Ephemera), in_spec(Who::Floor), running(Who::Ephemera), running(Who::Floor));
        let _ = writeln!(
            out,
            "| {} | {}/{}, {missing} | {} | {} | {} | {} | {} / {} |",
            s.title,
            count(Who::Ephemera),
            count(Who::Floor),
            ratio_cell(percentile(&ei, 0.5), percentile(&fi, 0.5)),
            ratio_cell(percentile(&ei, 0.99), percentile(&fi, 0.99)),
            ratio_cell(percentile(&er, 0.5), percentile(&fr, 0.5)),
            ratio_cell(percentile(&er, 0.99), percentile(&fr, 0.99)),
            ms(percentile(&session, 0.5)),
            ms(percentile(&session, 0.99)),
        );
    }
    out
}

/// Ephemera / floor of one percentile, round by round (a round: one burst of each kind).
fn round_ratios(trials: &[TrialResult], field: fn(&TrialResult) -> Option<f64>, p: f64) -> Vec<f64> {
    let mut rounds: Vec<usize> = trials.iter().filter_map(|t| t.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
        .into_iter()
        .filter_map(|round| {
            let of = |who| {
                let in_round: Vec<f64> =
                    trials.iter().filter(|t| t.round == Some(round) && t.who == who).filter_map(field).collect();
                percentile(&in_round, p)
            };
            Some(of(Who::Ephemera)? / of(Who::Floor).filter(|f| *f > 0.0)?)
        })
        .collect()
}

/// "lowest / median / highest; k of n within `target`×"
fn spread_cell(ratios: &[f64], target: f64) -> String {
    let at = |p| percentile(ratios, p).map_or("-".into(), |r| format!("{r:.2}×"));
    let within = ratios.iter().filter(|r| **r <= target).count();
    format!("{} / {} / {}; {within} of {} within {target}×", at(0.0), at(0.5), at(1.0), ratios.len())
}

/// Issue 12's targets, ephemera / floor: create→in spec median in bursts, create→running p99.
const IN_SPEC_MEDIAN_TARGET: f64 = 1.5;
const RUNNING_P99_TARGET: f64 = 1.15;

/// How far one round's ratio strays from the next: what a whole run's ratio is worth.
fn round_table(scenarios: &[ScenarioResult]) -> String {
    let mut out = String::from("## Round by round: ephemera / floor within each round (lowest / median / highest)\n\n");
    out += "Scenarios run in rounds start one burst of each kind per round, one after the other; a round's ratio compares \
            the two bursts that ran closest in time.\n\n";
    out += "| scenario | rounds | create→in spec median | create→running p99 |\n|---|---|---|---|\n";
    for s in scenarios {
        let in_spec = round_ratios(&s.trials, |t| t.in_spec_ms, 0.5);
        if in_spec.is_empty() {
            continue;
        }
        let running = round_ratios(&s.trials, |t| t.running_ms, 0.99);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.title,
            in_spec.len(),
            spread_cell(&in_spec, IN_SPEC_MEDIAN_TARGET),
            spread_cell(&running, RUNNING_P99_TARGET)
        );
    }
    out
}

fn path_table(scenarios: &[ScenarioResult]) -> String {
    let mut out =
        String::from("## Where ephemera's time goes before the container is in the spec (median / p99, ms)\n\n");
    out += "From the counting proxies' logs: when each request reached the proxy and how long the API server took. The session's create is timed by the bench (sent → answered); the operator can react only after it, as its watch delivers the new session. The claim is the Pending status write guarded by the session's resourceVersion, which must succeed before the pod is touched.\n\n";
    out += "| scenario | session create | create answered → claim sent | claim write | claim answered → pod patch sent | pod patch | create → in spec | floor: GET | floor: PATCH | floor: start → in spec |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|\n";
    for s in scenarios {
        let p = &s.path;
        let cell = |v: &[f64]| format!("{} / {}", ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
        let in_spec = |who| values(&s.trials, who, |t| t.in_spec_ms);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.title,
            cell(&p.create),
            cell(&p.to_claim),
            cell(&p.claim),
            cell(&p.claim_to_patch),
            cell(&p.patch),
            cell(&in_spec(Who::Ephemera)),
            cell(&p.floor_get),
            cell(&p.floor_patch),
            cell(&in_spec(Who::Floor)),
        );
    }
    out += "\nThe operator's requests by kind, median / p99 ms at the API server (all scenarios): ";
    let mut took: std::collections::BTreeMap<&String, Vec<(f64, f64)>> = Default::default();
    for s in scenarios {
        for (kind, value) in &s.operator.took_ms {
            took.entry(kind).or_default().push(*value);
        }
    }
    let parts: Vec<String> = took
        .iter()
        .map(|(kind, v)| {
            let median = v.iter().map(|x| x.0).collect::<Vec<_>>();
            let p99 = v.iter().map(|x| x.1).collect::<Vec<_>>();
            format!("{kind} {} / {}", ms(percentile(&median, 0.5)), ms(percentile(&p99, 0.5)))
        })
        .collect();
    out += &parts.join("; ");
    out += " (medians of the scenarios' figures).\n";
    out
}

/// What each request costs the API server, and what that makes of a burst.
fn server_cost_table(cost: &ServerCost, scenarios: &[ScenarioResult]) -> String {
    let mut out = String::from("## What each request costs the API server and etcd (CPU ms per request)\n\n");
    let _ = writeln!(
        out,
        "{} round(s) of {} requests of each kind, one after another, on pods that never run (so no kubelet adds its \
         own requests), with the bodies the operator's own code builds (its decision, claim and pod write) and the \
         floor's. The CPU time of kube-apiserver and etcd (from /proc) less their idle rate ({:.1} and {:.1} ms/s), \
         per request; the median of the rounds.\n",
        cost.rounds, cost.requests, cost.idle_ms_per_s.0, cost.idle_ms_per_s.1
    );
    out += "| request | kube-apiserver | etcd | both | time each, one after another |\n|---|---|---|---|---|\n";
    for c in &cost.kinds {
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            c.kind.describe(),
            c.apiserver_ms,
            c.etcd_ms,
            c.apiserver_ms + c.etcd_ms,
            c.wall_ms
        );
    }
    let floor = cost.path_ms(&FLOOR_PATH);
    let ephemera = cost.path_ms(&EPHEMERA_PATH);
    let without = |left_out: &[RequestKind]| {
        let path: Vec<RequestKind> = EPHEMERA_PATH.iter().copied().filter(|k| !left_out.contains(k)).collect();
        cost.path_ms(&path) / floor
    };
    let burst = scenarios.iter().find(|s| s.key.starts_with("burst")).and_then(|s| {
        let median = |who| percentile(&values(&s.trials, who, |t| t.in_spec_ms), 0.5);
        Some((s.title.clone(), median(Who::Ephemera)? / median(Who::Floor).filter(|f| *f > 0.0)?))
    });
    if floor > 0.0 {
        let _ = write!(
            out,
            "\nOn its way into the pod spec a container costs the floor (pod GET, pod patch) {floor:.2} ms of CPU, and \
             ephemera (the user's create, pod GET, claim, pod patch) {ephemera:.2} ms: **{:.2}×**; {:.2}× without the \
             claim, {:.2}× without the claim and the pod read. That is the ratio a burst's create→in-spec median \
             tends to when the API server's CPU is its only bottleneck; the kubelet starting the containers already \
             added and writes to the same pods compete with both kinds as well, so the measured median varies from \
             run to run",
            ephemera / floor,
            without(&[RequestKind::Claim]),
            without(&[RequestKind::Claim, RequestKind::PodGet]),
        );
        match burst {
            Some((title, ratio)) => {
                let _ = writeln!(out, " (this run, {title}: {ratio:.2}×).");
            }
            None => out += ".\n",
        }
        let life = ephemera + 2.0 * cost.cpu_ms(RequestKind::RunningStatus) + 3.0 * cost.cpu_ms(RequestKind::Event);
        let _ = writeln!(
            out,
            "A whole session (those four, the Running and Terminated status writes, taking Terminated's as Running's, and \
             three Events) costs {life:.2} ms: {:.2}× the floor's container.",
            life / floor
        );
    }
    out
}

fn per(count: usize, of: usize) -> String {
    if of == 0 { "-".into() } else { format!("{:.2}", count as f64 / of as f64) }
}

fn cost_table(scenarios: &[ScenarioResult]) -> String {
    let mut out = String::from("## Cost: the operator's requests (floor: 2 per container)\n\n");
    out += "| scenario | sessions | requests / session (floor / container) | without events | pod reads / session | subresource writes / container (containers written twice) | status writes / session (max) | sessions over 3 + waiting reasons | pod reads / pod event | 409 / 422 answers | reconciler requests / session (its /metrics) | connections to its proxy (plain HTTP/1.1), most |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for s in scenarios {
        let op = &s.operator;
        let writes: Vec<usize> = op.status_writes.values().copied().collect();
        let max_writes = writes.iter().max().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {} | {} ({}) | {} ({max_writes}) | {} | {} ({} / {}) | {} / {} | {} | {} |",
            s.title,
            s.sessions,
            per(op.requests(), s.sessions),
            per(s.floor.requests(), s.floor_containers),
            per(op.requests_without_events(), s.sessions),
            per(op.pod_reads(), s.sessions),
            per(op.get("patch pods/ephemeralcontainers"), s.containers),
            op.containers_written_twice(),
            per(op.get("patch debugsessions/status"), s.sessions),
            s.status_writes_over_budget,
            per(op.pod_reads(), s.pod_events),
            op.pod_reads(),
            s.pod_events,
            op.conflicts,
            op.refusals,
            per(s.metrics.sum("ephemera_api_requests_total") as usize, s.sessions),
            s.connections_max,
        );
    }
    out
}

fn request_lists(scenarios: &[ScenarioResult]) -> String {
    let mut out = String::from("### Requests by verb and resource\n\n");
    for s in scenarios {
        let metrics: Vec<String> = s
            .metrics
            .0
            .iter()
            .filter(|(k, _)| !k.starts_with("ephemera_api_requests_total"))
            .map(|(k, v)| format!("{} {v}", k.trim_start_matches("ephemera_")))
            .collect();
        let _ = writeln!(
            out,
            "- {}: operator: {}; floor: {}; the operator's /metrics: {}",
            s.title,
            s.operator.describe(),
            s.floor.describe(),
            metrics.join(", ")
        );
    }
    out
}

fn per_pod_table(per_pod: &PerPod) -> String {
    let mut out = String::from("## Requests per session against sessions per pod\n\n");
    out += "k sessions created at once on one fresh pod (each session's whole life), and the k-th session added to a pod that holds k - 1 running ones (from its create until it runs and the operator is quiet).\n\n";
    out += "| k | at once: requests / session | pod reads / session | status writes / session | pod reads / pod event | k-th added: requests | pod reads | status writes |\n";
    out += "|---|---|---|---|---|---|---|---|\n";
    let ks: std::collections::BTreeSet<usize> =
        per_pod.at_once.iter().chain(per_pod.added.iter()).map(|p| p.k).collect();
    for k in ks {
        let once = per_pod.at_once.iter().find(|p| p.k == k);
        let added = per_pod.added.iter().find(|p| p.k == k);
        let once_cells = once.map_or(["-".to_string(), "-".into(), "-".into(), "-".into()], |p| {
            [
                format!("{:.2}", p.requests_per_session()),
                per(p.operator.pod_reads(), p.sessions),
                per(p.operator.get("patch debugsessions/status"), p.sessions),
                per(p.operator.pod_reads(), p.pod_events),
            ]
        });
        let added_cells = added.map_or(["-".to_string(), "-".into(), "-".into()], |p| {
            [
                p.operator.requests().to_string(),
                p.operator.pod_reads().to_string(),
                p.operator.get("patch debugsessions/status").to_string(),
            ]
        });
        let _ = writeln!(out, "| {k} | {} | {} |", once_cells.join(" | "), added_cells.join(" | "));
    }
    out
}

fn figure_row(label: &str, f: &OperatorFigures) -> String {
    let secs = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} s"));
    format!(
        "| {label} | {} | {} | {:.1} MiB ({:.1}) | {:.1} MiB | {} | {} | {} |\n",
        secs(f.ready_s),
        secs(f.reconciled_s),
        f.memory.resident,
        f.memory.mapped_files,
        f.memory.peak,
        f.connections_max,
        f.connections_quiet,
        describe_metrics(&f.metrics),
    )
}

fn describe_metrics(metrics: &crate::cluster::MetricSet) -> String {
    metrics
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("ephemera_api_requests_total"))
        .map(|(k, v)| {
            let labels = k.trim_start_matches("ephemera_api_requests_total").trim_matches(['{', '}']);
            let mut verb = "";
            let mut resource = "";
            for pair in labels.split(',') {
                match pair.split_once('=') {
                    Some(("verb", v)) => verb = v.trim_matches('"'),
                    Some(("resource", r)) => resource = r.trim_matches('"'),
                    _ => {}
                }
            }
            format!("{verb} {resource} {v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn scale_tables(scale: &ScaleResult) -> String {
    let mut out = format!(
        "## {} sessions and {} unrelated pods\n\n{} sessions on {} pods (each container runs `true`), among {} unrelated Pending pods (created in {:.1} s) in the operator's namespace; every session finished in {:.1} s ({:?}). The operator talks to the API server directly here (TLS); its requests are from its /metrics (the reconciler's requests; watches and events not included).\n\n",
        scale.sessions,
        scale.unrelated_pods,
        scale.sessions,
        scale.pods,
        scale.unrelated_pods,
        scale.unrelated_created_s,
        scale.all_finished_s,
        scale.finished,
    );
    out += "| operator | to /readyz | to all reconciled | RSS once quiet (of it, mapped files: code) | peak RSS | API connections, most | once quiet | reconciler requests |\n";
    out += "|---|---|---|---|---|---|---|---|\n";
    out += &figure_row("served them all (before a restart)", &scale.serving);
    out += &figure_row("after a restart", &scale.restarted);
    let (cache_mib, cached, json_mib) = scale.pod_cache;
    let _ = writeln!(
        out,
        "\nFor comparison, a kube-runtime reflector caching all {cached} pods of the namespace ({json_mib:.1} MiB as JSON) grows a process by {cache_mib:.1} MiB."
    );
    if let Some(idle) = &scale.idle {
        let minutes = idle.seconds / 60.0;
        let _ = writeln!(
            out,
            "\n### Idle, {:.0} minutes, {} finished sessions\n\nA third operator process, with leader election, behind the counting proxy (the unrelated pods deleted first). Until it was quiet ({:.1} s after its start) it sent: {}.\n",
            minutes,
            scale.sessions,
            idle.startup_seconds,
            idle.startup.describe()
        );
        out += "| requests while idle | count | per hour |\n|---|---|---|\n";
        for (kind, count) in &idle.idle.by_kind {
            let _ = writeln!(out, "| {kind} | {count} | {:.0} |", *count as f64 / idle.seconds * 3600.0);
        }
        let others = idle.idle.requests()
            - idle.idle.by_kind.iter().filter(|(k, _)| k.ends_with(" leases")).map(|(_, v)| v).sum::<usize>();
        let _ = writeln!(
            out,
            "| **all but watches and the lease** | **{others}** | {:.0} |",
            others as f64 / idle.seconds * 3600.0
        );
        if idle.idle.get("list debugsessions") + idle.idle.get("list pods") > 0 {
            out += "\nA `list` while idle is a watch listing again after the API server expired it (\"too old resource version\"), as it does for every watch of a custom resource when its CRD changes: on a shared cluster, other tests applying the CRD (target/bench-logs/scale-idle.log has the warnings).\n";
        }
    }
    out
}

/// Prints one scenario's outcome as it finishes.
fn print_scenario(s: &ScenarioResult) {
    let median = |who, field: fn(&TrialResult) -> Option<f64>| percentile(&values(&s.trials, who, field), 0.5);
    say!(
        "  {}: in spec median {} vs floor {} ms, running median {} vs {} ms; {} sessions ({} over their status-write budget), {} requests ({}); floor: {}",
        s.key,
        ms(median(Who::Ephemera, |t| t.in_spec_ms)),
        ms(median(Who::Floor, |t| t.in_spec_ms)),
        ms(median(Who::Ephemera, |t| t.running_ms)),
        ms(median(Who::Floor, |t| t.running_ms)),
        s.sessions,
        s.status_writes_over_budget,
        s.operator.requests(),
        s.operator.describe(),
        s.floor.describe(),
    );
}

fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mut points = Vec::new();
    for (i, v) in sorted.iter().enumerate() {
        points.push((*v, i as f64 / n));
        points.push((*v, (i + 1) as f64 / n));
    }
    points
}

const EPHEMERA: RGBColor = RGBColor(31, 119, 180);
const FLOOR: RGBColor = RGBColor(230, 120, 20);

fn latency_plot(path: &Path, scenarios: &[ScenarioResult]) -> Result<(), Box<dyn std::error::Error>> {
    let rows = scenarios.len();
    let root = SVGBackend::new(path, (1000, 260 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((rows, 2));
    for (i, panel) in panels.iter().enumerate() {
        let s = &scenarios[i / 2];
        let (what, field): (&str, fn(&TrialResult) -> Option<f64>) = if i % 2 == 0 {
            ("create → in pod spec", |t| t.in_spec_ms)
        } else {
            ("create → running", |t| t.running_ms)
        };
        let e = values(&s.trials, Who::Ephemera, field);
        let f = values(&s.trials, Who::Floor, field);
        let all: Vec<f64> = e.iter().chain(f.iter()).map(|v| v.max(1.0)).collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(1000.0) / 1.3;
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 1.3;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{}: {what}", s.title), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(40)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("ms (log)")
            .y_desc("fraction")
            .x_labels(8)
            .y_labels(5)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        for (name, data, color) in [("ephemera", &e, EPHEMERA), ("floor (kubectl debug)", &f, FLOOR)] {
            let points: Vec<(f64, f64)> = cdf(data).into_iter().map(|(x, y)| (x.max(1.0), y)).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{name} (n={})", data.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn per_pod_plot(path: &Path, per_pod: &PerPod, floor: Option<f64>) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let once: Vec<(f64, f64)> = per_pod.at_once.iter().map(|p| (p.k as f64, p.requests_per_session())).collect();
    let added: Vec<(f64, f64)> = per_pod.added.iter().map(|p| (p.k as f64, p.requests_per_session())).collect();
    let once_reads: Vec<(f64, f64)> = per_pod
        .at_once
        .iter()
        .map(|p| (p.k as f64, p.operator.pod_reads() as f64 / p.sessions.max(1) as f64))
        .collect();
    let max_k = once.iter().chain(added.iter()).map(|p| p.0).fold(1.0, f64::max);
    // Room above the lines for the legend.
    let max_y = once.iter().chain(added.iter()).map(|p| p.1).fold(floor.unwrap_or(2.0), f64::max) * 1.6;
    let mut chart = ChartBuilder::on(&root)
        .caption("Requests per session against sessions per pod", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..max_k + 1.0, 0f64..max_y)?;
    chart
        .configure_mesh()
        .x_desc("sessions on one pod (k)")
        .y_desc("requests per session")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let series = [
        ("k at once: requests per session, whole life", once, EPHEMERA),
        ("k at once: pod reads per session", once_reads, RGBColor(44, 160, 44)),
        ("k-th added to the pod: its requests until running", added, RGBColor(148, 103, 189)),
    ];
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    if let Some(floor) = floor {
        chart
            .draw_series(LineSeries::new(vec![(0.0, floor), (max_k + 1.0, floor)], FLOOR.stroke_width(2)))?
            .label(format!("floor: {floor:.1} per container"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], FLOOR.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
