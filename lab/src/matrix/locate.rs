//! Where a node of a YAML document starts, by its path (`["workloads", 2, "program"]`).
//!
//! serde gives positions only for its own errors; the matrix's semantic errors are found on the
//! deserialized values, so their positions come from a second pass over the text with an event
//! parser that keeps markers.

use std::collections::BTreeMap;

use saphyr_parser::{Event, Parser};

/// One step into a node: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// The path `node!["workloads", i, "program"]`: keys are `&str`, indices `usize`.
macro_rules! node {
    ($($seg:expr),* $(,)?) => { [$($crate::matrix::Seg::from($seg)),*] };
}
pub(crate) use node;

impl From<&str> for Seg {
    fn from(key: &str) -> Seg {
        Seg::Key(key.to_string())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Seg {
        Seg::Index(index)
    }
}

/// 1-based, as editors and serde count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// The start of every node of a text's first YAML document, by path.
#[derive(Debug, Clone, Default)]
pub struct Positions(BTreeMap<Vec<Seg>, Pos>);

enum Frame {
    /// `None`: inside a mapping key that is itself a mapping or sequence, which no path reaches.
    Seq {
        path: Option<Vec<Seg>>,
        next: usize,
    },
    Map {
        path: Option<Vec<Seg>>,
        key: Option<Seg>,
        at_key: bool,
    },
}

impl Positions {
    /// A text the event parser rejects (serde accepted it, or its error is reported already)
    /// keeps the positions read before the fault: lookups then fall back to enclosing nodes.
    pub fn index(text: &str) -> Positions {
        let mut found = BTreeMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for (event, span) in Parser::new_from_str(text).map_while(Result::ok) {
            let starts_node = matches!(
                event,
                Event::Scalar(..) | Event::Alias(_) | Event::SequenceStart(..) | Event::MappingStart(..)
            );
            if !starts_node {
                if matches!(event, Event::SequenceEnd | Event::MappingEnd) {
                    stack.pop();
                } else if matches!(event, Event::DocumentEnd) {
                    break;
                }
                continue;
            }
            let path = match stack.last_mut() {
                None => Some(Vec::new()),
                Some(Frame::Seq { path, next }) => {
                    *next += 1;
                    path.as_ref().map(|p| child(p, Seg::Index(*next - 1)))
                }
                Some(Frame::Map { path, key, at_key }) => {
                    *at_key = !*at_key;
                    if *at_key {
                        *key = match &event {
                            Event::Scalar(text, ..) => Some(Seg::Key(text.to_string())),
                            _ => None,
                        };
                        None
                    } else {
                        path.as_ref().zip(key.take()).map(|(p, k)| child(p, k))
                    }
                }
            };
            if let Some(p) = &path {
                let mark = span.start;
                found.entry(p.clone()).or_insert(Pos { line: mark.line(), column: mark.col() + 1 });
            }
            match event {
                Event::SequenceStart(..) => stack.push(Frame::Seq { path, next: 0 }),
                Event::MappingStart(..) => stack.push(Frame::Map { path, key: None, at_key: false }),
                _ => {}
            }
        }
        Positions(found)
    }

    /// The node at `path`, else its nearest enclosing node that is there (a value left out, a
    /// default), else the document's start.
    pub fn locate(&self, path: &[Seg]) -> Pos {
        (0..=path.len()).rev().find_map(|n| self.0.get(&path[..n]).copied()).unwrap_or(Pos { line: 1, column: 1 })
    }
}

fn child(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
kernels:
  - recipe: kernels/a.yaml
arches: [x86_64, ppc64le]
workloads:
  - name: smoke
    args: {seconds: 5, 'odd key': \"x\"}
    fetch:
      - /tmp/a
      - /tmp/b
  - {name: x, ? [complex, key]: {inner: 1}, after: 2}
timeouts: {boot: 0}
";

    fn check(path: &[Seg], expect: (usize, usize)) {
        let pos = Positions::index(DOC).locate(path);
        assert_eq!((pos.line, pos.column), expect, "{path:?}");
    }

    #[test]
    fn paths_find_their_nodes() {
        check(&node!["kernels", 0, "recipe"], (2, 13));
        check(&node!["kernels", 0], (2, 5));
        check(&node!["arches", 1], (3, 18));
        check(&node!["workloads", 0, "args", "seconds"], (6, 21));
        check(&node!["workloads", 0, "args", "odd key"], (6, 35));
        check(&node!["workloads", 0, "fetch", 1], (9, 9));
        check(&node!["workloads", 1, "after"], (10, 52));
        check(&node!["timeouts", "boot"], (11, 18));
        // Absent nodes: the nearest enclosing one, else the document's start.
        check(&node!["workloads", 0, "program"], (5, 5));
        check(&node!["timeouts", "silence"], (11, 11));
        check(&node!["memory_mib"], (1, 1));
        check(&node![], (1, 1));
    }

    #[test]
    fn broken_text_keeps_what_was_read() {
        let pos = Positions::index("vcpus: [1, 2]\nworkloads: [\n").locate(&node!["vcpus", 1]);
        assert_eq!((pos.line, pos.column), (1, 12));
    }
}
