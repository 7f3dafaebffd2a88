//! `crds/debugsession.yaml` must be exactly what `ephemera crd` prints.

#[test]
fn committed_crd_matches_the_generated_one() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/debugsession.yaml")).unwrap();
    assert!(
        committed == ephemera::crd::crd_yaml(),
        "crds/debugsession.yaml is stale: run `make crds` (cargo run -- crd > crds/debugsession.yaml)"
    );
}

#[test]
fn crd_names_and_columns() {
    let yaml = ephemera::crd::crd_yaml();
    for expected in [
        "name: debugsessions.ephemera.dev",
        "group: ephemera.dev",
        "kind: DebugSession",
        "- dbgs",
        "scope: Namespaced",
        "name: v1alpha1",
        "name: Attachable",
        "rule: self.attempt >= oldSelf.attempt",
    ] {
        assert!(yaml.contains(expected), "CRD lacks {expected:?}");
    }
}
