//! What the counting proxies saw, by verb and resource.

use std::collections::BTreeMap;

use crate::proxy::Logged;

/// (verb, resource) of one request, the way the API server's audit log names them:
/// `get pods`, `list pods`, `watch pods`, `patch pods/ephemeralcontainers`,
/// `patch debugsessions/status`, `create events`, `get discovery /api/v1`, ...
pub fn classify(method: &http::Method, path_and_query: &str) -> (String, String) {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rest: &[&str] = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => rest,
        ["apis", _, _, rest @ ..] if !rest.is_empty() => rest,
        _ => return (method.as_str().to_lowercase(), format!("discovery {path}")),
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" { &rest[2..] } else { rest };
    let named = rest.len() >= 2;
    let resource = match rest {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => "?".into(),
    };
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb.to_string(), resource)
}

/// The name in `.../<resource>/<name>[/<sub>]`.
pub fn object_name<'a>(path: &'a str, resource: &str) -> Option<&'a str> {
    let path = path.split('?').next()?;
    let after = path.split(&format!("/{resource}/")).nth(1)?;
    after.split('/').next()
}

/// Requests of one window, by "verb resource", watches included.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub by_kind: BTreeMap<String, usize>,
    /// Answers that were conflicts (409) or refusals (422).
    pub conflicts: usize,
    pub refusals: usize,
    /// Status writes by session name.
    pub status_writes: BTreeMap<String, usize>,
    /// Pod GETs by pod name.
    pub pod_gets: BTreeMap<String, usize>,
    /// Accepted writes to pods/ephemeralcontainers, by the name of each container they add.
    pub container_writes: BTreeMap<String, usize>,
    /// How long the API server took, by "verb resource": (median, p99) in ms, watches left out.
    pub took_ms: BTreeMap<String, (f64, f64)>,
}

impl Counts {
    pub fn of(log: &[Logged]) -> Self {
        let mut counts = Counts::default();
        let mut took: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for entry in log {
            let (verb, resource) = classify(&entry.method, &entry.path);
            if let (Some(duration), false) = (entry.took, entry.is_watch()) {
                took.entry(format!("{verb} {resource}")).or_default().push(duration.as_secs_f64() * 1000.0);
            }
            match entry.status {
                409 => counts.conflicts += 1,
                422 => counts.refusals += 1,
                _ => {}
            }
            if verb == "patch" && resource == "debugsessions/status" {
                let name = object_name(&entry.path, "debugsessions").unwrap_or_default().to_string();
                *counts.status_writes.entry(name).or_default() += 1;
            }
            if verb == "patch" && resource == "pods/ephemeralcontainers" && entry.status == 200 {
                for name in added_containers(&entry.body) {
                    *counts.container_writes.entry(name).or_default() += 1;
                }
            }
            if verb == "get" && resource == "pods" {
                let name = object_name(&entry.path, "pods").unwrap_or_default().to_string();
                *counts.pod_gets.entry(name).or_default() += 1;
            }
            *counts.by_kind.entry(format!("{verb} {resource}")).or_default() += 1;
        }
        for (kind, values) in took {
            let (Some(median), Some(p99)) = (percentile(&values, 0.5), percentile(&values, 0.99)) else { continue };
            counts.took_ms.insert(kind, (median, p99));
        }
        counts
    }

    /// Containers that more than one accepted write added.
    pub fn containers_written_twice(&self) -> usize {
        self.container_writes.values().filter(|writes| **writes > 1).count()
    }

    pub fn get(&self, kind: &str) -> usize {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Everything but watches.
    pub fn requests(&self) -> usize {
        self.by_kind.iter().filter(|(k, _)| !k.starts_with("watch ")).map(|(_, v)| v).sum()
    }

    /// Everything but watches and events.
    pub fn requests_without_events(&self) -> usize {
        self.requests() - self.events()
    }

    pub fn events(&self) -> usize {
        self.by_kind.iter().filter(|(k, _)| k.ends_with(" events")).map(|(_, v)| v).sum()
    }

    pub fn pod_reads(&self) -> usize {
        self.get("get pods") + self.get("list pods")
    }

    /// "get pods 12, patch debugsessions/status 8, ..." with watches last.
    pub fn describe(&self) -> String {
        let mut kinds: Vec<(&String, &usize)> = self.by_kind.iter().collect();
        kinds.sort_by_key(|(k, v)| (k.starts_with("watch "), std::cmp::Reverse(**v)));
        kinds.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    }
}

/// The names of the containers a strategic merge patch of pods/ephemeralcontainers adds.
fn added_containers(body: &str) -> Vec<String> {
    let Ok(patch) = serde_json::from_str::<serde_json::Value>(body) else { return Vec::new() };
    let containers = patch["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    containers.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect()
}

/// The nearest-rank percentile.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Where the time of ephemera's critical path goes, per session, in ms, from
/// the operator's request log: the session's create (as the bench saw it),
/// create answered → claim sent, the claim (a guarded status write), claim
/// answered → pod patch sent, the pod patch; and the floor's two requests.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CriticalPath {
    pub create: Vec<f64>,
    pub to_claim: Vec<f64>,
    pub claim: Vec<f64>,
    pub claim_to_patch: Vec<f64>,
    pub patch: Vec<f64>,
    pub floor_get: Vec<f64>,
    pub floor_patch: Vec<f64>,
}

impl CriticalPath {
    /// `sessions`: (name, when its create was sent, when it was answered);
    /// `operator` and `floor`: the window's logs.
    pub fn of(
        sessions: &[(String, std::time::Instant, std::time::Instant)],
        operator: &[Logged],
        floor: &[Logged],
    ) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let mut path = CriticalPath::default();
        for (name, sent, created) in sessions {
            let claim = operator.iter().find(|l| {
                l.method == http::Method::PATCH
                    && object_name(&l.path, "debugsessions") == Some(name)
                    && l.body.contains("\"resourceVersion\"")
            });
            let marker = format!("\"name\":\"{name}\"");
            let patch = operator.iter().find(|l| {
                l.bare_path().ends_with("/ephemeralcontainers") && l.status == 200 && l.body.contains(&marker)
            });
            let (Some(claim), Some(patch)) = (claim, patch) else { continue };
            let (Some(claim_took), Some(patch_took)) = (claim.took, patch.took) else { continue };
            path.create.push(ms(created.saturating_duration_since(*sent)));
            path.to_claim.push(ms(claim.at.saturating_duration_since(*created)));
            path.claim.push(ms(claim_took));
            path.claim_to_patch.push(ms(patch.at.saturating_duration_since(claim.at + claim_took)));
            path.patch.push(ms(patch_took));
        }
        for entry in floor {
            let (verb, resource) = classify(&entry.method, &entry.path);
            match (verb.as_str(), resource.as_str(), entry.took) {
                ("get", "pods", Some(took)) => path.floor_get.push(ms(took)),
                ("patch", "pods/ephemeralcontainers", Some(took)) => path.floor_patch.push(ms(took)),
                _ => {}
            }
        }
        path
    }
}

/// A short account of a write's body: the phase and reasons of a status, an
/// event's reason, the container a patch adds.
pub fn summarize_body(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.chars().take(120).collect();
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    if let Some(status) = value.get("status").filter(|s| s.is_object()) {
        let mut parts = Vec::new();
        for field in ["phase", "reason", "waitingReason", "podName", "containerName", "attempt"] {
            if let Some(v) = status.get(field).filter(|v| !v.is_null()) {
                parts.push(format!("{field}={}", text(v)));
            }
        }
        if let Some(containers) = status.get("containers").and_then(|c| c.as_array()) {
            let states: Vec<String> = containers.iter().map(|c| text(&c["state"])).collect();
            parts.push(format!("containers=[{}]", states.join(",")));
        }
        let conditions = status.get("conditions").and_then(|c| c.as_array()).map_or(0, Vec::len);
        parts.push(format!("{conditions} conditions"));
        if let Some(rv) = value.pointer("/metadata/resourceVersion") {
            parts.push(format!("guarded by resourceVersion {}", text(rv)));
        }
        return parts.join(" ");
    }
    if let Some(reason) = value.get("reason") {
        let about = value.pointer("/regarding/name").map(text).unwrap_or_default();
        return format!("event {} about {about}", text(reason));
    }
    if let Some(ops) = value.as_array() {
        let ops: Vec<String> = ops
            .iter()
            .map(|op| {
                let name = op.pointer("/value/name").or_else(|| op.pointer("/value/0/name")).map(text);
                format!(
                    "{} {}{}",
                    text(&op["op"]),
                    text(&op["path"]),
                    name.map(|n| format!(" {n}")).unwrap_or_default()
                )
            })
            .collect();
        return format!("json patch: {}", ops.join("; "));
    }
    body.chars().take(120).collect()
}

/// The request log of a window, one line per request, times from `from`
/// (whole bodies with EPHEMERA_BENCH_BODIES set).
pub fn dump(log: &[Logged], from: std::time::Instant) -> String {
    let mut out = String::new();
    for entry in log {
        let at = entry.at.saturating_duration_since(from).as_secs_f64();
        let body = match (entry.body.is_empty(), std::env::var_os("EPHEMERA_BENCH_BODIES").is_some()) {
            (true, _) => String::new(),
            (false, false) => format!("  {}", summarize_body(&entry.body)),
            (false, true) => format!("  {}", entry.body),
        };
        out += &format!("{at:>9.3} s  {} {:<6} {}{body}\n", entry.status, entry.method, entry.path);
    }
    out
}

/// Checks [`classify`] and [`object_name`] on the paths the operator sends
/// (run at every start: a bench target has no test harness).
pub fn self_check() {
    {
        let get = http::Method::GET;
        let cases = [
            (get.clone(), "/api/v1/namespaces/ns/pods/web", "get", "pods"),
            (get.clone(), "/api/v1/namespaces/ns/pods?labelSelector=a%3Db", "list", "pods"),
            (get.clone(), "/api/v1/namespaces/ns/pods?watch=true&resourceVersion=1", "watch", "pods"),
            (
                http::Method::PATCH,
                "/api/v1/namespaces/ns/pods/web/ephemeralcontainers",
                "patch",
                "pods/ephemeralcontainers",
            ),
            (
                http::Method::PATCH,
                "/apis/ephemera.dev/v1alpha1/namespaces/ns/debugsessions/s/status?fieldManager=ephemera&force=true",
                "patch",
                "debugsessions/status",
            ),
            (http::Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", "create", "events"),
            (get.clone(), "/api/v1", "get", "discovery /api/v1"),
            (get.clone(), "/version", "get", "discovery /version"),
            (http::Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "update", "leases"),
        ];
        for (method, path, verb, resource) in cases {
            assert_eq!(classify(&method, path), (verb.to_string(), resource.to_string()), "{path}");
        }
        assert_eq!(object_name("/apis/e/v1/namespaces/ns/debugsessions/s-1/status?x", "debugsessions"), Some("s-1"));
        assert_eq!(object_name("/api/v1/namespaces/ns/pods/web", "pods"), Some("web"));
    }
}
