//! A patch series as a maintainer receives it: an mbox (what `b4 am` writes, cover letter first),
//! a directory of `git format-patch` files, or a quilt `series` file. Read into patches in the
//! order they apply, each with its subject, so a series can be built and judged patch by patch.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::recipe::{self, Patch};

/// One patch of a series.
#[derive(Debug, Clone)]
pub struct SeriesPatch {
    /// 1-based, in application order.
    pub index: usize,
    /// The subject without its `[PATCH n/m]` tag (the file name when it has none).
    pub subject: String,
    /// Of the patch's bytes as applied.
    pub sha256: String,
    pub patch: Patch,
}

/// Reads SERIES: an mbox file, a directory (a quilt `series` in it, or its patch files in name
/// order), or a quilt `series` file itself.
pub fn read(path: &Path) -> Result<Vec<SeriesPatch>> {
    let patches = if path.is_dir() {
        recipe::series(path)?
    } else if path.file_name().is_some_and(|n| n == "series") {
        recipe::series(path.parent().unwrap_or(Path::new(".")))?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read patch series {}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        split_mbox(&bytes, &name).with_context(|| format!("patch series {}", path.display()))?
    };
    Ok(patches
        .into_iter()
        .enumerate()
        .map(|(i, patch)| SeriesPatch {
            index: i + 1,
            subject: subject(&patch.contents).unwrap_or_else(|| patch.name.clone()),
            sha256: crate::cache::hex(&Sha256::digest(&patch.contents)),
            patch,
        })
        .collect())
}

/// The messages of an mbox that carry a diff, in `[PATCH n/m]` order (the order they were
/// posted when untagged); the cover letter and replies without a diff are skipped. Each
/// message's bytes are kept as `git format-patch` wrote them, so a patch read from an mbox and
/// the same patch from a directory are one patch to the kernel cache.
fn split_mbox(bytes: &[u8], name: &str) -> Result<Vec<Patch>> {
    let text = String::from_utf8_lossy(bytes);
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with("From ") && (offset == 0 || text[..offset].ends_with("\n\n")) {
            starts.push(offset);
        }
        offset += line.len();
    }
    if starts.is_empty() {
        // A single patch without an mbox envelope (`git diff` output, a .patch file).
        starts.push(0);
    }
    starts.push(text.len());
    // (the patch number of its tag, the position in the mbox, the patch)
    let mut messages: Vec<(Option<u32>, usize, Patch)> = Vec::new();
    for (i, window) in starts.windows(2).enumerate() {
        let message = &text[window[0]..window[1]];
        if !has_diff(message) {
            continue;
        }
        let number = tag_number(message).map(|(n, _)| n);
        let patch = Patch { name: format!("{name}#{}", i + 1), contents: message.as_bytes().to_vec(), strip: 1 };
        messages.push((number, i, patch));
    }
    if messages.is_empty() {
        bail!("no message in it holds a diff (an mbox of patches, as `b4 am` or `git format-patch --stdout` writes)");
    }
    messages.sort_by_key(|(number, i, _)| (number.unwrap_or(u32::MAX), *i));
    if let Some(pair) = messages.windows(2).find(|pair| pair[0].0.is_some() && pair[0].0 == pair[1].0) {
        let (a, b) = (&pair[0].2.name, &pair[1].2.name);
        bail!("two messages carry the same patch number ({a} and {b}): a series of several versions? keep one");
    }
    Ok(messages.into_iter().map(|(_, _, p)| p).collect())
}

fn has_diff(message: &str) -> bool {
    message.lines().any(|l| l.starts_with("diff --git ") || l.starts_with("--- a/") || l.starts_with("Index: "))
}

/// `n/m` of a `[PATCH v2 n/m]`-style tag in the message's subject.
fn tag_number(message: &str) -> Option<(u32, u32)> {
    let raw = raw_subject(message.as_bytes())?;
    let tag = raw.strip_prefix('[')?.split(']').next()?;
    let numbers = tag.split_whitespace().find(|w| w.contains('/'))?;
    let (n, m) = numbers.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// The `Subject:` header, its folded lines joined.
fn raw_subject(contents: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(contents);
    let mut lines = text.lines().take_while(|l| !l.is_empty()).skip_while(|l| !l.starts_with("Subject:"));
    let mut subject = lines.next()?.trim_start_matches("Subject:").trim().to_string();
    for line in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        subject.push(' ');
        subject.push_str(line.trim());
    }
    Some(subject)
}

/// The subject without its bracketed tags (`[PATCH v2 3/4]`, `[RFC]`).
fn subject(contents: &[u8]) -> Option<String> {
    let mut subject = raw_subject(contents)?;
    while let Some(rest) = subject.strip_prefix('[').and_then(|s| s.split_once(']')).map(|(_, rest)| rest.trim()) {
        subject = rest.to_string();
    }
    (!subject.is_empty()).then_some(subject)
}

/// A file-name-safe short form of a subject: `sched-mmcid-prevent-live-lock-on-task-to-cpu`.
pub fn slug(subject: &str) -> String {
    let lower = subject.to_ascii_lowercase();
    let words = lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty());
    let mut slug = String::new();
    for word in words {
        if !slug.is_empty() && slug.len() + 1 + word.len() > 48 {
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(word);
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: &str, title: &str, diff: bool) -> String {
        let body = if diff {
            "---\n diff --git a/f b/f\ndiff --git a/f b/f\n--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
        } else {
            "body\n"
        };
        format!("From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: {tag} {title}\n\n{body}\n")
    }

    #[test]
    fn an_mbox_is_split_cover_letter_skipped_in_patch_order() {
        let mbox = [
            message("[PATCH 0/3]", "cover", false),
            message("[PATCH 2/3]", "second", true),
            message("[PATCH 1/3]", "first", true),
            message("[PATCH 3/3]", "third", true),
        ]
        .concat();
        let patches = split_mbox(mbox.as_bytes(), "s.mbox").unwrap();
        let subjects: Vec<String> = patches.iter().map(|p| subject(&p.contents).unwrap()).collect();
        assert_eq!(subjects, ["first", "second", "third"]);
        assert!(String::from_utf8_lossy(&patches[0].contents).starts_with("From 0123"));
    }

    #[test]
    fn subjects_and_tags() {
        for (header, subject_want, number) in [
            (
                "Subject: [PATCH 1/4] sched/mmcid: Prevent live lock",
                Some("sched/mmcid: Prevent live lock"),
                Some((1, 4)),
            ),
            ("Subject: [PATCH v2 3/4] a\n b", Some("a b"), Some((3, 4))),
            ("Subject: [RFC PATCH 2/2] x", Some("x"), Some((2, 2))),
            ("Subject: [PATCH] x", Some("x"), None),
            ("Subject: plain", Some("plain"), None),
            ("From: nobody", None, None),
        ] {
            let text = format!("{header}\n\nbody\n");
            assert_eq!(subject(text.as_bytes()).as_deref(), subject_want, "{header}");
            assert_eq!(tag_number(&text), number, "{header}");
        }
    }

    #[test]
    fn bad_series_are_named() {
        let none = message("[PATCH 0/1]", "cover", false);
        assert!(
            format!("{:#}", split_mbox(none.as_bytes(), "s").unwrap_err()).contains("no message in it holds a diff")
        );
        let twice = [message("[PATCH 1/2]", "a", true), message("[PATCH v2 1/2]", "a", true)].concat();
        assert!(format!("{:#}", split_mbox(twice.as_bytes(), "s").unwrap_err()).contains("same patch number"));
    }

    #[test]
    fn the_demo_series_as_mbox_and_as_directory_are_the_same_patches() {
        let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/series");
        let from_mbox = read(&kernels.join("mmcid-middle-bad.mbox")).unwrap();
        let from_dir = read(&kernels.join("mmcid-middle-bad")).unwrap();
        let digest =
            |s: &[SeriesPatch]| s.iter().map(|p| (p.index, p.subject.clone(), p.sha256.clone())).collect::<Vec<_>>();
        assert_eq!(digest(&from_mbox), digest(&from_dir));
        assert_eq!(from_mbox.len(), 3);
    }

    #[test]
    fn slugs() {
        assert_eq!(
            slug("sched/mmcid: Prevent live lock on task to CPU mode transition"),
            "sched-mmcid-prevent-live-lock-on-task-to-cpu"
        );
        assert_eq!(slug("  [x] y "), "x-y");
    }
}
