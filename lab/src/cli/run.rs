//! `lab run`: a matrix's cells through the pipeline (or only listed), then the closing lines on
//! stdout and the exit status.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::args::RunArgs;
use super::{images_dir, load, out_dir, Env};
use crate::doctor;
use crate::process::{self, Signal};
use crate::report;
use crate::vocab::Verdict;

pub fn run(env: &Env, args: RunArgs) -> Result<ExitCode> {
    let RunArgs { select, out, jobs, repeat, until_fail, host_samples, dump_memory, build, accel, setup, list } = args;
    let loaded = load(&select)?;
    let accel = accel.resolve(loaded.matrix.matrix.accel)?;
    if list {
        for cell in &loaded.cells {
            println!("{}", cell.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = out_dir(out)?;
    if setup {
        env.ui.note(doctor::setup(&env.sh, false)?);
    }
    doctor::preflight(&env.sh)?;
    let cache = env.cache()?;
    let opts = crate::run::RunOptions {
        out: out.clone(),
        jobs,
        build: build.options(),
        images_dir: images_dir(),
        repeat,
        until_fail,
        host_samples,
        dump_memory,
        accel,
    };
    let (matrix, recipes, cells) = (&loaded.matrix, &loaded.recipes, &loaded.cells);
    let finished = crate::run::run(&env.sh, &cache, matrix, recipes, cells, &opts, &env.ui)?;
    let crate::run::Finished { results, interrupted } = finished;
    // Written, not `println!`ed: a terminal gone with SIGHUP must not turn the interrupted
    // run's exit into a panic.
    let mut stdout = std::io::stdout();
    if repeat > 1 {
        for r in report::repro(&results) {
            let _ = writeln!(stdout, "{}", report::repro_line(&r));
        }
    }
    let _ = writeln!(stdout, "{}", closing_line(&report::tally(&results), &out));
    let verdicts: Vec<Verdict> = results.iter().map(|r| r.verdict).collect();
    match outcome(&verdicts, interrupted) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(signal) => Err(process::Interrupted(signal).into()),
    }
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
