//! docs/tutorial.md, run: every command in it, in order, typed into a
//! terminal (bash in tmux) the way a reader would, with the debug shells
//! driven by the tutorial's own `/ # ` lines.

use std::time::Duration;

use crate::common::{TestEnv, cluster_dir, repo_root};
use crate::markdown::{Expect, tutorial_steps};
use crate::plugin::{kubeconfig_for, plugin_dir};
use crate::terminal::Terminal;

#[tokio::test(flavor = "multi_thread")]
async fn every_command_of_the_tutorial_runs_as_it_says() {
    let env = TestEnv::new("tutorial").await;
    let steps = tutorial_steps(&std::fs::read_to_string(repo_root().join("docs/tutorial.md")).unwrap());
    assert!(steps.len() >= 20, "{steps:#?}");
    // The cluster's kubectl first on PATH, the plugin installed, the namespace the context's.
    let path = format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        plugin_dir().display(),
        cluster_dir().join("bin").display()
    );
    let vars = [("PATH", path), ("KUBECONFIG", kubeconfig_for(&env.namespace).display().to_string())];
    let mut terminal = Terminal::start(&env.namespace, &repo_root(), &vars).await;
    let limit = Duration::from_secs(150);
    for step in &steps {
        terminal.type_line(&step.command);
        if !step.in_container.is_empty() {
            terminal.wait_for_container_shell().await;
            for line in &step.in_container {
                terminal.type_line(line);
                if line == "exit" || line.starts_with("exit ") {
                    break;
                }
                terminal.wait_for("/ # ", limit).await;
            }
        }
        let (code, output) = terminal.wait_for_prompt(limit).await;
        let as_expected = match step.expect {
            Expect::Success => code == 0,
            Expect::Failure => code != 0,
            Expect::Code(expected) => code == expected,
        };
        assert!(as_expected, "`{}` exited with {code}, expected {:?}:\n{output}", step.command, step.expect);
    }
}
