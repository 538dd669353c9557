//! `lab series`: a patch series built and run step by step (every step, or a bisection), each
//! step a run directory of its own; what the steps mean is `results::series`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::args::SeriesArgs;
use super::{images_dir, load_matrix, out_dir, Env};
use crate::arch::Arch;
use crate::cache::{self, Cache};
use crate::doctor;
use crate::kernel::series::{self as patches, SeriesPatch};
use crate::kernel::{self, BuildOptions, PatchDoesNotApply, Recipe};
use crate::matrix::{AccelMode, LoadedMatrix};
use crate::plan::{self, Filter};
use crate::process;
use crate::report::{self, CellResult};
use crate::results::series::{self, Build, Change, Series, Step, Walk, SERIES_VERSION};
use crate::vm::Accel;

pub fn series(env: &Env, args: SeriesArgs) -> Result<ExitCode> {
    let SeriesArgs { base, patches: series_path, select, runs, bisect, out, jobs, host_samples, build, accel } = args;
    let base = kernel::recipe::load(&base)?;
    let patches = patches::read(&series_path)?;
    let matrix = load_matrix(&select)?;
    let accel = accel.resolve(matrix.matrix.accel)?;
    // Bad filters are bad input before anything is built.
    plan::cells(&matrix.matrix, std::slice::from_ref(&base.name), &select.filter)?;
    let out = out_dir(out)?;
    std::fs::create_dir_all(out.join("steps")).with_context(|| format!("cannot create {}", out.display()))?;
    doctor::preflight(&env.sh, &env.ui)?;
    let cache = env.cache()?;
    let mut walker = Walker {
        env,
        cache,
        matrix,
        filters: select.filter,
        base,
        patches,
        out,
        runs,
        jobs,
        host_samples,
        accel,
        build: BuildOptions { in_place: true, ..build.options() },
        results: BTreeMap::new(),
        measured: BTreeSet::new(),
        series: Series {
            version: SERIES_VERSION,
            base: String::new(),
            patches: Vec::new(),
            walk: if bisect { Walk::Bisect } else { Walk::Linear },
            steps: Vec::new(),
            first_bad: None,
            first_fix: None,
            stopped: None,
        },
    };
    walker.series.base = walker.base.name.clone();
    walker.series.patches = walker
        .patches
        .iter()
        .map(|p| series::PatchInfo { index: p.index, subject: p.subject.clone(), sha256: p.sha256.clone() })
        .collect();
    env.ui.note(format!(
        "series of {} patches on {}: {} steps, up to {runs} runs per cell, results in {}",
        walker.patches.len(),
        walker.base.name,
        if bisect { "bisected".to_string() } else { format!("{}", walker.patches.len() + 1) },
        walker.out.display()
    ));
    let walked = match bisect {
        true => walker.bisect(),
        false => walker.linear(),
    };
    walker.write()?;
    walked?;
    walker.finish()
}

/// A series in progress: its steps' results so far, and what running one more takes.
struct Walker<'a> {
    env: &'a Env,
    cache: Cache,
    matrix: LoadedMatrix,
    filters: Vec<Filter>,
    base: Recipe,
    patches: Vec<SeriesPatch>,
    out: PathBuf,
    runs: u32,
    jobs: crate::plan::Jobs,
    host_samples: u32,
    accel: AccelMode,
    build: BuildOptions,
    /// Every run of each step, by step index.
    results: BTreeMap<usize, Vec<CellResult>>,
    /// Steps run to all their runs (not stopped at a first hit).
    measured: BTreeSet<usize>,
    series: Series,
}

/// How running a step ended, short of an error of the whole series.
enum Ran {
    Judged,
    /// Its patch does not apply: the series ends before it.
    Stopped,
}

impl Walker<'_> {
    fn linear(&mut self) -> Result<()> {
        for k in 0..=self.patches.len() {
            if let Ran::Stopped = self.step(k)? {
                break;
            }
            self.measure()?;
            self.series.first_bad = series::first(&self.series.steps, &self.series.patches, Change::Bad);
            self.series.first_fix = series::first(&self.series.steps, &self.series.patches, Change::Fix);
            self.write()?;
        }
        Ok(())
    }

    /// The base and the top, then halves between them for each signature they differ in.
    fn bisect(&mut self) -> Result<()> {
        let top = self.patches.len();
        for k in [0, top] {
            if let Ran::Stopped = self.step(k)? {
                return Ok(());
            }
        }
        let at = |s: &Walker, k: usize| s.series.steps.iter().find(|st| st.index == k).cloned();
        let (Some(base), Some(top_step)) = (at(self, 0), at(self, top)) else { return Ok(()) };
        let (was, is) = (series::signatures(&base), series::signatures(&top_step));
        let searches = [
            (series::most_hit(&top_step, is.difference(&was)).cloned(), Change::Bad, top),
            (series::most_hit(&base, was.difference(&is)).cloned(), Change::Fix, 0),
        ];
        for (signature, change, bad_end) in searches {
            let Some(signature) = signature else { continue };
            self.measure_step(bad_end)?;
            loop {
                let shown: BTreeMap<usize, bool> = self
                    .series
                    .steps
                    .iter()
                    .filter(|s| series::judged(s))
                    .map(|s| (s.index, series::signatures(s).contains(&signature)))
                    .collect();
                let Some(next) = series::bisect_next(&shown, 0, top) else { break };
                if let Ran::Stopped = self.step(next)? {
                    return Ok(());
                }
                let probe = at(self, next).context("a probed step is recorded")?;
                if !series::judged(&probe) {
                    self.series
                        .steps
                        .iter_mut()
                        .filter(|s| s.index == next)
                        .for_each(|s| s.notes.push("the bisection stops here: this step could not be judged".into()));
                    break;
                }
                if series::signatures(&probe).contains(&signature) {
                    self.measure_step(next)?;
                }
                self.write()?;
            }
            let finding = series::bisect_finding(&self.series.steps, &self.series.patches, &signature, change);
            match change {
                Change::Bad => self.series.first_bad = finding,
                Change::Fix => self.series.first_fix = finding,
            }
            self.write()?;
        }
        Ok(())
    }

    /// Runs every step on the bad side of a change to all its runs.
    fn measure(&mut self) -> Result<()> {
        for k in series::to_measure(&self.series.steps) {
            self.measure_step(k)?;
        }
        Ok(())
    }

    fn measure_step(&mut self, k: usize) -> Result<()> {
        if self.measured.contains(&k) || self.runs == 1 {
            return Ok(());
        }
        let kept = self.results.get(&k).cloned().unwrap_or_default();
        self.env.ui.note(format!("step {k}: every run, to measure its hit rate"));
        self.run_step(k, false, kept)?;
        self.measured.insert(k);
        Ok(())
    }

    fn recipe(&self, k: usize) -> Recipe {
        if k == 0 {
            return self.base.clone();
        }
        let patches: Vec<kernel::recipe::Patch> = self.patches[..k].iter().map(|p| p.patch.clone()).collect();
        let description =
            format!("{} + patches 1..{k} of the series (last: {})", self.base.name, self.patches[k - 1].subject);
        self.base.extended(format!("{}+{k}", self.base.name), description, &patches)
    }

    fn dir_name(&self, k: usize) -> String {
        match k {
            0 => "00-base".to_string(),
            k => format!("{k:02}-{}", patches::slug(&self.patches[k - 1].subject)),
        }
    }

    /// Step k's kernel recipe and its cells.
    fn plan(&self, k: usize) -> Result<(Recipe, Vec<plan::Cell>)> {
        let recipe = self.recipe(k);
        let cells = plan::cells(&self.matrix.matrix, std::slice::from_ref(&recipe.name), &self.filters)?;
        Ok((recipe, cells))
    }

    /// Builds step k's kernels and runs its cells (stopping each at its first hit).
    fn step(&mut self, k: usize) -> Result<Ran> {
        let (recipe, cells) = self.plan(k)?;
        let name = match k {
            0 => format!("step 0 ({})", self.base.name),
            k => format!("step {k}/{} ({})", self.patches.len(), self.patches[k - 1].subject),
        };
        self.env.ui.note(name.clone());
        let arches: BTreeSet<Arch> = cells.iter().map(|c| c.arch).collect();
        let mut builds = BTreeMap::new();
        for arch in arches {
            match kernel::build(&self.env.sh, &self.cache, &recipe, arch, &self.build, &self.env.ui) {
                Ok(built) => builds
                    .insert(arch, Build { ok: true, cached: built.cached, seconds: built.build_seconds, error: None }),
                Err(e) if e.downcast_ref::<PatchDoesNotApply>().is_some() => {
                    let why = format!("{name}: {e:#}");
                    self.env.ui.note(format!("the series stops: {why}"));
                    self.series.stopped = Some(why);
                    return Ok(Ran::Stopped);
                }
                Err(e) if process::interrupted().is_some() => return Err(e),
                Err(e) => {
                    builds.insert(arch, Build { ok: false, cached: false, seconds: 0.0, error: Some(format!("{e:#}")) })
                }
            };
        }
        let mut notes = Vec::new();
        if k > 0 {
            let patch = &self.patches[k - 1];
            notes.extend(series::ordering_note(&patch.subject, &patch.patch.contents, std::env::consts::ARCH));
        }
        for (arch, build) in &builds {
            if let Some(error) = &build.error {
                notes.push(format!("{arch}: the kernel does not build, its cells were not run: {}", first_line(error)));
            }
        }
        self.series.steps.retain(|s| s.index != k);
        self.series.steps.push(Step {
            index: k,
            patch: (k > 0).then(|| self.patches[k - 1].subject.clone()),
            dir: format!("steps/{}", self.dir_name(k)),
            kernel: builds,
            cells: Vec::new(),
            new_signatures: Vec::new(),
            fixed_signatures: Vec::new(),
            notes,
        });
        self.run_step(k, true, Vec::new())?;
        if self.runs == 1 {
            self.measured.insert(k);
        }
        Ok(Ran::Judged)
    }

    /// Runs step k's cells whose kernel built (the runs in `kept` are not run again), and
    /// records what its runs came to.
    fn run_step(&mut self, k: usize, until_fail: bool, kept: Vec<CellResult>) -> Result<()> {
        let (recipe, cells) = self.plan(k)?;
        let built: BTreeSet<Arch> = self
            .series
            .steps
            .iter()
            .filter(|s| s.index == k)
            .flat_map(|s| s.kernel.iter().filter(|(_, b)| b.ok).map(|(a, _)| *a))
            .collect();
        let cells: Vec<plan::Cell> = cells.into_iter().filter(|c| built.contains(&c.arch)).collect();
        let mut interrupted = None;
        if !cells.is_empty() {
            let opts = crate::run::RunOptions {
                out: self.out.join("steps").join(self.dir_name(k)),
                jobs: self.jobs,
                build: self.build,
                images_dir: images_dir(),
                repeat: self.runs,
                until_fail,
                host_samples: self.host_samples,
                live_every: Some(crate::run::guest::LIVE_EVERY),
                dump_memory: false,
                accel: self.accel,
                finished: kept,
            };
            let finished = crate::run::run(
                &self.env.sh,
                &self.cache,
                &self.matrix,
                std::slice::from_ref(&recipe),
                &cells,
                &opts,
                &self.env.ui,
            )?;
            interrupted = finished.interrupted;
            // A host whose KVM did not boot the base kernel will not boot its steps either: one
            // proof per series, not a 15 s probe per step.
            let kvm_refused = finished.results.iter().any(|r| r.arch == Arch::X86_64 && r.accel == Accel::Tcg);
            if self.accel == AccelMode::Auto && kvm_refused {
                self.env.ui.note("KVM did not run this series' x86_64 guests: the later steps run under TCG");
                self.accel = AccelMode::Tcg;
            }
            self.results.insert(k, finished.results);
        }
        let stats = series::cell_stats(self.results.get(&k).map_or(&[][..], |r| &r[..]));
        for step in self.series.steps.iter_mut().filter(|s| s.index == k) {
            step.cells = stats.clone();
        }
        series::compare_steps(&mut self.series.steps);
        self.env.ui.note(step_line(self.series.steps.iter().find(|s| s.index == k).context("the step is recorded")?));
        self.write()?;
        match interrupted {
            Some(signal) => Err(process::Interrupted(signal).into()),
            None => Ok(()),
        }
    }

    /// series.json and junit.xml as they stand: written after every step, so an interrupted
    /// series keeps what it found.
    fn write(&self) -> Result<()> {
        let mut steps = self.series.clone();
        steps.steps.sort_by_key(|s| s.index);
        cache::write_atomic(&self.out.join("series.json"), serde_json::to_string_pretty(&steps)?.as_bytes())?;
        let all: Vec<CellResult> = self.results.values().flatten().cloned().collect();
        report::write_junit(&self.out.join("junit.xml"), &all)
    }

    /// The closing lines and the exit status.
    fn finish(&self) -> Result<ExitCode> {
        let show = |what: &str, f: &Option<series::Finding>| match f {
            Some(f) => format!(
                "{what}: patch {} ({}): {} (confidence {:.1} %)",
                f.index,
                f.subject,
                f.signature,
                f.confidence * 100.0
            ),
            None => format!("{what}: none"),
        };
        println!("{}", show("first bad", &self.series.first_bad));
        println!("{}", show("first fix", &self.series.first_fix));
        println!("series.json, junit.xml and every step's run in {}", self.out.display());
        if let Some(why) = &self.series.stopped {
            bail!("{why}\n(the steps before it are in {})", self.out.join("series.json").display());
        }
        Ok(ExitCode::from(if self.series.first_bad.is_some() { 1 } else { 0 }))
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `step 2: x86_64 4cpu mmcid-churn 1/1 hit; new hard-lockup:mm_get_cid`.
fn step_line(step: &Step) -> String {
    let cells: Vec<String> = step
        .cells
        .iter()
        .map(|c| format!("{} {}cpu {} {}/{} hit", c.arch, c.vcpus, c.workload, c.hits, c.runs))
        .collect();
    let mut line =
        format!("step {}: {}", step.index, if cells.is_empty() { "nothing judged".into() } else { cells.join(", ") });
    if !step.new_signatures.is_empty() {
        line += &format!("; new: {}", step.new_signatures.join(", "));
    }
    if !step.fixed_signatures.is_empty() {
        line += &format!("; gone: {}", step.fixed_signatures.join(", "));
    }
    line
}
