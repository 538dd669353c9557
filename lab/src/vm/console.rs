//! QEMU's serial console as lines: each stamped with the host time its first byte arrived, and each
//! guest line that a kernel message cut in two joined again.
//!
//! The guest's init and workloads write their `LAB-*` lines to the same serial port the kernel
//! prints to. printk writes a whole record under the port lock, but a user-space write can be split
//! between two chunks of the tty, and a record from another CPU lands between them:
//!
//! ```text
//! LAB-READY arch=x[    1.780084] input: ImExPS/2 Generic Explorer Mouse as /devices/...
//! 86_64 cpus=4 kernel=7.3.4 workload=mmcid-churn ssh=22
//! ```
//!
//! Read as it came, the guest would report `arch=x` and the kernel line would be lost to triage
//! (a line that starts with `LAB-` is the guest's). `Splice` gives each its own line.

use std::io::Read;
use std::sync::mpsc;
use std::time::Instant;

/// How many kernel lines may come between a cut guest line and its rest before the part that came
/// is passed on alone: the guest may have died mid-write, or the part was the kernel's own text
/// without a time stamp (pseries prints "#1 SMP PREEMPT 1" early in boot and never the rest). A
/// cut seen in 60 stock runs had its rest after one record.
const MAX_LINES_BETWEEN: usize = 4;

/// A line as the cell's logs keep it (`console.log`, and `workload.log` of a workload run over
/// SSH): host seconds since QEMU started, then the text as it came (`vm::console_time` reads the
/// time back, triage takes it off).
pub(super) fn stamped(at: f64, text: &str) -> String {
    format!("{at:>9.3}s| {text}")
}

/// Splits the console into lines on a thread of its own (see `Splice`). A line the guest left
/// unfinished is sent when QEMU's output closes.
pub(super) fn read_lines(mut stdout: impl Read + Send + 'static, start: Instant) -> mpsc::Receiver<(f64, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut splice = Splice::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_at = 0.0;
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &byte in &buf[..n] {
                if pending.is_empty() {
                    pending_at = start.elapsed().as_secs_f64();
                }
                if byte == b'\n' {
                    let line = String::from_utf8_lossy(&pending).trim_end_matches('\r').to_string();
                    pending.clear();
                    if splice.push(pending_at, line).into_iter().any(|line| tx.send(line).is_err()) {
                        return;
                    }
                } else {
                    pending.push(byte);
                }
            }
        }
        let mut lines = match pending.is_empty() {
            true => Vec::new(),
            false => splice.push(pending_at, String::from_utf8_lossy(&pending).into_owned()),
        };
        lines.extend(splice.finish());
        for line in lines {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Puts a kernel record that cut a guest line on a line of its own, and joins the guest line's two
/// parts, stamped when its first part came. A kernel line is one that starts with printk's time
/// stamp (`[    1.780084]`); a stamp anywhere else in a line that does not start with one is where
/// a record cut in.
#[derive(Default)]
pub(super) struct Splice {
    /// The first part of a cut guest line, waiting for its rest.
    held: Option<(f64, String)>,
    /// Kernel lines passed on since.
    between: usize,
}

impl Splice {
    /// The lines that are whole once `line` came, in order.
    pub fn push(&mut self, at: f64, line: String) -> Vec<(f64, String)> {
        let (first_at, head) = match self.held.take() {
            Some(held) if starts_with_stamp(&line) => {
                self.between += 1;
                if self.between > MAX_LINES_BETWEEN {
                    return vec![held, (at, line)];
                }
                self.held = Some(held);
                return vec![(at, line)];
            }
            Some(held) => held,
            None => (at, String::new()),
        };
        // A guest line, or the rest of one, which another record may cut again.
        match cut_at(&line) {
            Some(cut) => {
                let mut guest = line;
                let kernel = guest.split_off(cut);
                self.held = Some((first_at, head + &guest));
                self.between = 0;
                vec![(at, kernel)]
            }
            None => vec![(first_at, head + &line)],
        }
    }

    /// The part of a cut line whose rest never came, when the console closed.
    pub fn finish(self) -> Option<(f64, String)> {
        self.held
    }
}

/// Where a kernel record begins inside a line that is not one.
fn cut_at(line: &str) -> Option<usize> {
    if starts_with_stamp(line) {
        return None;
    }
    line.match_indices('[').map(|(at, _)| at).find(|&at| at > 0 && starts_with_stamp(&line[at..]))
}

/// `[    1.780084]`, `[12345.000001]`: printk's time stamp (seconds, six decimals).
fn starts_with_stamp(text: &str) -> bool {
    let Some((inside, _)) = text.strip_prefix('[').and_then(|rest| rest.split_once(']')) else {
        return false;
    };
    let Some((seconds, micros)) = inside.trim_start_matches(' ').split_once('.') else {
        return false;
    };
    !seconds.is_empty()
        && seconds.bytes().all(|b| b.is_ascii_digit())
        && micros.len() == 6
        && micros.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `console` line by line, then closes it, and renders what came out as `at:line`.
    fn check(console: &str, expect: &str) {
        let mut splice = Splice::default();
        let mut out = Vec::new();
        for (at, line) in console.lines().enumerate() {
            out.extend(splice.push(at as f64, line.to_owned()));
        }
        out.extend(splice.finish());
        let got: Vec<String> = out.iter().map(|(at, line)| format!("{at}:{line}")).collect();
        assert_eq!(got.join("\n"), expect, "{console}");
    }

    #[test]
    fn a_kernel_record_that_cut_a_guest_line_gets_its_own_line() {
        // Captured from a stock x86_64 guest at 4 vCPUs (mmcid-churn, run 15 of 20).
        check(
            "LAB-READY arch=x[    1.780084] input: ImExPS/2 Generic Explorer Mouse\n86_64 cpus=4 ssh=22\nmmcid-churn: 60 s",
            "0:[    1.780084] input: ImExPS/2 Generic Explorer Mouse\n0:LAB-READY arch=x86_64 cpus=4 ssh=22\n2:mmcid-churn: 60 s",
        );
        // More records before the rest; caller ids; a cut just before the guest's newline.
        check(
            "LAB-PROGRESS a=[    2.000000][    C1] one\n[    2.100000][    C2] two\n1 b=2",
            "0:[    2.000000][    C1] one\n1:[    2.100000][    C2] two\n0:LAB-PROGRESS a=1 b=2",
        );
        check("LAB-RESULT status=pass[    3.000000] x\n\nnext", "0:[    3.000000] x\n0:LAB-RESULT status=pass\n2:next");
        // A second cut in the joined line.
        check("LAB-A[ 1.000000] k1\nb[ 2.000000] k2\nc", "0:[ 1.000000] k1\n1:[ 2.000000] k2\n0:LAB-Abc");
    }

    #[test]
    fn whole_lines_pass_as_they_are() {
        check("[    1.000000] kernel\nLAB-READY arch=x86_64\n", "0:[    1.000000] kernel\n1:LAB-READY arch=x86_64");
        // printk's continuation: the kernel's text, then the guest's on the same line.
        check(
            "[    1.500000] random: crng init doneLAB-RESULT status=pass",
            "0:[    1.500000] random: crng init doneLAB-RESULT status=pass",
        );
        // Brackets that are not a time stamp.
        check("rseq: [1.5] [ok] [    1.5]", "0:rseq: [1.5] [ok] [    1.5]");
        check("", "");
    }

    #[test]
    fn a_rest_that_never_comes_loses_nothing() {
        let kernel_lines = MAX_LINES_BETWEEN + 1;
        let mut console = String::from("LAB-PROGRESS round=[    1.000000] k\n");
        let mut expect = vec!["0:[    1.000000] k".to_owned()];
        for n in 1..=kernel_lines {
            console.push_str(&format!("[    2.{n:06}] k{n}\n"));
            if n == kernel_lines {
                expect.push("0:LAB-PROGRESS round=".to_owned());
            }
            expect.push(format!("{n}:[    2.{n:06}] k{n}"));
        }
        check(&console, &expect.join("\n"));
        check("LAB-RESULT sta[    1.000000] k", "0:[    1.000000] k\n0:LAB-RESULT sta");
        // Captured from pseries: the kernel's own early text, whose rest never comes.
        check(
            "#1 SMP PREEMPT 1[    0.207225] nvram: Failed\n[    0.200000] a\n[    0.300000] b\n[    0.400000] c\n[    0.500000] d\n[    0.600000] e",
            "0:[    0.207225] nvram: Failed\n1:[    0.200000] a\n2:[    0.300000] b\n3:[    0.400000] c\n4:[    0.500000] d\n0:#1 SMP PREEMPT 1\n5:[    0.600000] e",
        );
    }
}
