//! The runs waiting to boot, handed to the workers as the host's capacity allows
//! (`plan::next_fit`): costliest cells first, a cell's runs one after another.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::plan::{self, Capacity, Cell};
use crate::process;

/// A run waiting to boot: its place in the plan (the order results are written in), its cell and
/// its number.
pub type Queued<'c> = (usize, &'c Cell, u32);

pub struct Queue<'c> {
    state: Mutex<State<'c>>,
    freed: Condvar,
    capacity: Capacity,
}

struct State<'c> {
    waiting: Vec<Queued<'c>>,
    running_cells: usize,
    running_vcpus: u32,
}

impl<'c> Queue<'c> {
    pub fn new(waiting: Vec<Queued<'c>>, capacity: Capacity) -> Queue<'c> {
        Queue {
            state: Mutex::new(State { waiting, running_cells: 0, running_vcpus: 0 }),
            freed: Condvar::new(),
            capacity,
        }
    }

    /// How many workers can ever be busy at once.
    pub fn workers(&self) -> usize {
        let waiting = self.lock().waiting.len();
        self.capacity.cells.min(self.capacity.vcpus as usize).min(waiting).max(1)
    }

    fn lock(&self) -> MutexGuard<'_, State<'c>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next run to boot, once it fits; None when none is left or a signal came. Waiting runs
    /// of a cell `skip` names are dropped (a cell `--until-fail` has seen hit).
    pub fn take(&self, skip: impl Fn(&Cell) -> bool) -> Option<Queued<'c>> {
        let mut state = self.lock();
        loop {
            // Checked before a run is taken: what is still waiting after a signal is what never
            // started, and `drain` hands it back as such.
            if process::interrupted().is_some() {
                return None;
            }
            state.waiting.retain(|(_, cell, _)| !skip(cell));
            let vcpus: Vec<u32> = state.waiting.iter().map(|(_, cell, _)| cell.vcpus).collect();
            match plan::next_fit(&vcpus, state.running_cells, state.running_vcpus, self.capacity) {
                Some(i) => {
                    let run = state.waiting.remove(i);
                    state.running_cells += 1;
                    state.running_vcpus += run.1.vcpus;
                    return Some(run);
                }
                None if state.waiting.is_empty() => return None,
                // Woken when a run ends; the timeout only looks for a signal again.
                None => {
                    state =
                        self.freed.wait_timeout(state, Duration::from_millis(250)).unwrap_or_else(|e| e.into_inner()).0
                }
            }
        }
    }

    /// A run `take` gave has ended: its room goes to the waiting.
    pub fn done(&self, cell: &Cell) {
        let mut state = self.lock();
        state.running_cells -= 1;
        state.running_vcpus -= cell.vcpus;
        self.freed.notify_all();
    }

    /// The runs that never started, in queue order.
    pub fn drain(&self) -> Vec<Queued<'c>> {
        std::mem::take(&mut self.lock().waiting)
    }
}
