//! Prometheus metrics of the controller.

use std::sync::{Arc, Mutex};

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Sets gauges from what is in memory, right before a scrape.
type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciliations: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub injections: IntCounterVec,
    pub transitions: IntCounterVec,
    /// Requests the reconciler sends, by verb and resource (watches are not counted).
    pub api_requests: IntCounterVec,
    /// Sessions that listen for pod events (finished ones do not).
    pub listening_sessions: IntGauge,
    /// Listening sessions a pod change woke, or left alone because their part of the pod did not change.
    pub pod_event_wakes: IntCounterVec,
    /// What the process holds, for finding leaks: reconciles under way, Events
    /// not yet published, tasks alive in the runtime, sessions in the watch's
    /// store, pods kept by the pod reader, and the per-session records.
    pub reconciles_in_flight: IntGauge,
    pub events_queued: IntGauge,
    pub runtime_alive_tasks: IntGauge,
    pub sessions_known: IntGauge,
    pub pods_cached: IntGauge,
    pub session_records: IntGaugeVec,
    samplers: Arc<Mutex<Vec<Sampler>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ephemera".into()), None).expect("valid metric prefix");
        let reconciliations = IntCounter::new("reconciliations_total", "Reconciliations of DebugSessions").unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Reconciliations that ended in an error, by error"),
            &["error"],
        )
        .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of one reconciliation")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &[],
        )
        .unwrap();
        let injections = IntCounterVec::new(
            Opts::new("injections_total", "Attempts to add a debug container to a pod, by result"),
            &["result"],
        )
        .unwrap();
        let transitions = IntCounterVec::new(
            Opts::new("session_transitions_total", "DebugSession phase changes, by new phase and failure reason"),
            &["phase", "reason"],
        )
        .unwrap();
        let api_requests = IntCounterVec::new(
            Opts::new("api_requests_total", "Requests of reconciles to the API server, by verb and resource"),
            &["verb", "resource"],
        )
        .unwrap();
        let listening_sessions =
            IntGauge::new("listening_sessions", "DebugSessions that react to events of their pod").unwrap();
        let pod_event_wakes = IntCounterVec::new(
            Opts::new(
                "pod_event_wakes_total",
                "Listening DebugSessions per pod change: woken, or unchanged (their part of the pod is as it was)",
            ),
            &["outcome"],
        )
        .unwrap();
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).unwrap();
        let reconciles_in_flight = gauge("reconciles_in_flight", "Reconciles under way");
        let events_queued = gauge("events_queued", "Events waiting to be published, or being published");
        let runtime_alive_tasks =
            gauge("runtime_alive_tasks", "Tasks alive in the async runtime (connections included)");
        let sessions_known = gauge("sessions_known", "DebugSessions in the watch's store");
        let pods_cached = gauge("pods_cached", "Pods kept by the pod reader for unfinished sessions");
        let session_records =
            IntGaugeVec::new(Opts::new("session_records", "Per-session records kept in memory, by kind"), &["kind"])
                .unwrap();
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(injections.clone()),
            Box::new(transitions.clone()),
            Box::new(api_requests.clone()),
            Box::new(listening_sessions.clone()),
            Box::new(pod_event_wakes.clone()),
            Box::new(reconciles_in_flight.clone()),
            Box::new(events_queued.clone()),
            Box::new(runtime_alive_tasks.clone()),
            Box::new(sessions_known.clone()),
            Box::new(pods_cached.clone()),
            Box::new(session_records.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            injections,
            transitions,
            api_requests,
            listening_sessions,
            pod_event_wakes,
            reconciles_in_flight,
            events_queued,
            runtime_alive_tasks,
            sessions_known,
            pods_cached,
            session_records,
            samplers: Arc::default(),
        }
    }

    /// Calls `sampler` before each scrape, to set gauges from what is in memory.
    pub fn sample_with(&self, sampler: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.samplers.lock().expect("samplers lock").push(Box::new(sampler));
    }

    /// Counts one request of the reconciler.
    pub fn request(&self, verb: &str, resource: &str) {
        self.api_requests.with_label_values(&[verb, resource]).inc();
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_alive_tasks.set(runtime.metrics().num_alive_tasks() as i64);
        }
        for sampler in self.samplers.lock().expect("samplers lock").iter() {
            sampler(self);
        }
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
