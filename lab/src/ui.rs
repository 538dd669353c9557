//! Progress for humans: stages emit `Event`s, this module alone decides how they look.
//!
//! On a terminal each running task gets an indicatif spinner; elsewhere (CI logs) every event is
//! one plain line with a wall-clock timestamp. Stages never print directly, so the two renderings
//! cannot drift apart.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub enum Event {
    /// A task (`build linux-7.3 x86_64`, a cell id) begins a stage.
    Started {
        task: String,
        stage: &'static str,
    },
    /// The task's latest state, for the spinner; plain output shows it at most every few seconds.
    Progress {
        task: String,
        message: String,
    },
    /// Raw build output or console text: shown only with `--verbose`.
    Output {
        task: String,
        line: String,
    },
    Finished {
        task: String,
        ok: bool,
        summary: String,
    },
    /// A one-off message for the user.
    Note(String),
}

#[derive(Clone)]
pub struct Ui {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    verbose: bool,
    bars: Option<MultiProgress>,
    tasks: HashMap<String, Task>,
    start: Instant,
}

struct Task {
    bar: Option<ProgressBar>,
    stage: &'static str,
    started: Instant,
    last_plain_progress: Instant,
}

/// Plain output repeats a task's progress no more often than this, to keep CI logs readable.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(30);

impl Ui {
    pub fn new(verbose: bool) -> Ui {
        let bars = std::io::stderr().is_terminal().then(MultiProgress::new);
        Ui { inner: Arc::new(Mutex::new(Inner { verbose, bars, tasks: HashMap::new(), start: Instant::now() })) }
    }

    pub fn send(&self, event: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.handle(event);
    }

    pub fn note(&self, message: impl Into<String>) {
        self.send(Event::Note(message.into()));
    }

    /// Runs one stage of a task between its `Started` and `Finished` events. The summary is
    /// `describe(value)` on success, the error's first line on failure.
    pub fn stage<T>(
        &self,
        task: &str,
        stage: &'static str,
        work: impl FnOnce() -> anyhow::Result<T>,
        describe: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<T> {
        self.send(Event::Started { task: task.to_string(), stage });
        let result = work();
        let summary = match &result {
            Ok(value) => describe(value),
            Err(e) => format!("{e:#}").lines().next().unwrap_or_default().to_string(),
        };
        self.send(Event::Finished { task: task.to_string(), ok: result.is_ok(), summary });
        result
    }
}

impl Inner {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Started { task, stage } => {
                let bar = self.bars.as_ref().map(|bars| {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed:>4}] {wide_msg}")
                            .expect("static template"),
                    );
                    bar.set_prefix(format!("{task} {stage}"));
                    bar.enable_steady_tick(Duration::from_millis(200));
                    bar
                });
                if bar.is_none() {
                    self.plain(&format!("{task}: {stage} started"));
                }
                let now = Instant::now();
                self.tasks.insert(task, Task { bar, stage, started: now, last_plain_progress: now });
            }
            Event::Progress { task, message } => {
                let line = format!("{task}: {message}");
                let Some(t) = self.tasks.get_mut(&task) else { return self.plain(&line) };
                match &t.bar {
                    Some(bar) => bar.set_message(message),
                    None if t.last_plain_progress.elapsed() >= PLAIN_PROGRESS_EVERY => {
                        t.last_plain_progress = Instant::now();
                        self.plain(&line);
                    }
                    None => {}
                }
            }
            Event::Output { task, line } => {
                if self.verbose {
                    self.plain(&format!("{task}| {line}"));
                }
            }
            Event::Finished { task, ok, summary } => {
                let mark = if ok { "ok" } else { "FAILED" };
                match self.tasks.remove(&task) {
                    Some(t) => {
                        let secs = t.started.elapsed().as_secs_f64();
                        let line = format!("{task}: {} {mark} in {secs:.1}s: {summary}", t.stage);
                        if let Some(bar) = t.bar {
                            bar.finish_and_clear();
                        }
                        self.plain(&line);
                    }
                    None => self.plain(&format!("{task}: {mark}: {summary}")),
                }
            }
            Event::Note(message) => self.plain(&message),
        }
    }

    fn plain(&self, line: &str) {
        let line = format!("[{:>7.1}s] {line}", self.start.elapsed().as_secs_f64());
        // Not `eprintln!`, which panics when the write fails: after SIGHUP the terminal is gone and
        // every write to it fails, yet the run must still stop its guests and write its reports.
        let print = || {
            let _ = writeln!(std::io::stderr(), "{line}");
        };
        match &self.bars {
            // indicatif's `suspend` panics when it cannot redraw; a hung-up terminal also stops
            // being one (its ioctls fail), so this asks before every line.
            Some(bars) if std::io::stderr().is_terminal() => bars.suspend(print),
            _ => print(),
        }
    }
}
