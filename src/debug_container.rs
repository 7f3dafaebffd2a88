//! Building the ephemeral container for a session: its name, its security
//! profile and the container spec, and finding a session's containers in a
//! pod by the markers they carry. Everything here is pure.

use k8s_openapi::api::core::v1::{Capabilities, EnvVar, EphemeralContainer, Pod, SeccompProfile, SecurityContext};

use crate::crd::{DebugSession, Profile};

/// Env var that marks a debug container as created by a given session, so a
/// restarted operator adopts its own container instead of injecting another.
pub const SESSION_UID_ENV: &str = "EPHEMERA_SESSION_UID";
/// Env var telling the debug shell which session it belongs to (`namespace/name`).
/// A session re-created under the same name (GitOps) finds its predecessor's containers by it.
pub const SESSION_ENV: &str = "EPHEMERA_SESSION";
/// Env var holding the `spec.attempt` the container was made for.
pub const SESSION_ATTEMPT_ENV: &str = "EPHEMERA_ATTEMPT";

/// The security context of `kubectl debug --profile=<profile>` for an ephemeral container.
pub fn security_context(profile: Profile) -> Option<SecurityContext> {
    let add_capabilities = |caps: &[&str]| SecurityContext {
        capabilities: Some(Capabilities { add: Some(caps.iter().map(|c| c.to_string()).collect()), drop: None }),
        ..Default::default()
    };
    match profile {
        Profile::General => Some(add_capabilities(&["SYS_PTRACE"])),
        Profile::Baseline => None,
        Profile::Restricted => Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".into()]) }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        Profile::Netadmin => Some(add_capabilities(&["NET_ADMIN", "NET_RAW"])),
        Profile::Sysadmin => Some(SecurityContext { privileged: Some(true), ..Default::default() }),
    }
}

/// Base names to try for a session without `spec.containerName`, in order:
/// `debugger-` plus ever longer prefixes of the session UID, so that a name
/// someone else already took is skipped deterministically.
pub fn default_name_candidates(session_uid: &str) -> Vec<String> {
    let uid: String =
        session_uid.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    let mut candidates: Vec<String> =
        [5, 8, 12].into_iter().filter(|len| *len <= uid.len()).map(|len| format!("debugger-{}", &uid[..len])).collect();
    candidates.push(format!("debugger-{uid}"));
    candidates.dedup();
    candidates
}

/// `<base>` for attempt 0, `<base>-<attempt>` after that.
pub fn name_for_attempt(base: &str, attempt: i32) -> String {
    if attempt == 0 { base.to_string() } else { format!("{base}-{attempt}") }
}

fn session_uid(session: &DebugSession) -> &str {
    session.metadata.uid.as_deref().unwrap_or_default()
}

/// `namespace/name`, the value of [`SESSION_ENV`].
pub fn session_key(session: &DebugSession) -> String {
    let namespace = session.metadata.namespace.as_deref().unwrap_or_default();
    format!("{namespace}/{}", session.metadata.name.as_deref().unwrap_or_default())
}

/// Who holds a container name in a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameOwner {
    Free,
    /// An ephemeral container that this session created.
    ThisSession,
    /// A container, init container or ephemeral container of someone else.
    Other,
}

pub fn name_owner(pod: &Pod, name: &str, session_uid: &str) -> NameOwner {
    let Some(spec) = &pod.spec else {
        return NameOwner::Free;
    };
    if let Some(ephemeral) = spec.ephemeral_containers.iter().flatten().find(|c| c.name == name) {
        return if is_from_session(ephemeral, session_uid) { NameOwner::ThisSession } else { NameOwner::Other };
    }
    let taken = spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == name);
    if taken { NameOwner::Other } else { NameOwner::Free }
}

fn env_value<'a>(container: &'a EphemeralContainer, name: &str) -> Option<&'a str> {
    container.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.as_deref())
}

pub fn is_from_session(container: &EphemeralContainer, session_uid: &str) -> bool {
    !session_uid.is_empty() && env_value(container, SESSION_UID_ENV) == Some(session_uid)
}

/// A container in a pod that carries a session's markers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marked<'a> {
    pub container: &'a EphemeralContainer,
    /// The attempt it was made for: its marker, or (made by an older ephemera) its name's suffix.
    pub attempt: i32,
    /// Made by an earlier session of the same namespace and name (re-created, e.g. by GitOps).
    pub predecessor: bool,
}

/// The attempt a container of this session was made for.
fn attempt_of(session: &DebugSession, container: &EphemeralContainer) -> Option<i32> {
    if let Some(marker) = env_value(container, SESSION_ATTEMPT_ENV) {
        return marker.parse().ok();
    }
    let bases = match &session.spec.container_name {
        Some(name) => vec![name.clone()],
        None => default_name_candidates(env_value(container, SESSION_UID_ENV).unwrap_or_default()),
    };
    bases.iter().find_map(|base| match container.name.strip_prefix(base.as_str())?.strip_prefix('-') {
        None if container.name == *base => Some(0),
        Some(suffix) => suffix.parse().ok(),
        None => None,
    })
}

/// The containers of `session` in `pod`, oldest attempt first: those carrying
/// its UID, and those of a predecessor of the same name. A marker is only a
/// claim: [`mismatch`] tells whether such a container is what the spec asks for.
pub fn marked_containers<'a>(session: &DebugSession, pod: &'a Pod) -> Vec<Marked<'a>> {
    let uid = session_uid(session);
    let key = session_key(session);
    let mut found: Vec<Marked> = pod
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten())
        .filter_map(|container| {
            let predecessor = if is_from_session(container, uid) {
                false
            } else if env_value(container, SESSION_ENV) == Some(key.as_str()) {
                true
            } else {
                return None;
            };
            let attempt = attempt_of(session, container)?;
            Some(Marked { container, attempt, predecessor })
        })
        .collect();
    found.sort_by_key(|m| (m.attempt, m.predecessor));
    // Ours first for an attempt, then a predecessor's (only if we have none).
    found.dedup_by_key(|m| m.attempt);
    found
}

/// The name the debug container of `attempt` gets in this pod: the first
/// candidate that is free or already ours. `Err` carries the taken name when
/// the user fixed `spec.containerName` and someone else uses it.
pub fn choose_container_name(session: &DebugSession, pod: &Pod, attempt: i32) -> Result<String, String> {
    let uid = session_uid(session);
    let bases = match &session.spec.container_name {
        Some(name) => vec![name.clone()],
        None => default_name_candidates(uid),
    };
    let mut last = String::new();
    for base in bases {
        let name = name_for_attempt(&base, attempt);
        if name_owner(pod, &name, uid) != NameOwner::Other {
            return Ok(name);
        }
        last = name;
    }
    Err(last)
}

/// The ephemeral container for one attempt of a session.
pub fn build_ephemeral_container(
    session: &DebugSession,
    name: &str,
    target_container: &str,
    attempt: i32,
) -> EphemeralContainer {
    let spec = &session.spec;
    let mut env = spec.env.clone().unwrap_or_default();
    env.retain(|e| ![SESSION_ENV, SESSION_UID_ENV, SESSION_ATTEMPT_ENV].contains(&e.name.as_str()));
    let marker = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
    env.push(marker(SESSION_ENV, session_key(session)));
    env.push(marker(SESSION_UID_ENV, session_uid(session).to_string()));
    env.push(marker(SESSION_ATTEMPT_ENV, attempt.to_string()));
    EphemeralContainer {
        name: name.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: Some(env),
        working_dir: spec.working_dir.clone(),
        stdin: Some(spec.stdin),
        tty: Some(spec.tty),
        target_container_name: Some(target_container.to_string()),
        security_context: security_context(spec.profile),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    }
}

/// A debug container shaped for one pod: what `runAs`, `volumeMounts`,
/// `envFrom` and `custom` add to what [`build_ephemeral_container`] builds.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    pub container: EphemeralContainer,
    /// What the target had that was left out (Secrets, where the platform does not allow them).
    pub omitted: Vec<String>,
}

/// Whether a pod volume carries Secrets or a ServiceAccount token.
fn secret_volume(volume: &k8s_openapi::api::core::v1::Volume) -> Option<&'static str> {
    if volume.secret.is_some() {
        return Some("a Secret");
    }
    let projected = volume.projected.as_ref()?;
    let sources = projected.sources.iter().flatten();
    sources
        .clone()
        .any(|s| s.service_account_token.is_some())
        .then_some("a ServiceAccount token")
        .or_else(|| sources.clone().any(|s| s.secret.is_some()).then_some("a Secret"))
}

/// The debug container of `attempt` for `pod`, with what the spec takes from
/// the target container and the custom spec merged over the profile.
/// `Err` says why it cannot be built (the target's user is not known).
pub fn shape(
    session: &DebugSession,
    pod: &Pod,
    name: &str,
    target_container: &str,
    attempt: i32,
    allow_secrets: bool,
) -> Result<Shaped, String> {
    let spec = &session.spec;
    let mut container = build_ephemeral_container(session, name, target_container, attempt);
    let mut omitted = Vec::new();
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let target = pod_spec.containers.iter().find(|c| c.name == target_container);
    let pod_security = pod_spec.security_context.as_ref();

    if spec.run_as.is_some() {
        let container_security = target.and_then(|c| c.security_context.as_ref());
        let user = container_security.and_then(|s| s.run_as_user).or(pod_security.and_then(|s| s.run_as_user));
        let group = container_security.and_then(|s| s.run_as_group).or(pod_security.and_then(|s| s.run_as_group));
        let Some(user) = user else {
            return Err(format!(
                "runAs: target, but neither container {target_container}'s nor the pod's securityContext sets runAsUser, so the user it runs as is the image's and not known here"
            ));
        };
        let security = container.security_context.get_or_insert_default();
        security.run_as_user = Some(user);
        security.run_as_group = group;
    }

    if spec.volume_mounts.is_some() {
        let volumes = pod_spec.volumes.as_deref().unwrap_or_default();
        for mount in target.and_then(|c| c.volume_mounts.as_ref()).into_iter().flatten() {
            let kind = volumes.iter().find(|v| v.name == mount.name).and_then(secret_volume);
            match kind {
                Some(kind) if !allow_secrets => {
                    omitted.push(format!("mount {} (volume {}, {kind})", mount.mount_path, mount.name));
                }
                _ => container.volume_mounts.get_or_insert_default().push(mount.clone()),
            }
        }
    }

    if spec.env_from.is_some() {
        let own = container.env.take().unwrap_or_default();
        let mut env = Vec::new();
        for var in target.and_then(|c| c.env.as_ref()).into_iter().flatten() {
            let secret = var.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).is_some();
            if secret && !allow_secrets {
                omitted.push(format!("env {} (from a Secret)", var.name));
            } else if !own.iter().any(|o| o.name == var.name) {
                env.push(var.clone());
            }
        }
        env.extend(own);
        container.env = Some(env);
        for source in target.and_then(|c| c.env_from.as_ref()).into_iter().flatten() {
            match &source.secret_ref {
                Some(secret) if !allow_secrets => omitted.push(format!("envFrom Secret {}", secret.name)),
                _ => container.env_from.get_or_insert_default().push(source.clone()),
            }
        }
    }

    if let Some(custom) = &spec.custom {
        merge_custom(&mut container, custom);
    }
    Ok(Shaped { container, omitted })
}

/// `custom` over the container, as `kubectl debug --custom` merges it: lists
/// keyed by name (env) or path (volumeMounts) merge, other fields replace,
/// the securityContext merges field by field. The session's markers stay.
fn merge_custom(container: &mut EphemeralContainer, custom: &crate::crd::CustomContainer) {
    fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
                for (key, value) in over {
                    merge_json(base.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (base, over) => *base = over,
        }
    }
    if let Some(args) = &custom.args {
        container.args = Some(args.clone());
    }
    if let Some(env) = &custom.env {
        let list = container.env.get_or_insert_default();
        for var in
            env.iter().filter(|v| ![SESSION_ENV, SESSION_UID_ENV, SESSION_ATTEMPT_ENV].contains(&v.name.as_str()))
        {
            match list.iter_mut().find(|e| e.name == var.name) {
                Some(existing) => *existing = var.clone(),
                None => {
                    // Before the markers, which stay last.
                    let at = list.iter().position(|e| e.name == SESSION_ENV).unwrap_or(list.len());
                    list.insert(at, var.clone());
                }
            }
        }
    }
    if let Some(env_from) = &custom.env_from {
        container.env_from.get_or_insert_default().extend(env_from.iter().cloned());
    }
    if let Some(mounts) = &custom.volume_mounts {
        let list = container.volume_mounts.get_or_insert_default();
        for mount in mounts {
            match list.iter_mut().find(|m| m.mount_path == mount.mount_path) {
                Some(existing) => *existing = mount.clone(),
                None => list.push(mount.clone()),
            }
        }
    }
    if let Some(security) = &custom.security_context {
        let mut merged =
            serde_json::to_value(container.security_context.clone().unwrap_or_default()).unwrap_or_default();
        merge_json(&mut merged, serde_json::to_value(security).unwrap_or_default());
        container.security_context = serde_json::from_value(merged).ok();
    }
    if let Some(dir) = &custom.working_dir {
        container.working_dir = Some(dir.clone());
    }
    if let Some(policy) = custom.image_pull_policy {
        container.image_pull_policy = Some(policy.as_str().into());
    }
    container.stdin = custom.stdin.or(container.stdin);
    container.stdin_once = custom.stdin_once.or(container.stdin_once);
    container.tty = custom.tty.or(container.tty);
    if let Some(path) = &custom.termination_message_path {
        container.termination_message_path = Some(path.clone());
    }
    if let Some(policy) = &custom.termination_message_policy {
        container.termination_message_policy = Some(policy.clone());
    }
}

/// Why a profile's added capabilities will not work: a non-root user does not
/// get them (kubectl warns the same since 1.33).
pub fn ineffective_capabilities(container: &EphemeralContainer, pod: &Pod, profile: Profile) -> Option<String> {
    let added = container.security_context.as_ref()?.capabilities.as_ref()?.add.clone()?;
    let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let user =
        container.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_security.and_then(|s| s.run_as_user));
    let non_root = match user {
        Some(user) => user != 0,
        None => pod_security.and_then(|s| s.run_as_non_root).unwrap_or(false),
    };
    non_root.then(|| {
        format!(
            "profile {} adds {}, which a non-root user (uid {}) does not get: use an image that runs as root, or a profile without capabilities",
            profile.as_str(),
            added.join(", "),
            user.map_or("not root".to_string(), |u| u.to_string())
        )
    })
}

/// How a container found in the pod differs from the one the spec asks for,
/// on the fields ephemera sets (the API server defaults some of the others).
/// The session's own UID marker is left out: a predecessor's differs by design.
pub fn mismatch(found: &EphemeralContainer, wanted: &EphemeralContainer) -> Option<String> {
    let env = |c: &EphemeralContainer| {
        let mut env = c.env.clone().unwrap_or_default();
        env.retain(|e| e.name != SESSION_UID_ENV);
        env
    };
    let differs = |field: &str, found: String, wanted: String| {
        (found != wanted).then(|| format!("{field} is {found}, the spec asks for {wanted}"))
    };
    let shown = |v: &dyn std::fmt::Debug| format!("{v:?}");
    differs("image", shown(&found.image), shown(&wanted.image))
        .or_else(|| differs("command", shown(&found.command), shown(&wanted.command)))
        .or_else(|| differs("args", shown(&found.args), shown(&wanted.args)))
        .or_else(|| differs("env", shown(&env(found)), shown(&env(wanted))))
        .or_else(|| differs("workingDir", shown(&found.working_dir), shown(&wanted.working_dir)))
        .or_else(|| differs("securityContext", shown(&found.security_context), shown(&wanted.security_context)))
        .or_else(|| differs("stdin", shown(&found.stdin.unwrap_or(false)), shown(&wanted.stdin.unwrap_or(false))))
        .or_else(|| differs("tty", shown(&found.tty.unwrap_or(false)), shown(&wanted.tty.unwrap_or(false))))
        .or_else(|| {
            let policy = wanted.image_pull_policy.as_ref()?;
            differs("imagePullPolicy", shown(&found.image_pull_policy.as_ref()), shown(&Some(policy)))
        })
}

/// Serialized size of a container: what one attempt adds to the pod object.
pub fn container_bytes(container: &EphemeralContainer) -> usize {
    serde_json::to_vec(container).map_or(usize::MAX, |bytes| bytes.len())
}

/// The `kubectl attach` line for a running debug container.
pub fn attach_command(namespace: &str, pod: &str, container: &str, stdin: bool, tty: bool) -> String {
    let flags = match (stdin, tty) {
        (true, true) => " -it",
        (true, false) => " -i",
        (false, true) => " -t",
        (false, false) => "",
    };
    format!("kubectl attach{flags} -n {namespace} {pod} -c {container}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DebugSessionSpec, Target};
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn session(container_name: Option<&str>) -> DebugSession {
        let mut s = DebugSession::new(
            "s1",
            DebugSessionSpec {
                target: Target { pod: Some("p".into()), ..Default::default() },
                image: "busybox".into(),
                image_pull_policy: None,
                command: None,
                args: None,
                env: None,
                working_dir: None,
                stdin: true,
                tty: true,
                profile: Profile::General,
                container_name: container_name.map(String::from),
                attempt: 0,
                start_timeout_seconds: 120,
                ttl_seconds_after_finished: None,
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("AB12C-34de-5678".into());
        s
    }

    fn pod(containers: &[&str], ephemeral: Vec<EphemeralContainer>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container { name: n.to_string(), ..Default::default() })
                    .collect(),
                ephemeral_containers: Some(ephemeral),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_match_kubectl_debug() {
        let caps = |p| security_context(p).and_then(|sc| sc.capabilities).and_then(|c| c.add).unwrap_or_default();
        assert_eq!(caps(Profile::General), vec!["SYS_PTRACE"]);
        assert_eq!(caps(Profile::Netadmin), vec!["NET_ADMIN", "NET_RAW"]);
        assert_eq!(security_context(Profile::Baseline), None);
        let sysadmin = security_context(Profile::Sysadmin).unwrap();
        assert_eq!(sysadmin.privileged, Some(true));
        let restricted = security_context(Profile::Restricted).unwrap();
        assert_eq!(restricted.run_as_non_root, Some(true));
        assert_eq!(restricted.allow_privilege_escalation, Some(false));
        assert_eq!(restricted.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(restricted.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn default_names_derive_from_uid() {
        assert_eq!(
            default_name_candidates("AB12C-34de-5678"),
            vec!["debugger-ab12c", "debugger-ab12c34d", "debugger-ab12c34de567", "debugger-ab12c34de5678"]
        );
        assert_eq!(name_for_attempt("dbg", 0), "dbg");
        assert_eq!(name_for_attempt("dbg", 3), "dbg-3");
    }

    #[test]
    fn chooses_first_name_not_taken_by_someone_else() {
        let s = session(None);
        let ours = build_ephemeral_container(&s, "debugger-ab12c", "app", 0);
        let foreign = EphemeralContainer { name: "debugger-ab12c".into(), ..Default::default() };
        let cases: Vec<(&str, Pod, i32, Result<String, String>)> = vec![
            ("empty pod", pod(&["app"], vec![]), 0, Ok("debugger-ab12c".into())),
            ("our own container is adopted", pod(&["app"], vec![ours.clone()]), 0, Ok("debugger-ab12c".into())),
            ("foreign ephemeral container", pod(&["app"], vec![foreign]), 0, Ok("debugger-ab12c34d".into())),
            ("regular container of that name", pod(&["debugger-ab12c"], vec![]), 0, Ok("debugger-ab12c34d".into())),
            ("later attempt", pod(&["app"], vec![ours]), 2, Ok("debugger-ab12c-2".into())),
        ];
        for (what, pod, attempt, want) in cases {
            assert_eq!(choose_container_name(&s, &pod, attempt), want, "{what}");
        }
    }

    #[test]
    fn explicit_name_taken_by_someone_else_is_an_error() {
        let s = session(Some("dbg"));
        assert_eq!(choose_container_name(&s, &pod(&["dbg"], vec![]), 0), Err("dbg".into()));
        assert_eq!(choose_container_name(&s, &pod(&["dbg"], vec![]), 1), Ok("dbg-1".into()));
    }

    #[test]
    fn built_container_carries_spec_and_marker() {
        let mut s = session(None);
        s.spec.env = Some(vec![EnvVar { name: "A".into(), value: Some("1".into()), value_from: None }]);
        s.spec.profile = Profile::Netadmin;
        let c = build_ephemeral_container(&s, "debugger-ab12c", "app", 0);
        assert_eq!(c.target_container_name.as_deref(), Some("app"));
        assert_eq!(c.image.as_deref(), Some("busybox"));
        assert_eq!((c.stdin, c.tty), (Some(true), Some(true)));
        let env: Vec<_> = c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
        assert_eq!(
            env,
            vec![("A", "1"), (SESSION_ENV, "ns/s1"), (SESSION_UID_ENV, "AB12C-34de-5678"), (SESSION_ATTEMPT_ENV, "0")]
        );
        assert!(is_from_session(&c, "AB12C-34de-5678"));
        assert!(!is_from_session(&c, "other"));
        assert!(!is_from_session(&c, ""), "an empty UID is no marker");
        assert_eq!(c.security_context, security_context(Profile::Netadmin));
        assert_eq!(mismatch(&c, &c), None);
    }

    #[test]
    fn marked_containers_are_found_by_uid_or_by_session_name() {
        let s = session(None);
        let mut predecessor = s.clone();
        predecessor.metadata.uid = Some("99999-old".into());
        let mine = build_ephemeral_container(&s, "debugger-ab12c-1", "app", 1);
        let theirs = build_ephemeral_container(&predecessor, "debugger-99999", "app", 0);
        let theirs_too = build_ephemeral_container(&predecessor, "debugger-99999-1", "app", 1);
        let mut other_session = s.clone();
        other_session.metadata.name = Some("s2".into());
        other_session.metadata.uid = Some("77777".into());
        let unrelated = build_ephemeral_container(&other_session, "debugger-77777", "app", 0);
        // Made by an older ephemera, before the attempt marker existed.
        let mut legacy = build_ephemeral_container(&s, "debugger-ab12c-2", "app", 2);
        legacy.env.as_mut().unwrap().retain(|e| e.name != SESSION_ATTEMPT_ENV);
        let p = pod(&["app"], vec![theirs.clone(), unrelated, mine.clone(), theirs_too, legacy.clone()]);
        let found: Vec<_> =
            marked_containers(&s, &p).iter().map(|m| (m.container.name.as_str(), m.attempt, m.predecessor)).collect();
        assert_eq!(
            found,
            vec![("debugger-99999", 0, true), ("debugger-ab12c-1", 1, false), ("debugger-ab12c-2", 2, false)],
            "ours win over a predecessor's for the same attempt; others are not ours"
        );
    }

    #[test]
    fn mismatch_names_the_first_differing_field() {
        let s = session(None);
        let wanted = build_ephemeral_container(&s, "dbg", "app", 0);
        let mut planted = wanted.clone();
        planted.image = Some("evil".into());
        assert!(mismatch(&planted, &wanted).unwrap().starts_with("image is Some(\"evil\")"));
        let mut privileged = wanted.clone();
        privileged.security_context = security_context(Profile::Sysadmin);
        assert!(mismatch(&privileged, &wanted).unwrap().starts_with("securityContext"));
        let mut predecessor = s.clone();
        predecessor.metadata.uid = Some("other-uid".into());
        let theirs = build_ephemeral_container(&predecessor, "dbg", "app", 0);
        assert_eq!(mismatch(&theirs, &wanted), None, "a predecessor's UID marker is not a difference");
        let mut defaulted = wanted.clone();
        defaulted.termination_message_path = Some("/dev/termination-log".into());
        assert_eq!(mismatch(&defaulted, &wanted), None, "fields the server defaults are not compared");
    }

    #[test]
    fn custom_merges_over_the_profile_like_kubectl() {
        use k8s_openapi::api::core::v1::{EnvVar, SecurityContext, VolumeMount};
        let mut s = session(None);
        s.spec.env = Some(vec![EnvVar { name: "A".into(), value: Some("1".into()), value_from: None }]);
        s.spec.custom = Some(crate::crd::CustomContainer {
            env: Some(vec![
                EnvVar { name: "A".into(), value: Some("2".into()), value_from: None },
                EnvVar { name: "B".into(), value: Some("3".into()), value_from: None },
                EnvVar { name: SESSION_UID_ENV.into(), value: Some("forged".into()), value_from: None },
            ]),
            working_dir: Some("/tmp".into()),
            security_context: Some(SecurityContext { read_only_root_filesystem: Some(true), ..Default::default() }),
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let shaped = shape(&s, &pod(&["app"], vec![]), "dbg", "app", 0, false).unwrap();
        let c = shaped.container;
        let env: Vec<_> = c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
        assert_eq!(
            env,
            [
                ("A", "2"),
                ("B", "3"),
                (SESSION_ENV, "ns/s1"),
                (SESSION_UID_ENV, "AB12C-34de-5678"),
                (SESSION_ATTEMPT_ENV, "0")
            ],
            "custom wins by name; the markers stay the session's"
        );
        assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
        let security = c.security_context.unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.unwrap().add,
            Some(vec!["SYS_PTRACE".to_string()]),
            "the profile's part stays"
        );
        assert_eq!(c.volume_mounts.unwrap()[0].mount_path, "/data");
    }

    #[test]
    fn attach_command_flags_follow_stdin_and_tty() {
        assert_eq!(attach_command("ns", "p", "c", true, true), "kubectl attach -it -n ns p -c c");
        assert_eq!(attach_command("ns", "p", "c", true, false), "kubectl attach -i -n ns p -c c");
        assert_eq!(attach_command("ns", "p", "c", false, false), "kubectl attach -n ns p -c c");
    }
}
