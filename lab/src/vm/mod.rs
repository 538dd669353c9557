//! Stage: boot a guest, watch its console, stop it, say how it ended.
//!
//! This stage judges nothing about the kernel: it reports what happened on the wire (ready line,
//! result line, silence, deadlines, QEMU's exit) and leaves the verdict to the runner and triage.
//! It takes two hints from triage as functions (`Watch`): `report_starts`, to stop a guest a grace
//! period after the kernel began reporting a failure instead of waiting for the workload deadline,
//! and `spinning`, to tell a guest that was paused from outside from one that is stuck.
//!
//! A guest that goes silent, overruns its workload deadline, or outlives a kernel report's grace
//! period is diagnosed before it is killed:
//! the host samples every vCPU through QMP (`sample`), then asks the guest for its own report with
//! an NMI where the machine has one, and listens for a bounded time.
//!
//! Every guest gets a user-mode NIC whose SSH port QEMU forwards to a free port on 127.0.0.1
//! (`ssh-command.sh` in the cell logs in by hand while it runs). A workload that runs over SSH
//! (`SshTask::Run`) runs on a thread of its own (`ssh`), which feeds its output, its exit
//! and a lost guest back into the same loop that watches the console.
//!
//! Invariant: `console.log` holds every console byte QEMU wrote, line by line as it arrived, each
//! line prefixed with the host time since QEMU started (`    1.234s| `), and is written through
//! (no buffering), so a crash of the lab loses nothing the guest said.

mod console;
pub mod qemu;
mod qmp;
mod sample;
pub mod ssh;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crate::process::{self, Group};
pub use qemu::{Accel, Machine};
use qmp::Qmp;
pub use sample::Sampling;
use crate::triage::HostSamples;

/// Seconds.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub boot: u64,
    pub silence: u64,
    pub workload: u64,
    pub report_grace: u64,
}

/// The guest's protocol lines (see images/workloads/README.md), as `key=value` words.
#[derive(Debug, Clone)]
pub struct ProtocolLine {
    /// Host seconds since QEMU started.
    pub at: f64,
    pub fields: BTreeMap<String, String>,
}

impl ProtocolLine {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself: power-off, or `-no-reboot` turning a panic's reboot into an exit.
    Exited,
    /// No ready line before the boot deadline.
    BootTimeout,
    /// Ready, but no result line before the workload deadline (the console kept talking).
    WorkloadTimeout,
    /// No console output for the silence deadline.
    Silent,
    /// The kernel started a failure report and the grace period for the rest of it ran out.
    StoppedAfterReport,
    /// QEMU refused to start or died with an error of its own.
    QemuFailed(String),
    /// The workload ran over SSH and the guest stopped answering it.
    LostConnection(String),
    /// The workload was to run over SSH and could not start: no server, a wrong host key, ...
    SshFailed(String),
}

impl End {
    /// The name `result.json` records.
    pub fn name(&self) -> &'static str {
        match self {
            End::Exited => "exited",
            End::BootTimeout => "boot-timeout",
            End::WorkloadTimeout => "workload-timeout",
            End::Silent => "silent",
            End::StoppedAfterReport => "stopped-after-report",
            End::QemuFailed(_) => "qemu-failed",
            End::LostConnection(_) => "lost-connection",
            End::SshFailed(_) => "ssh-failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Boot {
    pub end: End,
    pub ready: Option<ProtocolLine>,
    pub result: Option<ProtocolLine>,
    pub console_log: PathBuf,
    /// Console lines the guest printed: none at all means it never got going.
    pub console_lines: usize,
    /// Every round of host sampling, in order (also in `host-samples.json`). A round after which
    /// the guest ran on (it had been paused from outside) is followed by another or by the end.
    pub host: Vec<HostSamples>,
    /// Why the host could not sample, when it tried and failed.
    pub host_error: Option<String>,
    /// What happened over SSH, for a guest that had it.
    pub ssh: Option<SshOutcome>,
}

/// SSH into the guest: who it is, and what the lab does there.
pub struct GuestSsh {
    pub credentials: ssh::Credentials,
    pub task: SshTask,
}

pub enum SshTask {
    /// The init runs the workload; SSH is there for people (`ssh-command.sh`).
    None,
    /// Log in once the server answers and say so (`Seen::SshReady`), then leave it to people.
    WaitReady,
    /// Run the workload over SSH (the guest's init then holds: `lab.hold=1`).
    Run(SshWorkload),
}

/// What the watch loop passes on as it happens.
pub enum Seen<'a> {
    /// A console line.
    Console(&'a str),
    /// A line of the stdout of a workload that runs over SSH.
    Workload(&'a str),
    /// The guest's SSH server let the lab in: `uname -m` and `nproc` as it answered them.
    SshReady { machine: &'a str, cpus: Option<u32>, after_s: f64 },
}

#[derive(Clone)]
pub struct SshWorkload {
    /// The workload's name, for the result line.
    pub name: String,
    /// A command line for the guest's shell.
    pub command: String,
    /// Run it in the user's terminal (through OpenSSH, `ssh-command.sh -t`), not captured.
    pub interactive: bool,
    /// Run after the workload, each command's stdout saved in the cell directory (`file`): the
    /// guest's dmesg, its scheduler debug file, the workload's own output files. One that fails is
    /// noted, not an error.
    pub fetch: Vec<Fetch>,
}

#[derive(Debug, Clone)]
pub struct Fetch {
    pub command: String,
    pub file: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SshOutcome {
    pub port: u16,
    /// Host seconds since QEMU started when the guest's SSH server first answered.
    pub ready_s: Option<f64>,
    /// `uname -m` and `nproc` as the guest answered them over SSH.
    pub machine: Option<String>,
    pub cpus: Option<u32>,
    /// The files copied out, or why not.
    pub fetched: Vec<String>,
    pub error: Option<String>,
}

/// What the VM stage asks of triage while a guest runs, as functions: it never reads triage's data.
pub struct Watch<'a> {
    /// Does this console line open a kernel report?
    pub report_starts: fn(&str) -> bool,
    /// How to diagnose a silent or overdue guest; `None` kills it without looking.
    pub diagnosis: Option<Diagnosis<'a>>,
}

pub struct Diagnosis<'a> {
    pub sampling: Sampling,
    /// After sampling, inject an NMI and listen for what the guest prints.
    pub ask_guest: bool,
    /// Keep an ELF dump of the stuck guest's memory in the cell (`guest-memory.elf`, for `crash`).
    pub dump_memory: bool,
    /// Do these samples show a vCPU spinning in the kernel?
    pub spinning: &'a dyn Fn(&HostSamples) -> bool,
}

const CONSOLE_LOG: &str = "console.log";
const QEMU_COMMAND: &str = "qemu-command.sh";
const HOST_SAMPLES: &str = "host-samples.json";
const GUEST_MEMORY: &str = "guest-memory.elf";
/// The QMP socket left for people and tools (the lab uses one of its own, so both can be connected).
const QMP_LINK: &str = "qmp.sock";
const SSH_COMMAND: &str = "ssh-command.sh";
const SSH_KNOWN_HOSTS: &str = "known_hosts";
const SSH_OUTCOME: &str = "ssh.json";
const WORKLOAD_STDOUT: &str = "workload.stdout";
const WORKLOAD_STDERR: &str = "workload.stderr";
/// How often QEMU may fail to bind a port another process took after the lab picked it.
const PORT_ATTEMPTS: u32 = 3;
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the guest gets to answer an NMI, and how long a pause in its answer ends it.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
const ANSWER_QUIET: Duration = Duration::from_secs(3);
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// After the result line the guest powers off by itself; under TCG that takes a second or two.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);

pub fn boot(machine: &Machine, dir: &Path, deadlines: Deadlines, watch: &Watch, ssh: Option<&GuestSsh>, mut on_line: impl FnMut(Seen)) -> Result<Boot> {
    let mut attempt = 1;
    loop {
        let mut machine = machine.clone();
        if ssh.is_some() {
            machine.ssh_port = Some(qemu::free_local_port().context("no free TCP port on 127.0.0.1 for the guest's SSH")?);
        }
        let boot = boot_once(&machine, dir, deadlines, watch, ssh, &mut on_line)?;
        match &boot.end {
            End::QemuFailed(why) if qemu::is_port_clash(why) && attempt < PORT_ATTEMPTS => attempt += 1,
            _ => return Ok(boot),
        }
    }
}

fn boot_once(machine: &Machine, dir: &Path, deadlines: Deadlines, watch: &Watch, ssh: Option<&GuestSsh>, on_line: &mut impl FnMut(Seen)) -> Result<Boot> {
    let mut command = machine.command();
    if let (Some(port), Some(ssh)) = (machine.ssh_port, ssh) {
        write_ssh_command(dir, port, &ssh.credentials)?;
    }
    std::fs::write(dir.join(QEMU_COMMAND), format!("#!/bin/sh\n{}\n", qemu::shell_line(&command)))?;
    let sockets = Sockets::create(dir)?;
    for socket in [&sockets.lab, &sockets.people] {
        command.arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
    }
    let stderr_path = dir.join("qemu.stderr");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).with_context(|| format!("cannot create {}", stderr_path.display()))?);
    let console_log = dir.join(CONSOLE_LOG);
    let mut log = File::create(&console_log).with_context(|| format!("cannot create {}", console_log.display()))?;
    let start = Instant::now();
    let mut group = Group::spawn(command)?;
    let stdout = group.child_mut().stdout.take().context("QEMU has no stdout pipe")?;
    let lines = console::read_lines(stdout, start);

    let mut ready = None;
    let mut result = None;
    let mut last_output = start;
    let mut report_seen: Option<Instant> = None;
    let mut result_seen: Option<Instant> = None;
    let mut host: Vec<HostSamples> = Vec::new();
    let mut host_error = None;
    let mut console_lines = 0;
    // Set once the guest has been diagnosed: how it will end, after listening until `until`.
    let mut ending: Option<(End, Instant)> = None;
    let cancel = Arc::new(AtomicBool::new(false));
    let (ssh_tx, ssh_events) = mpsc::channel::<SshEvent>();
    let mut ssh_worker: Option<std::thread::JoinHandle<()>> = None;
    let mut ssh_outcome = machine.ssh_port.map(|port| SshOutcome { port, ..SshOutcome::default() });
    let mut ssh_end: Option<End> = None;
    let end = loop {
        while let Ok(event) = ssh_events.try_recv() {
            let outcome = ssh_outcome.as_mut().expect("SSH events come only from a guest with SSH");
            match event {
                SshEvent::Ready { machine, cpus } => {
                    let after_s = start.elapsed().as_secs_f64();
                    on_line(Seen::SshReady { machine: &machine, cpus, after_s });
                    outcome.ready_s = Some(after_s);
                    (outcome.machine, outcome.cpus) = (Some(machine), cpus);
                }
                SshEvent::Heard => last_output = Instant::now(),
                SshEvent::Line(text) => {
                    last_output = Instant::now();
                    on_line(Seen::Workload(&text));
                }
                SshEvent::Finished { fields } => {
                    result.get_or_insert(ProtocolLine { at: start.elapsed().as_secs_f64(), fields });
                    result_seen.get_or_insert_with(Instant::now);
                }
                SshEvent::Fetched(note) => outcome.fetched.push(note),
                SshEvent::Failed(error) => {
                    let text = error.to_string();
                    outcome.error = Some(text.clone());
                    ssh_end = match error {
                        ssh::Error::Lost { silent_s, .. } => Some(End::LostConnection(format!("no reply over SSH for {silent_s}s"))),
                        ssh::Error::Deadline { .. } => Some(End::WorkloadTimeout),
                        ssh::Error::Interrupted => None,
                        _ if result.is_some() => None,
                        _ => Some(End::SshFailed(text)),
                    };
                }
            }
        }
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok((at, text)) => {
                last_output = Instant::now();
                console_lines += 1;
                writeln!(log, "{at:>9.3}s| {text}").with_context(|| format!("cannot write {}", console_log.display()))?;
                on_line(Seen::Console(&text));
                if let Some(fields) = protocol_fields(&text, "LAB-READY") {
                    let line = ready.get_or_insert(ProtocolLine { at, fields });
                    let wanted = ssh.filter(|s| !matches!(s.task, SshTask::None));
                    if let (Some(port), Some(ssh), None) = (machine.ssh_port, wanted, &ssh_worker) {
                        if line.get("ssh").is_none_or(|s| s == "none") {
                            ssh_end = Some(End::SshFailed(format!("the guest has no SSH server (its ready line says ssh={})", line.get("ssh").unwrap_or("nothing"))));
                        } else {
                            let now = Instant::now();
                            let job = SshJob {
                                port,
                                credentials: ssh.credentials.clone(),
                                workload: match &ssh.task {
                                    SshTask::Run(workload) => Some(workload.clone()),
                                    _ => None,
                                },
                                dir: dir.to_path_buf(),
                                ready_deadline: now + Duration::from_secs(deadlines.boot),
                                workload_deadline: now + Duration::from_secs(deadlines.workload.saturating_add(5)),
                            };
                            ssh_worker = Some(job.spawn(cancel.clone(), ssh_tx.clone()));
                        }
                    }
                } else if let Some(fields) = protocol_fields(&text, "LAB-RESULT") {
                    result.get_or_insert(ProtocolLine { at, fields });
                    result_seen.get_or_insert_with(Instant::now);
                } else if report_seen.is_none() && (watch.report_starts)(&text) {
                    report_seen = Some(Instant::now());
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: QEMU is exiting; wait for its status below.
                let status = group.wait()?;
                if let Some((end, _)) = ending {
                    break end;
                }
                break match status.success() {
                    true => End::Exited,
                    false => End::QemuFailed(qemu_error(&stderr_path, status)),
                };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        process::check_interrupted()?;
        let now = Instant::now();
        if let Some((end, until)) = &ending {
            if now > *until || now - last_output > ANSWER_QUIET {
                break end.clone();
            }
            continue;
        }
        let secs = |d: u64| Duration::from_secs(d);
        let due = if let Some(at) = result_seen {
            (now - at > POWER_OFF_GRACE).then_some(End::Exited)
        } else if let Some(end) = ssh_end.take() {
            Some(end)
        } else if report_seen.is_some_and(|at| now - at > secs(deadlines.report_grace)) {
            Some(End::StoppedAfterReport)
        } else if now - last_output > secs(deadlines.silence) {
            Some(End::Silent)
        } else if ready.is_none() && now - start > secs(deadlines.boot) {
            Some(End::BootTimeout)
        } else {
            ready.as_ref().filter(|r| (now - start).as_secs_f64() - r.at > deadlines.workload as f64).map(|_| End::WorkloadTimeout)
        };
        let Some(end) = due else { continue };
        // After a report's grace period QEMU is still up when the guest could not even panic (its
        // CPUs stuck, as on pseries under TCG): the host sees the other side the report lacks.
        let diagnosis = watch.diagnosis.as_ref().filter(|_| matches!(end, End::Silent | End::WorkloadTimeout | End::StoppedAfterReport | End::LostConnection(_)));
        if let Some(diagnosis) = diagnosis {
            match diagnose(&sockets, machine, dir, diagnosis, console_lines, || start.elapsed().as_secs_f64()) {
                Ok(samples) => {
                    // Paused from outside and running normally now: its silence was not the kernel's.
                    // A lost SSH connection stays lost: the workload's session is gone.
                    let resume = samples.resumed && !(diagnosis.spinning)(&samples) && !matches!(end, End::LostConnection(_));
                    let listen = if samples.asked.as_deref() == Some(sample::NMI_INJECTED) { ANSWER_WAIT } else { Duration::ZERO };
                    host.push(samples);
                    crate::cache::write_atomic(&dir.join(HOST_SAMPLES), serde_json::to_string_pretty(&host)?.as_bytes())?;
                    last_output = Instant::now();
                    if !resume {
                        ending = Some((end, last_output + listen));
                    }
                    continue;
                }
                Err(e) => host_error = Some(format!("{e:#}")),
            }
        }
        break end;
    };
    group.kill();
    cancel.store(true, Ordering::SeqCst);
    if let Some(worker) = ssh_worker {
        // With QEMU gone and the flag set, every SSH wait ends within one poll.
        let _ = worker.join();
    }
    // What the SSH job said after the loop's last look: QEMU can exit before its events are read.
    for event in ssh_events.try_iter() {
        match event {
            SshEvent::Fetched(note) => ssh_outcome.as_mut().expect("a guest with SSH").fetched.push(note),
            SshEvent::Finished { fields } => {
                result.get_or_insert(ProtocolLine { at: start.elapsed().as_secs_f64(), fields });
            }
            _ => {}
        }
    }
    if let Some(outcome) = &ssh_outcome {
        crate::cache::write_atomic(&dir.join(SSH_OUTCOME), serde_json::to_string_pretty(outcome)?.as_bytes())?;
    }
    log.flush()?;
    Ok(Boot {
        end,
        ready,
        result,
        console_log,
        console_lines,
        host,
        host_error,
        ssh: ssh_outcome,
    })
}

/// For people: log into the running guest by hand, with the lab's key and the image's host key.
fn write_ssh_command(dir: &Path, port: u16, credentials: &ssh::Credentials) -> Result<()> {
    let known_hosts = dir.join(SSH_KNOWN_HOSTS);
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}\n", credentials.host_key))?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let line = qemu::shell_line(
        std::process::Command::new("ssh")
            .args(["-p", &port.to_string(), "-i"])
            .arg(absolute(&credentials.private_key))
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", absolute(&known_hosts).display()))
            .arg(format!("{}@127.0.0.1", credentials.user)),
    );
    let path = dir.join(SSH_COMMAND);
    std::fs::write(&path, format!("#!/bin/sh\n# While the guest runs: a shell, or the command given.\nexec {line} \"$@\"\n"))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

enum SshEvent {
    Ready { machine: String, cpus: Option<u32> },
    /// The guest answered (output, or a probe while the workload was quiet).
    Heard,
    /// A line of the workload's stdout.
    Line(String),
    /// The workload exited: the fields of the result line the init would have printed.
    Finished { fields: BTreeMap<String, String> },
    Fetched(String),
    Failed(ssh::Error),
}

/// The SSH side of one boot, on a thread of its own.
struct SshJob {
    port: u16,
    credentials: ssh::Credentials,
    workload: Option<SshWorkload>,
    dir: PathBuf,
    ready_deadline: Instant,
    workload_deadline: Instant,
}

impl SshJob {
    fn spawn(self, cancel: Arc<AtomicBool>, events: mpsc::Sender<SshEvent>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let interrupted: ssh::Interrupted = Arc::new(move || cancel.load(Ordering::SeqCst) || process::check_interrupted().is_err());
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
        let _ = connection.run("poweroff -f", Instant::now() + Duration::from_secs(5), &mut std::io::sink(), &mut std::io::sink(), &mut || {});
        Ok(())
    }

    /// The workload's stdout and stderr into the cell, its stdout also line by line to the loop.
    fn captured(&self, connection: &ssh::Connection, command: &str, events: &mpsc::Sender<SshEvent>) -> Result<ssh::Exit, ssh::Error> {
        let create = |name: &str| File::create(self.dir.join(name)).map_err(|e| ssh::Error::Failed { what: format!("creating {name}"), detail: e.to_string() });
        let mut stdout = LineSink { file: create(WORKLOAD_STDOUT)?, pending: Vec::new(), events: events.clone() };
        let mut stderr = create(WORKLOAD_STDERR)?;
        let exit = connection.run(command, self.workload_deadline, &mut stdout, &mut stderr, &mut || {
            let _ = events.send(SshEvent::Heard);
        })?;
        stdout.finish();
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
        let status = terminal.status().map_err(|e| ssh::Error::Failed { what: format!("running {}", script.display()), detail: e.to_string() })?;
        Ok(ssh::Exit { code: status.code(), signal: std::os::unix::process::ExitStatusExt::signal(&status).map(|s| s.to_string()) })
    }

    /// Saves what `fetch.command` prints; says what was saved, or why nothing was.
    fn fetch(&self, connection: &ssh::Connection, fetch: &Fetch) -> String {
        let path = self.dir.join(&fetch.file);
        let outcome = std::fs::File::create(&path)
            .map_err(|e| e.to_string())
            .and_then(|mut file| {
                let mut stderr = Vec::new();
                let exit = connection.run(&fetch.command, Instant::now() + FETCH_TIMEOUT, &mut file, &mut stderr, &mut || {}).map_err(|e| e.to_string())?;
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

/// The workload's stdout, to its file and line by line to the watch loop (progress, liveness).
struct LineSink {
    file: File,
    pending: Vec<u8>,
    events: mpsc::Sender<SshEvent>,
}

impl LineSink {
    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.events.send(SshEvent::Line(String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()));
        }
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        for &byte in buf {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).trim_end_matches('\r').to_owned();
                let _ = self.events.send(SshEvent::Line(line));
            } else {
                self.pending.push(byte);
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
    [("workload", name.to_owned()), ("status", status.to_owned()), ("exit", code.to_string()), ("signal", signal), ("elapsed_ms", elapsed.as_millis().to_string()), ("detail", detail), ("via", "ssh".to_owned())]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// Samples the vCPUs over the lab's QMP socket, then asks the guest for its own report.
fn diagnose(sockets: &Sockets, machine: &Machine, dir: &Path, diagnosis: &Diagnosis, console_lines: usize, clock: impl Fn() -> f64) -> Result<HostSamples> {
    let mut qmp = Qmp::connect(&sockets.lab, QMP_TIMEOUT)?;
    let mut samples = sample::sample(&mut qmp, machine.arch, &diagnosis.sampling, &sockets.dir, clock)?;
    samples.console_line = console_lines;
    let resumed_healthy = samples.resumed && !(diagnosis.spinning)(&samples);
    if diagnosis.dump_memory && !resumed_healthy {
        let file = dir.join(GUEST_MEMORY);
        match sample::dump_memory(&mut qmp, &file) {
            Ok(bytes) => samples.memory_dump = Some(format!("{GUEST_MEMORY}: {bytes} bytes")),
            Err(e) => samples.errors.push(format!("no memory dump: {e:#}")),
        }
    }
    if diagnosis.ask_guest && !resumed_healthy && samples.status_before == "running" {
        samples.asked = Some(sample::ask_guest(&mut qmp, machine.arch));
    }
    Ok(samples)
}

/// QMP sockets live in a short directory of their own (a unix socket path must fit in 108 bytes,
/// cell directories need not); the cell directory gets a link to the one for people. Both go
/// with the boot: a link to a dead QEMU would only mislead.
struct Sockets {
    dir: PathBuf,
    lab: PathBuf,
    people: PathBuf,
    link: PathBuf,
}

impl Sockets {
    fn create(cell: &Path) -> Result<Sockets> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lab-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let sockets = Sockets { lab: dir.join("lab.sock"), people: dir.join("qmp.sock"), dir, link: cell.join(QMP_LINK) };
        let _ = std::fs::remove_file(&sockets.link);
        std::os::unix::fs::symlink(&sockets.people, &sockets.link).with_context(|| format!("cannot create {}", sockets.link.display()))?;
        Ok(sockets)
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host time stamp of console line `line` (1-based) of a `console.log` text, as `boot` wrote it.
pub fn console_time(console: &str, line: usize) -> Option<f64> {
    let (stamp, _) = console.lines().nth(line.checked_sub(1)?)?.split_once("s| ")?;
    stamp.trim().parse().ok()
}

/// `... LAB-READY arch=x86_64 cpus=4` -> {arch: x86_64, cpus: 4}. The marker may follow kernel
/// output on the same line: printk can interleave with the init's write.
fn protocol_fields(line: &str, marker: &str) -> Option<BTreeMap<String, String>> {
    let rest = &line[line.find(marker)? + marker.len()..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some(rest.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn qemu_error(stderr: &Path, status: std::process::ExitStatus) -> String {
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    format!("QEMU exited with {status}: {}", last.iter().rev().take(3).rev().copied().collect::<Vec<_>>().join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, marker: &str, expect: Option<&str>) {
        let got = protocol_fields(line, marker).map(|f| f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
        assert_eq!(got.as_deref(), expect, "{line}");
    }

    #[test]
    fn protocol_lines() {
        check("LAB-READY arch=x86_64 cpus=4 kernel=7.3.4", "LAB-READY", Some("arch=x86_64 cpus=4 kernel=7.3.4"));
        check("[    1.5] random: crng init doneLAB-RESULT workload=smoke status=pass", "LAB-RESULT", Some("status=pass workload=smoke"));
        check("LAB-READYX arch=x86_64", "LAB-READY", None);
        check("LAB-RESULT", "LAB-RESULT", Some(""));
        check("nothing here", "LAB-READY", None);
    }
}
