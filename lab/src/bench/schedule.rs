//! `lab bench --schedule`: a matrix run twice on this host, one cell at a time (`--jobs 1`) and as
//! `--jobs auto` packs them, side by side: wall time, the CPU time of the lab and every guest
//! (the children's rusage, QEMU included), the share of the host's cores that kept busy, and the
//! verdicts, which must not change.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cache::Cache;

/// User and system seconds of every child this process has waited for, and theirs.
fn children_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN cannot fail.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub fn run(cache: &Cache, matrix: &Path) -> Result<ExitCode> {
    let lab = std::env::current_exe().context("cannot find the lab's own executable")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lab_command = |args: &[&str]| {
        let mut c = Command::new(&lab);
        // The children's closing lines go with their progress, to stderr: stdout is the table.
        c.env("LAB_CACHE_DIR", cache.root()).args(args).stdout(std::io::stderr());
        c
    };
    // Kernels and images first, so that neither side pays for them.
    let built = Instant::now();
    let status = lab_command(&["build", "--matrix"]).arg(matrix).status()?;
    if !status.success() {
        bail!("`lab build --matrix {}` failed: the bench needs the matrix's kernels", matrix.display());
    }
    println!("# lab bench --schedule: {}, {cores} host cores", matrix.display());
    println!("# kernels ready in {:.0} s\n", built.elapsed().as_secs_f64());
    println!("| --jobs | wall (s) | CPU (s) | cores busy | verdicts | wall / --jobs 1 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let scratch = cache.root().join(format!("bench-schedule-{}", std::process::id()));
    let mut first_wall = None;
    let mut first_verdicts = None;
    for jobs in ["1", "auto"] {
        let out = scratch.join(format!("jobs-{jobs}"));
        let cpu = children_cpu_seconds();
        let start = Instant::now();
        let status = lab_command(&["run", "--jobs", jobs, "--matrix"]).arg(matrix).arg("--out").arg(&out).status()?;
        let wall = start.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds() - cpu;
        let run = crate::results::read(&out)
            .with_context(|| format!("`lab run --jobs {jobs}` exited {status} without a run to read"))?;
        let verdicts = crate::report::tally(&run.cells);
        let said: Vec<String> = verdicts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let base = *first_wall.get_or_insert(wall);
        println!(
            "| {jobs} | {wall:.0} | {cpu:.0} | {:.0} % | {} | {:.2} |",
            100.0 * cpu / (wall * cores as f64),
            said.join(", "),
            wall / base
        );
        if first_verdicts.get_or_insert_with(|| verdicts.clone()) != &verdicts {
            eprintln!("lab bench: the verdicts differ between the two runs: see {}", scratch.display());
            return Ok(ExitCode::FAILURE);
        }
    }
    crate::cache::remove_dir_if_present(&scratch)?;
    Ok(ExitCode::SUCCESS)
}
