//! The `DebugSession` custom resource (`debugsessions.ephemera.dev`).
//!
//! Field docs become the CRD's descriptions, so `kubectl explain` reads them.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
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

// The syntax of names and images, as the schema states it; the controller checks
// the same (crate::validation) on servers that do not enforce all of it.
/// A DNS-1123 label: container names.
pub const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain: pod and namespace names.
pub const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A label key: an optional DNS subdomain prefix and a name.
pub const QUALIFIED_NAME: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// A label value (may be empty).
pub const LABEL_VALUE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
/// An image reference has no whitespace and no control characters (the controller checks its full grammar).
pub const IMAGE_CHARACTERS: &str = r"^[^\s\x00-\x1f\x7f]+$";

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
    " && ",
    unchanged!("runAs"),
    " && ",
    unchanged!("volumeMounts"),
    " && ",
    unchanged!("envFrom"),
    " && ",
    unchanged!("custom"),
    " && ",
    unchanged!("captureOutput"),
);

/// A request to debug a running pod with an ephemeral container.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
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
    printcolumn = r#"{"name":"Requester","type":"string","priority":1,"jsonPath":".status.requester"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","priority":1,"jsonPath":".status.targetCounts.total"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","priority":1,"jsonPath":".status.targetCounts.running"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","priority":1,"jsonPath":".status.targetCounts.terminated"}"#,
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
    #[schemars(length(min = 1, max = 1024), regex(pattern = IMAGE_CHARACTERS))]
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
    #[schemars(length(min = 1, max = 56), regex(pattern = DNS1123_LABEL))]
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
    /// Unset keeps it until deleted by hand. A GitOps tool that re-creates the session
    /// after the deletion gets the finished containers back, not new ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// `target`: run as the target container's user and group (its securityContext's
    /// runAsUser/runAsGroup, or the pod's), so that the debug container can read what the
    /// application wrote and runs in a `runAsNonRoot` pod. Fails at once if the target's
    /// user is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<FromTarget>,

    /// `target`: mount every volume the target container mounts, at the same paths (an
    /// ephemeral container can only mount the pod's own volumes). Secret and
    /// service-account token volumes are left out unless the platform allows them
    /// (`status.omittedFromTarget` says what was left out). More mounts: `custom.volumeMounts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<FromTarget>,

    /// `target`: copy the target container's `env` and `envFrom`; values from Secrets are
    /// left out unless the platform allows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<FromTarget>,

    /// A partial container spec merged over the profile, as `kubectl debug --custom`: it may
    /// not set name, command, image, lifecycle or volumeDevices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomContainer>,

    /// Keep the debug container's output after it ends: its log (up to `maxBytes`) goes to
    /// the ConfigMap `<session>-output-<attempt>`, owned by the session, so that it outlives
    /// the pod. `status.containers[].output` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_output: Option<CaptureOutput>,
}

/// Taken from the target container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromTarget {
    #[serde(rename = "target")]
    Target,
}

/// What `custom` may set: a container's fields but the five `kubectl debug --custom` refuses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("!has(self.name) && !has(self.command) && !has(self.image) && !has(self.lifecycle) && !has(self.volumeDevices)").message("custom may not set name, command, image, lifecycle or volumeDevices (as kubectl debug --custom); use the session's own fields"))]
#[serde(rename_all = "camelCase")]
pub struct CustomContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<k8s_openapi::api::core::v1::EnvFromSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s_openapi::api::core::v1::SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<k8s_openapi::api::core::v1::VolumeMount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_once: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<String>,
    /// Refused: the session's `containerName` names the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Refused: the session's `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Refused: the session's `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Refused: ephemeral containers have no lifecycle hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<k8s_openapi::api::core::v1::Lifecycle>,
    /// Refused, as kubectl refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_devices: Option<Vec<k8s_openapi::api::core::v1::VolumeDevice>>,
}

impl CustomContainer {
    /// The fields `custom` may not set that are set (for servers without CEL).
    pub fn refused_fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("command", self.command.is_some()),
            ("image", self.image.is_some()),
            ("lifecycle", self.lifecycle.is_some()),
            ("volumeDevices", self.volume_devices.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
    }
}

/// How much of a debug container's output to keep.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CaptureOutput {
    /// At most this many bytes of the log (the beginning; more is marked as truncated).
    /// The platform may cap it lower.
    #[schemars(range(min = 1, max = 1048576))]
    pub max_bytes: i32,
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
    validation = Rule::new("!has(self.mode) || self.mode != 'All' || (has(self.selector) && has(self.maxPods))").message("target.mode All needs target.selector and target.maxPods"),
)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the pod to debug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS1123_SUBDOMAIN)
    )]
    pub pod: Option<String>,

    /// Label selector of the pods to choose from: ephemera picks one Running pod, preferring Ready
    /// ones and then the newest, and records it in `status.podName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// Container whose process namespace the debug container shares (`targetContainerName`).
    /// Defaults to the pod's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub container: Option<String>,

    /// `One` (default): one pod. `All`: a debug container in every Running pod the
    /// selector matches, up to `maxPods`, with one row per pod in `status.targets`. The set
    /// is fixed when the first containers are added: pods that appear later are not added.
    #[serde(default, skip_serializing_if = "TargetMode::is_one")]
    pub mode: TargetMode,

    /// With `mode: All`: at most this many pods (the platform may cap it lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_pods: Option<i32>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetMode {
    #[default]
    One,
    All,
}

impl TargetMode {
    pub fn is_one(&self) -> bool {
        *self == TargetMode::One
    }
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

impl Profile {
    pub const ALL: [Profile; 5] = [Self::General, Self::Baseline, Self::Restricted, Self::Netadmin, Self::Sysadmin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::General => "general",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
            Self::Netadmin => "netadmin",
            Self::Sysadmin => "sysadmin",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown profile {s:?}; one of general, baseline, restricted, netadmin, sysadmin"))
    }
}

/// What the session has done and what the kubelet reports about its debug container.
///
/// Status is ephemera's output, never its input of authority: every field is
/// re-derived from the spec and the pod, and a field that does not decode
/// (e.g. a value written by a newer version, or by hand) is read as unset
/// instead of making the whole session unreadable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebugSessionStatus {
    /// Pending, Injected, Running, Terminated or Failed; describes `status.attempt`.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The attempt this status describes; lags `spec.attempt` while a raised attempt waits.
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(min = 0, max = 9999))]
    pub attempt: i32,

    /// Why the session failed (only in phase Failed); see docs/status.md.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,

    /// Human-readable explanation of the phase, with what to do next where something can help.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Who asked for the current attempt, as admission recorded it (see docs/security.md).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,

    /// The target pod, pinned by name and UID once chosen.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// UID of the target pod; a pod with the same name but another UID is a different pod.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,

    /// The container whose process namespace is shared.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub target_container_name: Option<String>,

    /// Name of the current attempt's debug container.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,

    /// The command that attaches to the debug container, while it is Running. Informational:
    /// `kubectl ephemera attach` builds its own command from the validated names.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub attach_command: Option<String>,

    /// Why the injected container has not started yet (e.g. ContainerCreating, ErrImagePull).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,

    /// Exit code of the current debug container, once Terminated.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// The kubelet's reason for the exit (e.g. Completed, Error, OOMKilled), once Terminated.
    /// `reason` is kept for the fixed set of failure reasons.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,

    /// When the current debug container started.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the current debug container exited, or the session failed.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// One entry per debug container of this session, oldest first, as found in the pod
    /// (all of them stay in the pod), or as last seen there once the pod is gone.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub containers: Vec<DebugContainerStatus>,

    /// Why the profile's added capabilities will not work (a non-root user does not get them).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub capabilities_warning: Option<String>,

    /// With `target.mode: All`: one row per pod, as found in each pod.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub targets: Vec<DebugTargetStatus>,

    /// With `target.mode: All`: how many pods are in each state.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub target_counts: Option<TargetCounts>,

    /// What `volumeMounts: target` or `envFrom: target` left out of the debug container
    /// because the platform does not allow Secrets there (e.g. `mount /var/run/secrets/...`).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub omitted_from_target: Vec<String>,

    /// The pod's ephemeral containers when this attempt's own was added: all that its
    /// write kept (`kubectl debug`'s, other sessions'), then its own. Taken from the pod
    /// the write answered with, and kept while the pod bears it out, so containers added
    /// later (`kubectl debug` puts its own first in the list) do not rewrite this status.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub ephemeral_containers_at_injection: Vec<String>,

    /// The spec generation this status reflects.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled (kstatus), Injected, Attachable and
    /// EphemeralContainersAvailable, each with its own reason and message.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
}

/// Reads a status field, or its default when the stored value does not decode.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// One pod of a `mode: All` session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebugTargetStatus {
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, deserialize_with = "lenient")]
    #[schemars(range(min = 0, max = 9999))]
    pub attempt: i32,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// This pod's debug containers, oldest first.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub containers: Vec<DebugContainerStatus>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetCounts {
    #[schemars(range(min = 0, max = 100))]
    pub total: i32,
    #[schemars(range(min = 0, max = 100))]
    pub pending: i32,
    #[schemars(range(min = 0, max = 100))]
    pub running: i32,
    #[schemars(range(min = 0, max = 100))]
    pub terminated: i32,
    #[schemars(range(min = 0, max = 100))]
    pub failed: i32,
}

/// One debug container that this session added to the pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DebugContainerStatus {
    /// Name of the ephemeral container.
    pub name: String,
    /// The `spec.attempt` it was created for.
    #[schemars(range(min = 0, max = 9999))]
    pub attempt: i32,
    /// Waiting, Running or Terminated, as the kubelet reports; Unknown before its first status.
    #[serde(default, deserialize_with = "lenient")]
    pub state: ContainerState,
    /// When ephemera added it to the pod (or adopted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_at: Option<Time>,
    /// Waiting or termination reason from the kubelet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kubelet's message with that reason (e.g. why an image cannot be pulled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_message: Option<String>,
    /// Exit code, once Terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When the kubelet started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The ConfigMap holding its output, with `captureOutput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
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
/// Forbidden (the requester may not do it by hand, or Pod Security or another
/// admission check refused the container), OperatorForbidden (ephemera's own
/// RBAC lacks a verb), PolicyViolation (the platform's policy does not allow
/// it), Invalid (the spec cannot work, or
/// the API server rejected the container), CannotStart (the kubelet reported that it can
/// never start the container), ContainerMismatch (the pod holds a container with this
/// session's marker that differs from its spec), StartTimeout (the kubelet did not start it
/// in time) and TargetGone (the pod was deleted or replaced).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    EphemeralContainersUnavailable,
    TargetNotFound,
    TargetContainerNotFound,
    TargetNotRunning,
    StaticPodUnsupported,
    Forbidden,
    OperatorForbidden,
    PolicyViolation,
    Invalid,
    CannotStart,
    ContainerMismatch,
    StartTimeout,
    TargetGone,
}

impl FailureReason {
    pub const ALL: [FailureReason; 13] = [
        Self::EphemeralContainersUnavailable,
        Self::TargetNotFound,
        Self::TargetContainerNotFound,
        Self::TargetNotRunning,
        Self::StaticPodUnsupported,
        Self::Forbidden,
        Self::OperatorForbidden,
        Self::PolicyViolation,
        Self::Invalid,
        Self::CannotStart,
        Self::ContainerMismatch,
        Self::StartTimeout,
        Self::TargetGone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EphemeralContainersUnavailable => "EphemeralContainersUnavailable",
            Self::TargetNotFound => "TargetNotFound",
            Self::TargetContainerNotFound => "TargetContainerNotFound",
            Self::TargetNotRunning => "TargetNotRunning",
            Self::StaticPodUnsupported => "StaticPodUnsupported",
            Self::Forbidden => "Forbidden",
            Self::OperatorForbidden => "OperatorForbidden",
            Self::PolicyViolation => "PolicyViolation",
            Self::Invalid => "Invalid",
            Self::CannotStart => "CannotStart",
            Self::ContainerMismatch => "ContainerMismatch",
            Self::StartTimeout => "StartTimeout",
            Self::TargetGone => "TargetGone",
        }
    }

    /// Failures that no new attempt can repair: the pinned pod is gone for good.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::TargetGone)
    }

    /// What may help, shown after the failure's message. Only advice that can work:
    /// a new attempt of the same spec cannot fix a spec the server refuses.
    pub fn hint(self) -> &'static str {
        match self {
            Self::EphemeralContainersUnavailable => "once the feature gate is on, raise spec.attempt to try again",
            Self::TargetNotFound => "create the pod (or fix the target in a new DebugSession), then raise spec.attempt",
            Self::TargetNotRunning => "once the pod runs, raise spec.attempt to try again",
            Self::TargetContainerNotFound | Self::Invalid | Self::ContainerMismatch => {
                "create a new DebugSession with a corrected spec"
            }
            Self::StaticPodUnsupported => "debug the static pod on its node instead",
            Self::Forbidden => {
                "ask for the permission (or create a new DebugSession with a profile the namespace allows, e.g. baseline or restricted), then raise spec.attempt"
            }
            Self::OperatorForbidden => {
                "grant ephemera's ServiceAccount that permission (see the chart's RBAC), then raise spec.attempt"
            }
            Self::PolicyViolation => "create a new DebugSession that the policy allows, or ask the platform team",
            Self::CannotStart => "fix the cause in a new DebugSession, or fix it in the cluster and raise spec.attempt",
            Self::StartTimeout => "once the cause is fixed, raise spec.attempt to try again",
            Self::TargetGone => "create a new DebugSession to debug another pod",
        }
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

/// `format: int32` is not enforced by the API server, and a stored value that
/// does not fit would make the object undecodable: every integer gets explicit bounds.
fn bound_integer(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() != Some("integer") {
        return;
    }
    let (min, max) = match schema.format.as_deref() {
        Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
        // Above 2^53 a JSON number is no longer exact in most clients.
        _ => (0.0, 9_007_199_254_740_991.0),
    };
    schema.minimum.get_or_insert(min);
    schema.maximum.get_or_insert(max);
}

/// Label syntax in `target.selector`, as patterns (which every API server
/// version enforces); keys of `matchLabels` need CEL, see [`selector_key_rule`].
fn constrain_selector(selector: &mut JSONSchemaProps) {
    fn property<'a>(schema: &'a mut JSONSchemaProps, name: &str) -> Option<&'a mut JSONSchemaProps> {
        schema.properties.as_mut().and_then(|p| p.get_mut(name))
    }
    fn items(schema: &mut JSONSchemaProps) -> Option<&mut JSONSchemaProps> {
        match &mut schema.items {
            Some(JSONSchemaPropsOrArray::Schema(items)) => Some(items),
            _ => None,
        }
    }
    fn label_value(schema: &mut JSONSchemaProps) {
        schema.pattern = Some(LABEL_VALUE.into());
        schema.max_length = Some(63);
    }
    if let Some(labels) = property(selector, "matchLabels")
        && let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut labels.additional_properties
    {
        label_value(values);
    }
    let Some(requirement) = property(selector, "matchExpressions").and_then(items) else { return };
    if let Some(key) = property(requirement, "key") {
        key.pattern = Some(QUALIFIED_NAME.into());
        key.max_length = Some(317);
    }
    if let Some(operator) = property(requirement, "operator") {
        let operators = ["In", "NotIn", "Exists", "DoesNotExist"];
        operator.enum_ = Some(operators.map(|o| JSON(serde_json::Value::String(o.into()))).to_vec());
    }
    if let Some(value) = property(requirement, "values").and_then(items) {
        label_value(value);
    }
}

/// An optional enum's schema lists `null` among its values; `nullable: true`
/// already says that, and kubectl's client-side validation (used against API
/// servers before 1.25) refuses a `null` enum value outright.
fn drop_null_enum_values(schema: &mut JSONSchemaProps) {
    if let Some(values) = &mut schema.enum_ {
        values.retain(|value| !value.0.is_null());
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

/// What the target API server can take in a CRD (see `ephemera crd --kubernetes-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    /// The version whose features `crds/debugsession.yaml` uses.
    pub const NEWEST: KubeVersion = KubeVersion { major: 1, minor: 34 };

    /// CEL validation rules (`x-kubernetes-validations`): beta and on by default from 1.25.
    pub fn has_cel(self) -> bool {
        self >= KubeVersion { major: 1, minor: 25 }
    }

    /// `reason`, `fieldPath` and `messageExpression` in CEL rules: 1.28.
    pub fn has_cel_reasons(self) -> bool {
        self >= KubeVersion { major: 1, minor: 28 }
    }
}

impl std::str::FromStr for KubeVersion {
    type Err = String;

    /// `1.21`, `v1.21` or `1.21.14`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim_start_matches('v').split('.');
        let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
        match (number(), number()) {
            (Some(major), Some(minor)) => Ok(KubeVersion { major, minor }),
            _ => Err(format!("{s:?} is not a Kubernetes version like 1.21")),
        }
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// CEL: every key of `matchLabels` is a label key (values are checked by a pattern).
fn selector_key_rule() -> serde_json::Value {
    serde_json::json!({
        "rule": format!("!has(self.matchLabels) || self.matchLabels.all(k, k.matches(r'{}'))", QUALIFIED_NAME),
        "message": "every key of target.selector.matchLabels must be a label key such as app or app.kubernetes.io/name",
    })
}

/// Removes what `server` cannot take from every `x-kubernetes-validations`
/// below `schema`: the rules themselves before 1.25, their `reason`,
/// `fieldPath` and `messageExpression` before 1.28. The controller enforces
/// what is lost there (see [`crate::validation`] and docs/compatibility.md).
fn fit_validations(schema: &mut JSONSchemaProps, server: KubeVersion) {
    visit(schema, &|s: &mut JSONSchemaProps| {
        if !server.has_cel() {
            s.x_kubernetes_validations = None;
        } else if !server.has_cel_reasons() {
            for rule in s.x_kubernetes_validations.iter_mut().flatten() {
                rule.reason = None;
                rule.field_path = None;
                rule.message_expression = None;
            }
        }
    });
}

/// The DebugSession CRD for the newest Kubernetes, as `crds/debugsession.yaml` holds it.
pub fn crd() -> CustomResourceDefinition {
    crd_for(KubeVersion::NEWEST)
}

/// The DebugSession CRD as an API server of version `server` accepts it, with
/// every spec field bounded in size and every integer in range.
pub fn crd_for(server: KubeVersion) -> CustomResourceDefinition {
    let mut crd = DebugSession::crd();
    for version in &mut crd.spec.versions {
        let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        visit(root, &unwrap_description);
        visit(root, &bound_integer);
        visit(root, &drop_null_enum_values);
        let properties = root.properties.get_or_insert_default();
        if let Some(spec) = properties.get_mut("spec") {
            visit(spec, &bound_size);
            let selector = spec
                .properties
                .as_mut()
                .and_then(|p| p.get_mut("target"))
                .and_then(|t| t.properties.as_mut())
                .and_then(|p| p.get_mut("selector"));
            if let Some(selector) = selector {
                constrain_selector(selector);
                let rule = serde_json::from_value(selector_key_rule()).expect("a valid rule");
                selector.x_kubernetes_validations.get_or_insert_default().push(rule);
            }
        }
        fit_validations(root, server);
    }
    crd
}

/// The CRD as YAML, as `ephemera crd` prints it.
pub fn crd_yaml_for(server: KubeVersion) -> String {
    let body = serde_saphyr::to_string(&crd_for(server)).expect("the CRD always serializes");
    let flavour = if server == KubeVersion::NEWEST { String::new() } else { format!(" --kubernetes-version {server}") };
    format!("# Generated by `ephemera crd{flavour}`; do not edit.\n---\n{body}")
}

/// The CRD as YAML for the newest Kubernetes, as `crds/debugsession.yaml` holds it.
pub fn crd_yaml() -> String {
    crd_yaml_for(KubeVersion::NEWEST)
}

/// The field reference (docs/reference.md), from the CRD's own schema, as
/// `ephemera crd --markdown` prints it.
pub fn reference_markdown() -> String {
    let crd = crd();
    let version = &crd.spec.versions[0];
    let root = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("the CRD has a schema");
    let mut out = format!(
        "# DebugSession field reference\n\n\
         <!-- Generated by `ephemera crd --markdown` from the CRD's schema; do not edit (`make crds`). -->\n\n\
         `apiVersion: {}/{}`, `kind: {}` (plural `{}`, short name `{}`), namespaced. \
         `kubectl explain debugsession.spec` shows the same descriptions. \
         Phases, reasons and conditions are explained in [status.md](status.md).\n",
        crd.spec.group,
        version.name,
        crd.spec.names.kind,
        crd.spec.names.plural,
        crd.spec.names.short_names.iter().flatten().cloned().collect::<Vec<_>>().join("`, `"),
    );
    for section in ["spec", "status"] {
        let Some(schema) = root.properties.as_ref().and_then(|p| p.get(section)) else { continue };
        out.push_str(&format!("\n## {section}\n\n{}\n\n", one_line(schema.description.as_deref().unwrap_or_default())));
        out.push_str("| field | type | default | constraints | description |\n|---|---|---|---|---|\n");
        let mut rules = Vec::new();
        reference_rows(section, schema, &mut out, &mut rules);
        if !rules.is_empty() {
            out.push_str("\nValidation rules (CEL, checked by the API server):\n\n");
            for (path, rule) in rules {
                out.push_str(&format!("- `{path}`: {rule}\n"));
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

fn type_name(schema: &JSONSchemaProps) -> String {
    match (schema.type_.as_deref(), &schema.items, &schema.additional_properties) {
        (Some("array"), Some(JSONSchemaPropsOrArray::Schema(items)), _) => format!("[]{}", type_name(items)),
        (Some("object"), _, Some(JSONSchemaPropsOrBool::Schema(values))) => format!("map[string]{}", type_name(values)),
        (Some(t), _, _) => schema.format.as_deref().map_or_else(|| t.to_string(), |f| format!("{t} ({f})")),
        (None, _, _) if schema.x_kubernetes_int_or_string == Some(true) => "int or string".into(),
        (None, _, _) => "any".into(),
    }
}

fn constraints(schema: &JSONSchemaProps, required: bool) -> String {
    let mut found = Vec::new();
    if required {
        found.push("required".to_string());
    }
    if let Some(values) = &schema.enum_ {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.0.as_str().map_or_else(|| v.0.to_string(), String::from)))
            .collect();
        found.push(format!("one of {}", values.join(", ")));
    }
    let number = |n: f64| if n.fract() == 0.0 { format!("{}", n as i64) } else { n.to_string() };
    match (schema.minimum, schema.maximum) {
        (Some(min), Some(max)) => found.push(format!("{}–{}", number(min), number(max))),
        (Some(min), None) => found.push(format!("≥ {}", number(min))),
        (None, Some(max)) => found.push(format!("≤ {}", number(max))),
        _ => {}
    }
    match (schema.min_length, schema.max_length) {
        (Some(min), Some(max)) => found.push(format!("{min}–{max} characters")),
        (None, Some(max)) => found.push(format!("at most {max} characters")),
        (Some(min), None) => found.push(format!("at least {min} characters")),
        _ => {}
    }
    if let Some(max) = schema.max_items {
        found.push(format!("at most {max} items"));
    }
    if let Some(max) = schema.max_properties {
        found.push(format!("at most {max} entries"));
    }
    if let Some(pattern) = &schema.pattern {
        found.push(format!("pattern `{pattern}`"));
    }
    found.join("; ")
}

fn reference_rows(path: &str, schema: &JSONSchemaProps, out: &mut String, rules: &mut Vec<(String, String)>) {
    for rule in schema.x_kubernetes_validations.iter().flatten() {
        let message = rule.message.as_deref().map(|m| format!("{}: ", one_line(m))).unwrap_or_default();
        rules.push((path.to_string(), format!("{message}`{}`", rule.rule)));
    }
    let children = match (&schema.properties, &schema.items) {
        (Some(properties), _) => Some((properties, schema.required.as_deref().unwrap_or_default(), "")),
        (None, Some(JSONSchemaPropsOrArray::Schema(items))) => {
            items.properties.as_ref().map(|p| (p, items.required.as_deref().unwrap_or_default(), "[]"))
        }
        _ => None,
    };
    let Some((properties, required, suffix)) = children else { return };
    if let (Some(JSONSchemaPropsOrArray::Schema(items)), "[]") = (&schema.items, suffix) {
        for rule in items.x_kubernetes_validations.iter().flatten() {
            rules.push((format!("{path}[]"), format!("`{}`", rule.rule)));
        }
    }
    for (name, child) in properties {
        let child_path = format!("{path}{suffix}.{name}");
        let default = child.default.as_ref().map(|d| format!("`{}`", d.0)).unwrap_or_default();
        out.push_str(&format!(
            "| `{child_path}` | {} | {default} | {} | {} |\n",
            type_name(child),
            cell(&constraints(child, required.contains(name))),
            cell(child.description.as_deref().unwrap_or_default()),
        ));
        reference_rows(&child_path, child, out, rules);
    }
}
