//! Reading target pods: a GET only for a pod not yet kept, whatever the
//! number of sessions that look at it. The pod watch says which
//! resourceVersion each pod of interest is at, and brings the pod at that
//! version: it replaces the kept copy, which every reconcile shares until the
//! pod changes again. Only pods that unfinished sessions target are kept, so
//! memory does not grow with the cluster's pods. A pod whose version nobody
//! watches (one that only finished sessions target, when they are checked
//! after a restart) is shared for a second after each read, then dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::time::Instant;

use crate::metrics::Metrics;

type Key = (String, String);

/// How long a copy of a pod whose version nobody watches serves other reads:
/// sessions that do not react to the pod's changes are as well served by a
/// copy this old as by a fresh one that no event will replace.
const SHARE_UNWATCHED: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Cached {
    pod: Option<Arc<Pod>>,
    read_at: Option<Instant>,
}

type Slot = tokio::sync::Mutex<Cached>;

#[derive(Default)]
pub struct PodReader {
    /// One lock per pod, so concurrent reconciles of one pod wait for one read.
    slots: Arc<Mutex<HashMap<Key, Arc<Slot>>>>,
    /// The newest resourceVersion the watch reported for each pod of interest.
    seen: Arc<Mutex<HashMap<Key, String>>>,
}

/// Nothing reads who wrote which field of a pod, and on a pod with many
/// containers that record is as large as the rest of the pod.
fn without_managed_fields(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod
}

/// Whether `pod` is an older version of `than`: it lacks one of the ephemeral
/// containers `than` has, and the API never removes one. (resourceVersions are
/// opaque: they say whether two versions differ, not which is newer.)
fn is_older(pod: &Pod, than: &Pod) -> bool {
    let names = |p: &Pod| -> HashSet<String> {
        p.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).map(|c| c.name.clone()).collect()
    };
    pod.metadata.uid == than.metadata.uid && !names(than).is_subset(&names(pod))
}

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

fn key_of(pod: &Pod) -> Option<Key> {
    Some(key(pod.metadata.namespace.as_deref()?, pod.metadata.name.as_deref()?))
}

impl PodReader {
    /// The watch reported `namespace/name` at `resource_version`, and sessions care about it.
    pub fn saw(&self, namespace: &str, name: &str, resource_version: Option<&str>) {
        let mut seen = self.seen.lock().expect("pod reader lock");
        match resource_version {
            Some(rv) => seen.insert(key(namespace, name), rv.to_string()),
            None => seen.remove(&key(namespace, name)),
        };
    }

    /// The watch brought `pod`: where the kept copy is the version the watch
    /// reported before, this next one replaces it, so the reads that the change
    /// wakes need no GET. A copy that a GET or a write of ours returned may be
    /// ahead of the watch, and is not set back: the reads ask again until the
    /// watch has caught up with it. Nothing changes while a read of the pod is
    /// under way (that read keeps what it got).
    pub fn watched(&self, pod: &Pod) {
        let Some(key) = key_of(pod) else { return };
        let Some(slot) = self.slots.lock().expect("pod reader lock").get(&key).cloned() else {
            return;
        };
        let Ok(mut cached) = slot.try_lock() else { return };
        let reported = self.seen.lock().expect("pod reader lock").get(&key).cloned();
        let follows_the_watch = match &cached.pod {
            None => true,
            Some(kept) => reported.is_some() && kept.metadata.resource_version == reported,
        };
        if follows_the_watch {
            // read_at stays: it times the sharing of a copy nobody watches, and its drop.
            cached.pod = Some(Arc::new(without_managed_fields(pod.clone())));
        }
    }

    /// The watch saw the pod deleted: no copy of it serves a read any more.
    pub fn deleted(&self, pod: &Pod) {
        let Some(key) = key_of(pod) else { return };
        let slot = self.slots.lock().expect("pod reader lock").get(&key).cloned();
        if let Some(slot) = slot
            && let Ok(mut cached) = slot.try_lock()
        {
            cached.pod = None;
        }
    }

    /// No unfinished session cares about the pod any more.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = key(namespace, name);
        self.seen.lock().expect("pod reader lock").remove(&key);
        self.slots.lock().expect("pod reader lock").remove(&key);
    }

    /// Nothing known of any pod is current any more (the pod watch missed changes).
    pub fn forget_all(&self) {
        self.seen.lock().expect("pod reader lock").clear();
        self.slots.lock().expect("pod reader lock").clear();
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        self.slots.lock().expect("pod reader lock").entry(key.clone()).or_default().clone()
    }

    /// The pod as the watch last reported it: from memory when it was read at
    /// that version already, else read (once, for all who ask at the same time).
    /// `fresh` always asks the API server (after a write met a pod that had changed).
    pub async fn read(
        &self,
        api: &Api<Pod>,
        namespace: &str,
        name: &str,
        metrics: &Metrics,
        fresh: bool,
    ) -> Result<Option<Pod>, kube::Error> {
        let key = key(namespace, name);
        let slot = self.slot(&key);
        let mut cached = slot.lock().await;
        let seen = self.seen.lock().expect("pod reader lock").get(&key).cloned();
        let reusable = match (&cached.pod, &seen) {
            _ if fresh => false,
            (Some(pod), Some(seen)) => pod.metadata.resource_version.as_ref() == Some(seen),
            (Some(_), None) => cached.read_at.is_some_and(|at| at.elapsed() < SHARE_UNWATCHED),
            (None, _) => false,
        };
        if reusable {
            return Ok(cached.pod.as_deref().cloned());
        }
        metrics.request("get", "pods");
        let pod = api.get_opt(name).await?.map(without_managed_fields);
        self.keep(key, &slot, &mut cached, pod.clone());
        Ok(pod)
    }

    /// Stores a copy of the pod as of now; one nobody watches is dropped once it may no longer be shared.
    fn keep(&self, key: Key, slot: &Arc<Slot>, cached: &mut Cached, pod: Option<Pod>) {
        *cached = Cached { pod: pod.map(Arc::new), read_at: Some(Instant::now()) };
        if !self.seen.lock().expect("pod reader lock").contains_key(&key) {
            self.drop_when_unshared(key, slot.clone());
        }
    }

    /// Drops a copy of a pod nobody watches once it may no longer be shared.
    fn drop_when_unshared(&self, key: Key, slot: Arc<Slot>) {
        let (slots, seen) = (Arc::downgrade(&self.slots), Arc::downgrade(&self.seen));
        tokio::spawn(async move {
            tokio::time::sleep(SHARE_UNWATCHED).await;
            let (Some(slots), Some(seen)) = (slots.upgrade(), seen.upgrade()) else { return };
            let cached = slot.lock().await;
            if cached.read_at.is_some_and(|at| at.elapsed() < SHARE_UNWATCHED) {
                return; // read again meanwhile: that read drops it
            }
            let mut slots = slots.lock().expect("pod reader lock");
            let watched = seen.lock().expect("pod reader lock").contains_key(&key);
            if !watched && slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&key);
            }
        });
    }

    /// A pod as a write of ours returned it: newer than what the watch said so far,
    /// but maybe older than the answer to a concurrent write, kept already (answers
    /// can arrive out of order). An older copy must never replace a newer one: a
    /// session whose container it lacks would be injected again. Returns the pod as
    /// the write answered it, without managedFields.
    pub async fn wrote(&self, pod: Pod) -> Pod {
        let pod = without_managed_fields(pod);
        let Some(key) = key_of(&pod) else { return pod };
        let slot = self.slot(&key);
        let mut cached = slot.lock().await;
        if !cached.pod.as_deref().is_some_and(|kept| is_older(&pod, kept)) {
            self.keep(key, &slot, &mut cached, Some(pod.clone()));
        }
        pod
    }

    /// Pods kept in memory (for tests and /metrics).
    pub fn len(&self) -> usize {
        self.slots.lock().expect("pod reader lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn pod(rv: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.resource_version = Some(rv.into());
        pod
    }

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock_api() -> (Api<Pod>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::namespaced(kube::Client::new(service, "ns"), "ns"), handle)
    }

    fn found(pod: &Pod) -> Response<Body> {
        Response::builder().body(Body::from(serde_json::to_vec(pod).unwrap())).unwrap()
    }

    fn not_found() -> Response<Body> {
        let status = serde_json::json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "pods \"web\" not found" });
        Response::builder().status(404).body(Body::from(status.to_string().into_bytes())).unwrap()
    }

    /// Answers the requests with `answers`, in order (a request beyond them fails);
    /// the task returns how many were asked.
    fn serve(mut handle: Handle, answers: Vec<Response<Body>>) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut asked = 0;
            for answer in answers {
                let Some((_, send)) = handle.next_request().await else { break };
                asked += 1;
                send.send_response(answer);
            }
            asked
        })
    }

    #[tokio::test]
    async fn one_read_per_version_the_watch_reports() {
        let (api, handle) = mock_api();
        let served = serve(handle, ["1", "2", "3"].iter().map(|rv| found(&pod(rv))).collect());
        let reader = PodReader::default();
        let metrics = Metrics::new();
        // The resourceVersion of the pod a read returns.
        let version = async |fresh| {
            reader.read(&api, "ns", "web", &metrics, fresh).await.unwrap().unwrap().metadata.resource_version
        };
        reader.saw("ns", "web", Some("1"));
        for _ in 0..5 {
            assert_eq!(version(false).await.as_deref(), Some("1"));
        }
        reader.saw("ns", "web", Some("2"));
        assert_eq!(version(false).await.as_deref(), Some("2"));
        assert_eq!(version(false).await.as_deref(), Some("2"));
        // A fresh read always asks.
        assert_eq!(version(true).await.as_deref(), Some("3"));
        reader.forget("ns", "web");
        assert!(reader.is_empty());
        drop(api);
        drop(reader);
        assert_eq!(served.await.unwrap(), 3, "five reads at version 1 cost one request");
    }

    #[tokio::test]
    async fn the_watch_brings_the_pod_it_reports_and_a_deleted_pod_is_read_again() {
        let (api, handle) = mock_api();
        let served = serve(handle, vec![found(&pod("1")), not_found(), found(&pod("9"))]);
        let reader = PodReader::default();
        let metrics = Metrics::new();
        let read = async || reader.read(&api, "ns", "web", &metrics, false).await.unwrap();
        // A pod the watch brings before anyone read it is not kept.
        reader.watched(&pod("0"));
        assert!(reader.is_empty());
        reader.saw("ns", "web", Some("1"));
        assert_eq!(read().await.unwrap().metadata.resource_version.as_deref(), Some("1"), "the first read asks");
        for rv in ["2", "3"] {
            reader.watched(&pod(rv));
            reader.saw("ns", "web", Some(rv));
            assert_eq!(read().await.unwrap().metadata.resource_version.as_deref(), Some(rv), "from the watch");
        }
        reader.deleted(&pod("4"));
        reader.saw("ns", "web", Some("4"));
        assert!(read().await.is_none(), "asked again: the pod is gone");
        // A write of ours answered version 9 while the watch was still at 4: the
        // watch's 8 does not set the copy back, and the read asks again.
        reader.wrote(pod("9")).await;
        reader.watched(&pod("8"));
        reader.saw("ns", "web", Some("8"));
        assert_eq!(read().await.unwrap().metadata.resource_version.as_deref(), Some("9"));
        drop(api);
        assert_eq!(served.await.unwrap(), 3, "a read when first kept, one after the deletion, one behind a write");
    }

    fn with_containers(rv: &str, names: &[&str]) -> Pod {
        let mut pod = pod(rv);
        let containers = names
            .iter()
            .map(|n| k8s_openapi::api::core::v1::EphemeralContainer { name: n.to_string(), ..Default::default() })
            .collect();
        pod.spec =
            Some(k8s_openapi::api::core::v1::PodSpec { ephemeral_containers: Some(containers), ..Default::default() });
        pod
    }

    #[tokio::test]
    async fn an_answer_that_arrives_late_never_replaces_a_newer_pod() {
        let (api, handle) = mock_api();
        let served = serve(handle, vec![found(&with_containers("3", &["a", "b"]))]);
        let reader = PodReader::default();
        // Two sessions' writes to one pod: the later one's answer (with both containers) comes first.
        reader.wrote(with_containers("2", &["a", "b"])).await;
        reader.wrote(with_containers("1", &["a"])).await;
        // The watch reports the older version: a copy of it would lack container b.
        reader.saw("ns", "web", Some("1"));
        let pod = reader.read(&api, "ns", "web", &Metrics::new(), false).await.unwrap().unwrap();
        let names: Vec<_> = pod.spec.unwrap().ephemeral_containers.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b"], "b's session would be injected again");
        drop(api);
        assert_eq!(served.await.unwrap(), 1, "read again, since the watch is behind the newest copy");
    }

    #[tokio::test]
    async fn a_pod_nobody_watches_is_shared_for_a_second_then_dropped() {
        let (api, mut handle) = mock_api();
        let reader = Arc::new(PodReader::default());
        let metrics = Arc::new(Metrics::new());
        let read = || {
            let (reader, api, metrics) = (reader.clone(), api.clone(), metrics.clone());
            tokio::spawn(async move {
                let pod = reader.read(&api, "ns", "web", &metrics, false).await.unwrap();
                pod.unwrap().metadata.resource_version.unwrap()
            })
        };
        let answer =
            |send: tower_test::mock::SendResponse<Response<Body>>, rv: &str| send.send_response(found(&pod(rv)));
        let first = read();
        let (_, send) = handle.next_request().await.expect("the first read asks");
        // Two more ask while the first read is under way, and one just after it.
        let waiting = [read(), read()];
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer(send, "1");
        assert_eq!(first.await.unwrap(), "1");
        for waiter in waiting {
            assert_eq!(waiter.await.unwrap(), "1");
        }
        let again = tokio::time::timeout(Duration::from_secs(5), read()).await.expect("answered from memory");
        assert_eq!(again.unwrap(), "1", "shared just after the read");
        tokio::time::sleep(SHARE_UNWATCHED + Duration::from_millis(200)).await;
        assert!(reader.is_empty(), "nothing is kept of a pod whose version nobody reports");
        // A later read cannot know whether the pod changed since: it asks again.
        let later = read();
        let (_, send) = handle.next_request().await.expect("a later read asks again");
        answer(send, "2");
        assert_eq!(later.await.unwrap(), "2");
        assert_eq!(
            metrics.api_requests.with_label_values(&["get", "pods"]).get(),
            2,
            "four reads within a second cost one request"
        );
    }
}
