//! Which of the sessions that listen to a pod (see [`crate::index`]) a change
//! of the pod wakes. On a busy pod most changes are other debug containers
//! going in and starting. A session whose container is in the pod already
//! reads none of those ([`status::reads_only_own_containers`]), so it is woken
//! only when the part of the pod it reads differs from the one it was last
//! woken for. Any other session is woken by every change, as before.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use kube::runtime::reflector::ObjectRef;

use crate::crd::DebugSession;
use crate::index::GuardedSession;
use crate::status;

type Key = (String, String);

/// What one pod change does to the sessions that listen to the pod.
#[derive(Debug, Default, PartialEq)]
pub struct Wakes {
    pub woken: Vec<ObjectRef<GuardedSession>>,
    /// Listening sessions whose part of the pod did not change.
    pub unchanged: usize,
}

#[derive(Default)]
pub struct PodWakes {
    /// Keyed per process: nobody can make two pods' parts look alike on purpose.
    keys: RandomState,
    /// For each pod, the digest of the part of it that each session reading
    /// only part of it was last woken for.
    last: Mutex<HashMap<Key, HashMap<ObjectRef<GuardedSession>, u64>>>,
}

/// Feeds serialized bytes to a hasher, so that nothing is kept.
struct HashWriter<'a, H>(&'a mut H);

impl<H: Hasher> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn feed(hasher: &mut impl Hasher, value: &impl serde::Serialize) {
    serde_json::to_writer(HashWriter(hasher), value).expect("Kubernetes objects serialize");
}

impl PodWakes {
    /// The sessions among `listening` that this version of `pod` must wake.
    /// `session` gives each one as a reconcile would see it.
    pub fn wake(
        &self,
        pod: &Pod,
        listening: Vec<ObjectRef<GuardedSession>>,
        session: impl Fn(&ObjectRef<GuardedSession>) -> Option<DebugSession>,
    ) -> Wakes {
        let (Some(namespace), Some(name)) = (pod.metadata.namespace.clone(), pod.metadata.name.clone()) else {
            return Wakes { woken: listening, unchanged: 0 };
        };
        let key = (namespace, name);
        let before = self.last.lock().expect("wakes lock").remove(&key).unwrap_or_default();
        let mut shared = None;
        let mut now = HashMap::new();
        let mut wakes = Wakes::default();
        for listener in listening {
            let session = session(&listener);
            let Some((session, ours)) =
                session.as_ref().and_then(|s| Some((s, status::reads_only_own_containers(s, pod)?)))
            else {
                wakes.woken.push(listener);
                continue;
            };
            let shared = *shared.get_or_insert_with(|| self.without_debug_containers(pod));
            let digest = self.part_read_by(session, pod, &ours, shared);
            if before.get(&listener) == Some(&digest) {
                wakes.unchanged += 1;
            } else {
                wakes.woken.push(listener.clone());
            }
            now.insert(listener, digest);
        }
        // Sessions that stopped listening leave with this change.
        if !now.is_empty() {
            self.last.lock().expect("wakes lock").insert(key, now);
        }
        wakes
    }

    /// The digest of everything in `pod` that any session reads, but the
    /// ephemeral containers: versions, generations and the record of who wrote
    /// what change with every write and are read by no one.
    fn without_debug_containers(&self, pod: &Pod) -> u64 {
        let mut rest = pod.clone();
        rest.metadata.resource_version = None;
        rest.metadata.generation = None;
        rest.metadata.managed_fields = None;
        if let Some(spec) = rest.spec.as_mut() {
            spec.ephemeral_containers = None;
        }
        if let Some(status) = rest.status.as_mut() {
            status.ephemeral_container_statuses = None;
            status.observed_generation = None;
            for condition in status.conditions.iter_mut().flatten() {
                condition.observed_generation = None;
            }
        }
        let mut hasher = self.keys.build_hasher();
        feed(&mut hasher, &rest);
        hasher.finish()
    }

    /// The digest of what `session` reads of `pod`: the rest of the pod, and
    /// its own containers, with their statuses.
    fn part_read_by(&self, session: &DebugSession, pod: &Pod, ours: &[&EphemeralContainer], rest: u64) -> u64 {
        let mut hasher = self.keys.build_hasher();
        rest.hash(&mut hasher);
        session.metadata.uid.hash(&mut hasher);
        feed(&mut hasher, &ours);
        let statuses = pod.status.iter().flat_map(|s| s.ephemeral_container_statuses.iter().flatten());
        let reported: Vec<_> = statuses.filter(|s| ours.iter().any(|c| c.name == s.name)).collect();
        feed(&mut hasher, &reported);
        hasher.finish()
    }

    /// The pod was deleted, or no session listens to it any more: its next change wakes every listener.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.last.lock().expect("wakes lock").remove(&(namespace.to_string(), name.to_string()));
    }

    /// The pod watch missed changes: every next change wakes every listener.
    pub fn forget_all(&self) {
        self.last.lock().expect("wakes lock").clear();
    }

    /// How many pods have sessions that read only part of them (a gauge for /metrics).
    pub fn len(&self) -> usize {
        self.last.lock().expect("wakes lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, EphemeralContainer, PodStatus,
    };
    use kube::core::DeserializeGuard;

    use super::*;
    use crate::crd::{DebugSessionSpec, DebugSessionStatus};
    use crate::debug_container::build_ephemeral_container;

    fn session(name: &str, uid: &str) -> DebugSession {
        let spec: DebugSessionSpec =
            serde_json::from_value(serde_json::json!({ "target": { "pod": "web" }, "image": "busybox" })).unwrap();
        let mut s = DebugSession::new(name, spec);
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(uid.into());
        s
    }

    /// `session` with its container in the pod, as its claim recorded it.
    fn injected(name: &str, uid: &str, container: &str) -> DebugSession {
        let mut s = session(name, uid);
        s.status = Some(DebugSessionStatus {
            ephemeral_containers_at_injection: vec![container.into()],
            ..Default::default()
        });
        s
    }

    fn key(session: &DebugSession) -> ObjectRef<GuardedSession> {
        ObjectRef::from_obj(&DeserializeGuard(Ok(session.clone())))
    }

    fn add(pod: &mut Pod, container: EphemeralContainer) {
        pod.spec.get_or_insert_default().ephemeral_containers.get_or_insert_default().push(container);
    }

    fn report_running(pod: &mut Pod, name: &str) {
        let statuses = pod.status.get_or_insert_default().ephemeral_container_statuses.get_or_insert_default();
        let state = ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() };
        statuses.push(ContainerStatus { name: name.into(), state: Some(state), ..Default::default() });
    }

    fn names(wakes: &Wakes) -> Vec<String> {
        let mut names: Vec<_> = wakes.woken.iter().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_change_wakes_only_sessions_whose_part_of_the_pod_changed() {
        let one = injected("one", "11111-uid", "debugger-11111");
        let waiting = session("waiting", "22222-uid");
        let sessions = [one.clone(), waiting.clone()];
        let listening = || vec![key(&one), key(&waiting)];
        let lookup = |r: &ObjectRef<GuardedSession>| {
            sessions.iter().find(|s| s.metadata.name.as_ref() == Some(&r.name)).cloned()
        };
        let wakes = PodWakes::default();
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
        pod.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() });
        add(&mut pod, build_ephemeral_container(&one, "debugger-11111", "app", 0));
        let step = |pod: &Pod| {
            let woken = wakes.wake(pod, listening(), lookup);
            (names(&woken), woken.unchanged)
        };

        assert_eq!(step(&pod), (vec!["one".into(), "waiting".into()], 0), "the first change wakes everyone");
        pod.metadata.resource_version = Some("2".into());
        assert_eq!(step(&pod), (vec!["waiting".into()], 1), "only a new version");
        // Someone else's containers come and start: nothing the injected session reads.
        add(&mut pod, build_ephemeral_container(&session("other", "33333-uid"), "debugger-33333", "app", 0));
        add(&mut pod, EphemeralContainer { name: "human".into(), ..Default::default() });
        report_running(&mut pod, "human");
        assert_eq!(step(&pod), (vec!["waiting".into()], 1), "others' containers");
        report_running(&mut pod, "debugger-11111");
        assert_eq!(step(&pod), (vec!["one".into(), "waiting".into()], 0), "its own container started");
        pod.metadata.labels = Some(BTreeMap::new());
        assert_eq!(step(&pod), (vec!["one".into(), "waiting".into()], 0), "the pod itself changed");
        assert_eq!(step(&pod), (vec!["waiting".into()], 1));
        wakes.forget("ns", "web");
        assert_eq!(step(&pod), (vec!["one".into(), "waiting".into()], 0), "after a deletion or a missed change");
    }

    #[test]
    fn sessions_that_stop_listening_or_change_are_not_remembered() {
        let one = injected("one", "11111-uid", "debugger-11111");
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        add(&mut pod, build_ephemeral_container(&one, "debugger-11111", "app", 0));
        let wakes = PodWakes::default();
        let found = |s: &DebugSession| {
            let s = s.clone();
            move |_: &ObjectRef<GuardedSession>| Some(s.clone())
        };
        assert_eq!(wakes.wake(&pod, vec![key(&one)], found(&one)).woken.len(), 1);
        assert_eq!(wakes.wake(&pod, vec![key(&one)], found(&one)).unchanged, 1);
        // Nobody listens any more: the pod is not remembered.
        assert_eq!(wakes.wake(&pod, vec![], found(&one)), Wakes::default());
        assert!(wakes.is_empty());
        assert_eq!(wakes.wake(&pod, vec![key(&one)], found(&one)).woken.len(), 1, "listening again");
        // The same name, another session (deleted and created again): woken.
        let again = injected("one", "44444-uid", "debugger-11111");
        assert_eq!(wakes.wake(&pod, vec![key(&again)], found(&again)).woken.len(), 1);
        // A session not in the watch's store is woken, whatever its part was.
        assert_eq!(wakes.wake(&pod, vec![key(&one)], |_: &ObjectRef<GuardedSession>| None).woken.len(), 1);
    }
}
