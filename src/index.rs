//! Which sessions a pod event concerns. Kept up to date from the session
//! watch, so a pod event costs a map lookup (and, for sessions still choosing
//! a pod by selector, one match per such session, with selectors parsed once),
//! and wakes only sessions that still have something to do with the pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use kube::core::{DeserializeGuard, Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;

use crate::crd::DebugSession;
use crate::reads::is_settled;

/// The object the controller watches: a session, or one that does not decode.
pub type GuardedSession = DeserializeGuard<DebugSession>;

/// What pod events a session wants to hear about.
#[derive(Debug, Clone)]
enum Interest {
    /// The pod of this name, in the session's namespace.
    Pod(String, String),
    /// Any pod of the namespace that the selector matches.
    Selector(String, Selector),
}

#[derive(Default)]
struct Inner {
    by_pod: HashMap<(String, String), HashSet<ObjectRef<GuardedSession>>>,
    by_selector: HashMap<ObjectRef<GuardedSession>, (String, Selector)>,
    interests: HashMap<ObjectRef<GuardedSession>, Interest>,
}

#[derive(Default)]
pub struct TargetIndex {
    inner: RwLock<Inner>,
}

/// A finished session, one being deleted or one that does not decode hears nothing.
fn interest(object: &GuardedSession) -> Option<Interest> {
    let session = object.0.as_ref().ok()?;
    if session.metadata.deletion_timestamp.is_some() || is_settled(session) {
        return None;
    }
    let namespace = session.metadata.namespace.clone()?;
    let target = &session.spec.target;
    let pinned = session.status.as_ref().and_then(|s| s.pod_name.clone());
    match (&target.pod, &target.selector, pinned) {
        (None, Some(selector), _) if target.mode == crate::crd::TargetMode::All => {
            Selector::try_from(selector.clone()).ok().map(|s| Interest::Selector(namespace, s))
        }
        (Some(name), _, _) => Some(Interest::Pod(namespace, name.clone())),
        (None, Some(_), Some(pinned)) => Some(Interest::Pod(namespace, pinned)),
        (None, Some(selector), None) => {
            Selector::try_from(selector.clone()).ok().map(|s| Interest::Selector(namespace, s))
        }
        (None, None, _) => None,
    }
}

/// A pod `(namespace, name)` that no session listens to by name any more.
pub type Released = (String, String);

impl Inner {
    fn remove(&mut self, key: &ObjectRef<GuardedSession>) -> Option<Released> {
        let released = match self.interests.remove(key)? {
            Interest::Pod(namespace, name) => {
                let pod = (namespace, name);
                let sessions = self.by_pod.get_mut(&pod)?;
                sessions.remove(key);
                sessions.is_empty().then(|| self.by_pod.remove(&pod)).map(|_| pod)
            }
            Interest::Selector(..) => {
                self.by_selector.remove(key);
                None
            }
        };
        // A wave of sessions leaves the maps sized for it; give the room back once they finish.
        if self.interests.capacity() > 64 && self.interests.len() * 4 < self.interests.capacity() {
            self.interests.shrink_to_fit();
            self.by_pod.shrink_to_fit();
            self.by_selector.shrink_to_fit();
        }
        released
    }

    fn insert(&mut self, object: &GuardedSession) -> Option<Released> {
        let key = ObjectRef::from_obj(object);
        let released = self.remove(&key);
        if let Some(interest) = interest(object) {
            match &interest {
                Interest::Pod(namespace, name) => {
                    self.by_pod.entry((namespace.clone(), name.clone())).or_default().insert(key.clone());
                }
                Interest::Selector(namespace, selector) => {
                    self.by_selector.insert(key.clone(), (namespace.clone(), selector.clone()));
                }
            }
            self.interests.insert(key, interest);
        }
        released.filter(|pod| !self.by_pod.contains_key(pod))
    }
}

impl TargetIndex {
    /// A session was added or changed. Returns the pod it was the last to listen to, if any.
    #[must_use]
    pub fn apply(&self, object: &GuardedSession) -> Option<Released> {
        self.inner.write().expect("index lock").insert(object)
    }

    /// A session was deleted. Returns the pod it was the last to listen to, if any.
    #[must_use]
    pub fn remove(&self, object: &GuardedSession) -> Option<Released> {
        self.inner.write().expect("index lock").remove(&ObjectRef::from_obj(object))
    }

    /// Replaces everything, after the watch listed all sessions again.
    pub fn rebuild<'a>(&self, objects: impl IntoIterator<Item = &'a GuardedSession>) {
        let mut inner = Inner::default();
        for object in objects {
            inner.insert(object);
        }
        *self.inner.write().expect("index lock") = inner;
    }

    /// The sessions that a change of the pod `namespace/name` may concern.
    pub fn sessions_for(
        &self,
        namespace: &str,
        name: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<ObjectRef<GuardedSession>> {
        let inner = self.inner.read().expect("index lock");
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        let mut found: Vec<_> =
            inner.by_pod.get(&(namespace.to_string(), name.to_string())).into_iter().flatten().cloned().collect();
        found.extend(
            inner
                .by_selector
                .iter()
                .filter(|(_, (ns, selector))| ns == namespace && selector.matches(labels))
                .map(|(key, _)| key.clone()),
        );
        found
    }

    /// Every session that listens for pod events.
    pub fn listening(&self) -> Vec<ObjectRef<GuardedSession>> {
        self.inner.read().expect("index lock").interests.keys().cloned().collect()
    }

    /// How many sessions listen for pod events (a gauge for /metrics).
    pub fn len(&self) -> usize {
        self.inner.read().expect("index lock").interests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DebugSessionSpec, DebugSessionStatus, Phase};

    fn session(name: &str, target: serde_json::Value, status: Option<DebugSessionStatus>) -> GuardedSession {
        let spec: DebugSessionSpec =
            serde_json::from_value(serde_json::json!({ "target": target, "image": "busybox" })).unwrap();
        let mut s = DebugSession::new(name, spec);
        s.metadata.namespace = Some("ns".into());
        s.status = status;
        DeserializeGuard(Ok(s))
    }

    fn names(refs: Vec<ObjectRef<GuardedSession>>) -> Vec<String> {
        let mut names: Vec<_> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn pod_events_reach_the_sessions_that_still_care() {
        let index = TargetIndex::default();
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let pinned = |pod: &str, phase| {
            Some(DebugSessionStatus { pod_name: Some(pod.into()), phase: Some(phase), ..Default::default() })
        };
        let by_name = session("by-name", serde_json::json!({ "pod": "web-1" }), None);
        let choosing =
            session("choosing", serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } }), None);
        let picked = session(
            "picked",
            serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } }),
            pinned("web-2", Phase::Running),
        );
        let finished = session("finished", serde_json::json!({ "pod": "web-1" }), pinned("web-1", Phase::Terminated));
        index.rebuild([&by_name, &choosing, &picked, &finished]);
        assert_eq!(names(index.sessions_for("ns", "web-1", Some(&web))), ["by-name", "choosing"]);
        assert_eq!(names(index.sessions_for("ns", "web-2", Some(&web))), ["choosing", "picked"]);
        assert_eq!(names(index.sessions_for("ns", "web-3", None)), Vec::<String>::new());
        assert_eq!(names(index.sessions_for("other", "web-1", Some(&web))), Vec::<String>::new());
        assert_eq!(index.len(), 3, "the finished session listens to nothing");

        // A session that finishes stops listening; one that is deleted is gone. The last
        // listener of a pod says so, so that the pod's copy can be dropped.
        let released =
            index.apply(&session("by-name", serde_json::json!({ "pod": "web-1" }), pinned("web-1", Phase::Terminated)));
        assert_eq!(released, Some(("ns".to_string(), "web-1".to_string())));
        assert_eq!(index.remove(&choosing), None, "a selector names no pod");
        assert_eq!(index.apply(&picked), None, "a change that keeps the pod releases nothing");
        assert_eq!(names(index.sessions_for("ns", "web-1", Some(&web))), Vec::<String>::new());
        assert_eq!(names(index.sessions_for("ns", "web-2", Some(&web))), ["picked"]);
        let picked_finished = session(
            "picked",
            serde_json::json!({ "selector": { "matchLabels": { "app": "web" } } }),
            pinned("web-2", Phase::Terminated),
        );
        assert_eq!(index.apply(&picked_finished), Some(("ns".to_string(), "web-2".to_string())));
        assert!(index.is_empty());
    }
}
