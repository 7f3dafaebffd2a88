//! Prometheus metrics of the controller.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

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
        for collector in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(injections.clone()),
            Box::new(transitions.clone()),
            Box::new(api_requests.clone()),
            Box::new(listening_sessions.clone()),
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
        }
    }

    /// Counts one request of the reconciler.
    pub fn request(&self, verb: &str, resource: &str) {
        self.api_requests.with_label_values(&[verb, resource]).inc();
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
