//! `lab run`: a matrix's cells through the pipeline (or only listed), then the closing lines on
//! stdout and the exit status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::args::RunArgs;
use super::{images_dir, load, out_dir, Env, Loaded};
use crate::doctor;
use crate::inputs::{self, RunInputs, INPUTS_VERSION};
use crate::plan::{self, Cell, Filter, Shard};
use crate::process::{self, Signal};
use crate::report;
use crate::report::CellResult;
use crate::results;
use crate::vocab::Verdict;

pub fn run(env: &Env, mut args: RunArgs) -> Result<ExitCode> {
    let recorded = match args.resume.clone() {
        Some(dir) => Some(recorded_inputs(&dir, &mut args)?),
        None => None,
    };
    let RunArgs {
        select,
        out,
        jobs,
        repeat,
        until_fail,
        host_samples,
        live_every,
        dump_memory,
        build,
        accel,
        setup,
        list,
        shard,
        shard_costs,
        resume,
    } = args;
    let Loaded { matrix, recipes, cells } = load(&select)?;
    let accel = match &recorded {
        Some(recorded) => recorded.accel,
        None => accel.resolve(matrix.matrix.accel)?,
    };
    let planned: Vec<String> = cells.iter().map(|c| c.id.clone()).collect();
    let shard = match (&recorded, shard) {
        (Some(recorded), _) => recorded.shard,
        (None, Some(shard)) => Some(shard),
        (None, None) => shard_from_env(std::env::var("CI_NODE_INDEX").ok(), std::env::var("CI_NODE_TOTAL").ok())?,
    };
    let cells = match (&recorded, shard) {
        // The split a resumed shard was given, whatever costs it was balanced by.
        (Some(recorded), _) => cells.into_iter().filter(|c| recorded.cells.contains(&c.id)).collect(),
        (None, Some(shard)) => {
            let costs = earlier_durations(shard_costs.as_deref())?;
            let cost = |c: &Cell| costs.get(&c.id).copied().unwrap_or_else(|| plan::expected_cost(c));
            plan::shard(cells, shard, &cost)
        }
        (None, None) => cells,
    };
    if list {
        for cell in &cells {
            println!("{}", cell.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let inputs = RunInputs {
        version: INPUTS_VERSION,
        matrix_sha256: inputs::matrix_sha256(&matrix.path)?,
        matrix: matrix.path.clone(),
        kernels: recipes.iter().map(|r| (r.name.clone(), r.fingerprint())).collect(),
        filters: select.filter.iter().map(|f| f.to_string()).collect(),
        repeat,
        until_fail,
        host_samples,
        live_every,
        dump_memory,
        accel,
        plan: planned,
        shard,
        cells: cells.iter().map(|c| c.id.clone()).collect(),
    };
    let (out, finished) = match (&recorded, resume) {
        (Some(recorded), Some(dir)) => (dir.clone(), finished_runs(&dir, recorded, &inputs)?),
        _ => (out_dir(out)?, Vec::new()),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    inputs.write(&out)?;
    // Only a shard can be left without cells: a filter that selects none is bad input.
    if let (true, Some(shard)) = (cells.is_empty(), inputs.shard) {
        results::write_all(&out, &[], false)?;
        println!("shard {shard} has none of the {} cells; reports in {}", inputs.plan.len(), out.display());
        return Ok(ExitCode::SUCCESS);
    }
    if setup {
        env.ui.note(doctor::setup(&env.sh, &env.ui, false)?);
    }
    doctor::preflight(&env.sh, &env.ui)?;
    let cache = env.cache()?;
    let opts = crate::run::RunOptions {
        out: out.clone(),
        jobs,
        build: build.options(),
        images_dir: images_dir(),
        repeat,
        until_fail,
        host_samples,
        live_every: (live_every > 0).then(|| std::time::Duration::from_millis(live_every)),
        dump_memory,
        accel,
        finished,
    };
    let finished = crate::run::run(&env.sh, &cache, &matrix, &recipes, &cells, &opts, &env.ui)?;
    finish(finished, repeat, &out)
}

/// The closing lines (reproducer statistics, the tally) and the exit status.
fn finish(finished: crate::run::Finished, repeat: u32, out: &Path) -> Result<ExitCode> {
    let crate::run::Finished { results, interrupted } = finished;
    // Written, not `println!`ed: a terminal gone with SIGHUP must not turn the interrupted
    // run's exit into a panic.
    let mut stdout = std::io::stdout();
    if repeat > 1 {
        for r in report::repro(&results) {
            let _ = writeln!(stdout, "{}", report::repro_line(&r));
        }
    }
    let _ = writeln!(stdout, "{}", closing_line(&report::tally(&results), out));
    let verdicts: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    match outcome(&verdicts, interrupted) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(signal) => Err(process::Interrupted(signal).into()),
    }
}

/// `--resume DIR`: the inputs DIR's run was started with, put in place of the arguments.
fn recorded_inputs(dir: &Path, args: &mut RunArgs) -> Result<RunInputs> {
    let recorded = RunInputs::read(dir).context("--resume")?;
    let filters =
        recorded.filters.iter().map(|f| f.parse::<Filter>().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display())));
    args.select.filter = filters.collect::<Result<_>>()?;
    args.select.matrix = Some(recorded.matrix.clone());
    (args.repeat, args.until_fail) = (recorded.repeat, recorded.until_fail);
    (args.host_samples, args.dump_memory) = (recorded.host_samples, recorded.dump_memory);
    args.live_every = recorded.live_every;
    Ok(recorded)
}

/// The runs of a resumed run that finished, once its inputs are shown to be the same; the files
/// of the runs a signal stopped go, since they run again.
fn finished_runs(dir: &Path, recorded: &RunInputs, now: &RunInputs) -> Result<Vec<CellResult>> {
    let differences = recorded.differences(now);
    if !differences.is_empty() {
        anyhow::bail!(
            "cannot resume {}: its inputs changed since it started: {} (start a new run instead)",
            dir.display(),
            differences.join("; ")
        );
    }
    let (run, _) = results::gather(dir)?;
    let (finished, stopped): (Vec<CellResult>, Vec<CellResult>) =
        run.cells.into_iter().partition(|c| c.verdict != Verdict::Interrupted);
    for cell in stopped.iter().filter(|c| c.dir.is_dir()) {
        std::fs::remove_dir_all(&cell.dir).with_context(|| format!("cannot clear {}", cell.dir.display()))?;
    }
    Ok(finished)
}

/// GitLab's `parallel: N` numbers its jobs' `CI_NODE_INDEX` from 1 to `CI_NODE_TOTAL`.
fn shard_from_env(index: Option<String>, total: Option<String>) -> Result<Option<Shard>> {
    match (index, total) {
        (Some(index), Some(total)) => format!("{index}/{total}")
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("CI_NODE_INDEX/CI_NODE_TOTAL: {e}")),
        _ => Ok(None),
    }
}

/// Each cell's duration in an earlier run (its runs added up), to balance shards by.
fn earlier_durations(dir: Option<&Path>) -> Result<BTreeMap<String, f64>> {
    let mut costs = BTreeMap::new();
    if let Some(dir) = dir {
        for cell in results::read(dir).context("--shard-costs")?.cells {
            *costs.entry(cell.id).or_insert(0.0) += cell.duration_s;
        }
    }
    Ok(costs)
}

/// `3 passed, 1 failed; reports in DIR`: what a person or a CI log reads last.
fn closing_line(tally: &BTreeMap<&str, usize>, out: &Path) -> String {
    let counts: Vec<String> = tally.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{}; reports in {}", counts.join(", "), out.display())
}

/// How the run ends: the signal that stopped it, whatever the cells said (128+signal), else 1
/// when a cell neither passed nor was skipped, else 0.
fn outcome(verdicts: &[Verdict], interrupted: Option<Signal>) -> Result<u8, Signal> {
    if let Some(signal) = interrupted {
        return Err(signal);
    }
    Ok(match verdicts.iter().all(|v| matches!(v, Verdict::Pass | Verdict::Skip)) {
        true => 0,
        false => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn the_exit_status_of_a_run() {
        let check = |verdicts: &[Verdict], interrupted: Option<Signal>, want: Result<u8, Signal>| {
            assert_eq!(outcome(verdicts, interrupted), want, "{verdicts:?} {interrupted:?}");
        };
        check(&[Pass, Pass], None, Ok(0));
        check(&[Pass, Skip], None, Ok(0));
        check(&[Skip], None, Ok(0));
        check(&[Pass, Fail], None, Ok(1));
        check(&[Error], None, Ok(1));
        check(&[Timeout, Pass], None, Ok(1));
        check(&[Pass, Interrupted], None, Ok(1));
        check(&[Pass, Pass], Some(Signal::Term), Err(Signal::Term));
        check(&[Fail, Interrupted], Some(Signal::Int), Err(Signal::Int));
        check(&[], Some(Signal::Hup), Err(Signal::Hup));
    }

    #[test]
    fn a_shard_from_gitlabs_parallel_jobs() {
        let check = |index: Option<&str>, total: Option<&str>, want: &str| {
            let got = match shard_from_env(index.map(String::from), total.map(String::from)) {
                Ok(shard) => shard.map_or("whole run".to_string(), |s| s.to_string()),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, want);
        };
        check(None, None, "whole run");
        check(Some("2"), None, "whole run");
        check(Some("2"), Some("5"), "2/5");
        check(
            Some("0"),
            Some("5"),
            "CI_NODE_INDEX/CI_NODE_TOTAL: shard `0/5`: K must be 1 to N (shards are numbered from 1)",
        );
    }

    #[test]
    fn the_closing_line_counts_then_points_at_the_reports() {
        let check = |tally: &[(&'static str, usize)], want: &str| {
            let tally: BTreeMap<&str, usize> = tally.iter().copied().collect();
            assert_eq!(closing_line(&tally, Path::new("lab-out/2026-12-05T07-16-11")), want);
        };
        check(&[("passed", 3)], "3 passed; reports in lab-out/2026-12-05T07-16-11");
        check(&[("passed", 2), ("failed", 1)], "1 failed, 2 passed; reports in lab-out/2026-12-05T07-16-11");
        check(&[("interrupted", 2)], "2 interrupted; reports in lab-out/2026-12-05T07-16-11");
    }
}
