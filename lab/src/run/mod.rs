//! The pipeline: plan -> kernels -> images -> boots -> triage -> verdicts -> reports.
//!
//! Data flows one way. Each stage gets what it needs as values (a `Kernel`, an `Image`, a
//! `Machine`) and returns values; only this module knows the order and the directory of a run.
//! How a cell becomes a guest is `guest`, which `hold` and `lab bench` share; what its boot means
//! is `verdict`.

mod dirs;
pub mod guest;
mod hold;
mod queue;
mod verdict;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use anyhow::{Context, Result};
use xshell::Shell;

pub use dirs::{check_out_dir, default_out};
use guest::Guest;
pub use hold::{hold, Hold, HoldEvent, HoldSetup};
use queue::Queue;
use verdict::{basis, detection_delay, in_time_order, judge, Logs};

use crate::accel::{self, AccelMode};
use crate::arch::Arch;
use crate::cache::Cache;
use crate::image::{self, Image};
use crate::kernel::{self, BuildOptions, Kernel, Recipe};
use crate::matrix::{LoadedMatrix, Matrix};
use crate::plan::{self, Cell, Jobs};
use crate::process::{self, Interrupted, Signal};
use crate::report::{self, CellResult};
use crate::results;
use crate::triage::{self, Report};
use crate::ui::{Event, Ui};
use crate::vm::{self, Accel, Boot, Seen};
use crate::vocab::{CellEnd, Kind, Verdict};

pub struct RunOptions {
    pub out: PathBuf,
    /// Cells booted at once.
    pub jobs: Jobs,
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
    /// The live watch's pace (`None`: the host looks only at a silent or overdue guest).
    pub live_every: Option<std::time::Duration>,
    /// What x86_64 guests run under (`--accel`, else the matrix's `accel:`).
    pub accel: AccelMode,
    /// Runs a resumed run already finished (`--resume`): kept as they are, not run again.
    pub finished: Vec<CellResult>,
}

/// What a run leaves: every planned run's result, in plan order, and the signal that cut it short.
pub struct Finished {
    pub results: Vec<CellResult>,
    pub interrupted: Option<Signal>,
}

/// Every cell's result; `Err` only for set-up problems that stop the whole run. A signal is no
/// such problem: the cell it stopped and those it kept from starting are results too
/// (`Verdict::Interrupted`), and the reports hold them before the signal is passed on.
pub fn run(
    sh: &Shell,
    cache: &Cache,
    matrix: &LoadedMatrix,
    recipes: &[Recipe],
    cells: &[Cell],
    opts: &RunOptions,
    ui: &Ui,
) -> Result<Finished> {
    fs::create_dir_all(opts.out.join("cells")).with_context(|| format!("cannot create {}", opts.out.display()))?;
    for recipe in recipes {
        ui.note(format!("kernel {}: {}", recipe.name, recipe.description.trim()));
    }
    let repeat = opts.repeat.max(1);
    ui.note(format!("{} cells x {repeat} runs, results in {}", cells.len(), opts.out.display()));
    let run_number = |run: u32| (repeat > 1).then_some(run);
    let finished = |cell: &Cell, run: u32| opts.finished.iter().find(|r| r.id == cell.id && r.run == run_number(run));
    let pending = |cell: &&Cell| (1..=repeat).any(|n| finished(cell, n).is_none());
    if !opts.finished.is_empty() {
        ui.note(format!("resumed: {} runs finished before are kept", opts.finished.len()));
    }
    let client_key = crate::ssh_keys::client_key(sh, cache)?;
    let mut kernels: BTreeMap<(usize, Arch), Result<Kernel, String>> = BTreeMap::new();
    // After a signal nothing more is prepared. The maps stay partial, but the flag never clears,
    // so no worker starts a cell that would look in them.
    let going = || process::interrupted().is_none();
    for cell in cells.iter().filter(pending).take_while(|_| going()) {
        kernels.entry((cell.kernel, cell.arch)).or_insert_with(|| {
            kernel::build(sh, cache, &recipes[cell.kernel], cell.arch, &opts.build, ui).map_err(|e| format!("{e:#}"))
        });
    }
    let mut base_images: BTreeMap<Arch, Result<Image, String>> = BTreeMap::new();
    for cell in cells.iter().filter(pending).take_while(|_| going()) {
        base_images
            .entry(cell.arch)
            .or_insert_with(|| image::build(sh, cache, &opts.images_dir, cell.arch, ui).map_err(|e| format!("{e:#}")));
    }
    // Each kernel's guests carry its own selftests.
    let mut images: BTreeMap<(usize, Arch), Result<Image, String>> = BTreeMap::new();
    for (&(index, arch), kernel) in kernels.iter().take_while(|_| going()) {
        let image = match (&base_images[&arch], kernel) {
            (Ok(base), Ok(kernel)) => {
                image::with_selftests(cache, base, &kernel.selftests, ui).map_err(|e| format!("{e:#}"))
            }
            (Err(e), _) => Err(e.clone()),
            // The cell reports the kernel's failure; any image would do.
            (Ok(base), Err(_)) => Ok(base.clone()),
        };
        images.insert((index, arch), image);
    }

    let accel = AccelPlan::prove(cache, opts.accel, &kernels, &images, ui)?;
    let ctx = Prepared { matrix: &matrix.matrix, opts, ui, kernels, images, client_key: client_key.private, accel };

    // Runs of one cell follow each other, so --until-fail stops a cell early without waiting;
    // cells queue costliest first, each run keeping its place in the plan for the reports.
    let planned_runs = |c: usize| (1..=repeat).map(move |n| (c * repeat as usize + n as usize - 1, &cells[c], n));
    let mut done: Vec<(usize, CellResult)> = Vec::new();
    let mut waiting = Vec::new();
    for (i, cell, n) in plan::by_cost(cells).into_iter().flat_map(planned_runs) {
        match finished(cell, n) {
            Some(result) => done.push((i, result.clone())),
            None => waiting.push((i, cell, n)),
        }
    }
    let hits = done.iter().filter(|(_, r)| r.is_hit()).map(|(_, r)| r.id.clone());
    let hit_cells = Mutex::new(hits.collect::<std::collections::BTreeSet<String>>());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = Queue::new(waiting, opts.jobs.capacity(cores));
    let hit = |cell: &Cell| opts.until_fail && hit_cells.lock().unwrap_or_else(|e| e.into_inner()).contains(&cell.id);
    let (tx, rx) = mpsc::channel::<(usize, CellResult)>();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..queue.workers() {
            let (queue, hit, hit_cells, tx, ctx) = (&queue, &hit, &hit_cells, tx.clone(), &ctx);
            scope.spawn(move || {
                while let Some((index, cell, run)) = queue.take(hit) {
                    let result = run_cell(ctx, cell, run_number(run));
                    queue.done(cell);
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
            results::write_all(&opts.out, &ordered, repeat > 1)?;
        }
        Ok(())
    })?;
    // Read once: the runs recorded as not started and the exit status must name the same signal.
    let interrupted = process::interrupted();
    if let Some(signal) = interrupted {
        // A run --until-fail would have skipped was never going to start: it is no result.
        let unstarted = queue.drain().into_iter().filter(|(_, cell, _)| !hit(cell)).collect::<Vec<_>>();
        for (index, cell, run) in unstarted {
            let mut result = planned(cell, run_number(run), opts);
            result.verdict = Verdict::Interrupted;
            result.reason = format!("not started: the run was interrupted by {signal}");
            result.end = CellEnd::NotStarted;
            done.push((index, result));
        }
        done.sort_by_key(|(i, _)| *i);
        let ordered: Vec<CellResult> = done.iter().map(|(_, r)| r.clone()).collect();
        results::write_all(&opts.out, &ordered, repeat > 1)?;
    }
    Ok(Finished { results: done.into_iter().map(|(_, r)| r).collect(), interrupted })
}

/// What a run prepared before its first boot, and what every cell of it boots with.
struct Prepared<'a> {
    matrix: &'a Matrix,
    opts: &'a RunOptions,
    ui: &'a Ui,
    /// By (kernel index, arch); a failed build is its cells' error.
    kernels: BTreeMap<(usize, Arch), Result<Kernel, String>>,
    /// The same keys: the base image with that kernel's selftests.
    images: BTreeMap<(usize, Arch), Result<Image, String>>,
    /// The lab's SSH key (its private half).
    client_key: PathBuf,
    accel: AccelPlan,
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
    fn prove(
        cache: &Cache,
        mode: AccelMode,
        kernels: &BTreeMap<(usize, Arch), Result<Kernel, String>>,
        images: &BTreeMap<(usize, Arch), Result<Image, String>>,
        ui: &Ui,
    ) -> Result<AccelPlan> {
        let mut proofs = BTreeMap::new();
        match mode {
            AccelMode::Tcg => ui.note("accel tcg: every guest runs under TCG"),
            AccelMode::Kvm => ui.note("accel kvm: x86_64 guests run under KVM, unproven (asked for)"),
            AccelMode::Auto => {
                for (&(index, arch), kernel) in kernels {
                    if let (Ok(kernel), Some(Ok(image))) = (kernel, images.get(&(index, arch))) {
                        let guest = guest::probe_guest(kernel, image);
                        if let (_, Some(proof)) = accel::for_guest(cache, mode, arch, &guest)? {
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

/// One run of a cell; under `auto`, a KVM guest that never got going runs again under TCG, once,
/// its files kept in `kvm/` inside the cell, and later cells of the run go straight to TCG.
fn run_cell(ctx: &Prepared, cell: &Cell, run: Option<u32>) -> CellResult {
    let (plan, ui) = (&ctx.accel, ctx.ui);
    let used = plan.for_cell(cell);
    let first = boot_cell(ctx, cell, run, used);
    let never_started =
        first.verdict == Verdict::Error && first.reports.first().is_some_and(|r| r.kind == Kind::BootHang);
    if !accel::retry_under_tcg(plan.mode, used, never_started) {
        return first;
    }
    plan.demoted.store(true, Ordering::SeqCst);
    ui.note(format!(
        "{}: under KVM {}; running it again under TCG, and every later x86_64 cell of this run",
        cell.id, first.reason
    ));
    let kept = first.dir.join("kvm");
    let moved = fs::read_dir(&first.dir).and_then(|entries| {
        fs::create_dir_all(&kept)?;
        entries.flatten().filter(|e| e.path() != kept).try_for_each(|e| fs::rename(e.path(), kept.join(e.file_name())))
    });
    let mut second = boot_cell(ctx, cell, run, Accel::Tcg);
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
    let dir = report::cell_dir(&opts.out, &cell.id, run);
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
        end: CellEnd::NotBooted,
        detect_s: None,
        basis: None,
        accel: Accel::Tcg,
        kvm_fallback: None,
        dir,
        excerpt: String::new(),
    }
}

/// One boot of `cell` under `accel`: a result whatever happens, its files in the cell's directory.
fn boot_cell(ctx: &Prepared, cell: &Cell, run: Option<u32>, accel: Accel) -> CellResult {
    let (matrix, opts, ui) = (ctx.matrix, ctx.opts, ctx.ui);
    let kernel = &ctx.kernels[&(cell.kernel, cell.arch)];
    let image = &ctx.images[&(cell.kernel, cell.arch)];
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
        let guest = Guest::of_cell(cell, matrix, kernel, image, false);
        let no_symbols = |e: anyhow::Error| ui.note(format!("{}: no host-side symbols: {e:#}", cell.id));
        let symbols = triage::Symbols::load(&kernel.system_map()).map_err(no_symbols).ok();
        let diagnosis = guest::diagnosis(opts.host_samples, opts.dump_memory, symbols.as_ref(), opts.live_every);
        let watch = guest::watch(diagnosis);
        let task = task.clone();
        let ssh = guest::ssh(image, &ctx.client_key, guest::cell_task(cell));
        let deadlines = guest::deadlines(&matrix.timeouts, opts.until_fail);
        let boot = vm::boot(&guest.machine(accel), &dir, deadlines, &watch, Some(&ssh), |seen| match seen {
            Seen::Console(line) | Seen::Workload(line) => {
                ui.send(Event::Output { task: task.clone(), line: line.to_string() });
                if line.contains("LAB-READY") || line.contains("LAB-PROGRESS") {
                    ui.send(Event::Progress { task: task.clone(), message: line.trim().to_string() });
                }
            }
            Seen::SshReady { after_s, .. } => {
                ui.send(Event::Progress { task: task.clone(), message: format!("SSH ready after {after_s:.1}s") })
            }
        })?;
        drop(watch); // It judged samples with the symbols; triage takes them over now.
        Ok((boot, symbols))
    })();
    match outcome {
        Ok((boot, symbols)) => judge_boot(ctx, cell, kernel, &boot, symbols.as_ref(), &mut result),
        Err(e) => match e.downcast_ref::<Interrupted>() {
            // Its console.log and qemu-command.sh stay; the console's tail shows how far it got.
            Some(Interrupted(signal)) => {
                result.verdict = Verdict::Interrupted;
                result.reason = format!("interrupted by {signal} after {:.1}s", started.elapsed().as_secs_f64());
                result.end = CellEnd::Interrupted;
                result.excerpt = report::excerpt(
                    &String::from_utf8_lossy(&fs::read(dir.join("console.log")).unwrap_or_default()),
                    &[],
                );
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
        summary: format!("{}: {}", result.verdict, result.reason),
    });
    result
}

/// Judges a finished boot into `result`: triage of its console, of the workload's stdout over
/// SSH and of the host's samples, then the verdict.
fn judge_boot(
    ctx: &Prepared,
    cell: &Cell,
    kernel: &Result<Kernel, String>,
    boot: &Boot,
    symbols: Option<&triage::Symbols>,
    result: &mut CellResult,
) {
    let read = |path: &Path| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let (console, workload) = (read(&boot.console_log), read(&boot.workload_log));
    let logs = Logs { console: &console, workload: &workload };
    let last_line = console.lines().count().max(1);
    let host = boot
        .host
        .last()
        .zip(symbols)
        .map(|(samples, s)| triage::diagnose_host(samples, s, samples.console_line.max(1)));
    let mut console_reports = triage::triage(console.as_bytes(), None);
    let printed_frames = has_frames(&console_reports) || host.as_ref().is_some_and(|h| has_frames(&h.reports));
    let debug = match kernel {
        Ok(kernel) if printed_frames => {
            debug_info(&kernel.vmlinux, |e| ctx.ui.note(format!("{}: no source lines: {e:#}", cell.id)))
        }
        _ => None,
    };
    if let Some(debug) = &debug {
        console_reports = triage::triage(console.as_bytes(), Some(debug));
    }
    let guest = in_time_order(console_reports, triage::workload_reports(workload.as_bytes()), &logs);
    let (verdict, reason, mut reports) =
        judge(cell, boot, guest, host.as_ref(), ctx.matrix.timeouts.silence, last_line);
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
    result.detect_s = detection_delay(&logs, &result.reports, result.ready_s, boot.host.last());
    result.end = boot.end.cell_end();
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
