//! The documents that must stay in step with each other: the Chinese
//! translations with their English originals, and the Argo CD snippet with
//! the health check it ships.

#[path = "support/markdown.rs"]
mod markdown;

use markdown::{Section, fingerprint, sections, tutorial_steps, untranslated};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A translated heading carries the English heading it translates and the
/// fingerprint of the English section's text when it was translated:
/// `## 快速开始 <!-- en: Quick start · 1a2b3c4d -->`.
fn marker(section: &Section) -> Option<(String, String)> {
    let (_, marker) = section.title.split_once("<!-- en: ")?;
    let (english, fingerprint) = marker.strip_suffix("-->")?.trim().rsplit_once(" · ")?;
    Some((english.trim().to_string(), fingerprint.trim().to_string()))
}

/// README.zh-CN.md has README.md's sections, in the same order and at the
/// same levels, each translated from the English text as it is now, with the
/// same code blocks (comments aside, which are translated).
#[test]
fn the_chinese_readme_keeps_up_with_the_english_one() {
    let english = sections(&read("README.md"));
    let chinese = sections(&read("README.zh-CN.md"));
    let mut problems = Vec::new();
    for (i, en) in english.iter().enumerate() {
        let expected = format!("<!-- en: {} · {} -->", en.title, fingerprint(&en.body));
        let Some(zh) = chinese.get(i) else {
            problems.push(format!("section {:?} has no translation; its heading needs {expected}", en.title));
            continue;
        };
        match marker(zh) {
            None => problems.push(format!("translated heading {:?} lacks its marker {expected}", zh.title)),
            Some((title, _)) if title != en.title || zh.level != en.level => problems.push(format!(
                "section {} is {:?} (level {}) in README.md but translates {title:?} (level {}); headings must match one to one",
                i + 1,
                en.title,
                en.level,
                zh.level
            )),
            Some((_, print)) if print != fingerprint(&en.body) => problems.push(format!(
                "section {:?} changed since it was translated: translate it again and set its marker to {expected}",
                en.title
            )),
            Some(_) => {
                let blocks = |s: &Section| s.blocks.iter().map(untranslated).collect::<Vec<_>>();
                if blocks(en) != blocks(zh) {
                    problems.push(format!("section {:?}: the code blocks differ from README.md's", en.title));
                }
            }
        }
    }
    if chinese.len() > english.len() {
        problems.push(format!("README.zh-CN.md has {} sections more than README.md", chinese.len() - english.len()));
    }
    assert!(problems.is_empty(), "README.zh-CN.md is out of step with README.md:\n- {}", problems.join("\n- "));
}

/// docs/tutorial.zh-CN.md runs the very commands of docs/tutorial.md (which
/// tests/e2e/tutorial.rs runs), with the same code blocks and sections.
#[test]
fn the_chinese_tutorial_has_the_same_commands() {
    let english = read("docs/tutorial.md");
    let chinese = read("docs/tutorial.zh-CN.md");
    let commands =
        |text: &str| tutorial_steps(text).into_iter().map(|s| (s.command, s.in_container)).collect::<Vec<_>>();
    assert!(commands(&english).len() >= 20);
    assert_eq!(commands(&chinese), commands(&english));
    let outline = |text: &str| {
        sections(text)
            .iter()
            .map(|s| (s.level, s.blocks.iter().map(untranslated).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    assert_eq!(outline(&chinese), outline(&english), "sections and code blocks must correspond one to one");
}

#[test]
fn the_markdown_reader_reads_what_the_tests_rely_on() {
    let text = "# T\n\n```sh\nkubectl get x  # note\nfalse  # fails: why\nexit-code-is 3 # exits 3\necho '#' \"# kept\"\n```\n\n```console\n/ # ps\nPID\n/ # exit 3\n```\n";
    let steps = tutorial_steps(text);
    let seen: Vec<_> = steps.iter().map(|s| (s.command.as_str(), s.expect)).collect();
    assert_eq!(
        seen,
        [
            ("kubectl get x", markdown::Expect::Success),
            ("false", markdown::Expect::Failure),
            ("exit-code-is 3", markdown::Expect::Code(3)),
            ("echo '#' \"# kept\"", markdown::Expect::Success),
        ]
    );
    assert_eq!(steps[3].in_container, ["ps", "exit 3"]);
    assert_eq!(fingerprint("a  b\nc"), fingerprint("a b c"));
    assert_ne!(fingerprint("a b c"), fingerprint("a b d"));
}

/// The argocd-cm snippet holds deploy/argocd/health.lua verbatim, under the key Argo CD reads.
#[test]
fn the_argocd_snippet_holds_the_health_check() {
    let snippet: serde_json::Value = serde_saphyr::from_str(&read("deploy/argocd/argocd-cm.yaml")).unwrap();
    let script = snippet["data"]["resource.customizations.health.ephemera.dev_DebugSession"].as_str().unwrap();
    assert_eq!(script, read("deploy/argocd/health.lua"));
}
