//! `lab bench`: the numbers in BENCHMARKS.md, measured in one run on this host.
//!
//! Boot-to-ready is measured two ways on the same kernel and initramfs: through the lab's VM stage
//! (cell directory, console log, protocol parsing) and with a bare QEMU whose stdout is scanned for
//! the ready line. The ratio is the lab's overhead.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::arch::Arch;
use crate::cache::Cache;
use crate::kernel::{self, BuildOptions};
use crate::process::Group;
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
}

const VCPUS: [u32; 3] = [1, 2, 4];

pub fn run(sh: &Shell, cache: &Cache, args: &BenchArgs, ui: &Ui, project: &Path) -> Result<ExitCode> {
    let recipe_path = args.recipe.clone().unwrap_or_else(|| project.join("kernels/linux-7.3.yaml"));
    let recipe = kernel::recipe::load(&recipe_path)?;
    let arches = if args.arch.is_empty() { Arch::ALL.to_vec() } else { args.arch.clone() };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let opts = BuildOptions { jobs: cores, refresh: false, ccache: true };
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

    println!("\n| arch | vCPUs | bare QEMU to ready (s) | lab to ready (s) | lab / bare |\n| --- | --- | --- | --- | --- |");
    for k in &kernels {
        let image = crate::image::build(sh, cache, &project.join("images"), k.arch, ui)?;
        for vcpus in VCPUS {
            let cmdline = format!("console={} panic=-1 {} lab.workload=smoke lab.arg.seconds=1", k.arch.console(), k.arch.kernel_params().join(" "));
            let machine = Machine { arch: k.arch, accel: Accel::Tcg, vcpus, memory_mib: 512, kernel: &k.image, initramfs: Some(&image.initramfs), cmdline: &cmdline };
            let mut bare = Vec::new();
            let mut lab = Vec::new();
            for _ in 0..args.runs {
                bare.push(bare_boot(&machine)?);
                lab.push(lab_boot(&machine, cache)?);
            }
            let (b, l) = (median(&mut bare), median(&mut lab));
            println!("| {} | {vcpus} | {b:.2} | {l:.2} | {:.2} |", k.arch, l / b);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// QEMU alone: start it, read stdout until the ready line.
fn bare_boot(machine: &Machine) -> Result<f64> {
    let mut command = machine.command();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let start = Instant::now();
    let mut group = Group::spawn(command)?;
    if !group.wait_for_output(b"LAB-READY", Duration::from_secs(300))? {
        bail!("bare {} boot printed no ready line in 300 s", machine.arch);
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The lab's VM stage, timed from the call to the moment it hands over the ready line.
fn lab_boot(machine: &Machine, cache: &Cache) -> Result<f64> {
    let dir = cache.dir("bench")?.join(format!("boot-{}-{}", machine.arch, machine.vcpus));
    std::fs::create_dir_all(&dir)?;
    let deadlines = Deadlines { boot: 300, silence: 120, workload: 120, report_grace: 5 };
    let start = Instant::now();
    let mut ready = None;
    let watch = vm::Watch { report_starts: crate::triage::starts_report, diagnosis: None };
    vm::boot(machine, &dir, deadlines, &watch, |line| {
        if ready.is_none() && line.contains("LAB-READY") {
            ready = Some(start.elapsed().as_secs_f64());
        }
    })?;
    ready.with_context(|| format!("lab {} boot printed no ready line; see {}", machine.arch, dir.display()))
}
