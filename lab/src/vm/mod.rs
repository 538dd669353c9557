//! Stage: boot a guest, watch its console, stop it, say how it ended.
//!
//! This stage judges nothing about the kernel: it reports what happened on the wire (ready line,
//! result line, silence, deadlines, QEMU's exit) and leaves the verdict to the runner and triage.
//! It takes two hints from triage as functions (`Watch`): `report_starts`, to stop a guest a grace
//! period after the kernel began reporting a failure instead of waiting for the workload deadline
//! (or, when only the verdict is wanted, a shorter one after a workload's first violation line),
//! and `spinning`, to tell a guest that was paused from outside from one that is stuck.
//!
//! A guest that goes silent, overruns its workload deadline, or outlives a kernel report's grace
//! period is diagnosed before it is killed (one stopped for its workload's violation alone runs
//! normally: there is nothing to sample):
//! the host samples every vCPU through QMP (`sample`), then asks the guest for its own report with
//! an NMI where the machine has one, and listens for a bounded time.
//!
//! Every guest gets a user-mode NIC whose SSH port QEMU forwards to a free port on 127.0.0.1
//! (`ssh-command.sh` in the cell logs in by hand while it runs). A workload that runs over SSH
//! (`SshTask::Run`) runs on a thread of its own (`job`, over `ssh`), which feeds its output, its
//! exit and a lost guest back into the same loop that watches the console.
//!
//! The loop here only does the I/O: what each line, SSH event and tick means, and when and how
//! the boot ends, is decided by `watch::Watcher`, which never reads the clock.
//!
//! Invariant: `console.log` holds every console byte QEMU wrote, line by line as it arrived, each
//! line prefixed with the host time since QEMU started (`    1.234s| `), and is written through
//! (no buffering), so a crash of the lab loses nothing the guest said.

mod console;
mod job;
pub mod qemu;
mod qmp;
mod sample;
pub mod ssh;
mod watch;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::arch::Arch;
use crate::process::{self, Group};
use crate::triage::{HostSamples, Origin};
use crate::vocab::CellEnd;
use anyhow::{bail, Context, Result};
use job::{SshEvent, SshJob, SshThread};
pub use qemu::{Accel, Machine};
use qmp::Qmp;
pub use sample::{window as live_window, Sampling};
use watch::{Diagnosed, Due, Next, Rules, Watcher};

/// Seconds.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub boot: u64,
    pub silence: u64,
    pub workload: u64,
    pub report_grace: u64,
    /// After a workload's first violation line, the time left for more evidence (the kernel's
    /// own reports) before the boot ends; `None`: the workload runs to its end as usual.
    pub violation_grace: Option<u64>,
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
    /// The kernel started a failure report and the grace period for the rest of it ran out, or
    /// the workload reported a violation and the boot was to end a grace period after it.
    StoppedAfterReport,
    /// QEMU refused to start or died with an error of its own.
    QemuFailed(String),
    /// The workload ran over SSH and the guest stopped answering it.
    LostConnection(String),
    /// The workload was to run over SSH and could not start: no server, a wrong host key, ...
    SshFailed(String),
    /// The live watch saw a vCPU stuck for good while the guest still talked, and the longer
    /// look that followed bore it out.
    Stuck,
}

impl End {
    /// What `result.json` records: the end without its details.
    pub fn cell_end(&self) -> CellEnd {
        match self {
            End::Exited => CellEnd::Exited,
            End::BootTimeout => CellEnd::BootTimeout,
            End::WorkloadTimeout => CellEnd::WorkloadTimeout,
            End::Silent => CellEnd::Silent,
            End::StoppedAfterReport => CellEnd::StoppedAfterReport,
            End::QemuFailed(_) => CellEnd::QemuFailed,
            End::LostConnection(_) => CellEnd::LostConnection,
            End::SshFailed(_) => CellEnd::SshFailed,
            End::Stuck => CellEnd::Stuck,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Boot {
    pub end: End,
    pub ready: Option<ProtocolLine>,
    pub result: Option<ProtocolLine>,
    pub console_log: PathBuf,
    /// The stdout of a workload run over SSH, its lines stamped as the console's (`job`); there
    /// is no such file when none ran.
    pub workload_log: PathBuf,
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
    /// Does this line (the console's, or a workload's stdout over SSH) open a report, whose?
    pub report_starts: fn(&str) -> Option<Origin>,
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
    pub spinning: Box<dyn Fn(&HostSamples) -> bool + 'a>,
    /// Watch the guest from the host while its workload runs, not only once it went quiet.
    pub live: Option<Live<'a>>,
}

/// The live watch: from the ready line on, one round of samples (every vCPU, the VM stopped for
/// the few milliseconds it takes) every `every`; when the last rounds together show a vCPU stuck
/// for good (`stuck`: spinning with interrupts off or on a spinlock), the guest is diagnosed at
/// once, as a silent one is, instead of after the silence deadline (`Live::alarm`).
pub struct Live<'a> {
    pub every: Duration,
    /// Rounds that set off a look when the guest said nothing since the first of them.
    pub window: usize,
    /// Rounds that set off a look whatever the guest said.
    pub long_window: usize,
    pub stuck: Box<dyn Fn(&HostSamples) -> bool + 'a>,
    /// After such a look, how long the guest's own detectors may take to report what the host
    /// saw: the boot is not ended by a pause in the guest's answer before then.
    pub guest_wait: Duration,
}

const CONSOLE_LOG: &str = "console.log";
const QEMU_COMMAND: &str = "qemu-command.sh";
const HOST_SAMPLES: &str = "host-samples.json";
impl Live<'_> {
    /// Whether these rounds (oldest first, since the watch last began a row) set off a look, and
    /// what it rests on. `last_output_s`: host seconds of the guest's last word. Busy kernel paths
    /// (the load balancer under TCG) fill a short window now and then; a guest that still talks
    /// through it is not stuck, so a short window counts only when the console was quiet through it.
    pub fn alarm(&self, rounds: &[HostSamples], last_output_s: f64) -> Option<String> {
        let last = |n: usize| rounds.len().checked_sub(n).map(|from| &rounds[from..]);
        let stuck = |w: &&[HostSamples]| (self.stuck)(&sample::window(*w));
        let every = self.every.as_secs_f64();
        let said = |n: usize, from: f64, quiet: &str| format!("{n} rounds {every:.1} s apart from {from:.1} s{quiet}");
        if let Some(w) = last(self.window).filter(|w| last_output_s < w[0].started_s).filter(stuck) {
            return Some(said(self.window, w[0].started_s, ", the console quiet"));
        }
        last(self.long_window).filter(stuck).map(|w| said(self.long_window, w[0].started_s, ""))
    }
}

/// Every round of the live watch, a JSON line each, as it is taken: what a window rule is judged
/// on again (`lab bench --live-windows`).
pub const LIVE_ROUNDS: &str = "live-rounds.jsonl";
const GUEST_MEMORY: &str = "guest-memory.elf";
/// The QMP socket left for people and tools (the lab uses one of its own, so both can be connected).
const QMP_LINK: &str = "qmp.sock";
const SSH_COMMAND: &str = "ssh-command.sh";
const SSH_KNOWN_HOSTS: &str = "known_hosts";
const SSH_OUTCOME: &str = "ssh.json";
/// How often QEMU may fail to bind a port another process took after the lab picked it.
const PORT_ATTEMPTS: u32 = 3;

const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the loop waits for a console line before it looks at the time.
const POLL: Duration = Duration::from_millis(100);

pub fn boot(
    machine: &Machine,
    dir: &Path,
    deadlines: Deadlines,
    watch: &Watch,
    ssh: Option<&GuestSsh>,
    mut on_line: impl FnMut(Seen),
) -> Result<Boot> {
    let mut attempt = 1;
    loop {
        let mut machine = machine.clone();
        if ssh.is_some() {
            machine.ssh_port =
                Some(qemu::free_local_port().context("no free TCP port on 127.0.0.1 for the guest's SSH")?);
        }
        let boot = boot_once(&machine, dir, deadlines, watch, ssh, &mut on_line)?;
        match &boot.end {
            End::QemuFailed(why) if qemu::is_port_clash(why) && attempt < PORT_ATTEMPTS => attempt += 1,
            _ => return Ok(boot),
        }
    }
}

fn boot_once(
    machine: &Machine,
    dir: &Path,
    deadlines: Deadlines,
    watch: &Watch,
    ssh: Option<&GuestSsh>,
    on_line: &mut impl FnMut(Seen),
) -> Result<Boot> {
    let mut guest = Guest::start(machine, dir, deadlines, watch, ssh)?;
    let ssh_job = ssh.is_some_and(|s| !matches!(s.task, SshTask::None));
    let rules = Rules {
        deadlines,
        report_starts: watch.report_starts,
        diagnoses: watch.diagnosis.is_some(),
        live: watch.diagnosis.as_ref().and_then(|d| d.live.as_ref()),
        ssh_port: machine.ssh_port,
        ssh_job: ssh_job && machine.ssh_port.is_some(),
    };
    let mut cell = Watcher::new(rules, guest.start);
    let end = guest.watch(&mut cell, on_line)?;
    guest.finish(cell, end)
}

/// One boot's I/O: QEMU, the files the cell keeps of it, the SSH job; `Watcher` decides.
struct Guest<'a> {
    machine: &'a Machine<'a>,
    dir: &'a Path,
    deadlines: Deadlines,
    watch: &'a Watch<'a>,
    ssh: Option<&'a GuestSsh>,
    qemu: Group,
    /// When QEMU started.
    start: Instant,
    lines: mpsc::Receiver<(f64, String)>,
    log: File,
    console_log: PathBuf,
    stderr: PathBuf,
    sockets: Sockets,
    /// The lab's QMP connection, made when first needed and kept (QEMU takes one client a socket).
    qmp: Option<Qmp>,
    job: SshThread,
}

impl<'a> Guest<'a> {
    fn start(
        machine: &'a Machine,
        dir: &'a Path,
        deadlines: Deadlines,
        watch: &'a Watch,
        ssh: Option<&'a GuestSsh>,
    ) -> Result<Guest<'a>> {
        let mut command = machine.command();
        if let (Some(port), Some(ssh)) = (machine.ssh_port, ssh) {
            write_ssh_command(dir, port, &ssh.credentials)?;
        }
        std::fs::write(dir.join(QEMU_COMMAND), format!("#!/bin/sh\n{}\n", qemu::shell_line(&command)))?;
        let sockets = Sockets::create(dir)?;
        for socket in [&sockets.lab, &sockets.people] {
            command.arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
        }
        let stderr = dir.join("qemu.stderr");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).with_context(|| format!("cannot create {}", stderr.display()))?);
        let console_log = dir.join(CONSOLE_LOG);
        let log = File::create(&console_log).with_context(|| format!("cannot create {}", console_log.display()))?;
        let start = Instant::now();
        let mut qemu = Group::spawn(command)?;
        let stdout = qemu.child_mut().stdout.take().context("QEMU has no stdout pipe")?;
        let lines = console::read_lines(stdout, start);
        let job = SshThread::new();
        Ok(Guest {
            machine,
            dir,
            deadlines,
            watch,
            ssh,
            qemu,
            start,
            lines,
            log,
            console_log,
            stderr,
            sockets,
            qmp: None,
            job,
        })
    }

    /// Feeds what happens to `cell` and does what it says, until the boot ends. The time is
    /// looked at only after a poll without a console line.
    fn watch(&mut self, cell: &mut Watcher, on_line: &mut impl FnMut(Seen)) -> Result<End> {
        loop {
            for event in self.job.events() {
                hear(cell, event, on_line);
            }
            match self.lines.recv_timeout(POLL) {
                Ok((at, text)) => {
                    self.console(cell, at, &text, on_line)?;
                    continue;
                }
                // stdout closed: QEMU is exiting; its status says how.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.qemu.wait()?;
                    let failure = (!status.success()).then(|| qemu_error(&self.stderr, status));
                    return Ok(cell.closed(failure));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            match cell.tick(Instant::now(), process::interrupted()) {
                None => {}
                Some(Due::Interrupted(signal)) => bail!(process::Interrupted(signal)),
                Some(Due::End(end)) => return Ok(end),
                Some(Due::Diagnose(end)) => {
                    if let Some(end) = self.diagnose(cell, end)? {
                        return Ok(end);
                    }
                }
                Some(Due::Sample) => {
                    let round = self.round();
                    if let Some(end) = cell.sampled(round.map_err(|e| format!("{e:#}")), Instant::now()) {
                        if let Some(end) = self.diagnose(cell, end)? {
                            return Ok(end);
                        }
                    }
                }
            }
        }
    }

    fn console(&mut self, cell: &mut Watcher, at: f64, text: &str, on_line: &mut impl FnMut(Seen)) -> Result<()> {
        let now = Instant::now();
        writeln!(self.log, "{}", console::stamped(at, text))
            .with_context(|| format!("cannot write {}", self.console_log.display()))?;
        on_line(Seen::Console(text));
        let next = cell.console(at, text, now);
        if let (Next::StartSsh, Some(port), Some(ssh)) = (next, self.machine.ssh_port, self.ssh) {
            self.job.start(SshJob::new(port, ssh, self.dir, self.deadlines, self.start, Instant::now()));
        }
        Ok(())
    }

    /// The lab's QMP connection; a failed command drops it (`with_qmp`), so the next use connects
    /// again.
    fn with_qmp<T>(&mut self, what: impl FnOnce(&mut Qmp) -> Result<T>) -> Result<T> {
        let qmp = match &mut self.qmp {
            Some(qmp) => qmp,
            None => self.qmp.insert(Qmp::connect(&self.sockets.lab, QMP_TIMEOUT)?),
        };
        let done = what(qmp);
        if done.is_err() {
            self.qmp = None;
        }
        done
    }

    /// One round of the live watch, kept in the cell.
    fn round(&mut self) -> Result<Option<HostSamples>> {
        let every = self.watch.diagnosis.as_ref().and_then(|d| d.live.as_ref()).map_or(POLL, |live| live.every);
        let (arch, start, scratch) = (self.machine.arch, self.start, self.sockets.dir.clone());
        let round = self.with_qmp(|qmp| sample::round(qmp, arch, every, &scratch, || start.elapsed().as_secs_f64()))?;
        if let Some(round) = &round {
            let path = self.dir.join(LIVE_ROUNDS);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(file, "{}", serde_json::to_string(round)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(round)
    }

    /// Diagnoses the guest for `end`, keeping the samples in the cell: the end due now, if any.
    fn diagnose(&mut self, cell: &mut Watcher, end: End) -> Result<Option<End>> {
        let diagnosis = self.watch.diagnosis.as_ref().expect("the watcher diagnoses only with a diagnosis");
        let start = self.start;
        let clock = || start.elapsed().as_secs_f64();
        let (arch, dir, scratch) = (self.machine.arch, self.dir, self.sockets.dir.clone());
        let alarm = end == End::Stuck;
        let lines = cell.console_lines();
        let found =
            self.with_qmp(|qmp| diagnose(qmp, arch, dir, &scratch, diagnosis, alarm, clock)).map(|mut found| {
                found.samples.console_line = lines;
                found
            });
        let sampled = found.is_ok();
        let due = cell.diagnosed(end, found.map_err(|e| format!("{e:#}")), Instant::now());
        if sampled {
            let host = serde_json::to_string_pretty(cell.host())?;
            crate::cache::write_atomic(&self.dir.join(HOST_SAMPLES), host.as_bytes())?;
        }
        Ok(due)
    }

    /// Kills QEMU, stops the SSH job, and keeps what the cell keeps of the boot.
    fn finish(mut self, mut cell: Watcher, end: End) -> Result<Boot> {
        self.qemu.kill();
        for event in self.job.stop() {
            cell.late(event, Instant::now());
        }
        let boot = cell.into_boot(end, self.console_log);
        if let Some(outcome) = &boot.ssh {
            crate::cache::write_atomic(&self.dir.join(SSH_OUTCOME), serde_json::to_string_pretty(outcome)?.as_bytes())?;
        }
        self.log.flush()?;
        Ok(boot)
    }
}

/// Passes on what the SSH job said, and tells `cell`.
fn hear(cell: &mut Watcher, event: SshEvent, on_line: &mut impl FnMut(Seen)) {
    let now = Instant::now();
    match &event {
        SshEvent::Ready { machine, cpus } => on_line(Seen::SshReady { machine, cpus: *cpus, after_s: cell.secs(now) }),
        SshEvent::Line(text) => on_line(Seen::Workload(text)),
        _ => {}
    }
    cell.ssh(event, now);
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
    std::fs::write(
        &path,
        format!("#!/bin/sh\n# While the guest runs: a shell, or the command given.\nexec {line} \"$@\"\n"),
    )?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// Samples the vCPUs over the lab's QMP connection, then asks the guest for its own report.
/// `alarm`: the live watch asked, while the guest still ran; a guest resumed from a pause runs
/// on too, unless the samples show a vCPU spinning.
fn diagnose(
    qmp: &mut Qmp,
    arch: Arch,
    dir: &Path,
    scratch: &Path,
    diagnosis: &Diagnosis,
    alarm: bool,
    clock: impl Fn() -> f64,
) -> Result<Diagnosed> {
    let mut samples = sample::sample(qmp, arch, &diagnosis.sampling, scratch, clock)?;
    let running_normally = (samples.resumed || alarm) && !(diagnosis.spinning)(&samples);
    if diagnosis.dump_memory && !running_normally {
        let file = dir.join(GUEST_MEMORY);
        match sample::dump_memory(qmp, &file) {
            Ok(bytes) => samples.memory_dump = Some(format!("{GUEST_MEMORY}: {bytes} bytes")),
            Err(e) => samples.errors.push(format!("no memory dump: {e:#}")),
        }
    }
    if diagnosis.ask_guest && !running_normally && samples.status_before == "running" {
        samples.asked = Some(sample::ask_guest(qmp, arch));
    }
    Ok(Diagnosed { samples, running_normally })
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
        let sockets =
            Sockets { lab: dir.join("lab.sock"), people: dir.join("qmp.sock"), dir, link: cell.join(QMP_LINK) };
        let _ = std::fs::remove_file(&sockets.link);
        std::os::unix::fs::symlink(&sockets.people, &sockets.link)
            .with_context(|| format!("cannot create {}", sockets.link.display()))?;
        Ok(sockets)
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host time stamp of line `line` (1-based) of a `console.log` or `workload.log` text, as
/// `boot` wrote it.
pub fn console_time(console: &str, line: usize) -> Option<f64> {
    line_time(console.lines().nth(line.checked_sub(1)?)?)
}

/// The host time stamp of one line of a cell's log (`console::stamped`).
pub fn line_time(line: &str) -> Option<f64> {
    line.split_once("s| ")?.0.trim().parse().ok()
}

/// `... LAB-READY arch=x86_64 cpus=4` -> {arch: x86_64, cpus: 4}. The marker may follow kernel
/// output on the same line: printk can interleave with the init's write.
pub fn protocol_fields(line: &str, marker: &str) -> Option<BTreeMap<String, String>> {
    let rest = &line[line.find(marker)? + marker.len()..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some(
        rest.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
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
        let got = protocol_fields(line, marker)
            .map(|f| f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
        assert_eq!(got.as_deref(), expect, "{line}");
    }

    #[test]
    fn protocol_lines() {
        check("LAB-READY arch=x86_64 cpus=4 kernel=7.3.4", "LAB-READY", Some("arch=x86_64 cpus=4 kernel=7.3.4"));
        check(
            "[    1.5] random: crng init doneLAB-RESULT workload=smoke status=pass",
            "LAB-RESULT",
            Some("status=pass workload=smoke"),
        );
        check("LAB-READYX arch=x86_64", "LAB-READY", None);
        check("LAB-RESULT", "LAB-RESULT", Some(""));
        check("nothing here", "LAB-READY", None);
    }
}
