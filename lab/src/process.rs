//! Long-running children (make, QEMU) in their own process groups.
//!
//! Invariants, as in cargo-nextest: every child the lab starts for long work runs in a process
//! group of its own; the group is killed with SIGKILL and the child reaped on every exit path
//! (normal return, error, timeout, Ctrl-C, panic unwinding), because `Group` does it in `Drop`.
//! Ctrl-C only raises a flag: the loops that wait on children poll it and unwind, so cleanup
//! always runs on the lab's own threads.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).context("cannot install the Ctrl-C handler")
}

/// Typed so that callers can tell an interrupted run (exit quietly, keep partial results) from a
/// failure.
#[derive(Debug, thiserror::Error)]
#[error("interrupted (Ctrl-C)")]
pub struct Interrupted;

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(Interrupted);
    }
    Ok(())
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
        let child = command.spawn().with_context(|| format!("cannot start `{program}`: is it installed? (`lab doctor`)"))?;
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

    /// Waits for the child, polling so that Ctrl-C is honoured within a fraction of a second.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the child's stdout (which must be piped) shows `marker`, for at most `timeout`;
    /// false if it did not. Reading happens on a thread of its own, so a child that never prints
    /// cannot outlast the timeout, and Ctrl-C is honoured meanwhile.
    pub fn wait_for_output(&mut self, marker: &'static [u8], timeout: Duration) -> Result<bool> {
        let mut stdout = self.child.stdout.take().context("the child's stdout is not piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buf) {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(marker.len()).any(|w| w == marker) {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => return Ok(true),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
                Err(mpsc::RecvTimeoutError::Timeout) => check_interrupted()?,
            }
        }
        Ok(false)
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
                file.write_all(&line).and_then(|()| file.write_all(b"\n")).with_context(|| format!("cannot write {}", log.display()))?;
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
        l.contains(": error:") || l.contains(": fatal error:") || l.contains("undefined reference") || l.starts_with("make") && l.contains("***")
    };
    let start = lines.iter().position(is_error).unwrap_or(lines.len().saturating_sub(15));
    lines[start..].iter().take(12).map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_output_sees_the_marker_or_times_out() {
        let spawn = |script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]).stdout(Stdio::piped());
            Group::spawn(cmd).unwrap()
        };
        assert!(spawn("echo boot; sleep 0.2; echo LAB-READY arch=x").wait_for_output(b"LAB-READY", Duration::from_secs(10)).unwrap());
        assert!(!spawn("echo nothing; exit 0").wait_for_output(b"LAB-READY", Duration::from_secs(10)).unwrap());
        // A child that never prints and never exits: the timeout, not the read, decides.
        let start = std::time::Instant::now();
        assert!(!spawn("sleep 300").wait_for_output(b"LAB-READY", Duration::from_millis(300)).unwrap());
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
