//! The watch loop's rules without its I/O: what a console line, an SSH event, the passing of time
//! or QEMU's exit mean for a boot, and when and how it ends. The clock is an argument (`now`), so
//! the rules are tested case by case with a fake one; `mod.rs` reads the clock, the console and
//! QMP, and does what these transitions say.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::job::SshEvent;
use super::sample::NMI_INJECTED;
use super::{protocol_fields, ssh, Boot, Deadlines, End, Live, ProtocolLine, SshOutcome};
use crate::process::Signal;
use crate::triage::{HostSamples, Origin};

/// How long the guest gets to answer an NMI, and how long a pause in its answer ends it.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
const ANSWER_QUIET: Duration = Duration::from_secs(3);
/// After the result line the guest powers off by itself; under TCG that takes a second or two.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);

/// What a boot is watched for, fixed before it starts.
pub(super) struct Rules<'a> {
    pub deadlines: Deadlines,
    /// Does this line open a report, the kernel's or a workload's? Asked of every console line,
    /// and of every line of a workload's stdout over SSH.
    pub report_starts: fn(&str) -> Option<Origin>,
    /// A silent or overdue guest is diagnosed before it ends (`Watch::diagnosis`).
    pub diagnoses: bool,
    /// While the workload runs, the host samples the guest now and then (`Live`).
    pub live: Option<&'a Live<'a>>,
    /// The forwarded SSH port: its outcome goes into `ssh.json`.
    pub ssh_port: Option<u16>,
    /// The SSH job is to start with the ready line (the lab logs in, not only people).
    pub ssh_job: bool,
}

/// What to do about a console line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Wait,
    /// The guest is ready and has an SSH server: start the SSH job now.
    StartSsh,
}

/// What is due at a tick.
#[derive(Debug)]
pub(super) enum Due {
    End(End),
    /// Diagnose the guest (`Watcher::diagnosed`), then end with this, unless it runs on.
    Diagnose(End),
    /// A signal came: stop at once.
    Interrupted(Signal),
    /// Take one round of samples for the live watch (`Watcher::sampled`).
    Sample,
}

/// What diagnosing the guest found.
pub(super) struct Diagnosed {
    pub samples: HostSamples,
    /// It had been paused from outside, and runs with no vCPU spinning now that it was resumed.
    pub running_normally: bool,
}

/// The state of one boot as the watch loop sees it.
pub(super) struct Watcher<'a> {
    rules: Rules<'a>,
    start: Instant,
    ready: Option<ProtocolLine>,
    result: Option<ProtocolLine>,
    last_output: Instant,
    /// When the kernel began its first report.
    report_seen: Option<Instant>,
    /// When the workload printed its first violation.
    violation_seen: Option<Instant>,
    result_seen: Option<Instant>,
    /// How the SSH job says the boot ends, for the next tick.
    ssh_end: Option<End>,
    /// Set once the guest has been diagnosed: how it will end, after listening until the first
    /// instant, and not ended by a pause in its answer before the second (the guest's own
    /// detectors' time, after a look the live watch set off).
    ending: Option<(End, Instant, Instant)>,
    console_lines: usize,
    host: Vec<HostSamples>,
    host_error: Option<String>,
    ssh: Option<SshOutcome>,
    /// The live watch's last rounds, and when the next one is due (from the ready line on).
    rounds: VecDeque<HostSamples>,
    next_round: Option<Instant>,
    /// Why the live watch stopped (QMP failed it): the deadlines still end the boot.
    live_error: Option<String>,
    /// What the live watch saw, for the diagnosis it sets off, and when.
    alarm: Option<(String, Instant)>,
}

impl<'a> Watcher<'a> {
    /// `start`: when QEMU started.
    pub(super) fn new(rules: Rules<'a>, start: Instant) -> Watcher<'a> {
        let ssh = rules.ssh_port.map(|port| SshOutcome { port, ..SshOutcome::default() });
        Watcher {
            rules,
            start,
            ready: None,
            result: None,
            last_output: start,
            report_seen: None,
            violation_seen: None,
            result_seen: None,
            ssh_end: None,
            ending: None,
            console_lines: 0,
            host: Vec::new(),
            host_error: None,
            ssh,
            rounds: VecDeque::new(),
            next_round: None,
            live_error: None,
            alarm: None,
        }
    }

    /// Host seconds since QEMU started.
    pub(super) fn secs(&self, now: Instant) -> f64 {
        (now - self.start).as_secs_f64()
    }

    pub(super) fn console_lines(&self) -> usize {
        self.console_lines
    }

    /// Every round of samples so far (`host-samples.json`).
    pub(super) fn host(&self) -> &[HostSamples] {
        &self.host
    }

    /// A console line came at `now`; `at` is its time stamp (host seconds since QEMU started).
    pub(super) fn console(&mut self, at: f64, text: &str, now: Instant) -> Next {
        self.last_output = now;
        self.console_lines += 1;
        if let Some(fields) = protocol_fields(text, "LAB-READY") {
            if self.ready.is_none() {
                self.next_round = self.rules.live.map(|live| now + live.every);
            }
            self.ready.get_or_insert(ProtocolLine { at, fields });
            return self.ready_for_ssh();
        }
        if let Some(fields) = protocol_fields(text, "LAB-RESULT") {
            self.result.get_or_insert(ProtocolLine { at, fields });
            self.result_seen.get_or_insert(now);
        } else if let Some(origin) = (self.rules.report_starts)(text) {
            let seen = match origin {
                Origin::Kernel => &mut self.report_seen,
                Origin::Workload => &mut self.violation_seen,
            };
            seen.get_or_insert(now);
        }
        Next::Wait
    }

    /// The first ready line says whether the guest has an SSH server for the job.
    fn ready_for_ssh(&mut self) -> Next {
        let server = self.ready.as_ref().and_then(|line| line.get("ssh"));
        match server {
            _ if !self.rules.ssh_job => Next::Wait,
            None | Some("none") => {
                let says = server.unwrap_or("nothing");
                let why = format!("the guest has no SSH server (its ready line says ssh={says})");
                self.ssh_end = Some(End::SshFailed(why));
                Next::Wait
            }
            Some(_) => {
                self.rules.ssh_job = false;
                Next::StartSsh
            }
        }
    }

    /// The SSH job said something at `now`.
    pub(super) fn ssh(&mut self, event: SshEvent, now: Instant) {
        let at = self.secs(now);
        let outcome = self.ssh.as_mut().expect("SSH events come only from a guest with SSH");
        match event {
            SshEvent::Ready { machine, cpus } => {
                outcome.ready_s = Some(at);
                (outcome.machine, outcome.cpus) = (Some(machine), cpus);
            }
            SshEvent::Heard => self.last_output = now,
            SshEvent::Line(text) => {
                self.last_output = now;
                // Only the workload's own report comes over SSH: the kernel's are on the console.
                if (self.rules.report_starts)(&text) == Some(Origin::Workload) {
                    self.violation_seen.get_or_insert(now);
                }
            }
            SshEvent::Finished { fields } => {
                self.result.get_or_insert(ProtocolLine { at, fields });
                self.result_seen.get_or_insert(now);
            }
            SshEvent::Fetched(note) => outcome.fetched.push(note),
            SshEvent::Failed(error) => {
                let text = error.to_string();
                outcome.error = Some(text.clone());
                self.ssh_end = match error {
                    ssh::Error::Lost { silent_s, .. } => {
                        Some(End::LostConnection(format!("no reply over SSH for {silent_s}s")))
                    }
                    ssh::Error::Deadline { .. } => Some(End::WorkloadTimeout),
                    ssh::Error::Interrupted => None,
                    _ if self.result.is_some() => None,
                    _ => Some(End::SshFailed(text)),
                };
            }
        }
    }

    /// What the SSH job said after the end (QEMU can exit before its events are read): only the
    /// files it fetched and its result still count.
    pub(super) fn late(&mut self, event: SshEvent, now: Instant) {
        match event {
            SshEvent::Fetched(note) => self.ssh.as_mut().expect("a guest with SSH").fetched.push(note),
            SshEvent::Finished { fields } => {
                let at = self.secs(now);
                self.result.get_or_insert(ProtocolLine { at, fields });
            }
            _ => {}
        }
    }

    /// The loop looks at the time (when the console was quiet for a poll); `interrupted`: the
    /// signal that came, if one did.
    pub(super) fn tick(&mut self, now: Instant, interrupted: Option<Signal>) -> Option<Due> {
        if let Some(signal) = interrupted {
            return Some(Due::Interrupted(signal));
        }
        if let Some((end, until, patient)) = &self.ending {
            let over = now > *until || (now > *patient && now - self.last_output > ANSWER_QUIET);
            return over.then(|| Due::End(end.clone()));
        }
        let Some(end) = self.due(now) else {
            return self.round_due(now).then_some(Due::Sample);
        };
        // After a kernel report's grace period QEMU is still up when the guest could not even
        // panic (its CPUs stuck, as on pseries under TCG): the host sees the other side the report
        // lacks. A guest stopped for its workload's violation alone is running normally.
        let looked_at = match end {
            End::StoppedAfterReport => self.report_seen.is_some(),
            End::Silent | End::WorkloadTimeout | End::LostConnection(_) => true,
            _ => false,
        };
        Some(if self.rules.diagnoses && looked_at { Due::Diagnose(end) } else { Due::End(end) })
    }

    /// The end that is due, first things first.
    fn due(&mut self, now: Instant) -> Option<End> {
        let secs = Duration::from_secs;
        let deadlines = self.rules.deadlines;
        if let Some(at) = self.result_seen {
            return (now - at > POWER_OFF_GRACE).then_some(End::Exited);
        }
        if let Some(end) = self.ssh_end.take() {
            return Some(end);
        }
        if report_end(self.report_seen, self.violation_seen, &deadlines).is_some_and(|at| now > at) {
            Some(End::StoppedAfterReport)
        } else if now - self.last_output > secs(deadlines.silence) {
            Some(End::Silent)
        } else if self.ready.is_none() && now - self.start > secs(deadlines.boot) {
            Some(End::BootTimeout)
        } else {
            let overdue = |ready: &&ProtocolLine| self.secs(now) - ready.at > deadlines.workload as f64;
            self.ready.as_ref().filter(overdue).map(|_| End::WorkloadTimeout)
        }
    }

    /// Is a round of the live watch due? Only while the workload runs and nobody has told yet:
    /// a kernel report has its own grace and look, a result line ends the boot anyway.
    fn round_due(&self, now: Instant) -> bool {
        let quiet = self.report_seen.is_none() && self.result_seen.is_none() && self.live_error.is_none();
        quiet && self.next_round.is_some_and(|at| now >= at)
    }

    /// A round of the live watch came back at `now` (`Ok(None)`: QEMU was not running the guest,
    /// `Err`: why QMP failed): `Some(end)` when the last rounds set off a look (`Live::alarm`), and
    /// the guest is to be diagnosed for that end at once.
    pub(super) fn sampled(&mut self, round: Result<Option<HostSamples>, String>, now: Instant) -> Option<End> {
        let live = self.rules.live.expect("rounds are due only with a live watch");
        self.next_round = Some(now + live.every);
        match round {
            Err(why) => {
                self.live_error = Some(why);
                return None;
            }
            // Paused from outside: a window across the pause would see frozen vCPUs as stuck.
            Ok(None) => self.rounds.clear(),
            Ok(Some(round)) => self.rounds.push_back(round),
        }
        while self.rounds.len() > live.window.max(live.long_window) {
            self.rounds.pop_front();
        }
        let said = self.secs(self.last_output);
        self.alarm = Some((live.alarm(self.rounds.make_contiguous(), said)?, now));
        self.rounds.clear();
        Some(End::Stuck)
    }

    /// What diagnosing the guest for `end` found (`Err`: why the host could not look), at `now`:
    /// the end due at once, or `None` to watch on (listening to its answer first, unless it runs
    /// normally).
    pub(super) fn diagnosed(&mut self, end: End, found: Result<Diagnosed, String>, now: Instant) -> Option<End> {
        let found = match found {
            Ok(found) => found,
            // The live watch's look could not be had: the guest runs on, unwatched, to its deadlines.
            Err(why) if end == End::Stuck => {
                self.live_error = Some(why);
                self.alarm = None;
                return None;
            }
            Err(why) => {
                self.host_error = Some(why);
                return Some(end);
            }
        };
        // Paused from outside and running normally now: its silence was not the kernel's.
        // A lost SSH connection stays lost: the workload's session is gone.
        let resume = found.running_normally && !matches!(end, End::LostConnection(_));
        let nmi = found.samples.asked.as_deref() == Some(NMI_INJECTED);
        let listen = if nmi { ANSWER_WAIT } else { Duration::ZERO };
        let mut samples = found.samples;
        let alarm = self.alarm.take();
        samples.alarm = alarm.as_ref().map(|(what, _)| what.clone());
        self.host.push(samples);
        self.last_output = now;
        if resume {
            // A live alarm the longer look did not bear out: the watch goes on, with a new window.
            self.next_round = self.next_round.map(|_| now + self.rules.live.map_or(Duration::ZERO, |l| l.every));
        } else {
            // The live watch looked early: the guest's own detectors get their time to report.
            let patient = match (&end, alarm, self.rules.live) {
                (End::Stuck, Some((_, at)), Some(live)) => at + live.guest_wait,
                _ => now,
            };
            self.ending = Some((end, (now + listen).max(patient), patient));
        }
        None
    }

    /// QEMU closed its stdout: it exited, by itself or with `failure`. A guest diagnosed before
    /// ends as the diagnosis said.
    pub(super) fn closed(&mut self, failure: Option<String>) -> End {
        match self.ending.take() {
            Some((end, ..)) => end,
            None => failure.map_or(End::Exited, End::QemuFailed),
        }
    }

    pub(super) fn into_boot(self, end: End, console_log: PathBuf) -> Boot {
        Boot {
            end,
            ready: self.ready,
            result: self.result,
            // The job writes it beside console.log, in the cell.
            workload_log: console_log.with_file_name(super::job::WORKLOAD_LOG),
            console_log,
            console_lines: self.console_lines,
            host: self.host,
            host_error: self.host_error.or(self.live_error.map(|e| format!("the live watch stopped: {e}"))),
            ssh: self.ssh,
        }
    }
}

/// When the reports seen end the boot: a kernel report's grace after the kernel's first, and, when
/// the deadlines allow it, a violation's grace after the workload's first; the later of the two, so
/// that a kernel report begun during a violation's grace still gets all of its own.
fn report_end(kernel: Option<Instant>, violation: Option<Instant>, deadlines: &Deadlines) -> Option<Instant> {
    let secs = Duration::from_secs;
    let kernel = kernel.map(|at| at + secs(deadlines.report_grace));
    let violation = violation.zip(deadlines.violation_grace).map(|(at, grace)| at + secs(grace));
    kernel.max(violation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triage::{Irqs, Sample, VcpuSamples};

    const DEADLINES: Deadlines =
        Deadlines { boot: 20, silence: 30, workload: 60, report_grace: 5, violation_grace: None };
    /// The loop looks at the time after a poll without a console line.
    const POLL: Duration = Duration::from_millis(100);

    /// The live watch of the tests: a round a second, three in a row; a sample at pc 1 is stuck.
    fn live() -> &'static Live<'static> {
        let stuck = |samples: &HostSamples| samples.vcpus.iter().flat_map(|v| &v.samples).all(|s| s.pc == 1);
        let guest_wait = Duration::from_secs(10);
        let every = Duration::from_secs(1);
        Box::leak(Box::new(Live { every, window: 3, long_window: 6, stuck: Box::new(stuck), guest_wait }))
    }

    /// A round of the live watch: `s` stuck, `b` busy, `p` QEMU not running the guest, `e` QMP failed.
    fn round(word: &str, at: f64) -> Result<Option<HostSamples>, String> {
        let pc = match word {
            "s" => 1,
            "b" => 2,
            "p" => return Ok(None),
            "e" => return Err("QMP: broken pipe".into()),
            _ => panic!("no such round: {word}"),
        };
        let sample = Sample { pc, sp: 0, lr: None, kernel: true, irqs: Irqs::Off, frames: Vec::new() };
        let vcpus = vec![VcpuSamples { index: 0, samples: vec![sample] }];
        Ok(Some(HostSamples { started_s: at, status_before: "running".into(), vcpus, ..HostSamples::default() }))
    }

    fn rules(setup: &str) -> Rules<'static> {
        let verdict_only = setup.split_whitespace().any(|word| word == "verdict");
        Rules {
            deadlines: Deadlines { violation_grace: verdict_only.then_some(2), ..DEADLINES },
            report_starts: |line| match line {
                _ if line.starts_with("BUG:") => Some(Origin::Kernel),
                _ if line.contains(": VIOLATION") => Some(Origin::Workload),
                _ => None,
            },
            diagnoses: setup.contains("look="),
            live: setup.split_whitespace().any(|word| word.starts_with("rounds=")).then(live),
            ssh_port: Some(2222),
            ssh_job: setup.split_whitespace().any(|word| word == "ssh"),
        }
    }

    /// What the host finds when it looks: `healthy` (paused from outside, runs normally once
    /// resumed), `stuck`, `nmi` (stuck, and an NMI injected), `failed`.
    fn look(word: &str) -> Result<Diagnosed, String> {
        let (samples, running_normally) = match word {
            "healthy" => (HostSamples { resumed: true, ..HostSamples::default() }, true),
            "stuck" => (HostSamples::default(), false),
            "nmi" => (HostSamples { asked: Some(NMI_INJECTED.into()), ..HostSamples::default() }, false),
            "failed" => return Err("QMP: connection refused".into()),
            _ => panic!("no such look: {word}"),
        };
        Ok(Diagnosed { samples, running_normally })
    }

    /// `line=TEXT`: a line of the workload's stdout that says TEXT (`line`: one that says `tick`).
    fn ssh_event(word: &str) -> SshEvent {
        let error = |e| SshEvent::Failed(e);
        let what = || "smoke".to_owned();
        if let Some(text) = word.strip_prefix("line=") {
            return SshEvent::Line(text.into());
        }
        match word {
            "ready" => SshEvent::Ready { machine: "x86_64".into(), cpus: Some(4) },
            "heard" => SshEvent::Heard,
            "line" => SshEvent::Line("tick".into()),
            "fetched" => SshEvent::Fetched("dmesg.txt: 10 bytes from `dmesg`".into()),
            "lost" => error(ssh::Error::Lost { what: what(), silent_s: 15 }),
            "deadline" => error(ssh::Error::Deadline { what: what(), limit_s: 65 }),
            "refused" => error(ssh::Error::Failed { what: what(), detail: "refused".into() }),
            "cancelled" => error(ssh::Error::Interrupted),
            _ => {
                let code = word.strip_prefix("exit=").expect("an SSH event");
                SshEvent::Finished { fields: [("exit".to_owned(), code.to_owned())].into() }
            }
        }
    }

    /// Plays `script` against a watcher set up by `setup` and says what happened (`what@seconds`).
    /// `setup`: `ssh` (the SSH job is wanted), `verdict` (only the verdict is wanted: a workload's
    /// violation ends the boot 2 s after it), `look=A,B` (a diagnosis is configured, and finds
    /// A, then B: see `look`), `rounds=A,B` (the live watch is on, and its rounds find A, then B,
    /// then busy ones: see `round`). `script`: `;`-separated `SECONDS WHAT`, WHAT a console line,
    /// `ssh:EVENT` (see `ssh_event`), `qemu:ok` or `qemu:fail` (its stdout closes), `signal`.
    /// Between steps the watcher ticks every poll, as the loop does while the console is quiet.
    fn play(setup: &str, script: &str) -> (String, Watcher<'static>) {
        let base = Instant::now();
        let list = |key: &'static str| {
            setup.split_whitespace().filter_map(move |w| w.strip_prefix(key)).flat_map(|l| l.split(','))
        };
        let (mut looks, mut rounds) = (list("look="), list("rounds="));
        let mut cell = Watcher::new(rules(setup), base);
        let mut steps = script.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|step| {
            let (at, what) = step.split_once(' ').unwrap_or((step, ""));
            (Duration::from_secs_f64(at.parse().expect("seconds")), what)
        });
        let (mut trace, mut clock, mut signal) = (Vec::new(), Duration::ZERO, None);
        let note = |trace: &mut Vec<String>, what: &str, clock: Duration| {
            trace.push(format!("{what}@{:.1}", clock.as_secs_f64()));
        };
        let horizon = (Duration::from_secs(1000), "");
        loop {
            let (at, what) = steps.next().unwrap_or(horizon);
            while clock + POLL < at {
                clock += POLL;
                let now = base + clock;
                match cell.tick(now, signal) {
                    None => continue,
                    Some(Due::Interrupted(_)) => note(&mut trace, "interrupted", clock),
                    Some(Due::End(end)) => note(&mut trace, end.cell_end().name(), clock),
                    Some(due @ (Due::Diagnose(_) | Due::Sample)) => {
                        let end = match due {
                            Due::Diagnose(end) => end,
                            _ => match cell.sampled(round(rounds.next().unwrap_or("b"), clock.as_secs_f64()), now) {
                                Some(end) => end,
                                None => continue,
                            },
                        };
                        note(&mut trace, &format!("diagnose({})", end.cell_end().name()), clock);
                        let found = look(looks.next().expect("a look for every diagnosis"));
                        match cell.diagnosed(end, found, now) {
                            Some(end) => note(&mut trace, end.cell_end().name(), clock),
                            None => continue,
                        }
                    }
                }
                return (trace.join(" "), cell);
            }
            if (at, what) == horizon {
                note(&mut trace, "waiting", clock);
                return (trace.join(" "), cell);
            }
            clock = at;
            let now = base + clock;
            match what.split_once(':') {
                Some(("ssh", event)) => cell.ssh(ssh_event(event), now),
                Some(("qemu", how)) => {
                    let failure = (how == "fail").then(|| "QEMU exited with exit status: 1".to_owned());
                    note(&mut trace, cell.closed(failure).cell_end().name(), clock);
                    return (trace.join(" "), cell);
                }
                _ if what == "signal" => signal = Some(Signal::Int),
                _ => {
                    if cell.console(clock.as_secs_f64(), what, now) == Next::StartSsh {
                        note(&mut trace, "start-ssh", clock);
                    }
                }
            }
        }
    }

    fn check(setup: &str, script: &str, expect: &str) {
        assert_eq!(play(setup, script).0, expect, "setup {setup:?}, script {script:?}");
    }

    #[test]
    fn ends() {
        // Deadlines: boot 20 s, silence 30 s, workload 60 s, report grace 5 s.
        check("", "", "boot-timeout@20.1");
        check("", "5 Linux version 7.3.4; 15 Freeing unused kernel memory", "boot-timeout@20.1");
        check("look=stuck", "5 Linux version 7.3.4", "boot-timeout@20.1");
        check("", "1 LAB-READY arch=x86_64", "silent@31.1");
        check("look=stuck", "1 LAB-READY", "diagnose(silent)@31.1 silent@31.2");
        check("look=failed", "1 LAB-READY", "diagnose(silent)@31.1 silent@31.1");
        check("", "1 LAB-READY; 25 tick; 50 tick", "workload-timeout@61.1");
        check("look=stuck", "1 LAB-READY; 25 tick; 50 tick", "diagnose(workload-timeout)@61.1 workload-timeout@61.2");
        check("", "1 LAB-READY; 3 BUG: soft lockup - CPU#0 stuck for 22s!", "stopped-after-report@8.1");
        check(
            "look=stuck",
            "1 LAB-READY; 3 BUG: soft lockup",
            "diagnose(stopped-after-report)@8.1 stopped-after-report@8.2",
        );
        check("", "1 LAB-READY; 3 BUG: soft lockup; 4 Kernel panic - not syncing; 5 qemu:ok", "exited@5.0");
        check("", "0.5 qemu:fail", "qemu-failed@0.5");
        check("", "1 LAB-READY; 5 LAB-RESULT workload=smoke status=pass; 6 qemu:ok", "exited@6.0");
        // The result line comes first: neither silence nor a report ends a guest powering off.
        check("look=stuck", "1 LAB-READY; 5 LAB-RESULT status=fail; 6 BUG: oops", "exited@35.1");
        // Diagnosed, then listening to the answer to the NMI: a pause of 3 s or 15 s in all.
        check("look=nmi", "1 LAB-READY", "diagnose(silent)@31.1 silent@34.2");
        check("look=nmi", "1 LAB-READY; 32 NMI backtrace; 34 CPU: 1", "diagnose(silent)@31.1 silent@37.1");
        let talking = "1 LAB-READY; 33 x; 35 x; 37 x; 39 x; 41 x; 43 x; 45 x; 47 x";
        check("look=nmi", talking, "diagnose(silent)@31.1 silent@46.2");
        check("look=nmi", "1 LAB-READY; 33 Kernel panic; 34 qemu:ok", "diagnose(silent)@31.1 silent@34.0");
        check("look=nmi", "1 LAB-READY; 33 qemu:fail", "diagnose(silent)@31.1 silent@33.0");
        // Paused from outside: resumed, it runs on, to its end or to the next deadline.
        check(
            "look=healthy",
            "1 LAB-READY; 40 LAB-RESULT status=pass; 41 qemu:ok",
            "diagnose(silent)@31.1 exited@41.0",
        );
        check(
            "look=healthy,stuck",
            "1 LAB-READY",
            "diagnose(silent)@31.1 diagnose(workload-timeout)@61.1 workload-timeout@61.2",
        );
        check("", "1 LAB-READY; 5 signal", "interrupted@5.1");
        check("look=nmi", "1 LAB-READY; 32 signal", "diagnose(silent)@31.1 interrupted@32.1");
    }

    /// A workload's violation ends the boot only when only the verdict is wanted, a short grace
    /// after its first line, without a look from the host unless the kernel reported too.
    #[test]
    fn ends_after_a_violation() {
        const SHARED: &str = "mmcid-churn: VIOLATION check=unique-cid cid=0";
        let check = |setup: &str, script: &str, expect: &str| check(setup, &script.replace("V", SHARED), expect);
        check("", "1 LAB-READY; 3 V; 10 x; 20 LAB-RESULT status=fail; 21 qemu:ok", "exited@21.0");
        check("look=stuck", "1 LAB-READY; 3 V; 25 x; 50 x", "diagnose(workload-timeout)@61.1 workload-timeout@61.2");
        check("verdict", "1 LAB-READY; 3 V", "stopped-after-report@5.1");
        check("verdict look=stuck", "1 LAB-READY; 3 V; 4 V; 4.5 V", "stopped-after-report@5.1");
        check("verdict", "1 LAB-READY; 3 V; 4 LAB-RESULT status=fail; 5 qemu:ok", "exited@5.0");
        // The kernel's report gets its own grace and the host's look, whichever came first.
        check(
            "verdict look=stuck",
            "1 LAB-READY; 3 V; 4 BUG: soft lockup",
            "diagnose(stopped-after-report)@9.1 stopped-after-report@9.2",
        );
        check("verdict", "1 LAB-READY; 2 BUG: soft lockup; 3 V", "stopped-after-report@7.1");
        check("verdict", "1 LAB-READY; 3 V; 4 Kernel panic - not syncing; 4.5 qemu:ok", "exited@4.5");
        // Over SSH, the workload's stdout: the same violation, the same end.
        let ready = "1 LAB-READY ssh=22; 2 ssh:ready";
        check("ssh verdict", &format!("{ready}; 3 ssh:line=V"), "start-ssh@1.0 stopped-after-report@5.1");
        check(
            "ssh verdict",
            &format!("{ready}; 3 ssh:line=V; 4 BUG: soft lockup"),
            "start-ssh@1.0 stopped-after-report@9.1",
        );
        check("ssh", &format!("{ready}; 3 ssh:line=V; 10 ssh:exit=1; 11 qemu:ok"), "start-ssh@1.0 exited@11.0");
    }

    /// From the ready line on, a round a second; three stuck rounds in a row set off the look,
    /// after which the guest's own detectors get 10 s from the look to report.
    #[test]
    fn ends_when_the_live_watch_sees_a_vcpu_stuck() {
        check("look=stuck rounds=s,s,s", "1 LAB-READY", "diagnose(stuck)@4.0 stuck@14.1");
        check("look=stuck rounds=s,s,b,s,s,s", "1 LAB-READY", "diagnose(stuck)@7.0 stuck@17.1");
        // The guest reports and panics meanwhile; or talks on past the wait until it pauses.
        let panics = "1 LAB-READY; 8 BUG: hard LOCKUP; 9 Kernel panic - not syncing; 9.5 qemu:ok";
        check("look=stuck rounds=s,s,s", panics, "diagnose(stuck)@4.0 stuck@9.5");
        check("look=nmi rounds=s,s,s", "1 LAB-READY; 4.5 NMI backtrace", "diagnose(stuck)@4.0 stuck@14.1");
        let talking = "1 LAB-READY; 13 x; 15 x; 17 x";
        check("look=nmi rounds=s,s,s", talking, "diagnose(stuck)@4.0 stuck@19.1");
        // A guest that talks on is looked at after six stuck rounds, not three.
        let talking = "1 LAB-READY; 2.5 x; 3.5 x; 4.5 x; 5.5 x; 6.5 x";
        check("look=stuck rounds=s,s,s,s,s,s", talking, "diagnose(stuck)@7.0 stuck@17.1");
        check("look=stuck rounds=s,s,s,s,s,b", talking, "diagnose(silent)@36.6 silent@36.7");
        // The look failed: the guest runs on, unwatched.
        check("look=failed,stuck rounds=s,s,s", "1 LAB-READY", "diagnose(stuck)@4.0 diagnose(silent)@31.1 silent@31.2");
        // A pause from outside breaks the row: frozen vCPUs are not stuck ones.
        check("look=stuck rounds=s,s,p,s,s,s", "1 LAB-READY", "diagnose(stuck)@7.0 stuck@17.1");
        // Not before the ready line: booting is the boot deadline's business.
        check("look=stuck rounds=s,s,s", "5 Linux version 7.3.4", "boot-timeout@20.1");
        // The longer look did not bear it out: the watch goes on with a new row.
        check(
            "look=healthy,stuck rounds=s,s,s,s,s,s",
            "1 LAB-READY",
            "diagnose(stuck)@4.0 diagnose(stuck)@7.0 stuck@17.1",
        );
        // The kernel told first: its report's grace and look, no more rounds.
        check(
            "look=stuck rounds=s,s,s",
            "1 LAB-READY; 2.5 BUG: soft lockup",
            "diagnose(stopped-after-report)@7.6 stopped-after-report@7.7",
        );
        check("look=stuck rounds=s,s,s", "1 LAB-READY; 2.5 LAB-RESULT status=pass; 3 qemu:ok", "exited@3.0");
        // QMP failed the watch: the deadlines still end the boot, and the cell says why.
        let (trace, cell) = play("look=stuck rounds=s,e", "1 LAB-READY");
        assert_eq!(trace, "diagnose(silent)@31.1 silent@31.2");
        let boot = cell.into_boot(End::Silent, PathBuf::from("console.log"));
        assert_eq!(boot.host_error.as_deref(), Some("the live watch stopped: QMP: broken pipe"));
        assert_eq!(boot.host[0].alarm, None);
    }

    #[test]
    fn ends_over_ssh() {
        let ready = "1 LAB-READY arch=x86_64 ssh=dropbear; 4 ssh:ready";
        check("ssh", &format!("{ready}; 6 ssh:line; 10 ssh:exit=0; 11 qemu:ok"), "start-ssh@1.0 exited@11.0");
        check("ssh", &format!("{ready}; 10 ssh:exit=0; 12 ssh:refused"), "start-ssh@1.0 exited@40.1");
        check("ssh", &format!("{ready}; 6 ssh:heard; 21 ssh:lost"), "start-ssh@1.0 lost-connection@21.1");
        let lost = "start-ssh@1.0 diagnose(lost-connection)@21.1 lost-connection@21.2";
        check("ssh look=healthy", &format!("{ready}; 6 ssh:heard; 21 ssh:lost"), lost);
        check("ssh", &format!("{ready}; 10 ssh:deadline"), "start-ssh@1.0 workload-timeout@10.1");
        check("ssh", &format!("{ready}; 10 ssh:refused"), "start-ssh@1.0 ssh-failed@10.1");
        check("ssh", &format!("{ready}; 10 ssh:cancelled"), "start-ssh@1.0 silent@31.1");
        // A kernel's headline in the workload's stdout is no report: the kernel's are on the console.
        check("ssh verdict", &format!("{ready}; 6 ssh:line=BUG: soft lockup"), "start-ssh@1.0 silent@36.1");
        check("ssh", "1 LAB-READY arch=x86_64 ssh=none", "ssh-failed@1.1");
        check("ssh", "1 LAB-READY arch=x86_64", "ssh-failed@1.1");
        // SSH for people only: the lab does not log in, and a guest without a server is no error.
        check("", "1 LAB-READY arch=x86_64 ssh=none", "silent@31.1");
        check("", "1 LAB-READY arch=x86_64 ssh=dropbear; 40 qemu:ok", "silent@31.1");
    }

    #[test]
    fn what_a_boot_keeps() {
        let script = "1 LAB-READY ssh=dropbear; 4 ssh:ready; 10 ssh:exit=0; 11 ssh:fetched; 12 qemu:ok";
        let (_, mut cell) = play("ssh", script);
        let later = cell.start + Duration::from_secs(13);
        for word in ["fetched", "lost", "ready", "exit=1"] {
            cell.late(ssh_event(word), later);
        }
        let boot = cell.into_boot(End::Exited, PathBuf::from("console.log"));
        let ssh = boot.ssh.expect("an SSH outcome");
        assert_eq!((ssh.port, ssh.ready_s, ssh.error, ssh.fetched.len()), (2222, Some(4.0), None, 2));
        let result = boot.result.expect("the result the SSH job made");
        assert_eq!((result.at, result.get("exit")), (10.0, Some("0")));
        assert_eq!((boot.ready.map(|r| r.at), boot.console_lines), (Some(1.0), 1));
        let base = Instant::now();
        let mut cell = Watcher::new(rules("ssh"), base);
        assert_eq!(cell.console(1.0, "LAB-READY ssh=none", base + Duration::from_secs(1)), Next::Wait);
        let why = "the guest has no SSH server (its ready line says ssh=none)".to_owned();
        let due = cell.tick(base + Duration::from_millis(1100), None);
        assert!(matches!(&due, Some(Due::End(End::SshFailed(got))) if *got == why), "{due:?}");
        cell.ssh(ssh_event("lost"), base + Duration::from_secs(2));
        let due = cell.tick(base + Duration::from_millis(2100), None);
        let lost = End::LostConnection("no reply over SSH for 15s".into());
        assert!(matches!(&due, Some(Due::End(end)) if *end == lost), "{due:?}");
    }
}
