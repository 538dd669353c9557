//! `lab bench --live`: what the live watch costs a guest. The stock kernel's `mmcid-churn` at
//! 4 vCPUs, booted as a cell boots (the guest's detectors set to panic, host diagnosis on), with
//! the live watch off and at each pace in `PACES`, one after the other in a rotating order so that
//! the host's drift spreads over all of them: the churn's throughput (mode-switch rounds and CID
//! windows per host second, from its progress lines), and the looks the watch set off, which on a
//! stock kernel are false alarms.
//!
//! Per host second, not per guest second: QEMU stops the guest's clocks with its vCPUs, so the
//! churn's own rates (guest time) cannot see the time a round keeps the guest stopped.
//!
//! `lab bench --live-windows DIR...` judges the rounds finished runs kept (`live-rounds.jsonl`)
//! again with other windows: how many looks each would have set off in cells that passed (false
//! alarms, each a 3.5 s burst), and how soon after the ready line it would have seen the hangs
//! the run's own looks bore out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use xshell::Shell;

use super::{spread, subject, BenchArgs, Churn, CHURN_VCPUS};
use crate::cache::Cache;
use crate::report::CellResult;
use crate::run::guest::{self, Detectors};
use crate::triage::{self, HostSamples, Symbols};
use crate::ui::Ui;
use crate::vm::{self, Deadlines, Machine};
use crate::vocab::{CellEnd, Verdict};

/// Off, the default pace, and half as often: a cost that scales with the pace shows as twice the
/// difference from off at 1000 ms as at 2000 ms.
const PACES: [Option<Duration>; 3] = [None, Some(guest::LIVE_EVERY), Some(Duration::from_millis(2000))];
const CHURN_SECONDS: u32 = 30;
/// The stock churn matrix's deadlines.
const DEADLINES: Deadlines =
    Deadlines { boot: 180, silence: 20, workload: 240, report_grace: 15, violation_grace: None };

/// One boot's throughput per host second, and whether the live watch set off a look.
struct Throughput {
    rounds_per_s: f64,
    windows_per_s: f64,
    alarms: usize,
}

pub fn run(sh: &Shell, cache: &Cache, args: &BenchArgs, ui: &Ui, project: &Path) -> Result<ExitCode> {
    let (recipe, arches, opts) = subject(args, project, "kernels/linux-7.3.yaml")?;
    println!(
        "# lab bench --live: recipe {}, {CHURN_VCPUS} vCPUs, mmcid-churn {CHURN_SECONDS} s, {} boots per pace and arch\n",
        recipe.name, args.runs
    );
    println!("Medians (min-max) over the boots, per host second; \"/ off\" is the median's ratio to the watch off.\n");
    println!("| arch | live watch | rounds/s | / off | CID windows/s | / off | looks set off | verdicts |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for arch in arches {
        let Churn { kernel, image, symbols, accel } = Churn::on(sh, cache, args, ui, project, (&recipe, arch, &opts))?;
        let guest = Churn::guest(&kernel, &image, CHURN_SECONDS, Detectors::Panic);
        let machine = guest.machine(accel);
        let mut boots: Vec<Vec<Result<Throughput>>> = PACES.iter().map(|_| Vec::new()).collect();
        for run in 0..args.runs {
            for turn in 0..PACES.len() {
                let pace = (run + turn) % PACES.len();
                boots[pace].push(churn_boot(&machine, cache, &symbols, PACES[pace], run));
            }
        }
        let (mut off_rounds, mut off_windows) = (None, None);
        for (pace, boots) in PACES.iter().zip(&boots) {
            let ok: Vec<&Throughput> = boots.iter().filter_map(|b| b.as_ref().ok()).collect();
            let failed: Vec<String> = boots.iter().filter_map(|b| b.as_ref().err()).map(|e| format!("{e:#}")).collect();
            let column = |f: fn(&Throughput) -> f64| {
                spread(ok.iter().map(|c| f(c)).collect()).map(|(m, lo, hi)| (m, format!("{m:.1} ({lo:.1}-{hi:.1})")))
            };
            let (rounds, windows) = (column(|c| c.rounds_per_s), column(|c| c.windows_per_s));
            let ratio = |base: &mut Option<f64>, now: &Option<(f64, String)>| match now {
                Some((value, _)) => format!("{:.3}", value / *base.get_or_insert(*value)),
                None => "-".to_string(),
            };
            let (rounds_ratio, windows_ratio) = (ratio(&mut off_rounds, &rounds), ratio(&mut off_windows, &windows));
            let shown = |c: Option<(f64, String)>| c.map_or("-".to_string(), |(_, text)| text);
            let alarms: usize = ok.iter().map(|c| c.alarms).sum();
            let verdicts = match failed.len() {
                0 => format!("{} passed", ok.len()),
                n => format!("{} passed, {n} not: {}", ok.len(), failed.join("; ")),
            };
            println!(
                "| {arch} | {} | {} | {rounds_ratio} | {} | {windows_ratio} | {alarms} | {verdicts} |",
                pace_name(*pace),
                shown(rounds),
                shown(windows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pace_name(pace: Option<Duration>) -> String {
    pace.map_or("off".to_string(), |every| format!("every {} ms", every.as_millis()))
}

/// One boot of the churn; an error when it did not finish as a stock kernel's must.
fn churn_boot(
    machine: &Machine,
    cache: &Cache,
    symbols: &Symbols,
    pace: Option<Duration>,
    run: usize,
) -> Result<Throughput> {
    let name = pace.map_or("off".to_string(), |p| p.as_millis().to_string());
    let dir = cache.dir("bench")?.join(format!("live-{}-{name}-{run}", machine.arch));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let watch = guest::watch(guest::diagnosis(8, false, Some(symbols), pace));
    let boot = vm::boot(machine, &dir, DEADLINES, &watch, None, |_| {})?;
    let console = std::fs::read_to_string(&boot.console_log)?;
    if !console.contains("mmcid-churn: done after ") {
        anyhow::bail!("the churn did not finish cleanly (ended {:?}); see {}", boot.end, dir.display());
    }
    let churn = throughput(&progress(&console))
        .with_context(|| format!("the churn printed too few progress lines; see {}", dir.display()))?;
    Ok(Throughput { alarms: boot.host.iter().filter(|h| h.alarm.is_some()).count(), ..churn })
}

/// (host second, rounds, CID windows) of each progress line of the churn in a stamped console log
/// (`   12.345s| LAB-PROGRESS workload=mmcid-churn elapsed_s=3 rounds=181 ... windows=78347 ...`).
fn progress(console: &str) -> Vec<(f64, f64, f64)> {
    console
        .lines()
        .filter_map(|line| {
            let fields = vm::protocol_fields(line, "LAB-PROGRESS")?;
            let number = |key: &str| -> Option<f64> { fields.get(key)?.parse().ok() };
            let churn = fields.get("workload").is_some_and(|w| w == "mmcid-churn");
            churn.then(|| Some((vm::line_time(line)?, number("rounds")?, number("windows")?))).flatten()
        })
        .collect()
}

/// Rates per host second between the first and the last progress line.
fn throughput(progress: &[(f64, f64, f64)]) -> Option<Throughput> {
    let (first, last) = (progress.first()?, progress.last()?);
    let span = last.0 - first.0;
    if progress.len() < 3 || span <= 0.0 {
        return None;
    }
    Some(Throughput { rounds_per_s: (last.1 - first.1) / span, windows_per_s: (last.2 - first.2) / span, alarms: 0 })
}

/// The plain windows judged again, in rounds; the watch's own rule comes last.
const WINDOWS: [usize; 5] = [2, 3, 4, 5, 6];

/// What one rule would have done over the kept rounds.
#[derive(Default)]
struct Judged {
    /// Looks in passing cells, and passing cells with one.
    looks: usize,
    cells: usize,
    /// Looks before the hang, in cells the run's look showed hung.
    early: usize,
    /// Ready line to the hang seen, in those cells.
    seen: Vec<f64>,
}

pub fn windows(cache: &Cache, dirs: &[PathBuf]) -> Result<ExitCode> {
    let mut symbols: BTreeMap<(String, String), Symbols> = BTreeMap::new();
    let (mut passing, mut hung) = (0, 0);
    let mut rows: Vec<Judged> = (0..=WINDOWS.len()).map(|_| Judged::default()).collect();
    for dir in dirs {
        let run = crate::results::read(dir)?;
        for cell in &run.cells {
            let Some(rounds) = kept_rounds(cell)? else { continue };
            let key = (cell.kernel.clone(), cell.arch.to_string());
            if !symbols.contains_key(&key) {
                symbols.insert(key.clone(), cell_symbols(cache, cell)?);
            }
            let symbols = &symbols[&key];
            let stuck = |w: &HostSamples| triage::diagnose_host(w, symbols, 0).stuck_for_good;
            let hang_from = match (cell.verdict, cell.end) {
                (Verdict::Pass, _) => None,
                (_, CellEnd::Stuck) => Some(hang_start(&rounds)),
                _ => continue,
            };
            match hang_from {
                None => passing += 1,
                Some(_) => hung += 1,
            }
            let said = console_times(&cell.dir.join("console.log"));
            let live = vm::Live {
                every: guest::LIVE_EVERY,
                window: guest::LIVE_WINDOW,
                long_window: guest::LIVE_LONG_WINDOW,
                stuck: Box::new(stuck),
                guest_wait: Duration::ZERO,
            };
            let last_said = |at: f64| said.iter().copied().take_while(|&t| t < at).last().unwrap_or(0.0);
            let own = |r: &[HostSamples]| live.alarm(r, last_said(r[r.len() - 1].started_s)).is_some();
            for (n, row) in rows.iter_mut().enumerate() {
                let plain = |r: &[HostSamples]| {
                    WINDOWS.get(n).is_some_and(|&w| r.len() >= w && stuck(&vm::live_window(&r[r.len() - w..])))
                };
                let looks = if n < WINDOWS.len() { replay(&rounds, &plain) } else { replay(&rounds, &own) };
                match hang_from {
                    None => {
                        row.looks += looks.len();
                        row.cells += usize::from(!looks.is_empty());
                    }
                    Some(from) => {
                        row.early += looks.iter().filter(|&&at| at < from).count();
                        // The hang lasts: rounds past the last kept one would show it too.
                        let rounds_needed = WINDOWS.get(n).copied().unwrap_or(guest::LIVE_WINDOW);
                        let seen = from + (rounds_needed as f64 - 1.0) * guest::LIVE_EVERY.as_secs_f64();
                        row.seen.push(seen - cell.ready_s.unwrap_or(0.0));
                    }
                }
            }
        }
    }
    println!("# lab bench --live-windows: the kept rounds of {passing} passing and {hung} hung cells judged again\n");
    println!("| rule | looks in passing cells | passing cells with a look | looks before a hang | ready to hang seen, median (min-max) |");
    println!("| --- | --- | --- | --- | --- |");
    for (n, row) in rows.into_iter().enumerate() {
        let rule = match WINDOWS.get(n) {
            Some(w) => format!("{w} rounds"),
            None => format!(
                "{} rounds with the console quiet, or {} (the watch's)",
                guest::LIVE_WINDOW,
                guest::LIVE_LONG_WINDOW
            ),
        };
        let seen = spread(row.seen).map_or("-".to_string(), |(m, lo, hi)| format!("{m:.1} s ({lo:.1}-{hi:.1})"));
        println!("| {rule} | {} | {} of {passing} | {} | {seen} |", row.looks, row.cells, row.early);
    }
    Ok(ExitCode::SUCCESS)
}

/// The host time stamps of a console log's lines (`    1.234s| ...`).
fn console_times(path: &Path) -> Vec<f64> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    text.lines().filter_map(vm::line_time).collect()
}

/// The live watch's rounds a cell kept, if it kept any.
fn kept_rounds(cell: &CellResult) -> Result<Option<Vec<HostSamples>>> {
    let path = cell.dir.join(vm::LIVE_ROUNDS);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    let rounds: Vec<HostSamples> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not the live watch's rounds", path.display()))?;
    Ok((!rounds.is_empty()).then_some(rounds))
}

/// The System.map of the kernel a cell booted, from the cache (`kernels/<kernel>-<arch>-<key>`).
fn cell_symbols(cache: &Cache, cell: &CellResult) -> Result<Symbols> {
    let prefix = format!("{}-{}-", cell.kernel, cell.arch);
    let kernels = cache.root().join("kernels");
    let dir = std::fs::read_dir(&kernels)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).is_some_and(|key| !key.contains('-')))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no {prefix}* kernel in {}: build it first", kernels.display()))?;
    Symbols::load(&dir.path().join("System.map"))
}

/// Host seconds of each look a rule would have set off (`alarm`: do these rounds, oldest first,
/// set one off?), starting a new row after each, as the watch does.
fn replay(rounds: &[HostSamples], alarm: &dyn Fn(&[HostSamples]) -> bool) -> Vec<f64> {
    let mut looks = Vec::new();
    let mut from = 0;
    for end in 1..=rounds.len() {
        if alarm(&rounds[from..end]) {
            looks.push(rounds[end - 1].finished_s);
            from = end;
        }
    }
    looks
}

/// Where the hang that ended a `stuck` cell is known to have begun: the first of the rounds whose
/// look the cell's diagnosis bore out (the run's window, its last rounds).
fn hang_start(rounds: &[HostSamples]) -> f64 {
    rounds[rounds.len().saturating_sub(guest::LIVE_WINDOW)].started_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_churns_throughput_per_host_second() {
        let console = "    1.000s| LAB-READY arch=x86_64 cpus=4\n\
            \x20   2.000s| LAB-PROGRESS workload=mmcid-churn elapsed_s=1 rounds=10 threads=1 windows=100 violations=0\n\
            \x20   3.000s| LAB-PROGRESS workload=mmcid-churn elapsed_s=2 rounds=20 threads=1 windows=300 violations=0\n\
            \x20   3.500s| LAB-PROGRESS workload=other elapsed_s=2 rounds=99\n\
            \x20   5.000s| LAB-PROGRESS workload=mmcid-churn elapsed_s=3 rounds=30 threads=1 windows=500 violations=0\n";
        let progress = progress(console);
        assert_eq!(progress, [(2.0, 10.0, 100.0), (3.0, 20.0, 300.0), (5.0, 30.0, 500.0)]);
        let churn = throughput(&progress).unwrap();
        assert_eq!((churn.rounds_per_s, churn.windows_per_s), (20.0 / 3.0, 400.0 / 3.0));
        assert!(throughput(&progress[..2]).is_none());
    }

    /// `S` a round that shows a vCPU stuck for good, `b` one that does not; a window is stuck when
    /// all its rounds are. Looks at the host second of their last round.
    #[test]
    fn windows_judged_again() {
        let rounds = |text: &str| -> Vec<HostSamples> {
            let round = |(i, c): (usize, char)| HostSamples {
                started_s: i as f64,
                finished_s: i as f64 + 0.5,
                interval_ms: u64::from(c == 'S'),
                ..HostSamples::default()
            };
            text.chars().enumerate().map(round).collect()
        };
        let stuck = |w: &[HostSamples]| w.iter().all(|r| r.interval_ms == 1);
        let check = |text: &str, window: usize, looks: &[f64], hang: f64| {
            let rounds = rounds(text);
            let plain = |r: &[HostSamples]| r.len() >= window && stuck(&r[r.len() - window..]);
            assert_eq!(replay(&rounds, &plain), looks, "{text} window {window}");
            assert_eq!(hang_start(&rounds), hang, "{text}");
        };
        check("bbSSS", 3, &[4.5], 2.0);
        check("bbSSS", 2, &[3.5], 2.0);
        check("SSbSSSSSS", 2, &[1.5, 4.5, 6.5, 8.5], 6.0);
        check("SSbSSSSSS", 3, &[5.5, 8.5], 6.0);
        check("bbbbS", 4, &[], 2.0);
    }
}
