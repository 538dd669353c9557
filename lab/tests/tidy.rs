//! Tidy: the habits of the code base, checked on every `cargo test` (after rust-analyzer's tidy
//! tests). Each check says what is wrong and where, so the fix is obvious from CI's log alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// Functions allowed past `MAX_FN_LINES`, each with why it reads better whole.
/// Each is owed a split (issue 15's note); the test keeps the list from growing.
const LONG_FUNCTIONS: &[(&str, &str)] = &[
    (
        "lab/src/kernel/mod.rs::build_inner",
        "the build's steps in order under one lock: tree, patches, config, make, install",
    ),
    ("lab/src/matrix/mod.rs::validate", "one check per matrix key, each pointing at its node: a list, not logic"),
    ("lab/src/run/verdict.rs::judge", "the verdict rules in the order they take priority, read top to bottom"),
    ("lab/src/run/mod.rs::run", "prepare, the worker pool and the interrupted bookkeeping share the run's maps"),
    (
        "lab/src/triage/header.rs::other_headlines",
        "a table of headline patterns written as code: one entry per printk format",
    ),
];

/// Past this a function is doing several things: split it, or name it above.
const MAX_FN_LINES: usize = 100;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `lab/src`, as `lab/src/...`, sorted.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&manifest_dir().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(manifest_dir().parent().unwrap()).unwrap().display().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            (relative, text)
        })
        .collect()
}

fn architecture() -> String {
    std::fs::read_to_string(manifest_dir().join("../ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md at the top of the checkout")
}

/// The code map's bullets, each with the path it opens with (`lab/src/vm/`, `lab/src/run.rs`).
fn code_map(architecture: &str) -> Vec<(String, String)> {
    let section = architecture.split("\n## Code map").nth(1).expect("ARCHITECTURE.md has a `## Code map` section");
    let section = section.split("\n## ").next().unwrap();
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("- `") {
            let path = rest.split('`').next().unwrap().to_string();
            entries.push((path, line.to_string()));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push('\n');
            text.push_str(line);
        }
    }
    entries
}

#[test]
fn every_source_file_opens_with_a_doc_line() {
    let missing: Vec<String> =
        sources().into_iter().filter(|(_, text)| !text.starts_with("//!")).map(|(path, _)| path).collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they are for:\n{}",
        missing.join("\n")
    );
}

/// A file is named by its full path, or, inside a directory's bullet, by its name in backticks.
#[test]
fn the_code_map_names_every_source_file() {
    let architecture = architecture();
    let map = code_map(&architecture);
    let named = |path: &str| {
        map.iter().any(|(entry, text)| {
            entry == path
                || (entry.ends_with('/')
                    && path.strip_prefix(entry.as_str()).is_some_and(|name| text.contains(&format!("`{name}`"))))
        })
    };
    let unnamed: Vec<String> = sources().into_iter().map(|(path, _)| path).filter(|path| !named(path)).collect();
    assert!(
        unnamed.is_empty(),
        "ARCHITECTURE.md's code map does not name these files (a bullet `- `path`: ...`, or `name.rs` in backticks in its directory's bullet):\n{}",
        unnamed.join("\n")
    );
    let gone: Vec<&str> = map
        .iter()
        .map(|(entry, _)| entry.as_str())
        .filter(|entry| entry.starts_with("lab/") && !manifest_dir().parent().unwrap().join(entry).exists())
        .collect();
    assert!(gone.is_empty(), "ARCHITECTURE.md's code map names paths that do not exist: {gone:?}");
}

/// Every `fn` with a body (free, method, nested, test), by name and line span.
struct Functions<'a> {
    file: &'a str,
    found: Vec<(String, usize, usize)>,
}

impl Functions<'_> {
    fn add(&mut self, name: String, span: proc_macro2::Span) {
        self.found.push((format!("{}::{name}", self.file), span.start().line, span.end().line));
    }
}

impl<'ast> Visit<'ast> for Functions<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.add(f.sig.ident.to_string(), f.span());
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.add(f.sig.ident.to_string(), f.span());
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if f.default.is_some() {
            self.add(f.sig.ident.to_string(), f.span());
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[test]
fn no_function_grows_past_a_hundred_lines() {
    let mut long = Vec::new();
    let mut seen = BTreeSet::new();
    for (path, text) in sources() {
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut functions = Functions { file: &path, found: Vec::new() };
        functions.visit_file(&file);
        for (name, start, end) in functions.found {
            let lines = end - start + 1;
            seen.insert(name.clone());
            if lines > MAX_FN_LINES && !LONG_FUNCTIONS.iter().any(|(n, _)| *n == name) {
                long.push(format!("{path}:{start}: {} has {lines} lines", name.rsplit("::").next().unwrap()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them, or name them in LONG_FUNCTIONS with why):\n{}",
        long.join("\n")
    );
    let stale: Vec<&str> = LONG_FUNCTIONS.iter().map(|(n, _)| *n).filter(|n| !seen.contains(*n)).collect();
    assert!(stale.is_empty(), "LONG_FUNCTIONS names functions that no longer exist: {stale:?}");
}

/// The top-level modules each file's `crate::` paths reach, by the module the file is in.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let relative = path.strip_prefix("lab/src/").unwrap();
        let module = relative.split(['/', '.']).next().unwrap().to_string();
        let edges = graph.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for target in crate_paths(line) {
                if target != module {
                    edges.insert(target);
                }
            }
        }
        // A `use crate::{a, b::c}` group names several modules.
        for group in text.split("crate::{").skip(1) {
            let inner = group.split('}').next().unwrap_or_default();
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or_default().trim().to_string();
                if !name.is_empty() && name != module && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// The module names after each `crate::` in a line.
fn crate_paths(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter_map(|(at, prefix)| {
            let rest = &line[at + prefix.len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Data flows one way: no two modules reach each other, directly or around a loop.
#[test]
fn the_modules_form_no_cycle() {
    let graph = module_graph();
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("modules that reach each other: {} (one of them must give up the import: move the shared type to the lower one)", cycle.join(" -> "));
        }
    }
}
