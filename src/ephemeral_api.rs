//! Whether the cluster serves ephemeral containers, in which API shape, and
//! adding one container to a pod in that shape.
//!
//! - 1.22 and later: the `pods/ephemeralcontainers` subresource takes a Pod;
//!   we send a JSON patch that appends one entry (a strategic merge patch
//!   would put the new entry first).
//! - 1.16 to 1.21 (alpha, behind the `EphemeralContainers` feature gate): it
//!   takes the `EphemeralContainers` kind, read with GET and written with PUT,
//!   and the PUT must list every earlier container unchanged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResourceList, ObjectMeta};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// How the server takes new ephemeral containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiShape {
    /// 1.22+: the subresource takes a Pod.
    PodSubresource,
    /// 1.16-1.21: the subresource takes kind `EphemeralContainers` by GET/PUT.
    LegacyEphemeralContainers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available(ApiShape),
    /// Not served; the message says what to change.
    Unavailable(String),
}

/// `(major, minor)` of a server version; minor may carry a vendor suffix ("22+").
pub fn parse_version(info: &Info) -> Option<(u32, u32)> {
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok();
    Some((digits(&info.major)?, digits(&info.minor)?))
}

/// Decides availability from `/version` and the `/api/v1` resource list.
pub fn assess(info: &Info, core_v1: &APIResourceList) -> Availability {
    let version = parse_version(info);
    let shown = format!("{}.{}", info.major, info.minor);
    if version.is_some_and(|v| v < (1, 16)) {
        return Availability::Unavailable(format!(
            "Kubernetes {shown} has no ephemeral containers; they need Kubernetes 1.16 or newer"
        ));
    }
    let served = core_v1.resources.iter().any(|r| r.name == "pods/ephemeralcontainers");
    if !served {
        let advice = match version {
            Some(v) if v < (1, 23) => {
                "enable the EphemeralContainers=true feature gate on kube-apiserver and on every kubelet (it is off by default before 1.23)"
            }
            Some(v) if v < (1, 25) => {
                "the EphemeralContainers feature gate is on by default in 1.23 and 1.24 but has been turned off: set EphemeralContainers=true on kube-apiserver and on every kubelet"
            }
            _ => {
                "ephemeral containers are always on from Kubernetes 1.25, so an API proxy or aggregation layer is hiding pods/ephemeralcontainers from discovery"
            }
        };
        return Availability::Unavailable(format!(
            "the API server (Kubernetes {shown}) does not serve pods/ephemeralcontainers: {advice}"
        ));
    }
    match version {
        Some(v) if v < (1, 22) => Availability::Available(ApiShape::LegacyEphemeralContainers),
        _ => Availability::Available(ApiShape::PodSubresource),
    }
}

/// What a refused write to `pods/ephemeralcontainers` says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Ephemeral containers are off; the message says what to change.
    Unavailable(String),
    /// The pod changed or went away since it was read: decide again from fresh state.
    StalePod,
    /// Refused for this container or this user: RBAC, admission or validation.
    Other,
}

/// Classifies a refused write the way `kubectl debug` does: a 404 that names no
/// object comes from a path the server does not serve, while one that names the
/// pod means the pod is gone. 1.22-1.24 answer 400 when only the gate is off.
pub fn classify_refusal(status: &kube::core::Status) -> Refusal {
    let names_an_object = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    let gate_off = match status.code {
        404 => !names_an_object,
        400 => status.message.contains("feature EphemeralContainers disabled"),
        _ => false,
    };
    if gate_off {
        return Refusal::Unavailable(format!(
            "the API server refused pods/ephemeralcontainers ({}): ephemeral containers are turned off; set the EphemeralContainers=true feature gate on kube-apiserver and on every kubelet (it is off by default before 1.23 and always on from 1.25)",
            status.message
        ));
    }
    match status.code {
        404 | 409 => Refusal::StalePod,
        _ => Refusal::Other,
    }
}

/// Availability, asked of the server at most once per `ttl`, so reconciles
/// never pay for discovery.
pub struct AvailabilityCache {
    client: Client,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Availability)>>,
}

impl AvailabilityCache {
    pub fn new(client: Client, ttl: Duration) -> Arc<Self> {
        Arc::new(Self { client, ttl, cached: Mutex::new(None) })
    }

    pub async fn get(&self) -> Result<Availability, kube::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((at, availability)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(availability.clone());
        }
        let info = self.client.apiserver_version().await?;
        let core_v1 = self.client.list_core_api_resources("v1").await?;
        let availability = assess(&info, &core_v1);
        tracing::info!(?availability, version = %info.git_version, "checked ephemeral container support");
        *cached = Some((Instant::now(), availability.clone()));
        Ok(availability)
    }

    /// Forgets the answer, e.g. after the subresource answered 404.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

/// The pre-1.22 body of `pods/ephemeralcontainers`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEphemeralContainers {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub ephemeral_containers: Vec<EphemeralContainer>,
}

fn subresource_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}/ephemeralcontainers")
}

/// Adds `container` to `pod`, failing with 409 Conflict if the pod changed
/// since `pod.metadata.resourceVersion`, so that the caller decides again
/// from fresh state (and never injects twice). Returns the updated pod.
pub async fn add_ephemeral_container(
    client: &Client,
    shape: ApiShape,
    pod: &Pod,
    container: &EphemeralContainer,
) -> Result<Pod, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match shape {
        ApiShape::PodSubresource => {
            let has_any =
                pod.spec.as_ref().and_then(|s| s.ephemeral_containers.as_ref()).is_some_and(|c| !c.is_empty());
            let append = if has_any {
                serde_json::json!({ "op": "add", "path": "/spec/ephemeralContainers/-", "value": container })
            } else {
                serde_json::json!({ "op": "add", "path": "/spec/ephemeralContainers", "value": [container] })
            };
            // Writing the resourceVersion we read makes the server refuse a stale patch with 409.
            let patch = serde_json::json!([
                { "op": "replace", "path": "/metadata/resourceVersion", "value": pod.metadata.resource_version },
                append,
            ]);
            let patch: json_patch::Patch = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
            pods.patch_ephemeral_containers(name, &PatchParams::default(), &Patch::Json::<()>(patch)).await
        }
        ApiShape::LegacyEphemeralContainers => {
            // GET for the earlier containers exactly as the server stores them,
            // PUT at the version the caller decided on: a pod that changed since
            // (even by gaining this very container) is refused with 409.
            let path = subresource_path(namespace, name);
            let get = http::Request::get(&path).body(Vec::new()).map_err(kube::Error::HttpError)?;
            let mut current: LegacyEphemeralContainers = client.request(get).await?;
            if pod.metadata.resource_version.is_some() {
                current.metadata.resource_version.clone_from(&pod.metadata.resource_version);
            }
            current.ephemeral_containers.push(container.clone());
            let body = serde_json::to_vec(&LegacyEphemeralContainers {
                api_version: "v1".into(),
                kind: "EphemeralContainers".into(),
                ..current
            })
            .map_err(kube::Error::SerdeError)?;
            let put = http::Request::put(&path)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(kube::Error::HttpError)?;
            let _: LegacyEphemeralContainers = client.request(put).await?;
            pods.get(name).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: format!("v{major}.{minor}.0"),
            ..Default::default()
        }
    }

    fn core_v1(with_subresource: bool) -> APIResourceList {
        let resource = |name: &str| APIResource { name: name.into(), ..Default::default() };
        let mut resources = vec![resource("pods"), resource("pods/exec"), resource("pods/status")];
        if with_subresource {
            resources.push(resource("pods/ephemeralcontainers"));
        }
        APIResourceList { group_version: "v1".into(), resources }
    }

    #[test]
    fn availability_follows_version_and_discovery() {
        use ApiShape::*;
        let cases = [
            ("1", "15", true, None, Some("1.16 or newer")),
            ("1", "16", true, Some(LegacyEphemeralContainers), None),
            ("1", "21+", true, Some(LegacyEphemeralContainers), None),
            ("1", "22", true, Some(PodSubresource), None),
            ("1", "34", true, Some(PodSubresource), None),
            (
                "1",
                "20",
                false,
                None,
                Some("EphemeralContainers=true feature gate on kube-apiserver and on every kubelet"),
            ),
            ("1", "22", false, None, Some("off by default before 1.23")),
            ("1", "24", false, None, Some("on by default in 1.23 and 1.24")),
            ("1", "30", false, None, Some("always on from Kubernetes 1.25")),
        ];
        for (major, minor, served, shape, message) in cases {
            let got = assess(&info(major, minor), &core_v1(served));
            match (shape, message, &got) {
                (Some(shape), None, Availability::Available(s)) => assert_eq!(*s, shape, "{major}.{minor}"),
                (None, Some(text), Availability::Unavailable(m)) => assert!(m.contains(text), "{major}.{minor}: {m}"),
                _ => panic!("{major}.{minor} served={served}: got {got:?}"),
            }
        }
    }

    mod legacy {
        use super::*;
        use http::{Method, Request, Response};
        use kube::client::Body;

        const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy/");

        fn fixture(name: &str) -> Vec<u8> {
            std::fs::read(format!("{FIXTURES}{name}")).unwrap()
        }

        /// The pod as the caller read it, at the version of the GET fixture.
        fn web_pod() -> Pod {
            let mut pod = Pod::default();
            pod.metadata.name = Some("web".into());
            pod.metadata.namespace = Some("default".into());
            pod.metadata.resource_version = Some("48213".into());
            pod
        }

        fn new_container() -> EphemeralContainer {
            EphemeralContainer {
                name: "debugger-abcde".into(),
                image: Some("busybox:1.36".into()),
                stdin: Some(true),
                tty: Some(true),
                target_container_name: Some("app".into()),
                ..Default::default()
            }
        }

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        async fn expect(handle: &mut Handle, method: Method, path: &str, status: u16, body: Vec<u8>) -> Vec<u8> {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), method);
            assert_eq!(request.uri().path(), path);
            let sent = request.into_body().collect_bytes().await.unwrap().to_vec();
            send.send_response(Response::builder().status(status).body(Body::from(body)).unwrap());
            sent
        }

        const PATH: &str = "/api/v1/namespaces/default/pods/web/ephemeralcontainers";

        #[tokio::test]
        async fn put_keeps_earlier_containers_and_appends_one() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let server = tokio::spawn(async move {
                expect(&mut handle, Method::GET, PATH, 200, fixture("get-ephemeralcontainers.json")).await;
                let put = expect(&mut handle, Method::PUT, PATH, 200, fixture("put-ephemeralcontainers.json")).await;
                let pod = serde_json::to_vec(&web_pod()).unwrap();
                expect(&mut handle, Method::GET, "/api/v1/namespaces/default/pods/web", 200, pod).await;
                put
            });
            add_ephemeral_container(&client, ApiShape::LegacyEphemeralContainers, &web_pod(), &new_container())
                .await
                .unwrap();
            let put: serde_json::Value = serde_json::from_slice(&server.await.unwrap()).unwrap();
            assert_eq!(put["kind"], "EphemeralContainers");
            assert_eq!(put["apiVersion"], "v1");
            assert_eq!(put["metadata"]["resourceVersion"], "48213", "the PUT must carry the version the caller read");
            let recorded: serde_json::Value = serde_json::from_slice(&fixture("get-ephemeralcontainers.json")).unwrap();
            let sent = put["ephemeralContainers"].as_array().unwrap();
            assert_eq!(sent.len(), 2);
            assert_eq!(sent[0], recorded["ephemeralContainers"][0], "earlier containers go back unchanged");
            assert_eq!(sent[1]["name"], "debugger-abcde");
            assert_eq!(sent[1]["targetContainerName"], "app");
        }

        #[tokio::test]
        async fn put_carries_the_callers_version_even_when_the_server_has_a_newer_one() {
            // Since the caller read the pod, someone added containers (this very
            // name among them): the PUT must not adopt that, but be refused.
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let server = tokio::spawn(async move {
                expect(&mut handle, Method::GET, PATH, 200, fixture("put-ephemeralcontainers.json")).await;
                expect(&mut handle, Method::PUT, PATH, 409, fixture("conflict.json")).await
            });
            let error =
                add_ephemeral_container(&client, ApiShape::LegacyEphemeralContainers, &web_pod(), &new_container())
                    .await
                    .unwrap_err();
            assert!(matches!(error, kube::Error::Api(ref s) if s.code == 409), "{error:?}");
            let put: serde_json::Value = serde_json::from_slice(&server.await.unwrap()).unwrap();
            assert_eq!(put["metadata"]["resourceVersion"], "48213", "the version the caller read, not 48260");
        }

        #[tokio::test]
        async fn conflict_on_put_reaches_the_caller() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            tokio::spawn(async move {
                expect(&mut handle, Method::GET, PATH, 200, fixture("get-ephemeralcontainers.json")).await;
                expect(&mut handle, Method::PUT, PATH, 409, fixture("conflict.json")).await;
            });
            let error =
                add_ephemeral_container(&client, ApiShape::LegacyEphemeralContainers, &web_pod(), &new_container())
                    .await
                    .unwrap_err();
            assert!(matches!(error, kube::Error::Api(ref s) if s.code == 409), "{error:?}");
        }

        #[tokio::test]
        async fn pod_shape_appends_one_container_at_the_read_version() {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = Client::new(service, "default");
            let server = tokio::spawn(async move {
                let (request, send) = handle.next_request().await.unwrap();
                assert_eq!(request.method(), Method::PATCH);
                assert_eq!(request.uri().path(), PATH);
                assert_eq!(request.headers()["content-type"], "application/json-patch+json");
                let body = request.into_body().collect_bytes().await.unwrap();
                send.send_response(
                    Response::builder().body(Body::from(serde_json::to_vec(&web_pod()).unwrap())).unwrap(),
                );
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            });
            let mut pod = web_pod();
            pod.metadata.resource_version = Some("77".into());
            pod.spec = Some(Default::default());
            pod.spec.as_mut().unwrap().ephemeral_containers =
                Some(vec![EphemeralContainer { name: "old".into(), ..Default::default() }]);
            add_ephemeral_container(&client, ApiShape::PodSubresource, &pod, &new_container()).await.unwrap();
            let patch = server.await.unwrap();
            assert_eq!(
                patch[0],
                serde_json::json!({ "op": "replace", "path": "/metadata/resourceVersion", "value": "77" })
            );
            assert_eq!(patch[1]["op"], "add");
            assert_eq!(patch[1]["path"], "/spec/ephemeralContainers/-", "appended after the existing one");
            assert_eq!(patch[1]["value"]["name"], "debugger-abcde");
            assert_eq!(patch.as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn refusals_are_told_apart_like_kubectl_does() {
        let status = |code: u16, message: &str, named: Option<&str>| -> kube::core::Status {
            let details = named.map(|name| serde_json::json!({ "name": name, "kind": "pods" }));
            serde_json::from_value(serde_json::json!({ "code": code, "message": message, "details": details })).unwrap()
        };
        let unavailable = |r: &Refusal| matches!(r, Refusal::Unavailable(m) if m.contains("EphemeralContainers=true"));
        let cases = [
            // (code, message, details.name, expected)
            (404, "the server could not find the requested resource", None, "unavailable"),
            (404, "pods \"web\" not found", Some("web"), "stale"),
            (409, "the object has been modified", Some("web"), "stale"),
            (400, "feature EphemeralContainers disabled", None, "unavailable"),
            (400, "some other bad request", None, "other"),
            (403, "forbidden", Some("web"), "other"),
            (422, "Pod \"web\" is invalid", Some("web"), "other"),
        ];
        for (code, message, named, expected) in cases {
            let refusal = classify_refusal(&status(code, message, named));
            let got = match &refusal {
                r if unavailable(r) => "unavailable",
                Refusal::StalePod => "stale",
                Refusal::Other => "other",
                Refusal::Unavailable(_) => "unavailable without advice",
            };
            assert_eq!(got, expected, "{code} {message:?} {named:?}: {refusal:?}");
        }
    }

    #[test]
    fn vendor_suffixes_are_ignored() {
        assert_eq!(parse_version(&info("1", "21+")), Some((1, 21)));
        assert_eq!(parse_version(&info("1", "")), None);
    }
}
