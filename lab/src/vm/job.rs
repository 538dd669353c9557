//! The SSH job of a boot: logs into the guest once its ready line came, runs the workload there
//! (`SshTask::Run`) and fetches its files, on a thread of its own, telling the watch loop what
//! happens as `SshEvent`s.
//!
//! The workload's stdout is kept twice: `workload.stdout` holds its bytes as they came, and
//! `workload.log` its lines stamped as `console.log` stamps the console's (host seconds since QEMU
//! started, at a line's first byte). The stamps are taken here, where the bytes arrive, not in the
//! watch loop, which reads the job's events only between console lines and polls; and a stamped
//! file, like the console's, is what triage reads and `console_time` dates, so a workload's
//! violation over SSH is judged and timed as one on the console is.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{console, ssh, Deadlines, Fetch, GuestSsh, SshTask, SshWorkload, SSH_COMMAND};
use crate::process;

const WORKLOAD_STDOUT: &str = "workload.stdout";
const WORKLOAD_STDERR: &str = "workload.stderr";
pub(super) const WORKLOAD_LOG: &str = "workload.log";
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The SSH job of one boot once started, what it says, and the flag that stops it.
pub(super) struct SshThread {
    cancel: Arc<AtomicBool>,
    sender: mpsc::Sender<SshEvent>,
    events: mpsc::Receiver<SshEvent>,
    worker: Option<JoinHandle<()>>,
}

impl SshThread {
    pub(super) fn new() -> SshThread {
        let (sender, events) = mpsc::channel();
        SshThread { cancel: Arc::new(AtomicBool::new(false)), sender, events, worker: None }
    }

    pub(super) fn start(&mut self, job: SshJob) {
        self.worker = Some(job.spawn(self.cancel.clone(), self.sender.clone()));
    }

    /// What the job said since the last look.
    pub(super) fn events(&self) -> mpsc::TryIter<'_, SshEvent> {
        self.events.try_iter()
    }

    /// Stops the job and returns what it said after the last look: with QEMU gone and the flag
    /// set, every SSH wait ends within one poll, and QEMU can exit before its events are read.
    pub(super) fn stop(self) -> Vec<SshEvent> {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(worker) = self.worker {
            let _ = worker.join();
        }
        self.events.try_iter().collect()
    }
}

pub(super) enum SshEvent {
    Ready {
        machine: String,
        cpus: Option<u32>,
    },
    /// The guest answered (output, or a probe while the workload was quiet).
    Heard,
    /// A line of the workload's stdout.
    Line(String),
    /// The workload exited: the fields of the result line the init would have printed.
    Finished {
        fields: BTreeMap<String, String>,
    },
    Fetched(String),
    Failed(ssh::Error),
}

/// The SSH side of one boot, on a thread of its own.
pub(super) struct SshJob {
    port: u16,
    credentials: ssh::Credentials,
    workload: Option<SshWorkload>,
    dir: PathBuf,
    /// When QEMU started: `workload.log`'s time stamps count from it, as `console.log`'s do.
    start: Instant,
    ready_deadline: Instant,
    workload_deadline: Instant,
}

impl SshJob {
    /// The job for a guest whose QEMU started at `start` and that printed its ready line at `now`:
    /// its server gets the boot deadline to answer, the workload its own deadline and a little more.
    pub(super) fn new(
        port: u16,
        ssh: &GuestSsh,
        dir: &Path,
        deadlines: Deadlines,
        start: Instant,
        now: Instant,
    ) -> SshJob {
        SshJob {
            port,
            credentials: ssh.credentials.clone(),
            workload: match &ssh.task {
                SshTask::Run(workload) => Some(workload.clone()),
                _ => None,
            },
            dir: dir.to_path_buf(),
            start,
            ready_deadline: now + Duration::from_secs(deadlines.boot),
            workload_deadline: now + Duration::from_secs(deadlines.workload.saturating_add(5)),
        }
    }

    fn spawn(self, cancel: Arc<AtomicBool>, events: mpsc::Sender<SshEvent>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let interrupted: ssh::Interrupted =
                Arc::new(move || cancel.load(Ordering::SeqCst) || process::check_interrupted().is_err());
            if let Err(error) = self.run(interrupted, &events) {
                let _ = events.send(SshEvent::Failed(error));
            }
        })
    }

    fn run(&self, interrupted: ssh::Interrupted, events: &mpsc::Sender<SshEvent>) -> Result<(), ssh::Error> {
        let connection = ssh::Connection::connect(self.port, &self.credentials, self.ready_deadline, interrupted)?;
        let facts = connection.output("uname -m; nproc", Instant::now() + Duration::from_secs(30))?;
        let facts = String::from_utf8_lossy(&facts);
        let mut facts = facts.lines();
        let machine = facts.next().unwrap_or_default().trim().to_owned();
        let cpus = facts.next().and_then(|n| n.trim().parse().ok());
        let _ = events.send(SshEvent::Ready { machine, cpus });
        let Some(workload) = &self.workload else { return Ok(()) };
        let started = Instant::now();
        let exit = match workload.interactive {
            true => self.in_terminal(&workload.command)?,
            false => self.captured(&connection, &workload.command, events)?,
        };
        let _ = events.send(SshEvent::Finished { fields: result_fields(&workload.name, &exit, started.elapsed()) });
        for fetch in &workload.fetch {
            let _ = events.send(SshEvent::Fetched(self.fetch(&connection, fetch)));
        }
        // The guest goes down with the command: no answer will come.
        let _ = connection.run(
            "poweroff -f",
            Instant::now() + Duration::from_secs(5),
            &mut std::io::sink(),
            &mut std::io::sink(),
            &mut || {},
        );
        Ok(())
    }

    /// The workload's stdout and stderr into the cell, its stdout also stamped line by line into
    /// `workload.log` and to the loop.
    fn captured(
        &self,
        connection: &ssh::Connection,
        command: &str,
        events: &mpsc::Sender<SshEvent>,
    ) -> Result<ssh::Exit, ssh::Error> {
        let create = |name: &str| {
            File::create(self.dir.join(name))
                .map_err(|e| ssh::Error::Failed { what: format!("creating {name}"), detail: e.to_string() })
        };
        let mut stdout = LineSink {
            file: create(WORKLOAD_STDOUT)?,
            log: create(WORKLOAD_LOG)?,
            start: self.start,
            pending: Vec::new(),
            pending_at: 0.0,
            events: events.clone(),
        };
        let mut stderr = create(WORKLOAD_STDERR)?;
        let exit = connection.run(command, self.workload_deadline, &mut stdout, &mut stderr, &mut || {
            let _ = events.send(SshEvent::Heard);
        })?;
        stdout
            .finish()
            .map_err(|e| ssh::Error::Failed { what: format!("writing {WORKLOAD_LOG}"), detail: e.to_string() })?;
        Ok(exit)
    }

    /// A person's session: OpenSSH in the lab's terminal, with the lab's key and the image's host
    /// key (`ssh-command.sh`), so line editing, job control and window size just work.
    fn in_terminal(&self, command: &str) -> Result<ssh::Exit, ssh::Error> {
        let script = self.dir.join(SSH_COMMAND);
        let mut terminal = std::process::Command::new(&script);
        if !command.is_empty() {
            terminal.args(["-t", command]);
        }
        let status = terminal
            .status()
            .map_err(|e| ssh::Error::Failed { what: format!("running {}", script.display()), detail: e.to_string() })?;
        Ok(ssh::Exit {
            code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status).map(|s| s.to_string()),
        })
    }

    /// Saves what `fetch.command` prints; says what was saved, or why nothing was.
    fn fetch(&self, connection: &ssh::Connection, fetch: &Fetch) -> String {
        let path = self.dir.join(&fetch.file);
        let outcome = std::fs::File::create(&path).map_err(|e| e.to_string()).and_then(|mut file| {
            let mut stderr = Vec::new();
            let exit = connection
                .run(&fetch.command, Instant::now() + FETCH_TIMEOUT, &mut file, &mut stderr, &mut || {})
                .map_err(|e| e.to_string())?;
            match exit.code {
                Some(0) => Ok(file.metadata().map(|m| m.len()).unwrap_or(0)),
                _ => Err(ssh::describe_failure(&exit, &stderr)),
            }
        });
        match outcome {
            Ok(bytes) => format!("{}: {bytes} bytes from `{}`", fetch.file, fetch.command),
            Err(why) => {
                let _ = std::fs::remove_file(&path);
                format!("{}: not saved: `{}`: {why}", fetch.file, fetch.command)
            }
        }
    }
}

/// The workload's stdout, to its file as it came, and line by line, stamped, to `workload.log`
/// and to the watch loop (progress, liveness, violations).
struct LineSink {
    file: File,
    log: File,
    start: Instant,
    pending: Vec<u8>,
    /// When the pending line's first byte came (host seconds since QEMU started).
    pending_at: f64,
    events: mpsc::Sender<SshEvent>,
}

impl LineSink {
    fn line(&mut self) -> std::io::Result<()> {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).trim_end_matches('\r').to_owned();
        writeln!(self.log, "{}", console::stamped(self.pending_at, &line))?;
        let _ = self.events.send(SshEvent::Line(line));
        Ok(())
    }

    /// A last line the workload left unfinished.
    fn finish(&mut self) -> std::io::Result<()> {
        match self.pending.is_empty() {
            true => Ok(()),
            false => self.line(),
        }
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        for &byte in buf {
            if self.pending.is_empty() {
                self.pending_at = self.start.elapsed().as_secs_f64();
            }
            match byte {
                b'\n' => self.line()?,
                _ => self.pending.push(byte),
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The result line's fields for a workload that ran over SSH, by the rules the init applies to
/// one it ran itself (images/workloads/README.md): 0 pass, 77 skip, 2 usage error, else fail.
fn result_fields(name: &str, exit: &ssh::Exit, elapsed: Duration) -> BTreeMap<String, String> {
    let (status, code, signal, detail) = match (exit.code, &exit.signal) {
        (Some(0), _) => ("pass", 0, "0".to_owned(), "ok".to_owned()),
        (Some(77), _) => ("skip", 77, "0".to_owned(), "skip".to_owned()),
        (Some(2), _) => ("error", 2, "0".to_owned(), "usage".to_owned()),
        (Some(code), _) => ("fail", code, "0".to_owned(), format!("exit-{code}")),
        (None, signal) => {
            let signal = signal.clone().unwrap_or_else(|| "unknown".into());
            ("fail", -1, signal.clone(), format!("killed-by-signal-{signal}"))
        }
    };
    [
        ("workload", name.to_owned()),
        ("status", status.to_owned()),
        ("exit", code.to_string()),
        ("signal", signal),
        ("elapsed_ms", elapsed.as_millis().to_string()),
        ("detail", detail),
        ("via", "ssh".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(code: Option<i32>, signal: Option<&str>, expect: &str) {
        let exit = ssh::Exit { code, signal: signal.map(str::to_owned) };
        let fields = result_fields("smoke", &exit, Duration::from_millis(1500));
        let got: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(got.join(" "), expect, "{code:?} {signal:?}");
    }

    #[test]
    fn result_lines_of_a_workload_run_over_ssh() {
        let rest = "via=ssh workload=smoke";
        check(Some(0), None, &format!("detail=ok elapsed_ms=1500 exit=0 signal=0 status=pass {rest}"));
        check(Some(77), None, &format!("detail=skip elapsed_ms=1500 exit=77 signal=0 status=skip {rest}"));
        check(Some(2), None, &format!("detail=usage elapsed_ms=1500 exit=2 signal=0 status=error {rest}"));
        check(Some(1), None, &format!("detail=exit-1 elapsed_ms=1500 exit=1 signal=0 status=fail {rest}"));
        check(Some(139), None, &format!("detail=exit-139 elapsed_ms=1500 exit=139 signal=0 status=fail {rest}"));
        check(
            None,
            Some("KILL"),
            &format!("detail=killed-by-signal-KILL elapsed_ms=1500 exit=-1 signal=KILL status=fail {rest}"),
        );
        check(
            None,
            None,
            &format!("detail=killed-by-signal-unknown elapsed_ms=1500 exit=-1 signal=unknown status=fail {rest}"),
        );
    }
}
