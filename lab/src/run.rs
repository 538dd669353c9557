//! The pipeline: plan -> kernels -> images -> boots -> triage -> verdicts -> reports.
//!
//! Data flows one way. Each stage gets what it needs as values (a `Kernel`, an `Image`, a
//! `Machine`) and returns values; only this module knows the order and the directory of a run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::accel::{self, AccelMode};
use crate::arch::Arch;
use crate::cache::Cache;
use crate::image::{self, Image};
use crate::kernel::{self, BuildOptions, Kernel, Recipe};
use crate::matrix::{self, LoadedMatrix, Timeouts, Via};
use crate::plan::Cell;
use crate::process::{self, Interrupted, Signal};
use crate::report::{self, CellResult, Verdict};
use crate::triage::{self, HostSamples, Kind, Missing, Report, Source};
use crate::ui::{Event, Ui};
use crate::vm::{self, Accel, Boot, Deadlines, Diagnosis, End, Fetch, GuestSsh, Machine, Sampling, Seen, SshTask, SshWorkload, Watch};

pub struct RunOptions {
    pub out: PathBuf,
    pub jobs: usize,
    pub build: BuildOptions,
    pub images_dir: PathBuf,
    /// Runs per cell (reproducer mode when more than one).
    pub repeat: u32,
    /// Stop repeating a cell at its first hit.
    pub until_fail: bool,
    /// Host samples of a silent or overdue guest before it is killed (0: kill without looking).
    pub host_samples: u32,
    /// Keep a memory dump of a stuck guest in its cell.
    pub dump_memory: bool,
    /// What x86_64 guests run under (`--accel`, else the matrix's `accel:`).
    pub accel: AccelMode,
}

/// What a run leaves: every planned run's result, in plan order, and the signal that cut it short.
pub struct Finished {
    pub results: Vec<CellResult>,
    pub interrupted: Option<Signal>,
}

/// Every cell's result; `Err` only for set-up problems that stop the whole run. A signal is no
/// such problem: the cell it stopped and those it kept from starting are results too
/// (`Verdict::Interrupted`), and the reports hold them before the signal is passed on.
pub fn run(sh: &Shell, cache: &Cache, matrix: &LoadedMatrix, recipes: &[Recipe], cells: &[Cell], opts: &RunOptions, ui: &Ui) -> Result<Finished> {
    fs::create_dir_all(opts.out.join("cells")).with_context(|| format!("cannot create {}", opts.out.display()))?;
    for recipe in recipes {
        ui.note(format!("kernel {}: {}", recipe.name, recipe.description.trim()));
    }
    let repeat = opts.repeat.max(1);
    ui.note(format!("{} cells x {repeat} runs, results in {}", cells.len(), opts.out.display()));
    let client_key = crate::ssh_keys::client_key(sh, cache)?;
    let mut kernels: BTreeMap<(usize, Arch), Result<Kernel, String>> = BTreeMap::new();
    // After a signal nothing more is prepared. The maps stay partial, but the flag never clears,
    // so no worker starts a cell that would look in them.
    let going = || process::interrupted().is_none();
    for cell in cells.iter().take_while(|_| going()) {
        kernels.entry((cell.kernel, cell.arch)).or_insert_with(|| {
            kernel::build(sh, cache, &recipes[cell.kernel], cell.arch, &opts.build, ui).map_err(|e| format!("{e:#}"))
        });
    }
    let mut base_images: BTreeMap<Arch, Result<Image, String>> = BTreeMap::new();
    for cell in cells.iter().take_while(|_| going()) {
        base_images.entry(cell.arch).or_insert_with(|| image::build(sh, cache, &opts.images_dir, cell.arch, ui).map_err(|e| format!("{e:#}")));
    }
    // Each kernel's guests carry its own selftests.
    let mut images: BTreeMap<(usize, Arch), Result<Image, String>> = BTreeMap::new();
    for (&(index, arch), kernel) in kernels.iter().take_while(|_| going()) {
        let image = match (&base_images[&arch], kernel) {
            (Ok(base), Ok(kernel)) => image::with_selftests(cache, base, &kernel.selftests, ui).map_err(|e| format!("{e:#}")),
            (Err(e), _) => Err(e.clone()),
            // The cell reports the kernel's failure; any image would do.
            (Ok(base), Err(_)) => Ok(base.clone()),
        };
        images.insert((index, arch), image);
    }

    let accel = AccelPlan::prove(cache, opts.accel, &kernels, &images, ui)?;

    // Runs of one cell follow each other, so --until-fail stops a cell early without waiting.
    let runs: std::collections::VecDeque<(usize, &Cell, u32)> =
        cells.iter().flat_map(|c| (1..=repeat).map(move |n| (c, n))).enumerate().map(|(i, (c, n))| (i, c, n)).collect();
    let queue = Arc::new(Mutex::new(runs));
    let hit_cells = Arc::new(Mutex::new(std::collections::BTreeSet::<String>::new()));
    let (tx, rx) = mpsc::channel::<(usize, CellResult)>();
    let mut done: Vec<(usize, CellResult)> = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..opts.jobs.max(1) {
            let (queue, hit_cells, tx, kernels, images, client_key, accel) = (queue.clone(), hit_cells.clone(), tx.clone(), &kernels, &images, &client_key, &accel);
            scope.spawn(move || {
                loop {
                    // Checked before a run is taken: what is still queued after a signal is what
                    // never started, and is recorded as such below.
                    if process::interrupted().is_some() {
                        break;
                    }
                    // A statement of its own: a guard in a `while let` scrutinee would stay locked
                    // for the whole loop body and run the cells one at a time whatever --jobs says.
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some((index, cell, run)) = next else { break };
                    if opts.until_fail && hit_cells.lock().unwrap_or_else(|e| e.into_inner()).contains(&cell.id) {
                        continue;
                    }
                    let kernel = &kernels[&(cell.kernel, cell.arch)];
                    let image = &images[&(cell.kernel, cell.arch)];
                    let run = (repeat > 1).then_some(run);
                    let result = run_cell(cell, run, kernel, image, &client_key.private, accel, &matrix.matrix, opts, ui);
                    if result.is_hit() {
                        hit_cells.lock().unwrap_or_else(|e| e.into_inner()).insert(cell.id.clone());
                    }
                    if tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (index, result) in rx {
            report::write_cell(&result)?;
            done.push((index, result));
            done.sort_by_key(|(i, _)| *i);
            let ordered: Vec<CellResult> = done.iter().map(|(_, r)| r.clone()).collect();
            report::write_summary(&opts.out, &ordered, repeat > 1)?;
        }
        Ok(())
    })?;
    // Read once: the runs recorded as not started and the exit status must name the same signal.
    let interrupted = process::interrupted();
    if let Some(signal) = interrupted {
        let hit_cells = hit_cells.lock().unwrap_or_else(|e| e.into_inner());
        // A run --until-fail would have skipped was never going to start: it is no result.
        let unstarted = queue.lock().unwrap_or_else(|e| e.into_inner()).drain(..).filter(|(_, cell, _)| !(opts.until_fail && hit_cells.contains(&cell.id))).collect::<Vec<_>>();
        for (index, cell, run) in unstarted {
            let mut result = planned(cell, (repeat > 1).then_some(run), opts);
            result.verdict = Verdict::Interrupted;
            result.reason = format!("not started: the run was interrupted by {signal}");
            result.end = report::NOT_STARTED.to_string();
            done.push((index, result));
        }
        done.sort_by_key(|(i, _)| *i);
        let ordered: Vec<CellResult> = done.iter().map(|(_, r)| r.clone()).collect();
        report::write_summary(&opts.out, &ordered, repeat > 1)?;
    }
    Ok(Finished { results: done.into_iter().map(|(_, r)| r).collect(), interrupted })
}

/// Which accelerator each cell's guest runs under: the mode asked for, each x86_64 kernel's proof
/// that KVM boots it, and whether a KVM guest already hung in this run (`auto` then stops trying).
struct AccelPlan {
    mode: AccelMode,
    proofs: BTreeMap<usize, accel::KvmProof>,
    demoted: AtomicBool,
}

impl AccelPlan {
    /// Under `auto`, boots each x86_64 kernel of the run under KVM (or finds the answer cached) and
    /// says what it proved.
    fn prove(cache: &Cache, mode: AccelMode, kernels: &BTreeMap<(usize, Arch), Result<Kernel, String>>, images: &BTreeMap<(usize, Arch), Result<Image, String>>, ui: &Ui) -> Result<AccelPlan> {
        let mut proofs = BTreeMap::new();
        match mode {
            AccelMode::Tcg => ui.note("accel tcg: every guest runs under TCG"),
            AccelMode::Kvm => ui.note("accel kvm: x86_64 guests run under KVM, unproven (asked for)"),
            AccelMode::Auto => {
                for (&(index, arch), kernel) in kernels {
                    if let (Ok(kernel), Some(Ok(image))) = (kernel, images.get(&(index, arch))) {
                        if let (_, Some(proof)) = accel::for_guest(cache, mode, arch, &probe_guest(kernel, image))? {
                            ui.note(proof.verdict());
                            proofs.insert(index, proof);
                        }
                    }
                }
            }
        }
        Ok(AccelPlan { mode, proofs, demoted: AtomicBool::new(false) })
    }

    fn for_cell(&self, cell: &Cell) -> Accel {
        match self.demoted.load(Ordering::SeqCst) {
            true => Accel::Tcg,
            false => accel::choose(self.mode, cell.arch, self.proofs.get(&cell.kernel)),
        }
    }
}

/// The guest that proves KVM for `kernel`: the kernel itself, with its cells' initramfs.
pub fn probe_guest<'a>(kernel: &'a Kernel, image: &'a Image) -> accel::ProbeGuest<'a> {
    accel::ProbeGuest { kernel: &kernel.image, kernel_key: &kernel.key, label: format!("{} {}", kernel.recipe, kernel.arch), initramfs: &image.initramfs }
}

/// One run of a cell; under `auto`, a KVM guest that never got going runs again under TCG, once,
/// its files kept in `kvm/` inside the cell, and later cells of the run go straight to TCG.
#[allow(clippy::too_many_arguments)]
fn run_cell(cell: &Cell, run: Option<u32>, kernel: &Result<Kernel, String>, image: &Result<Image, String>, client_key: &Path, plan: &AccelPlan, matrix: &matrix::Matrix, opts: &RunOptions, ui: &Ui) -> CellResult {
    let used = plan.for_cell(cell);
    let first = boot_cell(cell, run, kernel, image, client_key, used, matrix, opts, ui);
    let never_started = first.verdict == Verdict::Error && first.reports.first().is_some_and(|r| r.kind == Kind::BootHang);
    if !accel::retry_under_tcg(plan.mode, used, never_started) {
        return first;
    }
    plan.demoted.store(true, Ordering::SeqCst);
    ui.note(format!("{}: under KVM {}; running it again under TCG, and every later x86_64 cell of this run", cell.id, first.reason));
    let kept = first.dir.join("kvm");
    let moved = fs::read_dir(&first.dir).and_then(|entries| {
        fs::create_dir_all(&kept)?;
        entries.flatten().filter(|e| e.path() != kept).try_for_each(|e| fs::rename(e.path(), kept.join(e.file_name())))
    });
    let mut second = boot_cell(cell, run, kernel, image, client_key, Accel::Tcg, matrix, opts, ui);
    second.kvm_fallback = Some(match moved {
        Ok(()) => format!("under KVM {} (its files: kvm/); run again under TCG", first.reason),
        Err(e) => format!("under KVM {} (its files could not be kept: {e}); run again under TCG", first.reason),
    });
    second.reason += " (ran under TCG: under KVM the guest never got going)";
    second.duration_s += first.duration_s;
    second
}

/// A run's result before it is judged: an error until something better is known.
fn planned(cell: &Cell, run: Option<u32>, opts: &RunOptions) -> CellResult {
    let mut dir = opts.out.join("cells").join(&cell.id);
    if let Some(n) = run {
        dir = dir.join(format!("run-{n:03}"));
    }
    CellResult {
        id: cell.id.clone(),
        run,
        kernel: cell.kernel_name.clone(),
        arch: cell.arch,
        vcpus: cell.vcpus,
        workload: cell.workload.name.clone(),
        verdict: Verdict::Error,
        reason: String::new(),
        duration_s: 0.0,
        reports: Vec::new(),
        expect: cell.workload.expect,
        ready_s: None,
        ssh_ready_s: None,
        end: String::new(),
        detect_s: None,
        basis: None,
        accel: Accel::Tcg,
        kvm_fallback: None,
        dir,
        excerpt: String::new(),
    }
}

#[allow(clippy::too_many_arguments)]
fn boot_cell(cell: &Cell, run: Option<u32>, kernel: &Result<Kernel, String>, image: &Result<Image, String>, client_key: &Path, accel: Accel, matrix: &matrix::Matrix, opts: &RunOptions, ui: &Ui) -> CellResult {
    let task = match run {
        Some(n) => format!("{} #{n}", cell.id),
        None => cell.id.clone(),
    };
    let started = std::time::Instant::now();
    let mut result = CellResult { accel, ..planned(cell, run, opts) };
    let dir = result.dir.clone();
    ui.send(Event::Started { task: task.clone(), stage: "boot" });
    let outcome = (|| -> Result<(Boot, Option<triage::Symbols>)> {
        fs::create_dir_all(&dir)?;
        let kernel = kernel.as_ref().map_err(|e| anyhow::anyhow!("kernel build failed: {e}"))?;
        let image = image.as_ref().map_err(|e| anyhow::anyhow!("guest image failed: {e}"))?;
        let cmdline = kernel_cmdline(cell, matrix, false);
        let machine = Machine {
            arch: cell.arch,
            accel,
            vcpus: cell.vcpus,
            memory_mib: matrix.memory_mib,
            kernel: &kernel.image,
            initramfs: Some(&image.initramfs),
            cmdline: &cmdline,
            ssh_port: None,
        };
        let symbols = triage::Symbols::load(&kernel.system_map()).map_err(|e| ui.note(format!("{}: no host-side symbols: {e:#}", cell.id))).ok();
        // Without symbols the samples cannot be judged: treat them as spinning, never resume.
        let spinning = |samples: &HostSamples| symbols.as_ref().is_none_or(|s| triage::diagnose_host(samples, s, 0).spinning());
        let watch = Watch {
            report_starts: triage::starts_report,
            diagnosis: (opts.host_samples > 0).then_some(Diagnosis {
                sampling: Sampling { count: opts.host_samples, interval: HOST_SAMPLE_INTERVAL },
                ask_guest: true,
                dump_memory: opts.dump_memory,
                spinning: &spinning,
            }),
        };
        let task = task.clone();
        let ssh = guest_ssh(cell, image, client_key);
        let boot = vm::boot(&machine, &dir, deadlines(&matrix.timeouts), &watch, Some(&ssh), |seen| match seen {
            Seen::Console(line) | Seen::Workload(line) => {
                ui.send(Event::Output { task: task.clone(), line: line.to_string() });
                if line.contains("LAB-READY") || line.contains("LAB-PROGRESS") {
                    ui.send(Event::Progress { task: task.clone(), message: line.trim().to_string() });
                }
            }
            Seen::SshReady { after_s, .. } => ui.send(Event::Progress { task: task.clone(), message: format!("SSH ready after {after_s:.1}s") }),
        })?;
        Ok((boot, symbols))
    })();
    match outcome {
        Ok((boot, symbols)) => {
            let console = String::from_utf8_lossy(&fs::read(&boot.console_log).unwrap_or_default()).into_owned();
            let last_line = console.lines().count().max(1);
            let host = boot.host.last().zip(symbols.as_ref()).map(|(samples, s)| triage::diagnose_host(samples, s, samples.console_line.max(1)));
            let mut console_reports = triage::triage(console.as_bytes(), None);
            let printed_frames = has_frames(&console_reports) || host.as_ref().is_some_and(|h| has_frames(&h.reports));
            let debug = match kernel {
                Ok(kernel) if printed_frames => debug_info(&kernel.vmlinux, |e| ui.note(format!("{}: no source lines: {e:#}", cell.id))),
                _ => None,
            };
            if let Some(debug) = &debug {
                console_reports = triage::triage(console.as_bytes(), Some(debug));
            }
            let (verdict, reason, mut reports) = judge(cell, &boot, console_reports, host.as_ref(), matrix.timeouts.silence, last_line);
            if let Some(debug) = &debug {
                debug.symbolize(&mut reports);
            }
            result.excerpt = report::excerpt(&console, &reports);
            result.verdict = verdict;
            result.reason = reason;
            result.basis = basis(&reports);
            result.reports = reports;
            result.ready_s = boot.ready.as_ref().map(|r| r.at);
            result.ssh_ready_s = boot.ssh.as_ref().and_then(|s| s.ready_s);
            result.detect_s = detection_delay(&console, &result.reports, boot.ready.as_ref().map(|r| r.at), boot.host.last());
            result.end = boot.end.name().to_string();
        }
        Err(e) => match e.downcast_ref::<Interrupted>() {
            // Its console.log and qemu-command.sh stay; the console's tail shows how far it got.
            Some(Interrupted(signal)) => {
                result.verdict = Verdict::Interrupted;
                result.reason = format!("interrupted by {signal} after {:.1}s", started.elapsed().as_secs_f64());
                result.end = report::INTERRUPTED.to_string();
                result.excerpt = report::excerpt(&String::from_utf8_lossy(&fs::read(dir.join("console.log")).unwrap_or_default()), &[]);
            }
            None => {
                result.reason = format!("{e:#}");
                result.excerpt = triage::sanitize(&result.reason);
            }
        },
    }
    result.duration_s = started.elapsed().as_secs_f64();
    ui.send(Event::Finished {
        task,
        ok: matches!(result.verdict, Verdict::Pass | Verdict::Skip),
        summary: format!("{}: {}", format!("{:?}", result.verdict).to_lowercase(), result.reason),
    });
    result
}

/// True when some report printed frames: only then is the kernel's debug info worth loading.
fn has_frames(reports: &[Report]) -> bool {
    reports.iter().any(|r| r.frame_site.is_some() || !r.stacks.is_empty())
}

/// The kernel's debug info, for source lines and for frames printed under a neighbour's name (a
/// kernel built without it is no error: its frames keep their printed names).
fn debug_info(vmlinux: &Path, warn: impl FnOnce(anyhow::Error)) -> Option<triage::DebugInfo> {
    triage::DebugInfo::load(vmlinux).unwrap_or_else(|e| {
        warn(e);
        None
    })
}

/// What `lab boot` and `lab ssh` do in a guest booted the way a cell boots (its init holding
/// instead of running the workload).
pub enum Hold {
    /// Stream the console and keep the guest up until it powers off or Ctrl-C.
    Boot,
    /// An interactive shell over SSH in this terminal; the guest goes down with it.
    Shell,
    /// One command over SSH, its output printed; the guest goes down after it.
    Command(String),
}

/// "Until Ctrl-C": long enough, and still safe to add to an `Instant`.
const FOREVER_S: u64 = 10 * 365 * 24 * 3600;

/// Boots `cell`'s kernel and image for a person at the terminal; returns the exit status to give
/// (the command's or the shell's, 0 for a guest that powered off).
#[allow(clippy::too_many_arguments)]
pub fn hold(sh: &Shell, cache: &Cache, loaded: &LoadedMatrix, recipes: &[Recipe], cell: &Cell, build: &BuildOptions, images_dir: &Path, out: &Path, what: Hold, accel_mode: AccelMode, ui: &Ui) -> Result<i32> {
    let kernel = kernel::build(sh, cache, &recipes[cell.kernel], cell.arch, build, ui)?;
    let base = image::build(sh, cache, images_dir, cell.arch, ui)?;
    let image = image::with_selftests(cache, &base, &kernel.selftests, ui)?;
    let client_key = crate::ssh_keys::client_key(sh, cache)?;
    let (accel, proof) = accel::for_guest(cache, accel_mode, cell.arch, &probe_guest(&kernel, &image))?;
    if let Some(proof) = proof {
        eprintln!("lab: {}", proof.verdict());
    }
    let dir = out.join("cells").join(&cell.id);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmdline = kernel_cmdline(cell, &loaded.matrix, true);
    let machine = Machine {
        arch: cell.arch,
        accel,
        vcpus: cell.vcpus,
        memory_mib: loaded.matrix.memory_mib,
        kernel: &kernel.image,
        initramfs: Some(&image.initramfs),
        cmdline: &cmdline,
        ssh_port: None,
    };
    let credentials = credentials(&image, &client_key.private);
    let session = |name: &str, command: String, interactive: bool| SshTask::Run(SshWorkload { name: name.into(), command, interactive, fetch: Vec::new() });
    let task = match &what {
        Hold::Boot => SshTask::WaitReady,
        Hold::Shell => session("shell", String::new(), true),
        Hold::Command(command) => session("command", command.clone(), false),
    };
    let deadlines = Deadlines { boot: loaded.matrix.timeouts.boot, silence: FOREVER_S, workload: FOREVER_S, report_grace: FOREVER_S };
    let watch = Watch { report_starts: triage::starts_report, diagnosis: None };
    eprintln!("lab: booting {} (console: {}; QMP: {})", cell.id, dir.join("console.log").display(), dir.join("qmp.sock").display());
    let boot = vm::boot(&machine, &dir, deadlines, &watch, Some(&GuestSsh { credentials, task }), |seen| match (&what, seen) {
        (Hold::Boot, Seen::Console(line)) => println!("{}", triage::sanitize(line)),
        (Hold::Boot, Seen::SshReady { machine, cpus, after_s }) => {
            let cpus = cpus.map_or("?".to_string(), |n| n.to_string());
            eprintln!("lab: {machine} guest with {cpus} CPUs, SSH ready after {after_s:.1}s: {}; Ctrl-C stops it", dir.join("ssh-command.sh").display());
        }
        (Hold::Command(_), Seen::Workload(line)) => println!("{line}"),
        _ => {}
    })?;
    if let Ok(stderr) = fs::read(dir.join("workload.stderr")) {
        std::io::Write::write_all(&mut std::io::stderr(), &stderr)?;
    }
    let status = boot.result.as_ref().and_then(|r| r.get("exit")?.parse::<i32>().ok());
    match (status, &boot.end) {
        (Some(code), _) => Ok(if code < 0 { 1 } else { code }),
        (None, End::Exited) => Ok(0),
        (None, end) => {
            let why = match end {
                End::QemuFailed(why) | End::SshFailed(why) | End::LostConnection(why) => why.clone(),
                other => other.name().to_string(),
            };
            bail!("the guest of {} ended before the session did: {why} (console: {})", cell.id, boot.console_log.display())
        }
    }
}

/// How the lab logs into a guest of `image`: the image's user and host key, the lab's key.
pub fn credentials(image: &Image, client_key: &Path) -> vm::ssh::Credentials {
    vm::ssh::Credentials { user: image.ssh.user.clone(), host_key: image.ssh.host_key.clone(), private_key: client_key.to_path_buf() }
}

/// Every guest has SSH; a `via: ssh` workload is started over it, with the guest's dmesg, its
/// scheduler debug file and the workload's `fetch` files saved after it.
fn guest_ssh(cell: &Cell, image: &Image, client_key: &Path) -> GuestSsh {
    let credentials = credentials(image, client_key);
    if cell.workload.via == Via::Console {
        return GuestSsh { credentials, task: SshTask::None };
    }
    let task = {
        let args = cell.workload.args.iter().map(|(key, value)| vm::ssh::shell_quote(&format!("--{key}={}", matrix::arg_value(value).unwrap_or_default())));
        let program = std::iter::once(format!("/lab/workloads/{}", cell.workload.program())).chain(args).collect::<Vec<_>>().join(" ");
        let mut fetch = vec![
            Fetch { command: "dmesg".into(), file: "dmesg.txt".into() },
            Fetch { command: "mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug; cat /sys/kernel/debug/sched/debug".into(), file: "sched-debug.txt".into() },
        ];
        fetch.extend(cell.workload.fetch.iter().map(|path| Fetch { command: format!("cat -- {}", vm::ssh::shell_quote(path)), file: matrix::fetched_file_name(path).to_owned() }));
        // The environment the init gives a workload it starts (images/workloads/README.md).
        SshTask::Run(SshWorkload { name: cell.workload.name.clone(), command: format!("export LAB_CPUS=$(nproc); exec {program}"), interactive: false, fetch })
    };
    GuestSsh { credentials, task }
}

/// Seconds from the ready line to the first report: the host time that prefixes its console line,
/// or, for a report from host samples, the time sampling began. Runs that failed during boot have
/// no ready line and no delay.
fn detection_delay(console: &str, reports: &[Report], ready_at: Option<f64>, host: Option<&HostSamples>) -> Option<f64> {
    let first = reports.first()?;
    if first.source == Source::Host {
        return Some(host?.started_s - ready_at?);
    }
    Some(vm::console_time(console, first.line)? - ready_at?)
}

/// What the verdict rests on: the kernel's own reports, the host's samples, or both.
fn basis(reports: &[Report]) -> Option<String> {
    let guest = reports.iter().any(|r| r.source == Source::Console && !matches!(r.kind, Kind::Silent | Kind::LostConnection | Kind::Other));
    let host = reports.iter().any(|r| r.source == Source::Host);
    match (guest, host) {
        (true, true) => Some("guest+host".into()),
        (true, false) => Some("guest".into()),
        (false, true) => Some("host".into()),
        (false, false) => None,
    }
}

/// Between host samples the VM runs: long enough apart that a vCPU making progress shows it.
const HOST_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

fn deadlines(t: &Timeouts) -> Deadlines {
    Deadlines { boot: t.boot, silence: t.silence, workload: t.workload, report_grace: t.report_grace }
}

/// The guest's whole configuration travels on the kernel command line: the init reads
/// `lab.workload` and `lab.arg.*` (or `lab.hold`) from /proc/cmdline.
fn kernel_cmdline(cell: &Cell, matrix: &matrix::Matrix, hold: bool) -> String {
    let mut words = vec![
        format!("console={}", cell.arch.console()),
        // Reboot at once on panic; with QEMU's -no-reboot that ends the VM.
        "panic=-1".to_string(),
        // On a lockup, every CPU's stack: a live lock needs both sides.
        "hardlockup_all_cpu_backtrace=1".to_string(),
        "softlockup_all_cpu_backtrace=1".to_string(),
        // Panic on lockups. In 7.3 the 8250 and PL011 consoles print from a kthread, and the
        // lockup reports do not force atomic printing: the kthread can sit on the stuck CPU's
        // runqueue and a detected lockup stays in the ring buffer for a minute or more (seen on
        // x86_64 and aarch64). Panic flushes every console atomically, then ends the VM.
        "nmi_watchdog=panic".to_string(),
        "softlockup_panic=1".to_string(),
    ];
    words.extend(cell.arch.kernel_params().iter().map(|p| p.to_string()));
    match (hold, cell.workload.via) {
        (false, Via::Console) => {
            words.push(format!("lab.workload={}", cell.workload.program()));
            words.extend(cell.workload.args.iter().map(|(key, value)| format!("lab.arg.{key}={}", matrix::arg_value(value).unwrap_or_default())));
        }
        // The lab starts the workload over SSH; the init only waits.
        (true, _) | (_, Via::Ssh) => words.push("lab.hold=1".to_string()),
    }
    words.extend(matrix.cmdline.iter().cloned());
    words.join(" ")
}

/// The verdict of one boot: what the console shows, what the host's samples show, what the
/// workload said, how the VM ended. Reports come in the order things happened: the console's up to
/// the host's sampling, the host's, then what the guest printed when asked (after the NMI). Reports
/// the lab adds itself (silence, no ready line, ...) point at the console's last line.
fn judge(cell: &Cell, boot: &Boot, console: Vec<Report>, host: Option<&triage::HostDiagnosis>, silence_s: u64, last_line: usize) -> (Verdict, String, Vec<Report>) {
    let sampled_at = boot.host.last().map_or(usize::MAX, |s| s.console_line);
    let (mut reports, answers): (Vec<Report>, Vec<Report>) = console.into_iter().partition(|r| r.line <= sampled_at);
    // A guest report that tells only the victim's side (its stuck CPU waits for a lock whose holder
    // no CPU dumped: powerpc under TCG ignores the backtrace IPI), or is titled after a vCPU the
    // host saw waiting for a lock: the host's report, which names the holder, leads.
    let victim_first = |h: &triage::HostDiagnosis| {
        reports.first().is_some_and(|r| r.missing.contains(&Missing::LockHolder) || r.frame.as_ref().is_some_and(|f| h.waiters.contains(f)))
    };
    let at = if host.is_some_and(victim_first) { 0 } else { reports.len() };
    reports.splice(at..at, host.iter().flat_map(|h| h.reports.iter().cloned()));
    reports.extend(answers);
    if let Some(fault) = reports.is_empty().then(|| never_started(boot, host, silence_s, last_line)).flatten() {
        return (Verdict::Error, fault.title.clone(), vec![fault]);
    }
    if boot.end == End::Silent {
        // The host's summary goes with the silence only when it found no spinning vCPU to report.
        let mut lines: Vec<String> = host.filter(|h| !h.spinning()).map(|h| h.summary.clone()).unwrap_or_default();
        lines.extend(boot.host_error.iter().map(|e| format!("host sampling failed: {e}")));
        let what = format!("no console output for {silence_s}s{}", if boot.ready.is_none() { " during boot" } else { "" });
        reports.push(Report::from_lab(Kind::Silent, format!("silent: {what}"), &what, last_line, lines));
    }
    if let End::LostConnection(why) = &boot.end {
        let lines = host.filter(|h| !h.spinning()).map(|h| h.summary.clone()).unwrap_or_default();
        reports.push(Report::from_lab(Kind::LostConnection, format!("lost connection: {}: {why}", cell.workload.name), "", last_line, lines));
    }
    let other = |title: String| Report::from_lab(Kind::Other, title.clone(), &title, last_line, Vec::new());
    if let End::QemuFailed(why) | End::SshFailed(why) = &boot.end {
        if reports.is_empty() {
            return (Verdict::Error, why.clone(), reports);
        }
    }
    if let Some(expected) = cell.workload.expect {
        return match reports.iter().find(|r| r.kind.family() == expected.family()) {
            Some(r) => (Verdict::Pass, format!("expected {expected} reported: {}", r.title), reports),
            None => {
                let got = reports.first().map(|r| r.title.clone()).unwrap_or_else(|| "no report".into());
                let reason = format!("expected a {expected} report, got: {got}");
                reports.insert(0, other(reason.clone()));
                (Verdict::Fail, reason, reports)
            }
        };
    }
    if let Some(first) = reports.first() {
        return (Verdict::Fail, first.title.clone(), reports);
    }
    let Some(ready) = &boot.ready else {
        let reason = match boot.end {
            End::BootTimeout => "no ready line: boot did not finish before the boot deadline".to_string(),
            _ => "no ready line: the guest stopped before its init started".to_string(),
        };
        reports.push(other(reason.clone()));
        let verdict = if boot.end == End::BootTimeout { Verdict::Timeout } else { Verdict::Fail };
        return (verdict, reason, reports);
    };
    let mismatch = [("arch", cell.arch.uname_machine().to_string()), ("cpus", cell.vcpus.to_string())]
        .into_iter()
        .find(|(key, want)| ready.get(key) != Some(want.as_str()));
    if let Some((key, want)) = mismatch {
        let reason = format!("the guest reports {key}={}, the cell asked for {want}", ready.get(key).unwrap_or("nothing"));
        reports.push(other(reason.clone()));
        return (Verdict::Fail, reason, reports);
    }
    let Some(result) = &boot.result else {
        let reason = match boot.end {
            End::WorkloadTimeout => format!("timeout: workload {} gave no result line in time", cell.workload.name),
            _ => format!("workload {} gave no result line before the guest stopped", cell.workload.name),
        };
        reports.push(other(reason.clone()));
        let verdict = if boot.end == End::WorkloadTimeout { Verdict::Timeout } else { Verdict::Fail };
        return (verdict, reason, reports);
    };
    let detail = result.get("detail").unwrap_or("");
    // Sampled and resumed, and the guest went on to finish: it had been paused from outside.
    let paused = if boot.host.iter().any(|s| s.resumed) { "; the VM had been paused from outside (host samples: no vCPU spinning)" } else { "" };
    match result.get("status") {
        Some("pass") => (Verdict::Pass, format!("{} passed in {} ms{paused}", cell.workload.name, result.get("elapsed_ms").unwrap_or("?")), reports),
        Some("skip") => (Verdict::Skip, format!("{} skipped: {detail}", cell.workload.name), reports),
        Some("error") => (Verdict::Error, format!("{} could not run: {detail}", cell.workload.name), reports),
        status => {
            let reason = format!("{} failed: status={} {detail}", cell.workload.name, status.unwrap_or("?"));
            reports.push(other(reason.clone()));
            (Verdict::Fail, reason, reports)
        }
    }
}

/// A guest that never got going, or whose vCPUs all sat outside the kernel image, with no report
/// from the kernel or the host to say otherwise: the host's fault until shown otherwise (a KVM that
/// runs a boot sector but hangs Linux in its decompressor), never a kernel verdict.
fn never_started(boot: &Boot, host: Option<&triage::HostDiagnosis>, silence_s: u64, last_line: usize) -> Option<Report> {
    if !matches!(boot.end, End::Silent | End::BootTimeout) {
        return None;
    }
    let outside = host.is_some_and(|h| h.outside_kernel);
    let lines = host.map(|h| h.summary.clone()).unwrap_or_default();
    let (kind, what) = match (boot.console_lines, outside, &boot.ready) {
        (0, true, _) => (Kind::BootHang, format!("the guest printed nothing in {silence_s}s and every vCPU is outside the kernel image")),
        (0, false, _) => (Kind::BootHang, format!("the guest printed nothing in {silence_s}s")),
        (_, true, None) => (Kind::BootHang, "every vCPU is outside the kernel image before the ready line".to_string()),
        (_, true, Some(_)) => (Kind::Infra, format!("every vCPU is outside the kernel image and the console was silent for {silence_s}s")),
        (_, false, _) => return None,
    };
    Some(Report::from_lab(kind, format!("{kind}: {what}"), &what, last_line, lines))
}

/// A default output directory per run, so nightly runs never overwrite each other, named for
/// when it started so that a person finds last night's among them.
pub fn default_out(base: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    run_dir(base, secs, Path::exists)
}

/// `BASE/2026-12-05T07-16-11` (UTC; no `:`, which some file systems and `scp` treat specially),
/// then `-2`, `-3`, ... for runs started in the same second.
fn run_dir(base: &Path, unix_secs: u64, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let stamp = utc_stamp(unix_secs);
    let mut dir = base.join(&stamp);
    let mut n = 1;
    while exists(&dir) {
        n += 1;
        dir = base.join(format!("{stamp}-{n}"));
    }
    dir
}

fn utc_stamp(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86400, unix_secs % 86400);
    // Howard Hinnant's civil_from_days: 400-year eras counted from 0000-03-01, so that the leap
    // day ends a year; days since 1970 are never negative here.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// An explicit --out must be new or empty: results of two runs never mix.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("output directory {} is not empty: choose a new one (results of two runs must not mix)", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::ProtocolLine;

    fn cell(expect: Option<Kind>) -> Cell {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let m = matrix::parse("kernels: [{recipe: k.yaml}]\narches: [aarch64]\nvcpus: [2]\nworkloads: [{name: smoke}]\n", &programs).unwrap();
        let mut workload = m.workloads[0].clone();
        workload.expect = expect;
        Cell { id: "k-aarch64-2cpu-smoke".into(), kernel: 0, kernel_name: "k".into(), arch: Arch::Aarch64, vcpus: 2, workload }
    }

    fn line(text: &str) -> Option<ProtocolLine> {
        Some(ProtocolLine { at: 1.0, fields: text.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect() })
    }

    fn boot(end: End, ready: &str, result: &str) -> Boot {
        Boot {
            end,
            ready: if ready.is_empty() { None } else { line(ready) },
            result: if result.is_empty() { None } else { line(result) },
            console_log: PathBuf::from("/nonexistent"),
            console_lines: 10,
            host: Vec::new(),
            host_error: None,
            ssh: None,
        }
    }

    fn mute(end: End) -> Boot {
        Boot { console_lines: 0, ..boot(end, "", "") }
    }

    fn lockup() -> Report {
        Report { kind: Kind::HardLockup, title: "hard LOCKUP in mm_get_cid".into(), signature: "hard-lockup:mm_get_cid".into(), frame: Some("mm_get_cid".into()), frame_site: None, cpu: Some(1), stuck_cpu: None, line: 7, lines: vec![], source: Source::Console, missing: Vec::new(), stacks: Vec::new() }
    }

    const READY: &str = "arch=aarch64 cpus=2";

    /// `check(expect, boot, reports, "verdict: reason")`
    fn check(expect: Option<Kind>, boot: Boot, reports: Vec<Report>, want: &str) {
        let (verdict, reason, _) = judge(&cell(expect), &boot, reports, None, 60, 100);
        assert_eq!(format!("{verdict:?}: {reason}"), want);
    }

    #[test]
    fn verdicts() {
        check(None, boot(End::Exited, READY, "status=pass elapsed_ms=5000"), vec![], "Pass: smoke passed in 5000 ms");
        check(None, boot(End::StoppedAfterReport, READY, ""), vec![lockup()], "Fail: hard LOCKUP in mm_get_cid");
        check(None, boot(End::Exited, READY, "status=pass"), vec![lockup()], "Fail: hard LOCKUP in mm_get_cid");
        check(None, boot(End::Silent, READY, ""), vec![], "Fail: silent: no console output for 60s");
        check(None, boot(End::Silent, "", ""), vec![], "Fail: silent: no console output for 60s during boot");
        check(None, boot(End::BootTimeout, "", ""), vec![], "Timeout: no ready line: boot did not finish before the boot deadline");
        check(None, boot(End::Exited, "", ""), vec![], "Fail: no ready line: the guest stopped before its init started");
        check(None, boot(End::Exited, "arch=aarch64 cpus=1", "status=pass"), vec![], "Fail: the guest reports cpus=1, the cell asked for 2");
        check(None, boot(End::Exited, "arch=x86_64 cpus=2", "status=pass"), vec![], "Fail: the guest reports arch=x86_64, the cell asked for aarch64");
        check(None, boot(End::WorkloadTimeout, READY, ""), vec![], "Timeout: timeout: workload smoke gave no result line in time");
        check(None, boot(End::Exited, READY, "status=skip detail=no-rseq"), vec![], "Skip: smoke skipped: no-rseq");
        check(None, boot(End::Exited, READY, "status=fail detail=exit-1"), vec![], "Fail: smoke failed: status=fail exit-1");
        check(None, boot(End::Exited, READY, "status=error detail=usage"), vec![], "Error: smoke could not run: usage");
        check(None, boot(End::QemuFailed("QEMU exited with exit status: 1: bad -M".into()), "", ""), vec![], "Error: QEMU exited with exit status: 1: bad -M");
        // Not one byte: the host's fault until shown otherwise, whatever the cell expected.
        check(None, mute(End::Silent), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(None, mute(End::BootTimeout), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(Some(Kind::HardLockup), mute(End::Silent), vec![], "Error: boot-hang: the guest printed nothing in 60s");
        check(None, mute(End::Exited), vec![], "Fail: no ready line: the guest stopped before its init started");
        let hl = Some(Kind::HardLockup);
        check(hl, boot(End::StoppedAfterReport, READY, ""), vec![lockup()], "Pass: expected hard-lockup reported: hard LOCKUP in mm_get_cid");
        check(hl, boot(End::Exited, READY, "status=skip"), vec![], "Fail: expected a hard-lockup report, got: no report");
        check(hl, boot(End::Silent, READY, ""), vec![], "Fail: expected a hard-lockup report, got: silent: no console output for 60s");
        // LKDTM EXCEPTION: an Oops on arm64, a BUG on x86_64 and powerpc; either passes either.
        let null = |kind| Report { title: "NULL deref in lkdtm_EXCEPTION".into(), ..at(kind, 5, Source::Console) };
        let exited = || boot(End::StoppedAfterReport, READY, "");
        check(Some(Kind::Oops), exited(), vec![null(Kind::Bug)], "Pass: expected oops reported: NULL deref in lkdtm_EXCEPTION");
        check(Some(Kind::Bug), exited(), vec![null(Kind::Oops)], "Pass: expected bug reported: NULL deref in lkdtm_EXCEPTION");
        check(Some(Kind::Warning), exited(), vec![null(Kind::Oops)], "Fail: expected a warning report, got: NULL deref in lkdtm_EXCEPTION");
    }

    fn at(kind: Kind, line: usize, source: Source) -> Report {
        Report { kind, title: format!("{kind}@{line}"), signature: kind.to_string(), frame: None, frame_site: None, cpu: None, stuck_cpu: None, line, lines: vec![], source, missing: Vec::new(), stacks: Vec::new() }
    }

    fn quiet_host() -> triage::HostDiagnosis {
        triage::HostDiagnosis { reports: vec![], summary: vec!["vCPU 0: idle (default_idle) in every kernel sample".into()], waiters: vec![], outside_kernel: false }
    }

    /// Reports in the order things happened: the console's before the host sampled, the host's,
    /// the guest's answer to the NMI, then the silence the lab saw.
    #[test]
    fn host_reports_take_their_place_in_time_and_set_the_basis() {
        let mut silent = boot(End::Silent, READY, "");
        silent.host = vec![HostSamples { console_line: 5, started_s: 30.0, ..HostSamples::default() }];
        let host = triage::HostDiagnosis { reports: vec![at(Kind::HardLockup, 5, Source::Host)], summary: vec!["vCPU 0: ...".into()], waiters: vec![], outside_kernel: false };
        let console = vec![at(Kind::RcuStall, 3, Source::Console), at(Kind::Oops, 8, Source::Console)];
        let (verdict, reason, reports) = judge(&cell(None), &silent, console, Some(&host), 60, 9);
        let order: Vec<String> = reports.iter().map(|r| format!("{}/{:?}", r.title, r.source)).collect();
        assert_eq!(order, ["rcu-stall@3/Console", "hard-lockup@5/Host", "oops@8/Console", "silent: no console output for 60s/Console"]);
        assert_eq!((verdict, reason.as_str()), (Verdict::Fail, "rcu-stall@3"));
        assert_eq!(basis(&reports).as_deref(), Some("guest+host"));
        let (_, reason, reports) = judge(&cell(None), &silent, vec![], Some(&host), 60, 9);
        assert_eq!(reason, "hard-lockup@5");
        assert_eq!(basis(&reports).as_deref(), Some("host"));
        assert!(reports[1].lines.is_empty(), "the silence does not repeat the host's lines");
        assert_eq!(detection_delay("", &reports, Some(1.0), silent.host.last()), Some(29.0));
        // The guest's report named a lock waiter the host saw: the host's holder leads.
        let mut waiter = at(Kind::HardLockup, 3, Source::Console);
        waiter.frame = Some("sched_mm_cid_fork".into());
        let holder = triage::HostDiagnosis { waiters: vec!["sched_mm_cid_fork".into()], ..host.clone() };
        let (_, reason, reports) = judge(&cell(None), &silent, vec![waiter], Some(&holder), 60, 9);
        assert_eq!((reason.as_str(), reports[1].frame.as_deref()), ("hard-lockup@5", Some("sched_mm_cid_fork")));
        // The guest's report says no dumped stack showed the holder: the host's report leads even
        // when the host no longer saw that waiter (it may have moved on to another lock).
        let mut victim = at(Kind::HardLockup, 3, Source::Console);
        victim.missing = vec![Missing::LockHolder];
        let (_, reason, _) = judge(&cell(None), &silent, vec![victim.clone()], Some(&host), 60, 9);
        assert_eq!(reason, "hard-lockup@5");
        let (_, reason, _) = judge(&cell(None), &silent, vec![victim], Some(&quiet_host()), 60, 9);
        assert_eq!(reason, "hard-lockup@3", "with nothing spinning on the host, the guest's report stays first");
        let quiet = quiet_host();
        let (_, reason, reports) = judge(&cell(None), &silent, vec![], Some(&quiet), 60, 9);
        assert_eq!(reason, "silent: no console output for 60s");
        assert_eq!(reports[0].lines, quiet.summary, "a silence with no spinning vCPU carries the host's view");
        assert_eq!(basis(&reports), None);
        let mut resumed = boot(End::Exited, READY, "status=pass elapsed_ms=20000");
        resumed.host = vec![HostSamples { resumed: true, ..HostSamples::default() }];
        let (verdict, reason, _) = judge(&cell(None), &resumed, vec![], Some(&quiet), 60, 9);
        assert_eq!(format!("{verdict:?}: {reason}"), "Pass: smoke passed in 20000 ms; the VM had been paused from outside (host samples: no vCPU spinning)");
    }

    /// vCPUs outside the kernel image (the bzImage decompressor under a KVM that hangs Linux) are
    /// the host's; a vCPU the host could name spinning in the kernel is the kernel's, printed or not.
    #[test]
    fn a_guest_outside_its_kernel_is_an_error_and_a_named_spin_is_a_failure() {
        let outside = triage::HostDiagnosis { outside_kernel: true, summary: vec!["vCPU 0: outside the kernel image in 8 of 8 samples".into()], ..quiet_host() };
        let judge_host = |boot: &Boot, host: &triage::HostDiagnosis| {
            let (verdict, reason, reports) = judge(&cell(None), boot, vec![], Some(host), 60, 9);
            (format!("{verdict:?}: {reason}"), reports)
        };
        let (got, reports) = judge_host(&mute(End::Silent), &outside);
        assert_eq!(got, "Error: boot-hang: the guest printed nothing in 60s and every vCPU is outside the kernel image");
        assert_eq!((reports.len(), reports[0].kind, &reports[0].lines), (1, Kind::BootHang, &outside.summary));
        assert_eq!(judge_host(&boot(End::Silent, "", ""), &outside).0, "Error: boot-hang: every vCPU is outside the kernel image before the ready line");
        assert_eq!(judge_host(&boot(End::Silent, READY, ""), &outside).0, "Error: infra: every vCPU is outside the kernel image and the console was silent for 60s");
        let spinning = triage::HostDiagnosis { reports: vec![lockup()], ..quiet_host() };
        assert_eq!(judge_host(&mute(End::Silent), &spinning).0, "Fail: hard LOCKUP in mm_get_cid");
        // The kernel's own report stands even when the vCPUs left its image afterwards.
        let (verdict, reason, _) = judge(&cell(None), &boot(End::Silent, READY, ""), vec![lockup()], Some(&outside), 60, 9);
        assert_eq!(format!("{verdict:?}: {reason}"), "Fail: hard LOCKUP in mm_get_cid");
    }

    /// A guest that stopped answering over SSH: its own report names the failure when it printed
    /// one, the lost connection follows; without SSH at all the cell could not run.
    #[test]
    fn lost_connections_and_ssh_failures() {
        let lost = boot(End::LostConnection("no reply over SSH for 20s".into()), READY, "");
        let (verdict, reason, reports) = judge(&cell(None), &lost, vec![], None, 60, 9);
        assert_eq!((verdict, reason.as_str()), (Verdict::Fail, "lost connection: smoke: no reply over SSH for 20s"));
        assert_eq!(reports[0].kind, Kind::LostConnection);
        let (_, reason, reports) = judge(&cell(None), &lost, vec![lockup()], None, 60, 9);
        assert_eq!((reason.as_str(), reports[1].kind), ("hard LOCKUP in mm_get_cid", Kind::LostConnection));
        let refused = boot(End::SshFailed("host key refused".into()), READY, "");
        let (verdict, reason, _) = judge(&cell(None), &refused, vec![], None, 60, 9);
        assert_eq!((verdict, reason.as_str()), (Verdict::Error, "host key refused"));
    }

    #[test]
    fn detection_delay_reads_the_host_time_of_the_report() {
        let console = "    1.000s| LAB-READY arch=x86_64\n    1.500s| lkdtm: writing\n   17.250s| [ 16.4] watchdog: CPU1: Watchdog detected hard LOCKUP on cpu 0\n";
        let mut report = lockup();
        report.line = 3;
        assert_eq!(detection_delay(console, &[report.clone()], Some(1.0), None), Some(16.25));
        assert_eq!(detection_delay(console, &[report.clone()], None, None), None);
        assert_eq!(detection_delay(console, &[], Some(1.0), None), None);
        report.line = 9;
        assert_eq!(detection_delay(console, &[report], Some(1.0), None), None);
    }

    fn check_run_dir(unix_secs: u64, existing: &[&str], expect: &str) {
        let dir = run_dir(Path::new("lab-out"), unix_secs, |p| existing.iter().any(|e| Path::new("lab-out").join(e) == p));
        assert_eq!(dir, Path::new("lab-out").join(expect), "{unix_secs} {existing:?}");
    }

    #[test]
    fn run_dirs_are_utc_start_times_never_reused() {
        check_run_dir(0, &[], "1970-01-01T00-00-00");
        check_run_dir(1_796_454_971, &[], "2026-12-05T07-16-11");
        check_run_dir(946_684_799, &[], "1999-12-31T23-59-59");
        check_run_dir(951_782_400, &[], "2000-02-29T00-00-00");
        check_run_dir(1_709_251_199, &[], "2024-02-29T23-59-59");
        check_run_dir(4_107_542_400, &[], "2100-03-01T00-00-00");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11"], "2026-12-05T07-16-11-2");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11", "2026-12-05T07-16-11-2"], "2026-12-05T07-16-11-3");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11-2"], "2026-12-05T07-16-11");
    }

    #[test]
    fn cmdline_carries_the_workload() {
        let programs = ["smoke", "lkdtm"].into_iter().map(String::from).collect();
        let m = matrix::parse(
            "kernels: [{recipe: k.yaml}]\narches: [ppc64le]\nvcpus: [2]\nworkloads: [{name: hl, program: lkdtm, args: {crash: HARDLOCKUP, wait: 30}}]\ncmdline: [nokaslr]\n",
            &programs,
        )
        .unwrap();
        let c = Cell { id: "x".into(), kernel: 0, kernel_name: "k".into(), arch: Arch::Ppc64le, vcpus: 2, workload: m.workloads[0].clone() };
        assert_eq!(
            kernel_cmdline(&c, &m, false),
            "console=hvc0 panic=-1 hardlockup_all_cpu_backtrace=1 softlockup_all_cpu_backtrace=1 nmi_watchdog=panic softlockup_panic=1 lab.workload=lkdtm lab.arg.crash=HARDLOCKUP lab.arg.wait=30 nokaslr"
        );
    }
}
