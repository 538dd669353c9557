//! One console line: the lab's host-time prefix, the printk timestamp and caller id come off, and what
//! is left is the kernel's (or the guest init's) own text.

/// printk caller id (CONFIG_PRINTK_CALLER): who printed the line. Lines of several CPUs interleave, and
/// this is what tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Caller {
    Cpu(u32),
    Task(u32),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ConsoleLine<'a> {
    pub caller: Option<Caller>,
    pub text: &'a str,
}

impl<'a> ConsoleLine<'a> {
    pub fn parse(line: &'a str) -> Self {
        let rest = strip_host_time(line).unwrap_or(line);
        let rest = record_after_foreign_text(rest).unwrap_or(rest);
        let (stamped, rest) = match strip_printk_time(rest) {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let (caller, rest) = match strip_caller(rest) {
            Some((caller, rest)) => (Some(caller), rest),
            None => (None, rest),
        };
        // printk separates its prefix from the message with one space; without a prefix, leading
        // blanks are the message's own (call trace indentation).
        let text = if stamped || caller.is_some() { rest.strip_prefix(' ').unwrap_or(rest) } else { rest };
        ConsoleLine { caller, text: up_to_printk_maximum(text) }
    }

    /// The guest's init reports through `LAB-*` lines; they are never kernel reports and they mean the
    /// kernel is done talking about whatever it reported before.
    pub fn is_from_guest(&self) -> bool {
        self.text.starts_with("LAB-")
    }
}

/// printk formats a message into at most PRINTK_MESSAGE_MAX (kernel/printk/internal.h) bytes; anything
/// longer is lines run together or garbage, and scanning it further only costs time.
fn up_to_printk_maximum(text: &str) -> &str {
    const PRINTK_MESSAGE_MAX: usize = 2048;
    if text.len() <= PRINTK_MESSAGE_MAX {
        return text;
    }
    let end = (0..=PRINTK_MESSAGE_MAX).rev().find(|&end| text.is_char_boundary(end)).unwrap_or(0);
    &text[..end]
}

/// "    1.234s| ": seconds since QEMU started, three decimals, right-aligned.
fn strip_host_time(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches(' ');
    let (seconds, rest) = rest.split_once('.')?;
    let millis = rest.get(..3)?;
    if seconds.is_empty() || !is_digits(seconds) || !is_digits(millis) {
        return None;
    }
    let rest = rest[3..].strip_prefix("s|")?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// A kernel record that begins in the middle of a line, after text that did not end with a newline:
/// a login prompt, printk's "** N printk messages dropped **", a process's own output, another
/// record cut short. The record's timestamp says where the kernel's text starts.
fn record_after_foreign_text(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    let mut from = 1;
    while let Some(at) = bytes.get(from..)?.iter().position(|&byte| byte == b'[') {
        let record = &line[from + at..];
        if strip_printk_time(record).is_some() {
            return Some(record);
        }
        from += at + 1;
    }
    None
}

/// "[   12.345678]"
fn strip_printk_time(line: &str) -> Option<&str> {
    let (inside, rest) = bracketed(line)?;
    let (seconds, fraction) = inside.trim_start_matches(' ').split_once('.')?;
    (!seconds.is_empty() && !fraction.is_empty() && is_digits(seconds) && is_digits(fraction)).then_some(rest)
}

/// "[    C3]" or "[T1234]"
fn strip_caller(line: &str) -> Option<(Caller, &str)> {
    let (inside, rest) = bracketed(line)?;
    let inside = inside.trim_start_matches(' ');
    let id = inside.get(1..).filter(|id| !id.is_empty() && is_digits(id))?.parse().ok()?;
    let caller = match inside.as_bytes()[0] {
        b'C' => Caller::Cpu(id),
        b'T' => Caller::Task(id),
        _ => return None,
    };
    Some((caller, rest))
}

/// Splits "[inside]rest"; printk's fields are short, so a far-away ']' belongs to something else.
fn bracketed(line: &str) -> Option<(&str, &str)> {
    const LONGEST_FIELD: usize = 24;
    let rest = line.strip_prefix('[')?;
    let close = rest.bytes().take(LONGEST_FIELD).position(|byte| byte == b']')?;
    Some((&rest[..close], &rest[close + 1..]))
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::{Caller, ConsoleLine};

    fn check(line: &str, caller: Option<Caller>, text: &str) {
        assert_eq!(ConsoleLine::parse(line), ConsoleLine { caller, text }, "line {line:?}");
    }

    #[test]
    fn prefixes_come_off() {
        check("    1.234s| [    0.000000] Linux version 7.3.4", None, "Linux version 7.3.4");
        check("12345.678s| raw guest text", None, "raw guest text");
        check("    1.234s|", None, "");
        check("[   12.345678] watchdog: foo", None, "watchdog: foo");
        check("[   12.345678][    C3] NMI backtrace for cpu 3", Some(Caller::Cpu(3)), "NMI backtrace for cpu 3");
        check("[   12.345678][ T1234] INFO: task", Some(Caller::Task(1234)), "INFO: task");
        check("[    C3] caller without time", Some(Caller::Cpu(3)), "caller without time");
        check(
            "    0.100s| [   12.345678][    C3]  ? __schedule+0x3a4/0x9c0",
            Some(Caller::Cpu(3)),
            " ? __schedule+0x3a4/0x9c0",
        );
    }

    #[test]
    fn message_text_is_left_alone() {
        check(" mm_get_cid+0x1c/0x2a", None, " mm_get_cid+0x1c/0x2a");
        check(
            "[c00000000a1b3c40] [c000000000123456] f+0x1/0x2",
            None,
            "[c00000000a1b3c40] [c000000000123456] f+0x1/0x2",
        );
        check("[ BUG: Invalid wait context ]", None, "[ BUG: Invalid wait context ]");
        check("1.5s| not the lab prefix", None, "1.5s| not the lab prefix");
        check("[12.3] [C3] spaced", None, "[C3] spaced");
        check("[Tx] [C] []", None, "[Tx] [C] []");
        check("LAB-READY x86_64", None, "LAB-READY x86_64");
        check(
            "[c00000000a1b3c40] [c000000000123456] f+0x1/0x2",
            None,
            "[c00000000a1b3c40] [c000000000123456] f+0x1/0x2",
        );
    }

    #[test]
    fn a_record_after_foreign_text_starts_at_its_timestamp() {
        check("syzkaller login: [   35.184476] BUG: using x", None, "BUG: using x");
        check("** 93 printk messages dropped ** [  322.962139] BUG: KASAN: x", None, "BUG: KASAN: x");
        check("isob2 login: [  709.689951][    C1] INFO: rcu", Some(Caller::Cpu(1)), "INFO: rcu");
        check("bytes[   76.471107] BUG: unable", None, "BUG: unable");
        check("[   76.470085] vmalloc: allocation failure: 8 bytes[   76.471107] BUG: unable", None, "BUG: unable");
        check("text [not a time] and [1.x]", None, "text [not a time] and [1.x]");
    }

    #[test]
    fn overlong_lines_are_cut_at_a_char_boundary() {
        let long = format!("[    1.000000] {}", "é".repeat(5000));
        let text = ConsoleLine::parse(&long).text;
        assert_eq!(text.len(), 2048);
        assert!(text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn guest_lines_are_recognised() {
        assert!(ConsoleLine::parse("    3.000s| LAB-RESULT fail BUG: x").is_from_guest());
        assert!(!ConsoleLine::parse("[    1.000000] LAB is not a prefix here").is_from_guest());
    }
}
