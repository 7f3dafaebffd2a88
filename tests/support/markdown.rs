//! Reading the project's Markdown the way its tests need: headings,
//! sections, code blocks, and the commands a tutorial asks the reader to run.
//! Shared by tests/docs.rs and tests/e2e, each of which uses a part of it.
#![allow(dead_code)]

/// A fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The info string after the fence (`sh`, `console`, `yaml`, or empty).
    pub lang: String,
    pub text: String,
}

/// A heading and what follows it up to the next heading.
#[derive(Debug, Clone)]
pub struct Section {
    pub level: usize,
    pub title: String,
    /// The text between this heading and the next, code blocks included.
    pub body: String,
    pub blocks: Vec<Block>,
}

/// The sections of a document, in order (text before the first heading is left out).
pub fn sections(markdown: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut fence: Option<Block> = None;
    for line in markdown.lines() {
        if let Some(block) = &mut fence {
            if line.trim_start().starts_with("```") {
                let done = fence.take().unwrap();
                if let Some(section) = sections.last_mut() {
                    section.blocks.push(done);
                    section.body.push_str(line);
                    section.body.push('\n');
                }
                continue;
            }
            block.text.push_str(line);
            block.text.push('\n');
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            fence = Some(Block { lang: lang.trim().to_string(), text: String::new() });
        } else if let Some((hashes, title)) =
            line.split_once(' ').filter(|(h, _)| !h.is_empty() && h.chars().all(|c| c == '#'))
        {
            sections.push(Section {
                level: hashes.len(),
                title: title.trim().to_string(),
                body: String::new(),
                blocks: Vec::new(),
            });
            continue;
        }
        if let Some(section) = sections.last_mut() {
            section.body.push_str(line);
            section.body.push('\n');
        }
    }
    sections
}

/// The line without its shell comment (a `#` at the start or after a blank,
/// outside quotes), trailing blanks removed.
pub fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// A block's content as it must be the same in a translation: for shell,
/// console and YAML blocks without comments (which are translated) and
/// blank lines; other blocks as they are.
pub fn untranslated(block: &Block) -> String {
    match block.lang.as_str() {
        "sh" | "bash" | "console" | "yaml" => {
            block.text.lines().map(strip_comment).filter(|line| !line.trim().is_empty()).collect::<Vec<_>>().join("\n")
        }
        _ => block.text.clone(),
    }
}

/// What a tutorial command's exit status must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Success,
    /// `# fails`: any status but 0.
    Failure,
    /// `# exits N`.
    Code(i32),
}

/// One command of a tutorial, typed at a shell prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub command: String,
    pub expect: Expect,
    /// When the command opens a debug container's shell (it is followed by a
    /// `console` block of `/ # ` lines): the lines typed there, in order.
    pub in_container: Vec<String>,
}

/// The steps of a tutorial: every line of its `sh` blocks; a `console` block
/// right after an `sh` block, holding a container shell (`/ # ` lines), is
/// typed into the shell that the block's last command opened.
pub fn tutorial_steps(markdown: &str) -> Vec<Step> {
    let blocks: Vec<Block> = sections(markdown).into_iter().flat_map(|s| s.blocks).collect();
    let mut steps: Vec<Step> = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        match block.lang.as_str() {
            "sh" => {
                for line in block.text.lines().filter(|l| !l.trim().is_empty()) {
                    let comment = line[strip_comment(line).len()..].trim_start().trim_start_matches('#').trim();
                    let expect = if comment.starts_with("fails") {
                        Expect::Failure
                    } else if let Some(code) = comment.strip_prefix("exits ") {
                        Expect::Code(code.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap())
                    } else {
                        Expect::Success
                    };
                    steps.push(Step { command: strip_comment(line).to_string(), expect, in_container: Vec::new() });
                }
            }
            "console" if i > 0 && blocks[i - 1].lang == "sh" && block.text.starts_with("/ # ") => {
                let typed = block.text.lines().filter_map(|l| l.strip_prefix("/ # ")).map(String::from).collect();
                steps.last_mut().expect("a command before the shell").in_container = typed;
            }
            _ => {}
        }
    }
    steps
}

/// FNV-1a, 64 bits: a fingerprint that stays the same across Rust versions.
pub fn fingerprint(text: &str) -> String {
    let normalized = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let hash =
        normalized.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:08x}", hash >> 32)
}
