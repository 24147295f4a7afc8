//! The dependency rule of DESIGN.md, checked on the source: each top-level module of
//! `src/` may use only the modules its layer allows. Roles never use one another (the
//! composition module and `cli` put them together), nothing below `cli` uses it, and the
//! foundations (`trust`, `tunnel`, `planes`) know no role. Test modules count too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What every layer above the foundations may use.
const SHARED: &[&str] = &[
    "trust",
    "safe_text",
    "signals",
    "tunnel",
    "planes",
    "config",
    "logging",
    "server",
    "health",
    "replicas",
];
const ROLES: &[&str] = &["agent", "gateway", "controller", "register", "overview"];

/// The modules `module` may use; `None` for an unknown module (which fails the test, so
/// that a new module is placed in a layer on purpose).
fn allowed(module: &str) -> Option<Vec<&'static str>> {
    let shared = SHARED.to_vec();
    let with = |extra: &[&'static str]| {
        let mut all = shared.clone();
        all.extend_from_slice(extra);
        all
    };
    Some(match module {
        "trust" | "safe_text" | "signals" => vec![],
        "tunnel" => vec!["trust", "safe_text"],
        "planes" => vec!["trust", "tunnel", "safe_text"],
        "config" => vec!["trust", "safe_text", "planes"],
        "logging" => vec!["safe_text"],
        "server" => vec!["trust", "safe_text", "tunnel"],
        "health" => vec!["server", "tunnel", "safe_text"],
        "replicas" => vec!["tunnel", "safe_text"],
        role if ROLES.contains(&role) => shared,
        "compose" => with(ROLES),
        "manpages" => vec!["cli"],
        "cli" => with(&[ROLES, &["compose"]].concat()),
        _ => return None,
    })
}

/// Every `crate::NAME` a file's code names (comments aside), including each NAME of
/// `use crate::{a, b::c}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `planelink_crate::` or `$crate::` are other things.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    found.insert(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate root files).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_string()),
    }
}

#[test]
fn every_module_uses_only_what_its_layer_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unplaced = BTreeSet::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let Some(allowed) = allowed(&module) else {
            unplaced.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in crate_references(&text) {
            let top_level = files
                .iter()
                .any(|f| top_module(&src, f).as_deref() == Some(used.as_str()));
            if used != module && top_level && !allowed.contains(&used.as_str()) {
                let shown = file.strip_prefix(&src).unwrap().display().to_string();
                violations
                    .entry(format!("{module} -> {used}"))
                    .or_default()
                    .insert(shown);
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer (place them in tests/layers.rs): {unplaced:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the dependency rule: {violations:#?}"
    );
}

#[test]
fn the_scanner_sees_grouped_and_qualified_uses() {
    let text = "use crate::{agent::X, trust};\nlet a = crate::gateway::start();\n\
                /// [`crate::cli`] in a comment\n\
                macro_rules! m { () => { $crate::cli::y } }";
    assert_eq!(
        crate_references(text),
        ["agent", "gateway", "trust"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}
