//! Building the ephemeral container for a session: its name, its security
//! profile and the container spec. Everything here is pure.

use k8s_openapi::api::core::v1::{Capabilities, EnvVar, EphemeralContainer, Pod, SeccompProfile, SecurityContext};

use crate::crd::{DebugSession, Profile};

/// Env var that marks a debug container as created by a given session, so a
/// restarted operator adopts its own container instead of injecting another.
pub const SESSION_UID_ENV: &str = "EPHEMERA_SESSION_UID";
/// Env var telling the debug shell which session it belongs to (`namespace/name`).
pub const SESSION_ENV: &str = "EPHEMERA_SESSION";

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

pub fn is_from_session(container: &EphemeralContainer, session_uid: &str) -> bool {
    container.env.iter().flatten().any(|e| e.name == SESSION_UID_ENV && e.value.as_deref() == Some(session_uid))
}

/// Whether any ephemeral container of `pod` was created by the session.
pub fn has_container_from_session(pod: &Pod, session_uid: &str) -> bool {
    pod.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()).any(|c| is_from_session(c, session_uid))
}

/// The name the debug container of `attempt` gets in this pod: the first
/// candidate that is free or already ours. `Err` carries the taken name when
/// the user fixed `spec.containerName` and someone else uses it.
pub fn choose_container_name(session: &DebugSession, pod: &Pod, attempt: i32) -> Result<String, String> {
    let uid = session.metadata.uid.as_deref().unwrap_or_default();
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
pub fn build_ephemeral_container(session: &DebugSession, name: &str, target_container: &str) -> EphemeralContainer {
    let spec = &session.spec;
    let namespace = session.metadata.namespace.as_deref().unwrap_or_default();
    let session_name = session.metadata.name.as_deref().unwrap_or_default();
    let mut env = spec.env.clone().unwrap_or_default();
    env.retain(|e| e.name != SESSION_ENV && e.name != SESSION_UID_ENV);
    env.push(EnvVar { name: SESSION_ENV.into(), value: Some(format!("{namespace}/{session_name}")), value_from: None });
    env.push(EnvVar {
        name: SESSION_UID_ENV.into(),
        value: Some(session.metadata.uid.clone().unwrap_or_default()),
        value_from: None,
    });
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
        let ours = build_ephemeral_container(&s, "debugger-ab12c", "app");
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
        let c = build_ephemeral_container(&s, "debugger-ab12c", "app");
        assert_eq!(c.target_container_name.as_deref(), Some("app"));
        assert_eq!(c.image.as_deref(), Some("busybox"));
        assert_eq!((c.stdin, c.tty), (Some(true), Some(true)));
        let env: Vec<_> = c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap())).collect();
        assert_eq!(env, vec![("A", "1"), (SESSION_ENV, "ns/s1"), (SESSION_UID_ENV, "AB12C-34de-5678")]);
        assert!(is_from_session(&c, "AB12C-34de-5678"));
        assert!(!is_from_session(&c, "other"));
        let with_it = pod(&["app"], vec![c.clone()]);
        assert!(has_container_from_session(&with_it, "AB12C-34de-5678"));
        assert!(!has_container_from_session(&with_it, "other"));
        assert!(!has_container_from_session(&pod(&["app"], vec![]), "AB12C-34de-5678"));
        assert_eq!(c.security_context, security_context(Profile::Netadmin));
    }

    #[test]
    fn attach_command_flags_follow_stdin_and_tty() {
        assert_eq!(attach_command("ns", "p", "c", true, true), "kubectl attach -it -n ns p -c c");
        assert_eq!(attach_command("ns", "p", "c", true, false), "kubectl attach -i -n ns p -c c");
        assert_eq!(attach_command("ns", "p", "c", false, false), "kubectl attach -n ns p -c c");
    }
}
