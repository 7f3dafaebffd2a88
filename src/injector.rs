//! Adding debug containers to pods. A pod takes one write at a time: the API
//! server applies writes to one object one after the other, so twenty adds
//! sent at once wait there behind each other, each on a larger pod. Here the
//! adds that come for a pod while a write to it is under way wait for it and
//! then go out together, as one strategic merge patch that names them all
//! (merged by name, as `kubectl debug`'s is). A lone add is sent at once.
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

/// Adds for pods with a write under way, by pod. A pod is here exactly while
/// a write to it is under way.
type Queues = Arc<Mutex<HashMap<PodKey, Vec<Waiting>>>>;

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
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push(waiting);
                    None
                }
                None => {
                    queues.insert(key.clone(), Vec::new());
                    Some(waiting)
                }
            }
        };
        if let Some(first) = leads {
            // The first add is written at once; the writer then takes whatever
            // queued meanwhile. It runs on its own, so no reconcile waits for others'.
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
            let waiting = queues.get_mut(&key).expect("a pod with a write under way is queued");
            if waiting.is_empty() {
                // In the same lock as the look: an add from now on writes itself.
                queues.remove(&key);
                unfinished.key = None;
                return;
            }
            batch = std::mem::take(waiting);
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

/// A writer that ends before its queue is empty (a panic) frees the pod:
/// the adds still waiting are dropped, which tells them so, and the next add writes itself.
struct Unfinished {
    queues: Queues,
    key: Option<PodKey>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
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

    #[tokio::test]
    async fn adds_that_come_during_a_write_go_out_together_in_the_next() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["a"], "a lone add is sent at once, alone");

        let later: Vec<_> = ["b", "c", "d"].iter().map(|n| add(&injector, n)).collect();
        // All three are queued before the first write is answered.
        while injector.queues.lock().unwrap().values().map(Vec::len).sum::<usize>() < 3 {
            tokio::task::yield_now().await;
        }
        accept(respond, &["a"]);
        assert_eq!(names(first.await.unwrap()), ["a"]);

        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["b", "c", "d"], "one write for everything that waited");
        accept(respond, &["a", "b", "c", "d"]);
        for answer in later {
            assert_eq!(names(answer.await.unwrap()), ["a", "b", "c", "d"]);
        }
        assert_eq!(writes(&injector), 2, "each write counted once");
        assert!(injector.is_empty(), "nothing under way: the next add writes itself");

        let next = add(&injector, "e");
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["e"]);
        accept(respond, &["a", "b", "c", "d", "e"]);
        assert_eq!(names(next.await.unwrap()).len(), 5);
    }

    #[tokio::test]
    async fn a_refused_shared_write_is_tried_once_per_container_and_each_told_its_own_answer() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (_, respond) = next_write(&mut handle).await;
        let (good, bad) = (add(&injector, "good"), add(&injector, "bad"));
        while injector.queues.lock().unwrap().values().map(Vec::len).sum::<usize>() < 2 {
            tokio::task::yield_now().await;
        }
        refuse(respond, "a refused alone");
        assert!(matches!(first.await.unwrap(), Err(kube::Error::Api(s)) if s.message == "a refused alone"));

        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["good", "bad"]);
        refuse(respond, "bad is invalid");
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["good"], "each alone, in order");
        accept(respond, &["good"]);
        let (sent, respond) = next_write(&mut handle).await;
        assert_eq!(sent, ["bad"]);
        refuse(respond, "bad is invalid");

        assert_eq!(names(good.await.unwrap()), ["good"]);
        assert!(matches!(bad.await.unwrap(), Err(kube::Error::Api(s)) if s.message == "bad is invalid"));
        assert_eq!(writes(&injector), 4);
        assert!(injector.is_empty());
    }

    #[tokio::test]
    async fn pods_are_written_independently() {
        let (injector, mut handle) = injector();
        let first = add(&injector, "a");
        let (_, respond) = next_write(&mut handle).await;
        // The same name, created again: another pod, with a write of its own.
        let mut again = pod();
        again.metadata.uid = Some("uid-2".into());
        let other = {
            let injector = injector.clone();
            tokio::spawn(async move { injector.add(ApiShape::PodSubresource, &again, &container("b")).await })
        };
        let (request, respond_other) = handle.next_request().await.expect("a write of its own, not queued");
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["metadata"]["uid"], "uid-2");
        accept(respond_other, &["b"]);
        accept(respond, &["a"]);
        assert_eq!(names(other.await.unwrap()), ["b"]);
        assert_eq!(names(first.await.unwrap()), ["a"]);
    }
}
