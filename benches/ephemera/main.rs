//! The benchmark of issue 12: ephemera against the floor, which is what
//! `kubectl debug` does (GET the pod, then one strategic-merge PATCH of
//! `pods/ephemeralcontainers`), on the local cluster of tests/cluster.
//!
//! Both run in one process, interleaved, and are timed by the same pod watch:
//! from the DebugSession create (or the floor's GET) to the container in the
//! pod spec, and to its `ephemeralContainerStatuses` Running. The operator and
//! the floor each talk to the API server through a counting proxy on loopback
//! (tests/e2e/proxy.rs), so both pay the same extra hop and every request is
//! counted by verb and resource; the operator's own /metrics is read too.
//!
//! ```text
//! make bench                  the full run; writes docs/benchmarks.md and its plots
//! make bench-long             the same, with 30 minutes of idle traffic
//! make bench-smoke            a few sessions of every scenario (part of make test)
//! make bench-render           docs/benchmarks.md again from the last run's figures
//! cargo bench --bench ephemera -- --help
//! ```
//!
//! First, on a quiet cluster, it measures what each kind of request on a
//! container's way costs the API server and etcd in CPU time (server_cost.rs).
//!
//! The figures are reported, never asserted: the machine is shared and noisy.

/// When the run started, for the progress lines.
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the time since the start.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("[{:>6.1} s] {}", crate::START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(), format!($($arg)*))
    };
}

#[path = "../../tests/e2e/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../tests/e2e/proxy.rs"]
#[allow(dead_code)]
mod proxy;

mod cluster;
mod latency;
mod report;
mod requests;
mod scale;
mod server_cost;
mod timeline;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

/// Benchmark of ephemera against `kubectl debug`'s two requests, on the local cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "ephemera-bench")]
pub struct Args {
    /// A few sessions of every scenario, no 10,000 pods: checks that the benchmark still works.
    #[arg(long)]
    pub smoke: bool,
    /// Idle traffic over 30 minutes (instead of --idle-secs).
    #[arg(long)]
    pub long: bool,
    /// Scenarios to run, comma-separated: cost, seq, burst, once, hot, perpod, scale (scale includes idle).
    #[arg(long, value_delimiter = ',', default_value = "cost,seq,burst,once,hot,perpod,scale")]
    pub scenarios: Vec<String>,
    /// Where the report (benchmarks.md, plots, results.json) goes [default: docs/, or target/bench-smoke/ with --smoke].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Measures nothing: writes the report again from an earlier run's figures
    /// (target/bench-results-MODE.json), for a change to the report's text.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub render: Option<PathBuf>,
    /// Sessions of each sequential run.
    #[arg(long, value_delimiter = ',')]
    pub seq: Option<Vec<usize>>,
    /// Sessions per burst.
    #[arg(long)]
    pub burst: Option<usize>,
    /// Bursts of each kind (ephemera, floor), alternating which goes first.
    #[arg(long)]
    pub burst_rounds: Option<usize>,
    /// Sessions created at once.
    #[arg(long)]
    pub once: Option<usize>,
    /// Rounds of "at once" per kind.
    #[arg(long)]
    pub once_rounds: Option<usize>,
    /// Sessions at once on one hot pod.
    #[arg(long)]
    pub hot: Option<usize>,
    /// Rounds of the hot pod per kind, each on fresh pods.
    #[arg(long)]
    pub hot_rounds: Option<usize>,
    /// Numbers of sessions per pod for the requests-per-session curve.
    #[arg(long, value_delimiter = ',')]
    pub per_pod: Option<Vec<usize>>,
    /// Finished sessions of the scale scenario.
    #[arg(long)]
    pub scale_sessions: Option<usize>,
    /// Pods that the scale scenario's sessions debug.
    #[arg(long)]
    pub scale_pods: Option<usize>,
    /// Unrelated (Pending) pods of the scale scenario.
    #[arg(long)]
    pub unrelated_pods: Option<usize>,
    /// Seconds of idle traffic measured (0: none).
    #[arg(long)]
    pub idle_secs: Option<u64>,
    /// Seconds each debug container runs before it exits.
    #[arg(long)]
    pub hold_secs: Option<u64>,
    /// Requests of each kind per round of the server-cost scenario.
    #[arg(long)]
    pub cost_requests: Option<usize>,
    /// Rounds of the server-cost scenario.
    #[arg(long)]
    pub cost_rounds: Option<usize>,
    /// Leave the bench-* namespaces in place for a look.
    #[arg(long)]
    pub keep: bool,
}

/// The sizes of one run, from the mode and the flags.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub mode: String,
    pub seq: Vec<usize>,
    pub burst: usize,
    pub burst_rounds: usize,
    pub once: usize,
    pub once_rounds: usize,
    pub hot: usize,
    pub hot_rounds: usize,
    pub per_pod: Vec<usize>,
    pub scale_sessions: usize,
    pub scale_pods: usize,
    pub unrelated_pods: usize,
    pub idle_secs: u64,
    pub hold_secs: u64,
    /// How long an operator is left alone before its memory is read.
    pub settle_secs: u64,
    pub cost_requests: usize,
    pub cost_rounds: usize,
}

impl Plan {
    fn from(args: &Args) -> Self {
        let smoke = args.smoke;
        let pick = |value: Option<usize>, full: usize, small: usize| value.unwrap_or(if smoke { small } else { full });
        Plan {
            mode: if smoke {
                "smoke"
            } else if args.long {
                "long"
            } else {
                "full"
            }
            .into(),
            seq: args.seq.clone().unwrap_or(if smoke { vec![3] } else { vec![50, 200] }),
            burst: pick(args.burst, 20, 3),
            burst_rounds: pick(args.burst_rounds, 5, 1),
            once: pick(args.once, 200, 4),
            once_rounds: pick(args.once_rounds, 1, 1),
            hot: pick(args.hot, 20, 3),
            hot_rounds: pick(args.hot_rounds, 3, 1),
            per_pod: args.per_pod.clone().unwrap_or(if smoke { vec![2] } else { vec![1, 2, 5, 10, 20] }),
            scale_sessions: pick(args.scale_sessions, 1000, 3),
            scale_pods: pick(args.scale_pods, 25, 1),
            unrelated_pods: pick(args.unrelated_pods, 10_000, 10),
            idle_secs: args.idle_secs.unwrap_or(if args.long {
                1800
            } else if smoke {
                3
            } else {
                180
            }),
            hold_secs: args.hold_secs.unwrap_or(if smoke { 3 } else { 15 }),
            settle_secs: if smoke { 1 } else { 5 },
            cost_requests: pick(args.cost_requests, 200, 5),
            cost_rounds: pick(args.cost_rounds, 3, 1),
        }
    }
}

fn main() {
    // `cargo bench` adds `--bench` to the arguments of every bench target.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let plan = Plan::from(&args);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| common::repo_root().join(if args.smoke { "target/bench-smoke" } else { "docs" }));
    if let Some(figures) = &args.render {
        return render(figures, &out);
    }
    let started = *START.get_or_init(Instant::now);
    say!("ephemera-bench ({} run): {plan:?}", plan.mode);
    let bench = cluster::Bench::connect(&args).await;
    let mut results = report::Results::new(&plan, &bench).await;
    let wants = |name: &str| args.scenarios.iter().any(|s| s == name);

    // First, while the cluster is quiet: it measures the API server's CPU.
    if wants("cost") {
        results.server_cost = Some(server_cost::run(&bench, plan.cost_requests, plan.cost_rounds, args.keep).await);
    }
    if ["seq", "burst", "once", "hot", "perpod"].iter().any(|s| wants(s)) {
        let lat = latency::Latency::start(&bench, &plan).await;
        lat.prepare(&args.scenarios).await;
        lat.warm_up().await;
        if wants("seq") {
            for &n in &plan.seq {
                results.add_scenario(lat.sequential(n).await);
            }
        }
        if wants("burst") {
            results.add_scenario(lat.bursts(plan.burst, plan.burst_rounds).await);
        }
        if wants("once") {
            results.add_scenario(lat.at_once(plan.once, plan.once_rounds).await);
        }
        if wants("hot") {
            results.add_scenario(lat.hot(plan.hot, plan.hot_rounds).await);
        }
        if wants("perpod") {
            results.per_pod = Some(lat.per_pod(&plan.per_pod).await);
        }
        lat.finish(args.keep).await;
    }
    if wants("scale") {
        results.scale = Some(scale::run(&bench, &plan, args.keep).await);
    }
    results.finish(started.elapsed());
    let table = results.table();
    println!("\n{table}");
    // The figures first: if the report cannot be written, `--render` can write it from them.
    let written = results.save().and_then(|figures| {
        let mut files = results.write(&out)?;
        files.push(figures);
        Ok(files)
    });
    match written {
        Ok(files) => say!("wrote {}", files.join(", ")),
        Err(error) => {
            eprintln!("could not write the report to {}: {error}", out.display());
            return 1;
        }
    }
    say!("done in {:.0} s", started.elapsed().as_secs_f64());
    // Figures of sessions that never got their container measure nothing: that is an error
    // of the run (times are reported, never judged).
    let failures = results.failures();
    if !failures.is_empty() {
        eprintln!("the run measured sessions that did not get their container:\n  {}", failures.join("\n  "));
        return 1;
    }
    0
}

/// The report of an earlier run, written again from its figures (run, commit and date stay that run's).
fn render(figures: &Path, out: &Path) -> i32 {
    let results: report::Results = match std::fs::read(figures)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(results) => results,
        Err(error) => {
            eprintln!("could not read the figures of {}: {error}", figures.display());
            return 1;
        }
    };
    match results.write(out) {
        Ok(files) => {
            say!("rendered the {} run of {} again: {}", results.plan.mode, results.commit, files.join(", "));
            0
        }
        Err(error) => {
            eprintln!("could not write the report to {}: {error}", out.display());
            1
        }
    }
}
