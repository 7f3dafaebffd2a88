//! When things happened, as the bench's own watches saw them: each ephemeral
//! container's first appearance in a pod spec, its first Running and
//! Terminated status, every event of each pod, and the first time each
//! DebugSession showed each phase. Ephemera and the floor are timed by the
//! same watch.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ephemera::crd::DebugSession;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

#[derive(Debug, Default, Clone, Copy)]
pub struct Marks {
    pub in_spec: Option<Instant>,
    pub running: Option<Instant>,
    pub terminated: Option<Instant>,
}

#[derive(Default)]
pub struct State {
    /// By container name (unique in the namespace: every container is named like its trial).
    pub containers: HashMap<String, Marks>,
    /// Every ADDED/MODIFIED event of each pod, after the first list.
    pub pod_events: HashMap<String, Vec<Instant>>,
    /// First time each session showed each phase.
    pub sessions: HashMap<String, HashMap<String, Instant>>,
    /// The waiting reasons the kubelet reported for each container, by container name.
    pub waiting_reasons: HashMap<String, BTreeSet<String>>,
}

impl State {
    pub fn session_phase(&self, name: &str, phase: &str) -> Option<Instant> {
        self.sessions.get(name).and_then(|p| p.get(phase)).copied()
    }

    /// Whether the session ended, one way or the other.
    pub fn session_finished(&self, name: &str) -> bool {
        self.sessions.get(name).is_some_and(|p| p.contains_key("Terminated") || p.contains_key("Failed"))
    }

    pub fn session_failed(&self, name: &str) -> bool {
        self.session_phase(name, "Failed").is_some()
    }

    /// How many different waiting reasons the kubelet reported for `container`.
    pub fn waiting_reasons(&self, container: &str) -> usize {
        self.waiting_reasons.get(container).map_or(0, BTreeSet::len)
    }

    pub fn marks(&self, container: &str) -> Marks {
        self.containers.get(container).copied().unwrap_or_default()
    }

    /// Events of these pods between `from` and `to`.
    pub fn pod_events_between(&self, pods: &[String], from: Instant, to: Instant) -> usize {
        pods.iter()
            .filter_map(|p| self.pod_events.get(p))
            .map(|events| events.iter().filter(|at| **at >= from && **at <= to).count())
            .sum()
    }
}

pub struct Timeline {
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Timeline {
    /// Starts watching `namespace` (its pods too when `pods`); returns once the
    /// watches have listed everything, so that nothing later is missed.
    pub async fn start(client: &Client, namespace: &str, pods: bool) -> Arc<Self> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let timeline = Arc::new(Timeline { state: Mutex::default(), changed, tasks: Mutex::default() });
        let (synced_tx, mut synced_rx) = tokio::sync::mpsc::channel::<()>(2);
        let sessions: Api<DebugSession> = Api::namespaced(client.clone(), namespace);
        let this = timeline.clone();
        let synced = synced_tx.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher(sessions, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => this.saw_session(&s, now),
                    Ok(watcher::Event::InitDone) => {
                        let _ = synced.try_send(());
                    }
                    _ => {}
                }
            }
        });
        timeline.tasks.lock().unwrap().push(task);
        let mut waiting = 1;
        if pods {
            waiting += 1;
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let this = timeline.clone();
            let synced = synced_tx.clone();
            let task = tokio::spawn(async move {
                let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    let now = Instant::now();
                    match event {
                        Ok(watcher::Event::Apply(pod)) => this.saw_pod(&pod, now, true),
                        Ok(watcher::Event::InitApply(pod)) => this.saw_pod(&pod, now, false),
                        Ok(watcher::Event::InitDone) => {
                            let _ = synced.try_send(());
                        }
                        _ => {}
                    }
                }
            });
            timeline.tasks.lock().unwrap().push(task);
        }
        for _ in 0..waiting {
            synced_rx.recv().await;
        }
        timeline
    }

    fn saw_session(&self, session: &DebugSession, now: Instant) {
        let (Some(name), Some(phase)) = (session.metadata.name.clone(), session.status.as_ref().and_then(|s| s.phase))
        else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        let phases = state.sessions.entry(name).or_default();
        if !phases.contains_key(phase.as_str()) {
            phases.insert(phase.as_str().to_string(), now);
            drop(state);
            self.changed.send_modify(|v| *v += 1);
        }
    }

    fn saw_pod(&self, pod: &Pod, now: Instant, is_event: bool) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        if is_event {
            state.pod_events.entry(name).or_default().push(now);
        }
        let spec = pod.spec.as_ref().and_then(|s| s.ephemeral_containers.as_ref());
        for container in spec.into_iter().flatten() {
            let marks = state.containers.entry(container.name.clone()).or_default();
            marks.in_spec.get_or_insert(now);
        }
        let statuses = pod.status.as_ref().and_then(|s| s.ephemeral_container_statuses.as_ref());
        for status in statuses.into_iter().flatten() {
            let container_state = status.state.as_ref();
            if let Some(reason) = container_state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()) {
                state.waiting_reasons.entry(status.name.clone()).or_default().insert(reason);
            }
            let marks = state.containers.entry(status.name.clone()).or_default();
            marks.in_spec.get_or_insert(now);
            if container_state.is_some_and(|s| s.running.is_some()) {
                marks.running.get_or_insert(now);
            }
            if container_state.is_some_and(|s| s.terminated.is_some()) {
                marks.terminated.get_or_insert(now);
            }
        }
        drop(state);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Reads the state.
    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// Waits until `done` holds, or the timeout passes; says which.
    pub async fn wait(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.with(&done) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.with(&done),
            }
        }
    }

    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.stop();
    }
}
