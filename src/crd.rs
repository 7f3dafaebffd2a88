//! The `DebugSession` custom resource (`debugsessions.ephemera.dev`).
//!
//! Field docs become the CRD's descriptions, so `kubectl explain` reads them.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CEL that holds when the optional field `f` is unchanged, added or removed
/// included. (`self.?f == oldSelf.?f` says the same, but the API server's cost
/// estimate for optionals exceeds the budget.)
macro_rules! unchanged {
    ($f:literal) => {
        concat!(
            "(has(self.",
            $f,
            ") == has(oldSelf.",
            $f,
            ") && (!has(self.",
            $f,
            ") || self.",
            $f,
            " == oldSelf.",
            $f,
            "))"
        )
    };
}

/// Every spec field but `attempt` is immutable.
const SPEC_IMMUTABLE_RULE: &str = concat!(
    "self.target == oldSelf.target && self.image == oldSelf.image",
    " && ",
    unchanged!("imagePullPolicy"),
    " && ",
    unchanged!("command"),
    " && ",
    unchanged!("args"),
    " && ",
    unchanged!("env"),
    " && ",
    unchanged!("workingDir"),
    " && ",
    unchanged!("stdin"),
    " && ",
    unchanged!("tty"),
    " && ",
    unchanged!("profile"),
    " && ",
    unchanged!("containerName"),
    " && ",
    unchanged!("startTimeoutSeconds"),
    " && ",
    unchanged!("ttlSecondsAfterFinished"),
);

/// A request to debug a running pod with an ephemeral container.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ephemera.dev",
    version = "v1alpha1",
    kind = "DebugSession",
    namespaced,
    shortname = "dbgs",
    status = "DebugSessionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName"}"#,
    printcolumn = r#"{"name":"Container","type":"string","jsonPath":".status.containerName"}"#,
    printcolumn = r#"{"name":"Attachable","type":"string","jsonPath":".status.conditions[?(@.type==\"Attachable\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Attempt","type":"integer","priority":1,"jsonPath":".spec.attempt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new(SPEC_IMMUTABLE_RULE).message("spec is immutable except for spec.attempt; create a new DebugSession instead").reason(Reason::FieldValueForbidden),
    validation = Rule::new("self.attempt >= oldSelf.attempt").message("spec.attempt may only be raised").reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct DebugSessionSpec {
    /// The pod to debug, always in the DebugSession's own namespace.
    pub target: Target,

    /// Image of the debug container, e.g. `busybox:1.36` or `nicolaka/netshoot`.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Pull policy of the debug image. Defaults to Kubernetes' rule (`Always` for `:latest`, else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Entrypoint of the debug container; the image's entrypoint if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint; the image's CMD if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub args: Option<Vec<String>>,

    /// Environment variables of the debug container. ephemera adds `EPHEMERA_SESSION` and `EPHEMERA_SESSION_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub env: Option<Vec<EnvVar>>,

    /// Working directory of the debug container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,

    /// Keep stdin open, so `kubectl attach -i` can talk to the debug process.
    #[serde(default = "default_true")]
    pub stdin: bool,

    /// Allocate a TTY, for `kubectl attach -t`.
    #[serde(default = "default_true")]
    pub tty: bool,

    /// Security profile of the debug container, with the meaning of `kubectl debug --profile`:
    /// `general` adds SYS_PTRACE; `baseline` sets no security context; `restricted` runs as non-root
    /// with all capabilities dropped, no privilege escalation and the RuntimeDefault seccomp profile;
    /// `netadmin` adds NET_ADMIN and NET_RAW; `sysadmin` runs privileged.
    #[serde(default)]
    pub profile: Profile,

    /// Name of the debug container. Defaults to `debugger-` plus 5 characters of this session's UID.
    /// Attempt N > 0 uses `<name>-<N>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 56), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub container_name: Option<String>,

    /// Raise to start a fresh debug container (`<name>-<attempt>`) once the previous one has
    /// terminated or failed: ephemeral containers can never be restarted or removed, so every
    /// earlier one stays in the pod. The only field that may change, and only upwards.
    #[serde(default)]
    #[schemars(range(min = 0, max = 9999))]
    pub attempt: i32,

    /// How long an injected debug container may go without being started by the kubelet
    /// (no status, or still waiting, e.g. on an image pull) before the session fails with `StartTimeout`.
    #[serde(default = "default_start_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub start_timeout_seconds: i32,

    /// Delete this DebugSession this many seconds after it finished (Terminated or Failed).
    /// Unset keeps it until deleted by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

fn default_true() -> bool {
    true
}

fn default_start_timeout() -> i32 {
    120
}

/// Which pod, and which of its containers, to debug.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.pod) != has(self.selector)").message("set exactly one of target.pod and target.selector"),
    validation = Rule::new("!has(self.selector) || (has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)").message("target.selector must not be empty: it would match every pod"),
)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the pod to debug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,

    /// Label selector of the pods to choose from: ephemera picks one Running pod, preferring Ready
    /// ones and then the newest, and records it in `status.podName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Container whose process namespace the debug container shares (`targetContainerName`).
    /// Defaults to the pod's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// The `kubectl debug --profile` values that apply to ephemeral containers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    General,
    Baseline,
    Restricted,
    Netadmin,
    Sysadmin,
}

/// What the session has done and what the kubelet reports about its debug container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebugSessionStatus {
    /// Pending, Injected, Running, Terminated or Failed; describes `status.attempt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The attempt this status describes; lags `spec.attempt` while a raised attempt waits.
    #[serde(default)]
    pub attempt: i32,

    /// Why the session failed (only in phase Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,

    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The target pod, pinned by name and UID once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// UID of the target pod; a pod with the same name but another UID is a different pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,

    /// The container whose process namespace is shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_container_name: Option<String>,

    /// Name of the current attempt's debug container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,

    /// The command that attaches to the debug container, while it is Running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_command: Option<String>,

    /// Why the injected container has not started yet (e.g. ContainerCreating, ErrImagePull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,

    /// Exit code of the current debug container, once Terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// The kubelet's reason for the exit (e.g. Completed, Error, OOMKilled), once Terminated.
    /// `reason` is kept for the fixed set of failure reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,

    /// When the current debug container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the current debug container exited, or the session failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// One entry per injected debug container, oldest first. All of them stay in the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<DebugContainerStatus>,

    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus), Injected, Attachable and EphemeralContainersAvailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One debug container that this session added to the pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebugContainerStatus {
    /// Name of the ephemeral container.
    pub name: String,
    /// The `spec.attempt` it was created for.
    pub attempt: i32,
    /// Waiting, Running or Terminated, as the kubelet reports; Unknown before its first status.
    pub state: ContainerState,
    /// When ephemera added it to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_at: Option<Time>,
    /// Waiting or termination reason from the kubelet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code, once Terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When the kubelet started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContainerState {
    #[default]
    Unknown,
    Waiting,
    Running,
    Terminated,
}

/// Pending (accepted, not in the pod yet), Injected (in the pod spec, not started by the
/// kubelet yet), Running (attachable), Terminated (exited; can never be attached to or
/// restarted again) or Failed (see `reason`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Injected,
    Running,
    Terminated,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Injected => "Injected",
            Self::Running => "Running",
            Self::Terminated => "Terminated",
            Self::Failed => "Failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Terminated | Self::Failed)
    }
}

/// The fixed set of reasons for phase Failed (see docs/status.md):
/// EphemeralContainersUnavailable (the cluster does not serve pods/ephemeralcontainers),
/// TargetNotFound (no such pod, or none matches the selector), TargetContainerNotFound,
/// TargetNotRunning, StaticPodUnsupported (mirror pods cannot take ephemeral containers),
/// Forbidden (RBAC or Pod Security Admission refused the injection), Invalid (the API server
/// rejected the container), StartTimeout (the kubelet did not start it in time) and
/// TargetGone (the pod was deleted or replaced).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    EphemeralContainersUnavailable,
    TargetNotFound,
    TargetContainerNotFound,
    TargetNotRunning,
    StaticPodUnsupported,
    Forbidden,
    Invalid,
    StartTimeout,
    TargetGone,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EphemeralContainersUnavailable => "EphemeralContainersUnavailable",
            Self::TargetNotFound => "TargetNotFound",
            Self::TargetContainerNotFound => "TargetContainerNotFound",
            Self::TargetNotRunning => "TargetNotRunning",
            Self::StaticPodUnsupported => "StaticPodUnsupported",
            Self::Forbidden => "Forbidden",
            Self::Invalid => "Invalid",
            Self::StartTimeout => "StartTimeout",
            Self::TargetGone => "TargetGone",
        }
    }

    /// Failures that no new attempt can repair: the pinned pod is gone for good.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::TargetGone)
    }
}

/// Size bounds for spec fields whose types (from k8s-openapi) declare none.
/// The API server estimates the cost of the immutability rule from them;
/// unbounded, it assumes megabyte strings and refuses the CRD.
const MAX_STRING_LENGTH: i64 = 4096;
const MAX_LIST_ITEMS: i64 = 64;
const MAX_MAP_PROPERTIES: i64 = 64;

/// Applies `f` to `schema` and every schema nested in it.
fn visit(schema: &mut JSONSchemaProps, f: &impl Fn(&mut JSONSchemaProps)) {
    f(schema);
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        visit(child, f);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &mut schema.items {
        visit(items, f);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        visit(values, f);
    }
}

fn bound_size(schema: &mut JSONSchemaProps) {
    match schema.type_.as_deref() {
        Some("string") if schema.enum_.is_none() => {
            schema.max_length.get_or_insert(MAX_STRING_LENGTH);
        }
        Some("array") => {
            schema.max_items.get_or_insert(MAX_LIST_ITEMS);
        }
        Some("object") if schema.additional_properties.is_some() => {
            schema.max_properties.get_or_insert(MAX_MAP_PROPERTIES);
        }
        _ => {}
    }
}

/// Joins the lines of a doc comment's paragraphs, which `kubectl explain` rewraps anyway.
fn unwrap_description(schema: &mut JSONSchemaProps) {
    if let Some(description) = &mut schema.description {
        *description = description
            .split("\n\n")
            .map(|p| p.split('\n').collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
}

/// The DebugSession CRD, with every spec field bounded in size.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = DebugSession::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        visit(root, &unwrap_description);
        if let Some(spec) = root.properties.as_mut().and_then(|p| p.get_mut("spec")) {
            visit(spec, &bound_size);
        }
    }
    crd
}

/// The CRD as YAML, as `ephemera crd` prints it and `crds/debugsession.yaml` holds it.
pub fn crd_yaml() -> String {
    let crd = crd();
    let body = serde_saphyr::to_string(&crd).expect("the CRD always serializes");
    format!("# Generated by `ephemera crd`; do not edit.\n---\n{body}")
}
