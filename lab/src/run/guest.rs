//! How a guest is set up, in one place, so that a cell's run, a person's boot (`hold`) and
//! `lab bench` boot the same guest: the kernel command line, the `vm::Machine`, the deadlines, how
//! a stuck guest is diagnosed, and what the lab does in it over SSH.

use std::path::Path;
use std::time::Duration;

use crate::accel;
use crate::arch::Arch;
use crate::image::Image;
use crate::kernel::Kernel;
use crate::matrix::{self, Matrix, Timeouts, Via};
use crate::plan::Cell;
use crate::triage;
use crate::triage::HostSamples;
use crate::vm::{self, Accel, Deadlines, Diagnosis, Fetch, GuestSsh, Machine};
use crate::vm::{Live, Sampling, SshTask, SshWorkload, Watch};

/// Between host samples the VM runs: long enough apart that a vCPU making progress shows it.
const HOST_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// The live watch's pace (`lab run --live-every`) and how many of its rounds in a row must show a
/// vCPU stuck for good before the guest is diagnosed, with its console quiet through them and
/// whatever it says: chosen by measurement (BENCHMARKS.md, "Naming a hang in seconds").
pub const LIVE_EVERY: Duration = Duration::from_secs(1);
pub const LIVE_WINDOW: usize = 3;
pub const LIVE_LONG_WINDOW: usize = 6;

/// The guests' `watchdog_thresh`: hard lockups are reported after it, soft ones after twice it.
/// Half the kernel's default: after a look the live watch set off, the lab waits for the guest's
/// own report that long (`vm::Live::guest_wait`), and TCG guests bear it (the stock churn at two
/// 4-vCPU guests on 2 host cores raised no false alarm: BENCHMARKS.md, "Naming a hang in seconds").
const WATCHDOG_THRESH_S: u64 = 5;

/// When only a cell's verdict is wanted, its boot ends this long after the workload's first
/// violation line: time for the kernel's own reports of the same bug (a WARN, a lockup) to start,
/// which then get their own grace.
const VIOLATION_GRACE_S: u64 = 3;

/// "Until Ctrl-C": long enough, and still safe to add to an `Instant`.
const FOREVER_S: u64 = 10 * 365 * 24 * 3600;

/// What a guest boots: a kernel, the initramfs for it, its size and its command line.
pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub image: &'a Image,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub cmdline: String,
}

impl<'a> Guest<'a> {
    /// `cell`'s guest; with `hold` its init holds the guest up instead of running the workload.
    pub fn of_cell(cell: &Cell, matrix: &Matrix, kernel: &'a Kernel, image: &'a Image, hold: bool) -> Guest<'a> {
        let cmdline = cell_cmdline(cell, matrix, hold);
        Guest { kernel, image, vcpus: cell.vcpus, memory_mib: matrix.memory_mib, cmdline }
    }

    pub fn machine(&self, accel: Accel) -> Machine<'_> {
        Machine {
            arch: self.kernel.arch,
            accel,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            kernel: &self.kernel.image,
            initramfs: Some(&self.image.initramfs),
            cmdline: &self.cmdline,
            ssh_port: None,
        }
    }
}

/// The guest that proves KVM for `kernel`: the kernel itself, with its cells' initramfs.
pub fn probe_guest<'a>(kernel: &'a Kernel, image: &'a Image) -> accel::ProbeGuest<'a> {
    let label = format!("{} {}", kernel.recipe, kernel.arch);
    accel::ProbeGuest { kernel: &kernel.image, kernel_key: &kernel.key, label, initramfs: &image.initramfs }
}

/// What the guest's kernel does when it detects a lockup or a stall.
#[derive(Debug, Clone, Copy)]
pub enum Detectors {
    /// Every CPU's stack, then panic: what every cell boots with.
    Panic,
    /// The kernel's defaults (a bench that only times the boot).
    Default,
    /// Off: a guest that hangs says nothing, and only the host can tell (`lab bench --stuck`).
    Off,
}

/// What the guest's init does once it is up.
#[derive(Debug, Clone)]
pub enum Init<'a> {
    /// Runs this workload with these `--key=value` arguments (`lab.workload`, `lab.arg.*`).
    Run(&'a str, Vec<(String, String)>),
    /// Holds the guest up (`lab.hold=1`): the lab or a person works in it over SSH.
    Hold,
}

/// The guest's whole configuration travels on the kernel command line: the init reads
/// `lab.workload` and `lab.arg.*` (or `lab.hold`) from /proc/cmdline. `extra` comes last, so
/// that the matrix's own words win over the lab's.
pub fn cmdline(arch: Arch, detectors: Detectors, init: Init, extra: &[String]) -> String {
    let mut words = vec![
        format!("console={}", arch.console()),
        // Reboot at once on panic; with QEMU's -no-reboot that ends the VM.
        "panic=-1".to_string(),
    ];
    if let Detectors::Panic = detectors {
        words.extend(
            [
                // On a lockup, every CPU's stack: a live lock needs both sides.
                "hardlockup_all_cpu_backtrace=1",
                "softlockup_all_cpu_backtrace=1",
                // Panic on lockups. In 7.3 the 8250 and PL011 consoles print from a kthread,
                // and the lockup reports do not force atomic printing: the kthread can sit on
                // the stuck CPU's runqueue and a detected lockup stays in the ring buffer for a
                // minute or more (seen on x86_64 and aarch64). Panic flushes every console
                // atomically, then ends the VM.
                "nmi_watchdog=panic",
                "softlockup_panic=1",
            ]
            .map(String::from),
        );
        // The guest's own report of what the live watch saw comes while the lab still listens.
        words.push(format!("watchdog_thresh={WATCHDOG_THRESH_S}"));
    }
    words.extend(arch.kernel_params().iter().map(|p| p.to_string()));
    if let Detectors::Off = detectors {
        words.extend(["nowatchdog", "rcupdate.rcu_cpu_stall_suppress=1"].map(String::from));
    }
    match init {
        Init::Run(program, args) => {
            words.push(format!("lab.workload={program}"));
            words.extend(args.iter().map(|(key, value)| format!("lab.arg.{key}={value}")));
        }
        Init::Hold => words.push("lab.hold=1".to_string()),
    }
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// `cell`'s command line; with `hold` (a person's guest) the init only waits.
pub fn cell_cmdline(cell: &Cell, matrix: &Matrix, hold: bool) -> String {
    let init = match (hold, cell.workload.via) {
        (false, Via::Console) => Init::Run(cell.workload.program(), workload_args(cell)),
        // The lab starts the workload over SSH; the init only waits.
        (true, _) | (_, Via::Ssh) => Init::Hold,
    };
    cmdline(cell.arch, Detectors::Panic, init, &matrix.cmdline)
}

fn workload_args(cell: &Cell) -> Vec<(String, String)> {
    let text = |value| matrix::arg_value(value).unwrap_or_default();
    cell.workload.args.iter().map(|(key, value)| (key.clone(), text(value))).collect()
}

/// SSH into a guest of `image` to do `task`: as the image's user, to the host key the image was
/// built with, with the lab's key.
pub fn ssh(image: &Image, client_key: &Path, task: SshTask) -> GuestSsh {
    let credentials = vm::ssh::Credentials {
        user: image.ssh.user.clone(),
        host_key: image.ssh.host_key.clone(),
        private_key: client_key.to_path_buf(),
    };
    GuestSsh { credentials, task }
}

/// Every guest has SSH; a `via: ssh` workload is started over it, with the guest's dmesg, its
/// scheduler debug file and the workload's `fetch` files saved after it.
pub fn cell_task(cell: &Cell) -> SshTask {
    if cell.workload.via == Via::Console {
        return SshTask::None;
    }
    let debugfs = "mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug";
    let mut fetch = vec![
        Fetch { command: "dmesg".into(), file: "dmesg.txt".into() },
        Fetch { command: format!("{debugfs}; cat /sys/kernel/debug/sched/debug"), file: "sched-debug.txt".into() },
    ];
    fetch.extend(cell.workload.fetch.iter().map(|path| Fetch {
        command: format!("cat -- {}", vm::ssh::shell_quote(path)),
        file: matrix::fetched_file_name(path).to_owned(),
    }));
    let command = workload_command(cell.workload.program(), &workload_args(cell));
    SshTask::Run(SshWorkload { name: cell.workload.name.clone(), command, interactive: false, fetch })
}

/// The shell command that starts workload `program` over SSH in the environment the init gives a
/// workload it starts (images/workloads/README.md).
pub fn workload_command(program: &str, args: &[(String, String)]) -> String {
    let args = args.iter().map(|(key, value)| vm::ssh::shell_quote(&format!("--{key}={value}")));
    let words: Vec<String> = std::iter::once(format!("/lab/workloads/{program}")).chain(args).collect();
    format!("export LAB_CPUS=$(nproc); exec {}", words.join(" "))
}

/// One command over SSH, nothing fetched after it: a person's shell or command, a bench's workload.
pub fn command(name: &str, command: String, interactive: bool) -> SshTask {
    SshTask::Run(SshWorkload { name: name.into(), command, interactive, fetch: Vec::new() })
}

/// A cell's deadlines: its matrix's timeouts; with `verdict_only` (`--until-fail`: a run's
/// verdict is all that counts) a workload's violation ends the boot soon after it.
pub fn deadlines(t: &Timeouts, verdict_only: bool) -> Deadlines {
    let violation_grace = verdict_only.then_some(VIOLATION_GRACE_S);
    Deadlines { boot: t.boot, silence: t.silence, workload: t.workload, report_grace: t.report_grace, violation_grace }
}

/// A guest held for a person: one that never comes up still ends at the boot deadline; once up,
/// it lives until the session ends.
pub fn held(boot: u64) -> Deadlines {
    Deadlines { boot, silence: FOREVER_S, workload: FOREVER_S, report_grace: FOREVER_S, violation_grace: None }
}

/// What the VM stage watches a guest for: the start of a report (the kernel's, a workload's
/// violation) always, and what to do
/// with a silent or overdue guest (`None`: kill it without looking).
pub fn watch(diagnosis: Option<Diagnosis<'_>>) -> Watch<'_> {
    Watch { report_starts: triage::report_origin, diagnosis }
}

/// `samples` host samples of a silent or overdue guest, then the NMI and the guest's answer; none
/// when `samples` is 0. With the kernel's `symbols` and `live_every`, the host also watches the
/// guest while it runs (`vm::Live`); without symbols it cannot tell a stuck vCPU from a busy one,
/// and every look counts as spinning, so a guest is never resumed on a guess.
pub fn diagnosis<'a>(
    samples: u32,
    dump_memory: bool,
    symbols: Option<&'a triage::Symbols>,
    live_every: Option<Duration>,
) -> Option<Diagnosis<'a>> {
    let sampling = Sampling { count: samples, interval: HOST_SAMPLE_INTERVAL };
    let spinning =
        Box::new(move |samples: &HostSamples| symbols.is_none_or(|s| triage::diagnose_host(samples, s, 0).spinning()));
    let live = symbols.zip(live_every).map(|(symbols, every)| Live {
        every,
        window: LIVE_WINDOW,
        long_window: LIVE_LONG_WINDOW,
        stuck: Box::new(move |samples: &HostSamples| triage::diagnose_host(samples, symbols, 0).stuck_for_good),
        guest_wait: Duration::from_secs(2 * WATCHDOG_THRESH_S),
    });
    (samples > 0).then_some(Diagnosis { sampling, ask_guest: true, dump_memory, spinning, live })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HL: &str = "{name: hl, program: lkdtm, args: {crash: HARDLOCKUP, wait: 30}}";
    const VIA_SSH: &str = "{name: ch, program: mmcid-churn, via: ssh, args: {seconds: 5}, fetch: [/tmp/out.json]}";

    /// A ppc64le cell (no per-arch parameters) of the one workload in `workload`.
    fn cell(workload: &str) -> (Cell, Matrix) {
        let programs = ["smoke", "lkdtm", "mmcid-churn"].into_iter().map(String::from).collect();
        let yaml = format!("kernels: [{{recipe: k.yaml}}]\narches: [ppc64le]\nvcpus: [2]\nworkloads: [{workload}]\ncmdline: [nokaslr]\n");
        let m = matrix::parse(&yaml, &programs).unwrap();
        let workload = m.workloads[0].clone();
        (Cell { id: "x".into(), kernel: 0, kernel_name: "k".into(), arch: Arch::Ppc64le, vcpus: 2, workload }, m)
    }

    const PANIC: &str = "console=hvc0 panic=-1 hardlockup_all_cpu_backtrace=1 softlockup_all_cpu_backtrace=1 nmi_watchdog=panic softlockup_panic=1 watchdog_thresh=5";

    #[test]
    fn cmdline_carries_the_workload_or_holds() {
        let check = |workload: &str, hold: bool, rest: &str| {
            let (c, m) = cell(workload);
            assert_eq!(cell_cmdline(&c, &m, hold), format!("{PANIC} {rest}"), "{workload} hold={hold}");
        };
        check(HL, false, "lab.workload=lkdtm lab.arg.crash=HARDLOCKUP lab.arg.wait=30 nokaslr");
        check(HL, true, "lab.hold=1 nokaslr");
        check(VIA_SSH, false, "lab.hold=1 nokaslr");
        check(VIA_SSH, true, "lab.hold=1 nokaslr");
    }

    /// The bench's guests: the kernel's own detectors, or none at all.
    #[test]
    fn cmdline_for_a_bench() {
        let churn = Init::Run("mmcid-churn", vec![("seconds".into(), "60".into())]);
        let cases = [
            (Arch::X86_64, Detectors::Default, Init::Hold, "console=ttyS0 panic=-1 lab.hold=1"),
            (Arch::Aarch64, Detectors::Default, Init::Hold, "console=ttyAMA0 panic=-1 irqchip.gicv3_pseudo_nmi=1 lab.hold=1"),
            (
                Arch::Aarch64,
                Detectors::Off,
                churn,
                "console=ttyAMA0 panic=-1 irqchip.gicv3_pseudo_nmi=1 nowatchdog rcupdate.rcu_cpu_stall_suppress=1 lab.workload=mmcid-churn lab.arg.seconds=60",
            ),
        ];
        for (arch, detectors, init, want) in cases {
            assert_eq!(cmdline(arch, detectors, init, &[]), want, "{arch} {detectors:?}");
        }
    }

    /// `(workload, task)`: what the lab does over SSH in a cell's guest.
    #[test]
    fn ssh_task_of_a_cell() {
        let check = |workload: &str, want: &str| {
            let got = match cell_task(&cell(workload).0) {
                SshTask::None => "none".to_string(),
                SshTask::WaitReady => "wait".to_string(),
                SshTask::Run(w) => {
                    let fetch: Vec<String> = w.fetch.iter().map(|f| format!("{} <- {}", f.file, f.command)).collect();
                    format!("{} interactive={}: {}\n{}", w.name, w.interactive, w.command, fetch.join("\n"))
                }
            };
            assert_eq!(got, want, "{workload}");
        };
        check(HL, "none");
        check(
            VIA_SSH,
            "ch interactive=false: export LAB_CPUS=$(nproc); exec /lab/workloads/mmcid-churn --seconds=5\n\
             dmesg.txt <- dmesg\n\
             sched-debug.txt <- mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug; cat /sys/kernel/debug/sched/debug\n\
             out.json <- cat -- /tmp/out.json",
        );
        let args = [("note".to_string(), "a b".to_string())];
        assert_eq!(
            workload_command("smoke", &args),
            "export LAB_CPUS=$(nproc); exec /lab/workloads/smoke '--note=a b'"
        );
    }
}
