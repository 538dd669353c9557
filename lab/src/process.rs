//! Long-running children (make, QEMU) in their own process groups.
//!
//! Invariants, as in cargo-nextest: every child the lab starts for long work runs in a process
//! group of its own; the group is killed with SIGKILL and the child reaped on every exit path
//! (normal return, error, timeout, a signal, panic unwinding), because `Group` does it in `Drop`.
//! SIGINT (Ctrl-C), SIGTERM (a CI runner cancelling) and SIGHUP (a closed terminal) only record
//! which came first: the loops that wait on children poll it and unwind, so cleanup always runs
//! on the lab's own threads, and the run still writes its reports.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The signals that stop the lab the way Ctrl-C does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Hup,
}

impl Signal {
    const ALL: [Signal; 3] = [Signal::Int, Signal::Term, Signal::Hup];

    pub fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Hup => libc::SIGHUP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Hup => "SIGHUP",
        }
    }

    /// What a shell reports for a process the signal killed, so scripts and CI runners read a
    /// cleaned-up exit the same way.
    pub fn exit_code(self) -> u8 {
        (128 + self.number()) as u8
    }

    fn from_number(number: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.number() == number)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The number of the first signal that came, 0 before any. Only the first counts: a CI runner's
/// SIGTERM followed by the SIGHUP of its closing terminal is still a cancel.
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

pub fn install_signal_handlers() -> Result<()> {
    for signal in Signal::ALL {
        let number = signal.number();
        // An atomic compare-and-swap is all the handler does: async-signal-safe, and every wait
        // loop sees it within one poll.
        let record = move || {
            let _ = FIRST_SIGNAL.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst);
        };
        unsafe { signal_hook::low_level::register(number, record) }
            .with_context(|| format!("cannot install the {signal} handler"))?;
    }
    Ok(())
}

/// The signal that interrupted the lab, if one did.
pub fn interrupted() -> Option<Signal> {
    Signal::from_number(FIRST_SIGNAL.load(Ordering::SeqCst))
}

/// Typed so that callers can tell an interrupted run (clean up, keep partial results, exit
/// 128+signal) from a failure.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {0}")]
pub struct Interrupted(pub Signal);

pub fn check_interrupted() -> Result<()> {
    if let Some(signal) = interrupted() {
        bail!(Interrupted(signal));
    }
    Ok(())
}

/// What a child printed while `Group::wait_for_output` waited for its marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    Found,
    /// Its stdout closed first (it exited), after this many bytes.
    Ended {
        printed: usize,
    },
    /// The timeout came first, after this many bytes.
    TimedOut {
        printed: usize,
    },
}

pub struct Group {
    child: Child,
    reaped: Option<ExitStatus>,
}

impl Group {
    pub fn spawn(mut command: Command) -> Result<Group> {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        let program = command.get_program().to_string_lossy().into_owned();
        let child =
            command.spawn().with_context(|| format!("cannot start `{program}`: is it installed? (`lab doctor`)"))?;
        Ok(Group { child, reaped: None })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().context("cannot wait for child process")?;
        }
        Ok(self.reaped)
    }

    /// Waits for the child, polling so that a signal is honoured within a fraction of a second.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the child's stdout (which must be piped) shows `marker`, for at most `timeout`.
    /// Reading happens on a thread of its own, so a child that never prints cannot outlast the
    /// timeout, and a signal is honoured meanwhile.
    pub fn wait_for_output(&mut self, marker: &'static [u8], timeout: Duration) -> Result<Waited> {
        let mut stdout = self.child.stdout.take().context("the child's stdout is not piped")?;
        let printed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let counter = printed.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                seen.extend_from_slice(&buf[..n]);
                counter.store(seen.len(), Ordering::SeqCst);
                if seen.windows(marker.len()).any(|w| w == marker) {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(Waited::Found),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Ok(Waited::Ended { printed: printed.load(Ordering::SeqCst) })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => check_interrupted()?,
            }
        }
        Ok(Waited::TimedOut { printed: printed.load(Ordering::SeqCst) })
    }

    /// Kills the whole group (QEMU's helpers, make's compilers) and reaps the leader.
    pub fn kill(&mut self) {
        // The group id is the leader's pid; signalling it is safe even after the leader exited,
        // because the id is not reused while we have not reaped the leader.
        let pgid = self.child.id() as libc::pid_t;
        if self.reaped.is_none() {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            self.reaped = self.child.wait().ok();
        } else {
            // The leader is gone; its group may still hold stragglers.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command in its own group with stdout and stderr merged into `log`, handing each line to
/// `on_line` as it arrives. On failure the error carries the lines that explain it (see
/// `first_error`), not only the exit code.
pub fn run_logged(mut command: Command, log: &Path, mut on_line: impl FnMut(&str)) -> Result<()> {
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    command.stdout(writer.try_clone()?).stderr(writer).stdin(Stdio::null());
    let program = command.get_program().to_string_lossy().into_owned();
    let mut file = File::create(log).with_context(|| format!("cannot create log {}", log.display()))?;
    let mut group = Group::spawn(command)?;
    // `spawn` consumed `command` and with it our write ends: EOF comes when the group exits.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut status = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                file.write_all(&line)
                    .and_then(|()| file.write_all(b"\n"))
                    .with_context(|| format!("cannot write {}", log.display()))?;
                on_line(&String::from_utf8_lossy(&line));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                check_interrupted()?;
                status = status.or(group.try_wait()?);
            }
        }
    }
    let status = match status {
        Some(status) => status,
        None => group.wait()?,
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("`{program}` failed ({status}); the first error:\n{}\nfull log: {}", first_error(&text), log.display());
    }
    Ok(())
}

/// The lines of a build log that explain a failure: from the first compiler or linker error
/// (a dozen lines of context), else the log's tail.
pub fn first_error(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let is_error = |l: &&str| {
        l.contains(": error:")
            || l.contains(": fatal error:")
            || l.contains("undefined reference")
            || l.starts_with("make") && l.contains("***")
    };
    let start = lines.iter().position(is_error).unwrap_or(lines.len().saturating_sub(15));
    lines[start..].iter().take(12).map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_exits_as_a_shell_reports_it() {
        let check = |signal: Signal, number, name, code| {
            assert_eq!((signal.number(), signal.name(), signal.exit_code()), (number, name, code));
            assert_eq!(Signal::from_number(number), Some(signal));
            assert_eq!(Interrupted(signal).to_string(), format!("interrupted by {name}"));
        };
        check(Signal::Int, 2, "SIGINT", 130);
        check(Signal::Term, 15, "SIGTERM", 143);
        check(Signal::Hup, 1, "SIGHUP", 129);
        assert_eq!(Signal::from_number(0), None, "no signal yet");
        assert_eq!(Signal::from_number(libc::SIGQUIT), None);
    }

    #[test]
    fn waiting_for_output_sees_the_marker_or_times_out() {
        let spawn = |script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).stdout(Stdio::piped());
            Group::spawn(cmd).unwrap()
        };
        let wait = |script: &str, timeout_ms| {
            spawn(script).wait_for_output(b"LAB-READY", Duration::from_millis(timeout_ms)).unwrap()
        };
        assert_eq!(wait("echo boot; sleep 0.2; echo LAB-READY arch=x", 10_000), Waited::Found);
        assert_eq!(wait("echo nothing; exit 0", 10_000), Waited::Ended { printed: 8 });
        // A child that never prints and never exits: the timeout, not the read, decides.
        let start = std::time::Instant::now();
        assert_eq!(wait("sleep 300", 300), Waited::TimedOut { printed: 0 });
        assert_eq!(wait("printf abc; sleep 300", 500), Waited::TimedOut { printed: 3 });
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn failed_commands_show_their_first_error() {
        let log = std::env::temp_dir().join(format!("lab-run-logged-{}.log", std::process::id()));
        let mut seen = Vec::new();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '  CC kernel/a.o'; echo 'kernel/a.c:3:1: error: expected ;' >&2; echo tail; exit 2"]);
        let err = run_logged(cmd, &log, |l| seen.push(l.to_string())).unwrap_err().to_string();
        assert_eq!(seen, ["  CC kernel/a.o", "kernel/a.c:3:1: error: expected ;", "tail"]);
        assert!(err.contains("exit status: 2") && err.contains("    kernel/a.c:3:1: error: expected ;"), "{err}");
        assert!(!err.contains("CC kernel/a.o"), "context starts at the error: {err}");
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn dropping_a_group_kills_its_grandchildren() {
        let mut cmd = Command::new("sh");
        // The grandchild would outlive a plain kill of `sh`.
        cmd.args(["-c", "sleep 300 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        let mut group = Group::spawn(cmd).unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(group.child_mut().stdout.take().unwrap()).read_line(&mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        drop(group);
        // Not our child: once killed it is gone or a zombie waiting for init to reap it.
        let mut alive = true;
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            alive = stat.rsplit(") ").next().is_some_and(|rest| !rest.is_empty() && !rest.starts_with('Z'));
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive, "grandchild {grandchild} survived the group kill");
    }
}
