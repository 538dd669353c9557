//! `lab`: build kernels with a patch series, boot them under QEMU on x86_64, aarch64 and
//! ppc64le, run stress workloads, judge the console, write JUnit. See ARCHITECTURE.md.

mod accel;
mod apt;
mod arch;
mod bench;
mod cache;
mod doctor;
mod image;
mod kernel;
mod matrix;
mod plan;
mod process;
mod report;
mod run;
mod ssh_keys;
mod triage;
mod ui;
mod vm;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xshell::Shell;

use crate::arch::Arch;
use crate::cache::Cache;
use crate::kernel::{BuildOptions, Recipe};
use crate::plan::Filter;
use crate::ui::Ui;

/// The checkout this binary was built from: default matrix, recipes and guest sources live there.
const PROJECT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "A QEMU regression lab for Linux scheduler patches on x86_64, aarch64 and ppc64le",
    long_about = "A QEMU regression lab for Linux scheduler patches on x86_64, aarch64 and ppc64le.\n\n\
        It builds kernels from recipes (source + patch series + config fragments), boots each under QEMU \
        at several vCPU counts, runs a workload in the guest, judges the console (hard and soft lockups, \
        RCU stalls, hung tasks, BUG/Oops/WARNING/panic, silence) and writes JUnit and JSON reports.\n\n\
        Start with `lab doctor`, then `lab run --setup`. Kernels, images and downloads are cached under \
        ~/.cache/lab (or --cache-dir / LAB_CACHE_DIR).",
    after_help = "Exit status: 0 all cells passed, 1 a cell failed, 2 bad input or set-up error, 128+N stopped by \
        signal N: 130 SIGINT (Ctrl-C), 143 SIGTERM (a CI runner's cancel), 129 SIGHUP (the terminal closed). \
        On any of the three the lab kills every QEMU and build it started, and `lab run` writes junit.xml \
        and summary.json before it exits, with each cell it did not finish as `interrupted`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where kernels, images and downloads are cached (default: $LAB_CACHE_DIR, else ~/.cache/lab).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Stream build output and guest consoles live.
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a matrix: build its kernels, boot every cell, judge, write reports.
    ///
    /// A cell is kernel x arch x vcpus x workload. Results go to DIR/junit.xml, DIR/summary.json
    /// and DIR/cells/<cell>/ (console.log, result.json, qemu-command.sh to boot it again by hand).
    ///
    /// Examples:
    ///   lab run --setup                                   the default matrix
    ///   lab run --filter arch=ppc64le --filter vcpus=4    one architecture, 4 vCPUs
    ///   lab run --matrix nightly.yaml --out /srv/lab/n42 --jobs 2
    ///   lab run --matrix bad.yaml --filter arch=aarch64 --repeat 20
    ///                                                     reproducer: hit rate, time to
    ///                                                     detection, 95% bound when clean
    #[command(verbatim_doc_comment)]
    Run {
        #[command(flatten)]
        select: Select,
        /// Output directory (must be new or empty; default: lab-out/<UTC start time>, e.g.
        /// lab-out/2026-12-05T07-16-11).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Cells booted at once. Under TCG each vCPU is a host thread: on a 2-core host keep 1.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Run every selected cell N times (reproducer mode): summary.json gains a `repro`
        /// section per cell with the hit rate and time to detection.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
        repeat: u32,
        /// With --repeat: stop repeating a cell at its first hit.
        #[arg(long, requires = "repeat")]
        until_fail: bool,
        /// When a guest goes silent, overruns its workload deadline or outlives a kernel report, sample every vCPU this
        /// many times (0.5 s apart, through QMP) before killing it, name what each one is stuck
        /// in from the kernel's System.map, then send it an NMI (x86_64, ppc64le) and read its
        /// answer. The verdict says whether it rests on the guest's reports, the host's samples or
        /// both; DIR/cells/<cell>/host-samples.json keeps the raw samples. 0 kills without looking.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
        host_samples: u32,
        /// With host samples, also keep the stuck guest's memory in its cell as an ELF core,
        /// guest-memory.elf, for crash(8) with the kernel's vmlinux. It is about as large as the
        /// guest's memory (512 MiB by default); host-samples.json records its size.
        #[arg(long)]
        dump_memory: bool,
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        accel: AccelArg,
        /// Install missing host packages first (as `lab setup`).
        #[arg(long)]
        setup: bool,
        /// Only print the cells the filters select.
        #[arg(long)]
        list: bool,
    },
    /// Boot a cell's guest and keep it up for debugging by hand, until it powers off or Ctrl-C.
    ///
    /// The guest boots the cell's kernel, image and kernel parameters, but its init holds instead
    /// of running the workload. The console streams here; DIR/cells/<cell>/ssh-command.sh logs in
    /// over SSH (the lab's key, the image's host key, a port on 127.0.0.1), qmp.sock beside it
    /// talks to QEMU. Start a workload by hand: /lab/workloads/NAME --KEY=VALUE ...
    ///   lab run --list                                   the cells
    ///   lab boot linux-7.3-ppc64le-4cpu-mmcid-churn
    #[command(verbatim_doc_comment)]
    Boot {
        /// The cell, as `lab run --list` names it.
        cell: String,
        #[command(flatten)]
        hold: HoldArgs,
    },
    /// Open a shell, or run one command, over SSH in a guest booted the way a cell boots.
    ///
    /// Boots the cell's kernel and image (its init holding instead of running the workload),
    /// waits for the guest's SSH server, then gives you a shell in this terminal, or runs
    /// CMD, prints its output and exits with its status. The guest goes down afterwards.
    ///   lab ssh linux-7.3-aarch64-4cpu-smoke
    ///   lab ssh linux-7.3-x86_64-2cpu-smoke -- cat /proc/self/status
    #[command(verbatim_doc_comment)]
    Ssh {
        /// The cell, as `lab run --list` names it.
        cell: String,
        #[command(flatten)]
        hold: HoldArgs,
        /// The command to run instead of a shell (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Build (or find in the cache) the kernels of a matrix or of one recipe.
    ///
    /// Prints where each kernel is. A second build with nothing changed says "cached".
    ///   lab build                                  every kernel x arch of the default matrix
    ///   lab build --recipe kernels/linux-7.3.yaml --arch aarch64
    #[command(verbatim_doc_comment)]
    Build {
        #[command(flatten)]
        select: Select,
        /// Build this recipe instead of the matrix's kernels.
        #[arg(long, value_name = "FILE")]
        recipe: Option<PathBuf>,
        /// Architectures (default: the matrix's).
        #[arg(long)]
        arch: Vec<Arch>,
        #[command(flatten)]
        build: BuildArgs,
        /// Print the kernels as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Build (or find in the cache) the guest initramfs for each architecture.
    ///
    /// It holds images/init/init.c as /init and every images/workloads/NAME.c as
    /// /lab/workloads/NAME, compiled static with the Debian cross compilers.
    #[command(verbatim_doc_comment)]
    Image {
        /// Architectures (default: all three).
        #[arg(long)]
        arch: Vec<Arch>,
    },
    /// Judge saved console logs ("-" reads stdin), or a cell's host samples.
    ///
    /// Prints one line per report, or with --json:
    /// {"files": [{"file", "reports": [{"kind", "title", "signature", "frame", "frame_site",
    ///   "cpu", "stuck_cpu", "line", "missing": ["lock-holder" | "truncated"],
    ///   "stacks": [{"cpu", "frames", "sites", "waits_on_lock", "idle"}]}]}]}
    /// ("frame_site", "missing" and "stacks" only when there are any). A site is a frame as printed:
    /// {"printed": "mm_get_cid+0x5c/0x60", "return_address", "source": [{"function", "file", "line"}]}
    ///
    /// With --vmlinux (a kernel built with CONFIG_DEBUG_INFO, e.g. the cell's
    /// ~/.cache/lab/kernels/<kernel>/vmlinux) every printed frame gets its source lines, inlined
    /// functions first, and the text output shows the guilty frame as scripts/faddr2line would:
    ///   lab triage --vmlinux ~/.cache/lab/kernels/<kernel>/vmlinux cells/<cell>/console.log
    /// It also names the caller behind a frame that arm64 and powerpc print under the next
    /// function's name (`next_function+0x0/...`, after a call to panic() or another noreturn
    /// function), so the guilty frame and signature are the ones x86 gives; `lab run` does the same.
    ///
    /// With --system-map, each FILE is a cell's host-samples.json, judged again against the
    /// cell kernel's System.map (one line per vCPU, then the report):
    ///   lab triage --system-map ~/.cache/lab/kernels/<kernel>/System.map cells/<cell>/host-samples.json
    #[command(verbatim_doc_comment)]
    Triage {
        /// Console logs (a cell's console.log, a log pasted from e-mail; "-" reads stdin), or
        /// host-samples.json files with --system-map.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON document on stdout, in the shape above.
        #[arg(long)]
        json: bool,
        /// The files are host-samples.json files; name their addresses from this System.map.
        #[arg(long, value_name = "FILE")]
        system_map: Option<PathBuf>,
        /// The kernel the logs came from, with debug info: source lines for every frame.
        #[arg(long, value_name = "FILE")]
        vmlinux: Option<PathBuf>,
    },
    /// Check every host requirement and print the command that fixes each missing one.
    Doctor,
    /// Install missing host packages (Debian, as root; QEMU from bookworm-backports on bookworm).
    Setup {
        /// Print what would be installed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure build and boot times and the lab's overhead over bare QEMU, host-side diagnosis
    /// (--stuck) or triage throughput (--triage) (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

#[derive(clap::Args)]
struct Select {
    /// The matrix file (default: matrix.yaml of the lab's checkout).
    #[arg(long, value_name = "FILE")]
    matrix: Option<PathBuf>,
    /// Select cells: KEY=VALUE with KEY one of kernel, arch, vcpus, workload. Repeat a key for
    /// alternatives; different keys must all match.
    #[arg(long, value_name = "KEY=VALUE")]
    filter: Vec<Filter>,
}

#[derive(clap::Args)]
pub struct AccelArg {
    /// What x86_64 guests run under: auto (KVM only once a Linux guest booted to its ready line
    /// under it on this host, else TCG), tcg, or kvm (unproven). Default: the matrix's `accel:`,
    /// else auto. aarch64 and ppc64le guests always run under TCG.
    #[arg(long, value_enum, value_name = "MODE")]
    accel: Option<accel::AccelMode>,
}

impl AccelArg {
    /// The flag, else `default` (a matrix's choice). KVM asked for on a host without it is bad input.
    pub fn resolve(&self, default: accel::AccelMode) -> Result<accel::AccelMode> {
        let mode = self.accel.unwrap_or(default);
        if mode == accel::AccelMode::Kvm && !Path::new("/dev/kvm").exists() {
            anyhow::bail!("accel kvm was asked for, but /dev/kvm does not exist on this host: use --accel auto or tcg");
        }
        Ok(mode)
    }
}

#[derive(clap::Args)]
struct HoldArgs {
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    accel: AccelArg,
    /// Where the cell's files go (default: lab-out/<UTC start time>, e.g. lab-out/2026-12-05T07-16-11).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Parallel compile jobs for kernel builds (default: all cores).
    #[arg(long, value_name = "N")]
    build_jobs: Option<usize>,
    /// Ask the Debian mirror again for the source package instead of the cached index.
    #[arg(long)]
    refresh: bool,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        BuildOptions { jobs: self.build_jobs.unwrap_or(cores), refresh: self.refresh, ccache: true }
    }
}

/// Everything a command needs that comes from the matrix.
struct Loaded {
    matrix: matrix::LoadedMatrix,
    recipes: Vec<Recipe>,
    cells: Vec<plan::Cell>,
}

fn images_dir() -> PathBuf {
    Path::new(PROJECT_DIR).join("images")
}

fn load(select: &Select) -> Result<Loaded> {
    let path = select.matrix.clone().unwrap_or_else(|| Path::new(PROJECT_DIR).join("matrix.yaml"));
    let programs = image::workload_programs(&images_dir())?;
    let matrix = matrix::load(&path, &programs)?;
    let recipes = matrix
        .recipe_paths()
        .iter()
        .enumerate()
        .map(|(i, p)| kernel::recipe::load(p).with_context(|| matrix.at(&matrix::node!["kernels", i, "recipe"])))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = recipes.iter().map(|r| r.name.clone()).collect();
    // Cells are named by recipe name: two recipes of one name would run under one cell id.
    if let Some((i, j)) = (0..names.len()).find_map(|i| names[..i].iter().position(|n| *n == names[i]).map(|j| (i, j))) {
        let at = matrix.at(&matrix::node!["kernels", i, "recipe"]);
        anyhow::bail!("{at}: kernel recipe `{}` has the name of kernel {} (`{}`): give each its own `name`", names[i], j + 1, matrix.matrix.kernels[j].recipe.display());
    }
    let cells = plan::cells(&matrix.matrix, &names, &select.filter)?;
    Ok(Loaded { matrix, recipes, cells })
}

/// `lab boot` and `lab ssh`: one cell's guest for a person.
fn hold_cell(sh: &Shell, cache: &Cache, ui: &Ui, cell: &str, args: HoldArgs, what: run::Hold) -> Result<ExitCode> {
    let loaded = load(&args.select)?;
    let Some(found) = loaded.cells.iter().find(|c| c.id == cell) else {
        let near: Vec<&str> = loaded.cells.iter().map(|c| c.id.as_str()).filter(|id| id.contains(cell) || cell.contains(*id)).take(5).collect();
        let hint = if near.is_empty() { "`lab run --list` prints them".to_string() } else { format!("did you mean {}?", near.join(", ")) };
        anyhow::bail!("no cell `{cell}` in the matrix ({} cells): {hint}", loaded.cells.len());
    };
    let accel = args.accel.resolve(loaded.matrix.matrix.accel)?;
    doctor::preflight(sh)?;
    let out = match args.out {
        Some(out) => {
            run::check_out_dir(&out)?;
            out
        }
        None => run::default_out(Path::new("lab-out")),
    };
    let images = images_dir();
    let setup = run::HoldSetup {
        matrix: &loaded.matrix.matrix,
        recipes: &loaded.recipes,
        cell: found,
        build: args.build.options(),
        images_dir: &images,
        out: &out,
        accel,
    };
    // Console text reaches the terminal sanitized; the command's own output as it wrote it.
    let code = run::hold(sh, cache, &setup, what, ui, |event| match event {
        run::HoldEvent::KvmVerdict(verdict) => eprintln!("lab: {verdict}"),
        run::HoldEvent::Booting { console, qmp } => {
            eprintln!("lab: booting {} (console: {}; QMP: {})", found.id, console.display(), qmp.display())
        }
        run::HoldEvent::Console(line) => println!("{}", triage::sanitize(line)),
        run::HoldEvent::SshReady { machine, cpus, after_s, ssh_command } => {
            let cpus = cpus.map_or("?".to_string(), |n| n.to_string());
            let ssh = ssh_command.display();
            eprintln!("lab: {machine} guest with {cpus} CPUs, SSH ready after {after_s:.1}s: {ssh}; Ctrl-C stops it");
        }
        run::HoldEvent::Workload(line) => println!("{line}"),
        run::HoldEvent::Stderr(bytes) => {
            let _ = std::io::stderr().write_all(bytes);
        }
    })?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn main() -> ExitCode {
    // Output piped into `head` ends with EPIPE: die quietly like any Unix tool, not with a panic.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<process::Interrupted>() {
            Some(interrupted) => {
                let _ = writeln!(std::io::stderr(), "lab: {interrupted}; every QEMU and make started was killed, finished results are kept");
                ExitCode::from(interrupted.0.exit_code())
            }
            None => {
                eprintln!("lab: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    process::install_signal_handlers()?;
    let sh = Shell::new()?;
    let ui = Ui::new(cli.verbose);
    let cache = || Cache::new(cli.cache_dir.clone());
    match cli.command {
        Command::Run { select, out, jobs, repeat, until_fail, host_samples, dump_memory, build, accel, setup, list } => {
            let loaded = load(&select)?;
            let accel = accel.resolve(loaded.matrix.matrix.accel)?;
            if list {
                for cell in &loaded.cells {
                    println!("{}", cell.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let out = match out {
                Some(out) => {
                    run::check_out_dir(&out)?;
                    out
                }
                None => run::default_out(Path::new("lab-out")),
            };
            if setup {
                ui.note(doctor::setup(&sh, false)?);
            }
            doctor::preflight(&sh)?;
            let cache = cache()?;
            let opts = run::RunOptions { out: out.clone(), jobs, build: build.options(), images_dir: images_dir(), repeat, until_fail, host_samples, dump_memory, accel };
            let run::Finished { results, interrupted } = run::run(&sh, &cache, &loaded.matrix, &loaded.recipes, &loaded.cells, &opts, &ui)?;
            // Written, not `println!`ed: a terminal gone with SIGHUP must not turn the interrupted
            // run's exit into a panic.
            let mut stdout = std::io::stdout();
            if repeat > 1 {
                for r in report::repro(&results) {
                    let _ = writeln!(stdout, "{}", report::repro_line(&r));
                }
            }
            let tally = report::tally(&results);
            let line: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(stdout, "{}; reports in {}", line.join(", "), out.display());
            if let Some(signal) = interrupted {
                return Err(process::Interrupted(signal).into());
            }
            let all_ok = results.iter().all(|r| matches!(r.verdict, report::Verdict::Pass | report::Verdict::Skip));
            Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Boot { cell, hold } => hold_cell(&sh, &cache()?, &ui, &cell, hold, run::Hold::Boot),
        Command::Ssh { cell, hold, command } => {
            let what = match command.is_empty() {
                true => run::Hold::Shell,
                false => run::Hold::Command(command.iter().map(|word| vm::ssh::shell_quote(word)).collect::<Vec<_>>().join(" ")),
            };
            hold_cell(&sh, &cache()?, &ui, &cell, hold, what)
        }
        Command::Build { select, recipe, arch, build, json } => {
            // What to build: the recipe given, for --arch or all; else every kernel x arch of the
            // cells the matrix and its filters select (narrowed by --arch).
            let (recipes, pairs): (Vec<Recipe>, Vec<(usize, Arch)>) = match recipe {
                Some(path) => {
                    let arches = if arch.is_empty() { Arch::ALL.to_vec() } else { arch };
                    (vec![kernel::recipe::load(&path)?], arches.into_iter().map(|a| (0, a)).collect())
                }
                None => {
                    let loaded = load(&select)?;
                    let mut pairs: Vec<(usize, Arch)> = loaded.cells.iter().map(|c| (c.kernel, c.arch)).filter(|(_, a)| arch.is_empty() || arch.contains(a)).collect();
                    pairs.sort();
                    pairs.dedup();
                    (loaded.recipes, pairs)
                }
            };
            let cache = cache()?;
            let mut kernels = Vec::new();
            for (index, a) in pairs {
                let k = kernel::build(&sh, &cache, &recipes[index], a, &build.options(), &ui)?;
                if !json {
                    println!("{} {}: {} {}", k.recipe, k.arch, if k.cached { "cached" } else { "built" }, k.dir.display());
                }
                kernels.push(k);
            }
            if json {
                let rows: Vec<serde_json::Value> = kernels
                    .iter()
                    .map(|k| serde_json::json!({"kernel": k, "cached": k.cached, "selftests": k.selftests}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { arch } => {
            let cache = cache()?;
            for a in if arch.is_empty() { Arch::ALL.to_vec() } else { arch } {
                let image = image::build(&sh, &cache, &images_dir(), a, &ui)?;
                println!("{a}: {} {}", if image.cached { "cached" } else { "built" }, image.initramfs.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Triage { files, json, system_map, vmlinux } => {
            let debug = vmlinux.as_deref().map(load_debug_info).transpose()?;
            match system_map {
                Some(map) => triage_host_samples(&files, &map, json, debug.as_ref()),
                None => triage_files(&files, json, debug.as_ref()),
            }
        }
        Command::Doctor => {
            let cache = cache()?;
            let checks = doctor::checks(&sh, &cache, &images_dir(), &ui);
            for c in &checks {
                println!("{} {:<44} {}", if c.ok { "ok  " } else { "MISS" }, c.what, c.detail);
                if let Some(fix) = &c.fix {
                    println!("     fix: {fix}");
                }
            }
            let missing = checks.iter().filter(|c| !c.ok).count();
            if missing > 0 {
                println!("{missing} requirement(s) missing: `lab setup` installs the packages (as root)");
                return Ok(ExitCode::from(2));
            }
            println!("all requirements met");
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup { dry_run } => {
            println!("{}", doctor::setup(&sh, dry_run)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(&sh, &cache()?, &args, &ui, Path::new(PROJECT_DIR)),
    }
}

fn load_debug_info(vmlinux: &Path) -> Result<triage::DebugInfo> {
    triage::DebugInfo::load(vmlinux)?.with_context(|| {
        format!(
            "{} has no debug info (no .debug_info section): build the kernel with CONFIG_DEBUG_INFO \
             (the lab's kernels/config/lab.config has it)",
            vmlinux.display()
        )
    })
}

fn triage_host_samples(files: &[PathBuf], system_map: &Path, json: bool, debug: Option<&triage::DebugInfo>) -> Result<ExitCode> {
    let symbols = triage::Symbols::load(system_map)?;
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let rounds: Vec<triage::HostSamples> = serde_json::from_str(&text).with_context(|| format!("{} is not a host-samples.json", file.display()))?;
        let last = rounds.last().with_context(|| format!("{} holds no sampling round", file.display()))?;
        let mut diagnosis = triage::diagnose_host(last, &symbols, last.console_line);
        if let Some(debug) = debug {
            debug.symbolize(&mut diagnosis.reports);
        }
        out.push((file.display().to_string(), diagnosis));
    }
    if json {
        let files: Vec<serde_json::Value> =
            out.iter().map(|(file, d)| serde_json::json!({"file": file, "vcpus": d.summary, "reports": d.reports})).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "files": files }))?);
    } else {
        for (file, diagnosis) in &out {
            for line in &diagnosis.summary {
                println!("{file}: {line}");
            }
            match diagnosis.reports.first() {
                Some(r) => {
                    println!("{file}: {}: {}", r.kind, r.title);
                    print_guilty_source(r);
                }
                None => println!("{file}: no vCPU spinning in the kernel"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The guilty frame's source lines, indented under the report, in scripts/faddr2line's words.
fn print_guilty_source(report: &triage::Report) {
    for line in report.frame_site.iter().flat_map(triage::FrameSite::faddr2line) {
        println!("  {}", triage::sanitize(&line));
    }
}

fn triage_files(files: &[PathBuf], json: bool, debug: Option<&triage::DebugInfo>) -> Result<ExitCode> {
    let mut out = Vec::new();
    for file in files {
        let bytes = if file == Path::new("-") {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b).context("cannot read stdin")?;
            b
        } else {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        };
        let mut reports = triage::triage(&bytes, debug);
        if let Some(debug) = debug {
            debug.symbolize(&mut reports);
        }
        out.push((file.display().to_string(), reports));
    }
    if json {
        let files: Vec<serde_json::Value> = out
            .iter()
            .map(|(file, reports)| {
                let reports: Vec<serde_json::Value> = reports
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::json!({"kind": r.kind, "title": r.title, "signature": r.signature, "frame": r.frame, "cpu": r.cpu, "stuck_cpu": r.stuck_cpu, "line": r.line});
                        if let Some(site) = &r.frame_site {
                            v["frame_site"] = serde_json::json!(site);
                        }
                        if !r.missing.is_empty() {
                            v["missing"] = serde_json::json!(r.missing);
                        }
                        if !r.stacks.is_empty() {
                            v["stacks"] = serde_json::json!(r.stacks);
                        }
                        v
                    })
                    .collect();
                serde_json::json!({"file": file, "reports": reports})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "files": files }))?);
    } else {
        for (file, reports) in &out {
            if reports.is_empty() {
                println!("{file}: no reports");
            }
            for r in reports {
                let cpu = r.cpu.map(|c| format!(" cpu {c}")).unwrap_or_default();
                let missing: String = r
                    .missing
                    .iter()
                    .map(|what| match what {
                        triage::Missing::LockHolder => " (no dumped stack shows the lock holder)",
                        triage::Missing::Truncated => " (cut short: the log ends inside it)",
                    })
                    .collect();
                println!("{file}:{}: {}{cpu}: {}{missing}", r.line, r.kind, triage::sanitize(&r.title));
                print_guilty_source(r);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
