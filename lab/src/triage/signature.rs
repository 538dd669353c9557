//! Signatures: the name under which the same failure is counted once, whichever run, vCPU count or
//! architecture (or the guest or the host) reported it.
//!
//! A signature is the kind and the guilty function, and only those: `hard-lockup:mm_get_cid`. The
//! other side of a live lock is left out on purpose: the CPUs waiting for the holder's lock vary from
//! run to run (`sched_mm_cid_fork`, `mm_cid_fixup_cpus_to_tasks`, `try_to_wake_up`, ...) while the
//! holder does not. A report that could not show the holder is signed after the waiter it does
//! show, and says so (`Missing::LockHolder`). A report without a guilty function is signed with its
//! own words, numbers replaced: `panic:Fatal exception`.

use crate::vocab::Kind;

/// `kind:function`; without a guilty function `kind:subject` (the report's own words: a bug
/// message, a panic reason), or `kind` alone.
pub fn signature(kind: Kind, frame: Option<&str>, subject: &str) -> String {
    let family = kind.family();
    // These subjects are the name of the task the detector caught, which differs from run to run.
    let subject = match kind {
        Kind::SoftLockup | Kind::HungTask => "",
        _ => subject,
    };
    let what = match frame {
        Some(frame) => function(frame).to_owned(),
        None => without_numbers(subject),
    };
    if what.is_empty() {
        family.to_string()
    } else {
        format!("{family}:{what}")
    }
}

/// A symbol without the compiler's clone suffixes (`.constprop.0`, `.isra.0`, `.part.0`, `.cold`,
/// `.llvm.123`), which depend on the compiler and the configuration, and without the leading dot of
/// big-endian powerpc's function descriptors.
fn function(symbol: &str) -> &str {
    let symbol = symbol.strip_prefix('.').unwrap_or(symbol);
    symbol.split('.').next().unwrap_or(symbol)
}

/// `text` with every number (decimal, `0x` hex, or a bare hex word of 8 digits or more: an address)
/// written `N`, and runs of blanks made one space.
fn without_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let word_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if word_len == 0 {
            if !(c.is_whitespace() && (out.is_empty() || out.ends_with(' '))) {
                out.push(if c.is_whitespace() { ' ' } else { c });
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        out.push_str(&number_to_n(word));
        rest = &rest[word_len..];
    }
    out.trim_end().to_owned()
}

/// `26s` is `Ns`, `0x1f` and `ffff888000000000` are `N`; `ext4` and `x86_64` stay.
fn number_to_n(word: &str) -> String {
    let hex = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_hexdigit());
    let address = word.len() >= 8 && hex(word) && word.bytes().any(|b| b.is_ascii_digit());
    if address || word.strip_prefix("0x").is_some_and(hex) {
        return "N".to_owned();
    }
    match word.find(|c: char| !c.is_ascii_digit()) {
        Some(0) => word.to_owned(),
        Some(end) => format!("N{}", &word[end..]),
        None => "N".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::signature;
    use crate::vocab::Kind;

    fn check(kind: Kind, frame: Option<&str>, subject: &str, expect: &str) {
        assert_eq!(signature(kind, frame, subject), expect, "{kind} {frame:?} {subject:?}");
    }

    #[test]
    fn kind_and_culprit() {
        check(Kind::HardLockup, Some("mm_get_cid"), "", "hard-lockup:mm_get_cid");
        check(Kind::Warning, Some("foo.isra.0"), "", "warning:foo");
        check(Kind::Bug, Some("foo.constprop.0.isra.0"), "BUG: x", "bug:foo");
        check(Kind::Bug, Some("foo.part.0"), "", "bug:foo");
        check(Kind::Bug, Some("foo.cold"), "", "bug:foo");
        check(Kind::Bug, Some("foo.llvm.1234567"), "", "bug:foo");
        check(Kind::Oops, Some(".mm_get_cid"), "", "bug:mm_get_cid");
        check(Kind::Panic, Some("mount_root_generic"), "VFS: x", "panic:mount_root_generic");
    }

    #[test]
    fn without_a_culprit_the_words_without_numbers() {
        check(Kind::Panic, None, "Fatal exception", "panic:Fatal exception");
        check(
            Kind::Panic,
            None,
            "Attempted to kill init! exitcode=0x00000100",
            "panic:Attempted to kill init! exitcode=N",
        );
        check(
            Kind::Panic,
            None,
            "VFS: Unable to mount root fs on unknown-block(0,0)",
            "panic:VFS: Unable to mount root fs on unknown-block(N,N)",
        );
        check(Kind::Bug, None, "BUG: unable to handle page fault", "bug:BUG: unable to handle page fault");
        check(
            Kind::Other,
            None,
            "the guest reports cpus=2, the cell asked for 4",
            "other:the guest reports cpus=N, the cell asked for N",
        );
        check(
            Kind::Silent,
            None,
            "no console output for 20s  during boot",
            "silent:no console output for Ns during boot",
        );
        check(
            Kind::Other,
            None,
            "at ffff888000000000 and deadbeef in ext4 on x86_64",
            "other:at N and deadbeef in ext4 on x86_64",
        );
        check(Kind::Other, None, " é 1é ", "other:é Né");
        check(Kind::HardLockup, None, "", "hard-lockup");
    }

    /// A workload's violation is signed by its check, whatever the line's numbers.
    #[test]
    fn violations_by_their_check() {
        check(Kind::RseqViolation, None, "unique-cid", "rseq-violation:unique-cid");
        check(Kind::RseqViolation, None, "cid-range", "rseq-violation:cid-range");
    }

    #[test]
    fn task_names_are_not_signatures() {
        check(Kind::SoftLockup, None, "kworker/3:1", "soft-lockup");
        check(Kind::HungTask, None, "sh", "hung-task");
        check(Kind::HungTask, Some("sched_mm_cid_fork"), "sh", "hung-task:sched_mm_cid_fork");
    }
}
