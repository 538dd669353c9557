//! The command line: clap's types for every command and the argument groups they share.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::accel;
use crate::arch::Arch;
use crate::bench;
use crate::kernel::BuildOptions;
use crate::plan::{Filter, Jobs, Shard};

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
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Where kernels, images and downloads are cached (default: $LAB_CACHE_DIR, else ~/.cache/lab).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Stream build output and guest consoles live.
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum Command {
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
    Run(RunArgs),
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
    Build(KernelArgs),
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
    /// Prints one line per report, or with --json (each report as in summary.json):
    /// {"files": [{"file", "reports": [{"kind", "title", "signature", "frame", "frame_site",
    ///   "cpu", "stuck_cpu", "line", "lines", "source": "console" | "host",
    ///   "missing": ["lock-holder" | "truncated"],
    ///   "stacks": [{"cpu", "frames", "sites", "waits_on_lock", "idle"}]}]}]}
    /// "line" is where the report starts, "lines" its text; "frame", "cpu" and "stuck_cpu" are
    /// null when the report names none; "frame_site", "lines", "missing", "stacks" and "sites"
    /// are there only when there are any. With --system-map each file also has "vcpus": a line
    /// per vCPU, then how the samples were taken. A site is a frame as printed:
    /// {"printed": "mm_get_cid+0x5c/0x60", "return_address", "source": [{"function", "file", "line"}]}
    /// ("return_address" only when true: a caller's frame; "source" only once symbolized).
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
    Triage(TriageArgs),
    /// Compare two finished runs: what is new, fixed, still failing or flaky, per cell and per
    /// failure.
    ///
    /// BASE and NEW are run directories (`lab run --out`, or lab-out/<time>). Cells are matched
    /// by id; cells in one run only are listed and left out. A cell fails when its verdict is
    /// fail or timeout; errors, skips and interrupted runs judge nothing (unjudged).
    /// With one run per cell on both sides: pass -> fail is new, fail -> pass is fixed. With
    /// repeats (--repeat) the failure counts decide: a change counts only when Fisher's exact
    /// test puts the two rates apart at 5 % (new, fixed, worse, better); else it says
    /// "not significant at 5 %", or flaky when both sides fail some runs and pass others.
    ///   lab compare lab-out/2026-12-04T02-00-00 lab-out/2026-12-05T02-00-00
    ///   lab compare base-run new-run --junit compare.xml --html compare.html
    /// Exit status: 1 when a cell is new or worse (significant), 0 otherwise, 2 on bad input.
    #[command(verbatim_doc_comment)]
    Compare {
        /// The run to compare against (last night's).
        base: PathBuf,
        /// The run under test.
        new: PathBuf,
        /// Also write the comparison as JUnit: a test case per common cell, failing when new
        /// or worse.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Also write the comparison as a self-contained page (opens from file://, offline).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Validate a patch series step by step: which patch breaks, which fixes, how sure.
    ///
    /// Step 0 is the base recipe, step k the base plus patches 1..k. Every step's kernel is built
    /// in place on the step before (Kbuild recompiles what the patch touches; each step is cached
    /// by its patch prefix), and the matrix's cells (arches, vCPUs, workloads; --base replaces
    /// its kernels) run on it up to --runs times each, a cell stopping at its first hit unless
    /// the step is where a signature appears or goes: there every run is made, to measure the
    /// rate the confidence rests on. A patch that does not apply stops the series (earlier steps
    /// kept); a step that does not build is an error of that step, not a failure.
    ///
    /// DIR/series.json: the patches, every step's cells (runs, hits, hit rate, 95 % bound,
    /// signatures), new and fixed signatures per step, `first_bad` and `first_fix` (patch,
    /// signature, confidence that the step on the clean side is clean). DIR/junit.xml: a
    /// testsuite per step and arch. DIR/steps/NN-<subject>/: each step's run directory.
    ///
    /// SERIES: an mbox (`b4 am` output, cover letter skipped, [PATCH n/m] order), a directory
    /// of `git format-patch` files, or a quilt `series` file.
    ///   lab series --base kernels/linux-7.3-pre-cure.yaml --patches kernels/series/mmcid-cure.mbox \
    ///       --matrix kernels/series-matrix.yaml
    ///   lab series --base kernels/linux-7.3.yaml --patches my-series/ --filter arch=x86_64 --runs 5
    ///   lab series ... --bisect        base and top first, then halves (long series)
    /// Exit status: 1 when a patch breaks something (first_bad), 0 otherwise, 2 on bad input
    /// or a patch that does not apply.
    #[command(verbatim_doc_comment)]
    Series(SeriesArgs),
    /// Print a finished run as a KCIDB v5.3 submission (KernelCI's database) on stdout.
    ///
    /// A checkout per kernel recipe (its source, and `patchset_hash`: the sha256 over the
    /// per-patch sha256s in order), a build per kernel x arch, a test per cell run (path
    /// `lab.<workload>`, status PASS/FAIL/ERROR/MISS/SKIP, vCPUs and runs under
    /// environment.misc, a bounded sanitized log_excerpt), an issue per failure signature and
    /// an incident per failing test. The recipes are read from the run's run.json.
    ///   lab export --kcidb lab-out/2026-12-05T02-00-00 --origin mylab | kcidb-submit ...
    #[command(verbatim_doc_comment)]
    Export {
        /// The run directory.
        dir: PathBuf,
        /// The format (KCIDB is the only one).
        #[arg(long, required = true)]
        kcidb: bool,
        /// KCIDB's origin: who submits (lowercase letters, digits, `_`).
        #[arg(long, default_value = "lab", value_parser = origin)]
        origin: String,
    },
    /// Make one run directory of the directories of a run's shards (`lab run --shard K/N`).
    ///
    /// OUT (new or empty) gets every shard's cells, the run's inputs (run.json, without the
    /// shard) and its reports, equal to the run's without shards: cells in plan order, the same
    /// JUnit test cases. Refused, before anything is written: a directory that is no shard,
    /// shards of different matrices, recipes, filters or options (what differs is named), of
    /// different splits, a shard given twice, a shard missing.
    ///   lab merge lab-out/nightly shard-1 shard-2 shard-3
    #[command(verbatim_doc_comment)]
    Merge {
        /// The merged run's directory (must be new or empty).
        out: PathBuf,
        /// Every shard's run directory.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Write a run directory's reports again from its cells: summary.json, junit.xml, report.html.
    ///
    /// Reads DIR/cells/*/result.json (and run-NNN/ of a --repeat run), keeps the order and the
    /// not-started cells of DIR/summary.json where it still reads, takes each failure's console
    /// excerpt from the cell's console.log again, and rewrites the reports in the format of this
    /// lab. For a run written by an older lab, or cells edited or copied in by hand.
    ///   lab report lab-out/2026-12-05T02-00-00
    #[command(verbatim_doc_comment)]
    Report {
        /// The run directory.
        dir: PathBuf,
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
    /// Check the mm_cid ownership-mode protocol of 7.3, or a variant with a fix undone, over
    /// every interleaving of T tasks on C CPUs (no kernel, no QEMU).
    ///
    /// An executable model of kernel/sched/{sched.h,core.c}: per task and per CPU CIDs with the
    /// ONCPU/TRANSIT bits, schedule in/out, migration, fork() and exit() with the mode switch and
    /// both fixup walks (one runqueue lock per step), the affinity update and its deferred work.
    /// Breadth first, so a counterexample is a shortest one; it prints as a timeline with one
    /// column per CPU. Properties: no live lock (a CPU looping in mm_get_cid() that no interleaving
    /// ever gives a CID, with a fixup walk waiting for its runqueue lock), no hard lockup in
    /// mm_get_cid() under fork(), CIDs unique among running tasks and below the CPU count, no CID
    /// dropped twice or lost by an exited task.
    ///
    /// Variants: stock, no-transit (patch 1/4 undone), two-field (2/4 undone), exit-reassign
    /// (3/4 undone), fork-stale (stale per-CPU CIDs), weak-order (new mode stored before transit).
    ///
    /// Examples:
    ///   lab model                                      stock, 4 CPUs, 5 tasks: clean
    ///   lab model --variant no-transit --save nt.json  the BPF CI live lock, saved
    ///   lab model --replay nt.json                     step by step, each step re-checked
    ///   lab model --variant two-field --weak           the POWER interleaving (store buffers)
    ///   lab model --variant fork-stale --start cpu     from per-CPU mode at the threshold
    ///
    /// Exit status: 0 clean within the bound, 1 counterexample found (or replayed), 2 bad input.
    #[command(verbatim_doc_comment)]
    Model(ModelArgs),
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// The protocol variant: stock, no-transit, two-field, exit-reassign, fork-stale, weak-order.
    #[arg(long, value_name = "NAME", default_value = "stock", value_parser = parse_variant)]
    pub variant: crate::model::Variant,
    /// Possible CPUs (num_possible_cpus()).
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=6))]
    pub cpus: u8,
    /// Task slots: the task start has T-1 users; forks fill free slots.
    #[arg(long, value_name = "T", default_value_t = 5, value_parser = clap::value_parser!(u8).range(2..=8))]
    pub tasks: u8,
    /// CPUs in the mm's allowed mask at the start (default: all); below C adds the affinity
    /// update that widens it, and its deferred work.
    #[arg(long, value_name = "N")]
    pub allowed: Option<u8>,
    /// Bound on the steps of an interleaving (BFS depth).
    #[arg(long, value_name = "N", default_value_t = 18)]
    pub max_steps: u32,
    /// Bound on fork() calls in an interleaving.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub max_forks: u8,
    /// Bound on exit() calls in an interleaving.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_exits: u8,
    /// Weak memory: a store buffer per CPU whose stores to different words become visible in any
    /// order (as POWER allows without a barrier); smp_mb() and lock releases wait for it.
    #[arg(long)]
    pub weak: bool,
    /// Where the search starts: task (per-task mode, the fork() switch), cpu (per-CPU mode at
    /// the threshold, the exit() switch), or both.
    #[arg(long, value_enum, default_value = "both")]
    pub start: crate::model::Start,
    /// Write the counterexample to FILE (JSON) for --replay.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Replay a saved counterexample step by step instead of searching.
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    pub replay: Option<PathBuf>,
    /// Print the result as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// `--live-every`: 0 (off), or a pace the guests can bear: a round costs a few milliseconds.
fn live_every(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms == 0 || (100..=60_000).contains(&ms) => Ok(ms),
        _ => Err(format!("{text}: give 0 (off) or milliseconds from 100 to 60000")),
    }
}

fn parse_variant(name: &str) -> Result<crate::model::Variant, String> {
    crate::model::Variant::parse(name).ok_or_else(|| {
        let names: Vec<&str> = crate::model::VARIANTS.iter().map(|v| v.name()).collect();
        format!("unknown variant `{name}`: the variants are {}", names.join(", "))
    })
}

#[derive(clap::Args)]
pub struct Select {
    /// The matrix file (default: matrix.yaml of the lab's checkout).
    #[arg(long, value_name = "FILE")]
    pub matrix: Option<PathBuf>,
    /// Select cells: KEY=VALUE with KEY one of kernel, arch, vcpus, workload. Repeat a key for
    /// alternatives; different keys must all match.
    #[arg(long, value_name = "KEY=VALUE")]
    pub filter: Vec<Filter>,
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
pub struct HoldArgs {
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub accel: AccelArg,
    /// Where the cell's files go (default: lab-out/<UTC start time>, e.g. lab-out/2026-12-05T07-16-11).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Parallel compile jobs for kernel builds (default: all cores).
    #[arg(long, value_name = "N")]
    build_jobs: Option<usize>,
    /// Ask the Debian mirror again for the source package instead of the cached index.
    #[arg(long)]
    refresh: bool,
}

impl BuildArgs {
    pub fn options(&self) -> BuildOptions {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        BuildOptions { jobs: self.build_jobs.unwrap_or(cores), refresh: self.refresh, ccache: true, in_place: false }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub select: Select,
    /// Output directory (must be new or empty; default: lab-out/<UTC start time>, e.g.
    /// lab-out/2026-12-05T07-16-11).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cells booted at once. `auto`: as many as keep the running guests' vCPUs within twice the
    /// host's cores (each vCPU is a host thread under TCG; on 2 cores: one 4-vCPU guest, two of
    /// 2, four of 1), the costliest cells first and the small ones filling the gaps; a cell with
    /// more vCPUs than that runs alone. N: up to N cells at once whatever their size (1: one at a
    /// time, as for timing a reproducer).
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    pub jobs: Jobs,
    /// Run every selected cell N times (reproducer mode): summary.json gains a `repro`
    /// section per cell with the hit rate and time to detection.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub repeat: u32,
    /// With --repeat: stop repeating a cell at its first hit.
    #[arg(long, requires = "repeat")]
    pub until_fail: bool,
    /// When a guest goes silent, overruns its workload deadline or outlives a kernel report, sample every vCPU this
    /// many times (0.5 s apart, through QMP) before killing it, name what each one is stuck
    /// in from the kernel's System.map, then send it an NMI (x86_64, ppc64le) and read its
    /// answer. The verdict says whether it rests on the guest's reports, the host's samples or
    /// both; DIR/cells/<cell>/host-samples.json keeps the raw samples. 0 kills without looking.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub host_samples: u32,
    /// While a workload runs, sample every vCPU from the host every MS milliseconds (the VM
    /// stops for a few milliseconds each time); when three rounds in a row show a vCPU stuck
    /// in one kernel function with interrupts off or waiting for a spinlock, diagnose the
    /// guest at once (as --host-samples does a silent one) instead of waiting for its silence
    /// deadline or its own lockup detector. The cell then ends `stuck`. 0 turns it off.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = live_every)]
    pub live_every: u64,
    /// With host samples, also keep the stuck guest's memory in its cell as an ELF core,
    /// guest-memory.elf, for crash(8) with the kernel's vmlinux. It is about as large as the
    /// guest's memory (512 MiB by default); host-samples.json records its size.
    #[arg(long)]
    pub dump_memory: bool,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub accel: AccelArg,
    /// Install missing host packages first (as `lab setup`).
    #[arg(long)]
    pub setup: bool,
    /// Only print the cells the filters (and --shard) select.
    #[arg(long)]
    pub list: bool,
    /// Run the K-th of N parts of the selected cells (1-based), for N CI jobs that each run a
    /// part; `lab merge` makes one run of their directories again. Every runner computes the
    /// same split: heaviest cells first, each to the part with the least expected cost so far
    /// (vCPUs x seconds). Default: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL (`parallel: N`) when
    /// set, else the whole run.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// With shards: balance by each cell's duration in this earlier run (a run directory, e.g.
    /// last night's merged run) instead of its expected cost.
    #[arg(long, value_name = "DIR")]
    pub shard_costs: Option<PathBuf>,
    /// Finish an interrupted run in DIR (Ctrl-C, SIGTERM, a crash, a reboot): the runs it
    /// finished are kept, the rest run, and the reports come out as an uninterrupted run's. The
    /// matrix, filters, options and shard are the ones DIR's run.json recorded; a run whose
    /// matrix or recipes changed since is refused, naming what changed.
    ///   lab run --resume lab-out/2026-12-05T02-00-00
    #[arg(long, value_name = "DIR", verbatim_doc_comment,
          conflicts_with_all = ["out", "matrix", "filter", "repeat", "until_fail", "host_samples", "live_every", "dump_memory", "shard", "shard_costs", "list", "accel"])]
    pub resume: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SeriesArgs {
    /// The kernel recipe the series applies to (step 0).
    #[arg(long, value_name = "RECIPE")]
    pub base: PathBuf,
    /// The series: an mbox, a directory of patches, or a quilt `series` file.
    #[arg(long, value_name = "SERIES")]
    pub patches: PathBuf,
    #[command(flatten)]
    pub select: Select,
    /// Runs per cell and step at most; a cell stops at its first hit, except at a step where a
    /// signature appears or goes (all N there, for the rate).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Test the base and the top first, then halve between a clean and a bad step, instead of
    /// every step; the answer's confidence is the product of its clean steps' confidences.
    #[arg(long)]
    pub bisect: bool,
    /// Output directory (must be new or empty; default: lab-out/<UTC start time>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cells booted at once (see `lab run --jobs`).
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    pub jobs: Jobs,
    /// Host samples of a silent guest before it is killed (see `lab run --host-samples`).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub host_samples: u32,
    #[command(flatten)]
    pub build: BuildArgs,
    #[command(flatten)]
    pub accel: AccelArg,
}

#[derive(clap::Args)]
pub struct KernelArgs {
    #[command(flatten)]
    pub select: Select,
    /// Build this recipe instead of the matrix's kernels.
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
    /// Architectures (default: the matrix's).
    #[arg(long)]
    pub arch: Vec<Arch>,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Print the kernels as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct TriageArgs {
    /// Console logs (a cell's console.log, a log pasted from e-mail; "-" reads stdin), or
    /// host-samples.json files with --system-map.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON document on stdout, in the shape above.
    #[arg(long)]
    pub json: bool,
    /// The files are host-samples.json files; name their addresses from this System.map.
    #[arg(long, value_name = "FILE")]
    pub system_map: Option<PathBuf>,
    /// The kernel the logs came from, with debug info: source lines for every frame.
    #[arg(long, value_name = "FILE")]
    pub vmlinux: Option<PathBuf>,
}

fn origin(s: &str) -> Result<String, String> {
    match !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        true => Ok(s.to_string()),
        false => Err(format!("origin `{s}`: KCIDB allows lowercase letters, digits and `_` only")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_takes_every_input_from_the_run_it_resumes() {
        for extra in [
            &["--accel", "tcg"][..],
            &["--matrix", "m.yaml"],
            &["--filter", "arch=x86_64"],
            &["--repeat", "3"],
            &["--shard", "1/2"],
            &["--out", "o"],
        ] {
            let args = ["lab", "run", "--resume", "d"].iter().chain(extra);
            assert!(Cli::try_parse_from(args).is_err(), "--resume with {extra:?} must be refused");
        }
        assert!(Cli::try_parse_from(["lab", "run", "--resume", "d"]).is_ok());
    }
}
