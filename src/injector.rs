//! Adding debug containers to pods. The API server applies writes to one
//! object one after the other, so twenty adds sent at once wait there behind
//! each other, each on a larger pod. Here a pod takes two writes at once (the
//! second is parsed, authorized and admitted while the first is applied, as
//! two `kubectl debug`s would be); the adds that come while both are under
//! way wait, and then go out together in the next, as one strategic merge
//! patch that names them all (merged by name, as `kubectl debug`'s is).
//!
//! Every add is answered what the API server said to the write that carried
//! it. When a shared write is refused, one container may be the cause, so
//! each of them is then written alone and answered for itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use kube::Client;
use tokio::sync::oneshot;

use crate::ephemeral_api::{ApiShape, add_ephemeral_containers};
use crate::metrics::Metrics;

/// A pod as writes address it: namespace, name and UID (a pod created again
/// under the same name is another pod, which a write for the old one must not reach).
type PodKey = (String, String, String);

type Answer = Result<Pod, kube::Error>;

struct Waiting {
    container: EphemeralContainer,
    answer: oneshot::Sender<Answer>,
}

/// Writes to one pod under way at once: a second one overlaps the first's
/// round trip; a third would only wait at the API server behind them.
const WRITES_AT_ONCE: usize = 2;

#[derive(Default)]
struct PodWrites {
    under_way: usize,
    /// Adds that came while `WRITES_AT_ONCE` writes were under way.
    waiting: Vec<Waiting>,
}

/// Pods with a write under way. A pod is here exactly while a write to it is under way.
type Queues = Arc<Mutex<HashMap<PodKey, PodWrites>>>;

/// Cheap to clone: a clone shares the queues, so a pod's writer can run on its own.
#[derive(Clone)]
pub struct Injector {
    client: Client,
    metrics: Arc<Metrics>,
    queues: Queues,
}

fn key_of(pod: &Pod) -> PodKey {
    let field = |f: &Option<String>| f.clone().unwrap_or_default();
    (field(&pod.metadata.namespace), field(&pod.metadata.name), field(&pod.metadata.uid))
}

impl Injector {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        Self { client, metrics, queues: Queues::default() }
    }

    /// Adds `container` to `pod`; the pod as the write that carried it left it.
    pub async fn add(&self, shape: ApiShape, pod: &Pod, container: &EphemeralContainer) -> Answer {
        if shape == ApiShape::LegacyEphemeralContainers {
            // Old clusters replace the whole list at a version: nothing to share.
            return self.write(shape, pod, std::slice::from_ref(container)).await;
        }
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting { container: container.clone(), answer };
        let key = key_of(pod);
        let leads = {
            let mut queues = self.queues.lock().expect("injector lock");
            let writes = queues.entry(key.clone()).or_default();
            if writes.under_way < WRITES_AT_ONCE {
                writes.under_way += 1;
                Some(waiting)
            } else {
                writes.waiting.push(waiting);
                None
            }
        };
        if let Some(first) = leads {
            // Written at once; the writer then takes whatever queued meanwhile.
            // It runs on its own, so no reconcile waits for others'.
            tokio::spawn(self.clone().write_all(shape, pod.clone(), key, first));
        }
        answered.await.unwrap_or_else(|_| Err(kube::Error::Service("the write to the pod was abandoned".into())))
    }

    /// One write, counted.
    async fn write(&self, shape: ApiShape, pod: &Pod, containers: &[EphemeralContainer]) -> Answer {
        self.metrics.request("patch", "pods/ephemeralcontainers");
        add_ephemeral_containers(&self.client, shape, pod, containers).await
    }

    /// Pods with a write under way (for the memory gauges).
    pub fn len(&self) -> usize {
        self.queues.lock().expect("injector lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes one pod's adds, `first` and then those that queued meanwhile, until none are waiting.
    async fn write_all(self, shape: ApiShape, pod: Pod, key: PodKey, first: Waiting) {
        let mut unfinished = Unfinished { queues: self.queues.clone(), key: Some(key.clone()) };
        let mut batch = vec![first];
        loop {
            self.write_batch(shape, &pod, batch).await;
            let mut queues = self.queues.lock().expect("injector lock");
            let writes = queues.get_mut(&key).expect("a pod with a write under way is queued");
            if writes.waiting.is_empty() {
                // In the same lock as the look: an add from now on writes itself.
                unfinished.key = None;
                finish_one(&mut queues, &key);
                return;
            }
            batch = std::mem::take(&mut writes.waiting);
        }
    }

    async fn write_batch(&self, shape: ApiShape, pod: &Pod, batch: Vec<Waiting>) {
        let containers: Vec<EphemeralContainer> = batch.iter().map(|w| w.container.clone()).collect();
        match self.write(shape, pod, &containers).await {
            Ok(written) => {
                for waiting in batch {
                    let _ = waiting.answer.send(Ok(written.clone()));
                }
            }
            Err(error) if batch.len() == 1 => {
                let _ = batch.into_iter().next().expect("one").answer.send(Err(error));
            }
            Err(_) => {
                for waiting in batch {
                    let alone = std::slice::from_ref(&waiting.container);
                    let _ = waiting.answer.send(self.write(shape, pod, alone).await);
                }
            }
        }
    }
}

/// One write to the pod is over; the last one frees the pod, and drops any
/// adds still waiting (which tells them so).
fn finish_one(queues: &mut HashMap<PodKey, PodWrites>, key: &PodKey) {
    if let Some(writes) = queues.get_mut(key) {
        writes.under_way -= 1;
        if writes.under_way == 0 {
            queues.remove(key);
        }
    }
}

/// A writer that ends before its queue is empty (a panic) still counts as
/// over: the other writer, if any, takes the waiting adds, and the next add writes itself.
struct Unfinished {
    queues: Queues,
    key: Option<PodKey>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            finish_one(&mut self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner), key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    type Respond = tower_test::mock::SendResponse<Response<Body>>;

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.name = Some("web".into());
        pod.metadata.uid = Some("uid-1".into());
        pod
    }

    fn container(name: &str) -> EphemeralContainer {
        EphemeralContainer { name: name.into(), ..Default::default() }
    }

    fn injector() -> (Arc<Injector>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Arc::new(Injector::new(Client::new(service, "ns"), Arc::new(Metrics::new()))), handle)
    }

    /// The next write: the names of the containers it adds, and where to answer it.
    async fn next_write(handle: &mut Handle) -> (Vec<String>, Respond) {
        let (request, respond) = handle.next_request().await.expect("a write");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(request.uri().path(), "/api/v1/namespaces/ns/pods/web/ephemeralcontainers");
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["uid"], "uid-1", "only the pod that was read");
        let names = body["spec"]["ephemeralContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        (names, respond)
    }

    /// Answers a write with the pod holding `names`.
    fn accept(respond: Respond, names: &[&str]) {
        let mut written = pod();
        written.spec.get_or_insert_default().ephemeral_containers = Some(names.iter().map(|n| container(n)).collect());
        respond.send_response(Response::new(Body::from(serde_json::to_vec(&written).unwrap())));
    }

    fn refuse(respond: Respond, message: &str) {
        let status = serde_json::json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": "Invalid", "code": 422 });
        let response = Response::builder().status(422).body(Body::from(serde_json::to_vec(&status).unwrap()));
        respond.send_response(response.unwrap());
    }

    fn add(injector: &Arc<Injector>, name: &str) -> tokio::task::JoinHandle<Answer> {
        let (injector, container) = (injector.clone(), container(name));
        tokio::spawn(async move { injector.add(ApiShape::PodSubresource, &pod(), &container).await })
    }

    fn names(answer: Answer) -> Vec<String> {
        let pod = answer.expect("written");
        pod.spec.unwrap().ephemeral_containers.unwrap().into_iter().map(|c| c.name).collect()
    }

    fn writes(injector: &Injector) -> u64 {
        injector.metrics.api_requests.with_label_values(&["patch", "pods/ephemeralcontainers"]).get()
    }

    /// Adds waiting for a write of their pod to end.
    async fn until_waiting(injector: &Injector, count: usize) {
        while injector.queues.lock().unwrap().values().map(|w| w.waiting.len()).sum::<usize>() < count {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn adds_that_come_during_two_writes_go_out_together_in_the_next() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (sent, respond_first) = next_write(&mut handle).await;
        assert_eq!(sent, ["a"], "a lone add is sent at once, alone");
        let second = add(&injector, "b");
        let (sent, respond_second) = next_write(&mut handle).await;
        assert_eq!(sent, ["b"], "a second add goes out beside the first write");

        let later: Vec<_> = ["c", "d", "e"].iter().map(|n| add(&injector, n)).collect();
        until_waiting(&injector, 3).await;
        accept(respond_first, &["a"]);
        assert_eq!(names(first.await.unwrap()), ["a"]);

        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["c", "d", "e"], "one write for everything that waited");
        accept(respond_second, &["a", "b"]);
        assert_eq!(names(second.await.unwrap()), ["a", "b"]);
        accept(respond, &["a", "b", "c", "d", "e"]);
        for answer in later {
            assert_eq!(names(answer.await.unwrap()), ["a", "b", "c", "d", "e"]);
        }
        assert_eq!(writes(&injector), 3, "each write counted once");
        assert!(injector.is_empty(), "nothing under way: the next add writes itself");

        let next = add(&injector, "f");
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["f"]);
        accept(respond, &["a", "b", "c", "d", "e", "f"]);
        assert_eq!(names(next.await.unwrap()).len(), 6);
    }

    #[tokio::test]
    async fn a_refused_shared_write_is_tried_once_per_container_and_each_told_its_own_answer() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (_, respond_first) = next_write(&mut handle).await;
        let second = add(&injector, "b");
        let (_, respond_second) = next_write(&mut handle).await;
        let (good, bad) = (add(&injector, "good"), add(&injector, "bad"));
        until_waiting(&injector, 2).await;
        refuse(respond_first, "a refused alone");
        assert!(matches!(first.await.unwrap(), Err(kube::Error::Api(s)) if s.message == "a refused alone"));

        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["good", "bad"]);
        refuse(respond, "bad is invalid");
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["good"], "each alone, in order");
        accept(respond, &["b", "good"]);
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["bad"]);
        refuse(respond, "bad is invalid");
        accept(respond_second, &["b"]);

        assert_eq!(names(good.await.unwrap()), ["b", "good"]);
        assert!(matches!(bad.await.unwrap(), Err(kube::Error::Api(s)) if s.message == "bad is invalid"));
        assert_eq!(names(second.await.unwrap()), ["b"]);
        assert_eq!(writes(&injector), 5);
        assert!(injector.is_empty());
    }

    #[tokio::test]
    async fn pods_are_written_independently() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (_, respond) = next_write(&mut handle).await;
        let second = add(&injector, "b");
        let (_, respond_second) = next_write(&mut handle).await;
        // The same name, created again: another pod, with a write of its own
        // while the first pod takes no more.
        let mut again = pod();
        again.metadata.uid = Some("uid-2".into());
        let other = {
            let injector = injector.clone();
            tokio::spawn(async move { injector.add(ApiShape::PodSubresource, &again, &container("c")).await })
        };
        let (request, respond_other) = handle.next_request().await.expect("a write of its own, not queued");
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["uid"], "uid-2");
        accept(respond_other, &["c"]);
        accept(respond, &["a"]);
        accept(respond_second, &["a", "b"]);
        assert_eq!(names(other.await.unwrap()), ["c"]);
        assert_eq!(names(first.await.unwrap()), ["a"]);
        assert_eq!(names(second.await.unwrap()), ["a", "b"]);
    }
}
