//! `lab bench`: the numbers in BENCHMARKS.md, measured in one run on this host.
//!
//! Boot-to-ready is measured two ways on the same kernel, initramfs and NIC: through the lab's VM
//! stage (cell directory, console log, protocol parsing) and with a bare QEMU whose stdout is
//! scanned for the ready line. The ratio is the lab's overhead. The lab's boots also log in over
//! SSH, so the same run says how long after the ready line a guest takes commands.
//!
//! `--stuck` measures host-side diagnosis instead: the live-lock kernel with the guest's own
//! detectors off, booted until it hangs and diagnosed (samples, NMI, answer); the time at which
//! the silence deadline passed, where a cell without diagnosis would have been killed, comes from
//! the same run.
//!
//! `--triage` measures console triage instead: MB/s over a large log, in memory, no VM.
//!
//! `--agreement DIR` measures how often triage names a failure as syzbot does (`agreement.rs`).
//!
//! `--model` measures the protocol checker on every variant (`model.rs`).
//!
//! `--live` measures what the live watch costs a running guest (`live.rs`).
//!
//! `--schedule [MATRIX]` measures how `lab run --jobs auto` uses the host's cores against one cell
//! at a time (`schedule.rs`).
//!
//! `--symbolize VMLINUX` measures source lines for frames: loading the DWARF, then lookups in
//! process against one `addr2line` run per frame (what `scripts/faddr2line` does), on the same
//! frames, and how often the two agree.

mod agreement;
mod live;
mod model;
mod schedule;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::arch::Arch;
use crate::cache::Cache;
use crate::kernel::{self, BuildOptions};
use crate::process::Group;
use crate::run::guest::{self, Detectors, Guest, Init};
use crate::ui::Ui;
use crate::vm::{self, Accel, Deadlines, Machine};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Also time cold kernel builds, in a fresh cache with ccache off (about 5 minutes per arch).
    #[arg(long)]
    cold: bool,
    /// Boots per data point; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Architectures (default: all three).
    #[arg(long)]
    arch: Vec<Arch>,
    /// The kernel recipe to measure.
    #[arg(long, value_name = "FILE")]
    recipe: Option<std::path::PathBuf>,
    /// Measure host-side diagnosis of a hung guest instead (default recipe: the mm_cid live lock,
    /// kernels/linux-7.3-mmcid-no-transit.yaml): time from the last console line to a diagnosis,
    /// and how much longer a diagnosed cell takes than one killed at its silence deadline.
    #[arg(long)]
    stuck: bool,
    /// Measure what the live watch (`lab run --live-every`) costs instead: the stock kernel's
    /// mmcid-churn at 4 vCPUs with the watch off, every 1000 ms and every 500 ms, side by side:
    /// the churn's rounds/s and CID windows/s, and the looks the watch set off (false alarms).
    #[arg(long)]
    live: bool,
    /// Judge the live watch's rounds that finished runs kept (`live-rounds.jsonl` in their cells)
    /// again with windows of 2 to 6 rounds: looks each would set off in passing cells (false
    /// alarms), and how soon after the ready line it would see the hangs the runs' looks bore out.
    #[arg(long, value_name = "DIR", num_args = 1..)]
    live_windows: Vec<PathBuf>,
    /// Measure the mm_cid protocol checker instead: `lab model` on every variant, sequentially
    /// consistent and weak, at its defaults: verdict, states, depth, seconds, states/s, peak
    /// RSS, and issue 19's targets (stock clean in 60 s, no-transit and fork-stale found in 10 s,
    /// two-field clean unless weak). Exits 1 when a target is missed.
    #[arg(long)]
    model: bool,
    /// Measure console triage instead: MB/s judging FILE (default: every golden log of
    /// lab/src/triage/testdata, repeated in memory to about 50 MB), and of sanitizing it.
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    triage: Option<Option<PathBuf>>,
    /// Measure source lines for frames instead, from this vmlinux (built with debug info, as the
    /// lab's kernels are): frames per second in process and with one addr2line run per frame.
    #[arg(long, value_name = "VMLINUX")]
    symbolize: Option<PathBuf>,
    /// Measure agreement with syzbot instead: triage every case of DIR (syzkaller's
    /// pkg/report/testdata/linux/report format) and compare kind and guilty frame with its titles.
    #[arg(long, value_name = "DIR")]
    agreement: Option<PathBuf>,
    /// Measure the scheduling of cells instead: MATRIX (default: the project's matrix.yaml) run
    /// with `--jobs 1` and with `--jobs auto`, side by side: wall time, CPU seconds of the lab
    /// and its guests, the share of the host's cores busy, and the verdicts (which must agree).
    #[arg(long, value_name = "MATRIX", num_args = 0..=1)]
    schedule: Option<Option<PathBuf>>,
    #[command(flatten)]
    accel: crate::AccelArg,
}

const VCPUS: [u32; 3] = [1, 2, 4];
const MEMORY_MIB: u32 = 512;

pub fn run(sh: &Shell, cache: &Cache, args: &BenchArgs, ui: &Ui, project: &Path) -> Result<ExitCode> {
    if args.stuck {
        return stuck(sh, cache, args, ui, project);
    }
    if args.live {
        return live::run(sh, cache, args, ui, project);
    }
    if !args.live_windows.is_empty() {
        return live::windows(cache, &args.live_windows);
    }
    if args.model {
        return model::run();
    }
    if let Some(file) = &args.triage {
        return triage_throughput(file.as_deref(), project);
    }
    if let Some(dir) = &args.agreement {
        return agreement::run(dir);
    }
    if let Some(matrix) = &args.schedule {
        return schedule::run(cache, &matrix.clone().unwrap_or_else(|| project.join("matrix.yaml")));
    }
    if let Some(vmlinux) = &args.symbolize {
        return symbolize_throughput(sh, vmlinux);
    }
    let (recipe, arches, opts) = subject(args, project, "kernels/linux-7.3.yaml")?;
    let cores = opts.jobs;
    println!("# lab bench: recipe {}, {} runs per boot point, {cores} host cores\n", recipe.name, args.runs);

    println!("| arch | cold build (s) | cached build (s) |\n| --- | --- | --- |");
    let mut kernels = Vec::new();
    for &arch in &arches {
        let cold = if args.cold {
            let fresh = Cache::new(Some(cache.root().join(format!("bench-cold-{}", std::process::id()))))?;
            let t = Instant::now();
            let built = kernel::build(sh, &fresh, &recipe, arch, &BuildOptions { ccache: false, ..opts }, ui);
            let secs = t.elapsed().as_secs_f64();
            crate::cache::remove_dir_if_present(fresh.root())?;
            built?;
            format!("{secs:.0}")
        } else {
            "(--cold)".to_string()
        };
        kernel::build(sh, cache, &recipe, arch, &opts, ui)?;
        let t = Instant::now();
        let k = kernel::build(sh, cache, &recipe, arch, &opts, ui)?;
        if !k.cached {
            bail!("the second build of {arch} was not cached");
        }
        println!("| {arch} | {cold} | {:.2} |", t.elapsed().as_secs_f64());
        kernels.push(k);
    }

    println!("\n| arch | vCPUs | bare QEMU to ready (s) | lab to ready (s) | lab / bare | lab to SSH login (s) | SSH login after ready (s) |\n| --- | --- | --- | --- | --- | --- | --- |");
    let client_key = crate::ssh_keys::client_key(sh, cache)?;
    for k in &kernels {
        let image = crate::image::build(sh, cache, &project.join("images"), k.arch, ui)?;
        let accel = bench_accel(cache, args, k, &image)?;
        for vcpus in VCPUS {
            // The init holds; the lab logs in, runs the smoke workload for a second and powers off.
            let cmdline = guest::cmdline(k.arch, Detectors::Default, Init::Hold, &[]);
            let guest = Guest { kernel: k, image: &image, vcpus, memory_mib: MEMORY_MIB, cmdline };
            let machine = guest.machine(accel);
            let (mut bare, mut lab, mut login) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.runs {
                bare.push(bare_boot(&Machine { ssh_port: Some(vm::qemu::free_local_port()?), ..machine.clone() })?);
                let (ready, ssh) = lab_boot(&machine, &image, &client_key.private, cache)?;
                lab.push(ready);
                login.push(ssh);
            }
            let (b, l) = (median(&mut bare), median(&mut lab));
            let after: Vec<f64> = login.iter().zip(&lab).map(|(s, r)| s - r).collect();
            let (s, a) = (median(&mut login), median(&mut after.clone()));
            println!("| {} | {vcpus} | {b:.2} | {l:.2} | {:.2} | {s:.2} | {a:.2} |", k.arch, l / b);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `kernel`'s guests run under (`--accel`, default auto), said on stderr beside the tables.
fn bench_accel(cache: &Cache, args: &BenchArgs, kernel: &kernel::Kernel, image: &crate::image::Image) -> Result<Accel> {
    let mode = args.accel.resolve(crate::accel::AccelMode::Auto)?;
    let (accel, proof) = crate::accel::for_guest(cache, mode, kernel.arch, &guest::probe_guest(kernel, image))?;
    eprintln!(
        "lab bench: {} guests under {accel:?}{}",
        kernel.arch,
        proof.map(|p| format!(" ({})", p.verdict())).unwrap_or_default()
    );
    Ok(accel)
}

/// The recipe (`--recipe`, else `default_recipe`), the architectures and the build options.
fn subject(
    args: &BenchArgs,
    project: &Path,
    default_recipe: &str,
) -> Result<(kernel::Recipe, Vec<Arch>, BuildOptions)> {
    let recipe = kernel::recipe::load(&args.recipe.clone().unwrap_or_else(|| project.join(default_recipe)))?;
    let arches = if args.arch.is_empty() { Arch::ALL.to_vec() } else { args.arch.clone() };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    Ok((recipe, arches, BuildOptions { jobs: cores, refresh: false, ccache: true, in_place: false }))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median, least and greatest of `v`, for a "median (min-max)" column; `None` when empty.
fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    let (lo, hi) = (v.iter().copied().reduce(f64::min)?, v.iter().copied().reduce(f64::max)?);
    Some((median(&mut v), lo, hi))
}

/// QEMU alone: start it, read stdout until the ready line.
fn bare_boot(machine: &Machine) -> Result<f64> {
    let mut command = machine.command();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let start = Instant::now();
    let mut group = Group::spawn(command)?;
    if group.wait_for_output(b"LAB-READY", Duration::from_secs(300))? != crate::process::Waited::Found {
        bail!("bare {} boot printed no ready line in 300 s", machine.arch);
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The lab's deadlines for a guest that only boots, logs in and runs the smoke workload.
const BOOT_DEADLINES: Deadlines =
    Deadlines { boot: 300, silence: 120, workload: 120, report_grace: 5, violation_grace: None };

/// The lab's VM stage, timed from the call to the moment it hands over the ready line, and to its
/// first login over SSH.
fn lab_boot(machine: &Machine, image: &crate::image::Image, client_key: &Path, cache: &Cache) -> Result<(f64, f64)> {
    let dir = cache.dir("bench")?.join(format!("boot-{}-{}", machine.arch, machine.vcpus));
    std::fs::create_dir_all(&dir)?;
    let smoke = guest::workload_command("smoke", &[("seconds".into(), "1".into())]);
    let ssh = guest::ssh(image, client_key, guest::command("smoke", smoke, false));
    let watch = guest::watch(None);
    let start = Instant::now();
    let (mut ready, mut login) = (None, None);
    vm::boot(machine, &dir, BOOT_DEADLINES, &watch, Some(&ssh), |seen| match seen {
        vm::Seen::Console(line) if ready.is_none() && line.contains("LAB-READY") => {
            ready = Some(start.elapsed().as_secs_f64())
        }
        vm::Seen::SshReady { .. } => login = Some(start.elapsed().as_secs_f64()),
        _ => {}
    })?;
    let ready =
        ready.with_context(|| format!("lab {} boot printed no ready line; see {}", machine.arch, dir.display()))?;
    let login = login.with_context(|| format!("lab {} boot: no SSH login; see {}", machine.arch, dir.display()))?;
    Ok((ready, login))
}

/// The size of the default triage bench log: a run then takes over half a second, long enough for
/// the host's scheduling noise to wash out.
const TRIAGE_BENCH_BYTES: usize = 50_000_000;

/// MB/s of `triage::triage` and `triage::sanitize` over `file`, or over the golden logs repeated.
fn triage_throughput(file: Option<&Path>, project: &Path) -> Result<ExitCode> {
    let (log, source) = match file {
        Some(file) => (
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
            file.display().to_string(),
        ),
        None => {
            let dir = project.join("lab/src/triage/testdata");
            let mut logs = Vec::new();
            for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let path = entry?.path();
                if path.extension().is_some_and(|extension| extension == "log") {
                    logs.push(path);
                }
            }
            logs.sort();
            let mut golden = Vec::new();
            for path in &logs {
                golden.extend(std::fs::read(path)?);
                // A cut case ends mid-line; the next case must not continue its last line.
                if !golden.ends_with(b"\n") {
                    golden.push(b'\n');
                }
            }
            let copies = TRIAGE_BENCH_BYTES.div_ceil(golden.len());
            (golden.repeat(copies), format!("the {} golden logs, {copies} times", logs.len()))
        }
    };
    let text = String::from_utf8_lossy(&log);
    let megabytes = log.len() as f64 / 1e6;
    let reports = crate::triage::triage(&log, None).len();
    let rate = |work: &dyn Fn()| {
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                work();
                megabytes / start.elapsed().as_secs_f64()
            })
            .collect();
        median(&mut rates)
    };
    println!("# lab bench --triage: {megabytes:.2} MB ({source}), {reports} reports, median of 5 runs\n");
    println!("| function | MB/s |\n| --- | --- |");
    println!(
        "| triage::triage | {:.1} |",
        rate(&|| {
            std::hint::black_box(crate::triage::triage(&log, None));
        })
    );
    println!(
        "| triage::sanitize | {:.1} |",
        rate(&|| {
            std::hint::black_box(crate::triage::sanitize(&text));
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Frames looked up in process per round, spread over the whole kernel so every unit's lines are
/// read in the first round; and frames given to `addr2line`, one run each, which is slow enough
/// that fewer say as much.
const SYMBOLIZE_FRAMES: usize = 20_000;
const ADDR2LINE_FRAMES: usize = 100;

fn symbolize_throughput(sh: &Shell, vmlinux: &Path) -> Result<ExitCode> {
    let start = Instant::now();
    let debug =
        crate::triage::DebugInfo::load(vmlinux)?.with_context(|| format!("{} has no debug info", vmlinux.display()))?;
    let load = start.elapsed().as_secs_f64();
    let mut functions: Vec<(&str, u64, u64)> = debug.functions().filter(|&(_, _, size)| size > 1).collect();
    functions.sort_by_key(|&(_, address, _)| address);
    anyhow::ensure!(!functions.is_empty(), "{} has no sized text symbols", vmlinux.display());
    // Evenly over the kernel's functions (each once when it has fewer), at the middle of each:
    // inside its body, often inside something inlined. On a 4-byte boundary, where arm64 and
    // powerpc instructions start (a real frame is never inside an instruction).
    let frames: Vec<(&str, u64, u64)> = (0..SYMBOLIZE_FRAMES)
        .map(|i| functions[i * functions.len() / SYMBOLIZE_FRAMES])
        .map(|(name, address, size)| (name, address, (size / 2) & !3))
        .collect();
    let lookup_all = || -> f64 {
        let start = Instant::now();
        for &(name, _, offset) in &frames {
            std::hint::black_box(debug.locate(name, offset, None, false));
        }
        frames.len() as f64 / start.elapsed().as_secs_f64()
    };
    let cold = lookup_all();
    let mut warm: Vec<f64> = (0..5).map(|_| lookup_all()).collect();
    let warm = median(&mut warm);
    let sample = &frames[..ADDR2LINE_FRAMES.min(frames.len())];
    let mut disagree = Vec::new();
    let start = Instant::now();
    for &(name, address, offset) in sample {
        let hex = format!("{:#x}", address + offset);
        let out =
            xshell::cmd!(sh, "addr2line -f -i -e {vmlinux} {hex}").read().context("cannot run addr2line (binutils)")?;
        // addr2line: "function\nfile:line (discriminator N)" per function, innermost first.
        let theirs: Vec<String> = out
            .lines()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|pair| {
                format!(
                    "{} {}",
                    pair[0],
                    pair.get(1)
                        .and_then(|l| l.split(' ').next())
                        .and_then(|l| l.rsplit_once(':'))
                        .map_or("", |(_, line)| line)
                )
            })
            .collect();
        let ours: Vec<String> =
            debug.locate_address(address + offset, name).iter().map(|l| format!("{} {}", l.function, l.line)).collect();
        if ours != theirs {
            disagree.push(format!("{name}+{offset:#x} ({hex}): lab {ours:?}, addr2line {theirs:?}"));
        }
    }
    let spawned = sample.len() as f64 / start.elapsed().as_secs_f64();
    let spread = frames.len().min(functions.len());
    println!(
        "# lab bench --symbolize: {} ({:.0} MB), {} lookups a round at the middle of {spread} of its {} functions, median of 5 warm rounds\n",
        vmlinux.display(),
        std::fs::metadata(vmlinux)?.len() as f64 / 1e6,
        frames.len(),
        functions.len()
    );
    println!("| what | result |\n| --- | --- |");
    println!("| load the DWARF (map, index units and symbols) | {:.0} ms |", load * 1000.0);
    println!("| in process, first round (reads every unit's lines) | {cold:.0} frames/s |");
    println!("| in process, warm | {warm:.0} frames/s |");
    println!("| one addr2line run per frame ({} frames) | {spawned:.1} frames/s |", sample.len());
    println!("| in process / addr2line, first round and warm | {:.0}x, {:.0}x |", cold / spawned, warm / spawned);
    println!(
        "| frames where both name the same functions and lines | {} of {} |",
        sample.len() - disagree.len(),
        sample.len()
    );
    for frame in &disagree {
        println!("\n- {frame}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Seconds of console silence after which the stuck bench diagnoses (or kills) the guest.
const STUCK_SILENCE: u64 = 20;
const STUCK_DEADLINES: Deadlines =
    Deadlines { boot: 300, silence: STUCK_SILENCE, workload: 300, report_grace: 15, violation_grace: None };
/// Host samples of the hung guest before the NMI.
const STUCK_SAMPLES: u32 = 8;

fn stuck(sh: &Shell, cache: &Cache, args: &BenchArgs, ui: &Ui, project: &Path) -> Result<ExitCode> {
    let (recipe, arches, opts) = subject(args, project, "kernels/linux-7.3-mmcid-no-transit.yaml")?;
    println!("# lab bench --stuck: recipe {}, 4 vCPUs, mmcid-churn, nowatchdog, silence {STUCK_SILENCE} s, {} runs per arch\n", recipe.name, args.runs);
    println!("A killed cell would end when its silence deadline passes; a diagnosed one goes on sampling, sending");
    println!("the NMI and listening. Both ends are measured in the same run. Medians (min-max).\n");
    println!("| arch | hung runs | last console line to diagnosis (s) | sampling (s) | NMI and answer (s) | cell killed at deadline (s) | cell diagnosed (s) | diagnosed / killed | named |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for arch in arches {
        let Churn { kernel, image, symbols, accel } = Churn::on(sh, cache, args, ui, project, (&recipe, arch, &opts))?;
        let guest = Churn::guest(&kernel, &image, 60, Detectors::Off);
        let machine = guest.machine(accel);
        let hangs: Vec<Hang> = (0..args.runs)
            .map(|run| stuck_boot(&machine, cache, &symbols, run))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let column = |f: fn(&Hang) -> f64, digits: usize| {
            spread(hangs.iter().map(f).collect())
                .map_or("-".to_string(), |(m, lo, hi)| format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})"))
        };
        let mut named = std::collections::BTreeMap::<&str, usize>::new();
        for h in &hangs {
            *named.entry(h.title.as_str()).or_default() += 1;
        }
        let named: Vec<String> = named.iter().map(|(title, n)| format!("{n}x {title}")).collect();
        println!(
            "| {arch} | {} of {} | {} | {} | {} | {} | {} | {} | {} |",
            hangs.len(),
            args.runs,
            column(|h| h.to_diagnosis, 1),
            column(|h| h.sampling, 1),
            column(|h| h.answer, 1),
            column(|h| h.killed_at, 1),
            column(|h| h.total, 1),
            column(|h| h.total / h.killed_at, 2),
            named.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The churn's guests are the size of the known-bad matrices' cells.
const CHURN_VCPUS: u32 = 4;

/// What a bench of the mm_cid churn boots on one arch: the recipe's kernel and image, the
/// kernel's symbols for host samples, and what its guests run under.
struct Churn {
    kernel: kernel::Kernel,
    image: crate::image::Image,
    symbols: crate::triage::Symbols,
    accel: Accel,
}

impl Churn {
    fn on(
        sh: &Shell,
        cache: &Cache,
        args: &BenchArgs,
        ui: &Ui,
        project: &Path,
        (recipe, arch, opts): (&kernel::Recipe, Arch, &BuildOptions),
    ) -> Result<Churn> {
        let kernel = kernel::build(sh, cache, recipe, arch, opts, ui)?;
        let image = crate::image::build(sh, cache, &project.join("images"), arch, ui)?;
        let symbols = crate::triage::Symbols::load(&kernel.system_map())?;
        let accel = bench_accel(cache, args, &kernel, &image)?;
        Ok(Churn { kernel, image, symbols, accel })
    }

    /// A guest running the churn for `seconds`.
    fn guest<'a>(
        kernel: &'a kernel::Kernel,
        image: &'a crate::image::Image,
        seconds: u32,
        detectors: Detectors,
    ) -> Guest<'a> {
        let churn = Init::Run("mmcid-churn", vec![("seconds".into(), seconds.to_string())]);
        let cmdline = guest::cmdline(kernel.arch, detectors, churn, &[]);
        Guest { kernel, image, vcpus: CHURN_VCPUS, memory_mib: MEMORY_MIB, cmdline }
    }
}

struct Hang {
    /// From the last console line before the hang to the end of sampling.
    to_diagnosis: f64,
    sampling: f64,
    /// From the end of sampling to the end of the boot: the NMI and the wait for the guest's answer.
    answer: f64,
    /// When the silence deadline passed: where a cell without diagnosis ends.
    killed_at: f64,
    total: f64,
    title: String,
}

/// One diagnosed boot of the hanging kernel; `None` when it did not hang (the race was missed).
fn stuck_boot(machine: &Machine, cache: &Cache, symbols: &crate::triage::Symbols, run: usize) -> Result<Option<Hang>> {
    let dir = cache.dir("bench")?.join(format!("stuck-{}-{run}", machine.arch));
    std::fs::create_dir_all(&dir)?;
    let watch = guest::watch(guest::diagnosis(STUCK_SAMPLES, false, Some(symbols), None));
    let start = Instant::now();
    let boot = vm::boot(machine, &dir, STUCK_DEADLINES, &watch, None, |_| {})?;
    let total = start.elapsed().as_secs_f64();
    let Some(samples) = boot.host.last().filter(|_| boot.end == vm::End::Silent) else {
        return Ok(None);
    };
    let console = std::fs::read_to_string(&boot.console_log).unwrap_or_default();
    let silent_since = vm::console_time(&console, samples.console_line).unwrap_or(0.0);
    let title = crate::triage::diagnose_host(samples, symbols, 0)
        .reports
        .first()
        .map_or("no spinning vCPU".to_string(), |r| r.title.clone());
    Ok(Some(Hang {
        to_diagnosis: samples.finished_s - silent_since,
        sampling: samples.finished_s - samples.started_s,
        answer: total - samples.finished_s,
        killed_at: samples.started_s,
        total,
        title,
    }))
}
