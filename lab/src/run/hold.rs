//! A cell's guest booted for a person (`lab boot`, `lab ssh`): booted the way the cell boots, its
//! init holding instead of running the workload. What happens is told as `HoldEvent`s, so that
//! the command's caller decides what reaches the terminal and how.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::guest::{self, Guest};
use crate::accel::{self, AccelMode};
use crate::cache::Cache;
use crate::image;
use crate::kernel::{self, BuildOptions, Recipe};
use crate::matrix::Matrix;
use crate::plan::Cell;
use crate::ui::Ui;
use crate::vm::{self, End, Seen, SshTask};

/// What `lab boot` and `lab ssh` do in a guest booted the way a cell boots (its init holding
/// instead of running the workload).
pub enum Hold {
    /// Stream the console and keep the guest up until it powers off or Ctrl-C.
    Boot,
    /// An interactive shell over SSH in this terminal; the guest goes down with it.
    Shell,
    /// One command over SSH, its output printed; the guest goes down after it.
    Command(String),
}

/// The cell to hold and where its pieces come from.
pub struct HoldSetup<'a> {
    pub matrix: &'a Matrix,
    pub recipes: &'a [Recipe],
    pub cell: &'a Cell,
    pub build: BuildOptions,
    pub images_dir: &'a Path,
    /// The run directory: the cell's files go to `cells/<id>/` inside it.
    pub out: &'a Path,
    pub accel: AccelMode,
}

/// What a held guest does, in the order it happens; each only for the `Hold` it concerns.
pub enum HoldEvent<'a> {
    /// What booting the kernel under KVM proved (`auto`, x86_64).
    KvmVerdict(String),
    /// QEMU is starting: its console log and the QMP socket left for people.
    Booting { console: PathBuf, qmp: PathBuf },
    /// A console line, raw (`Hold::Boot`): a terminal gets it through `triage::sanitize`.
    Console(&'a str),
    /// The lab logged in over SSH (`Hold::Boot`); `ssh_command` logs a person in.
    SshReady { machine: &'a str, cpus: Option<u32>, after_s: f64, ssh_command: PathBuf },
    /// A line of the command's stdout (`Hold::Command`).
    Workload(&'a str),
    /// Everything the command or the shell wrote to its stderr, once it ended.
    Stderr(&'a [u8]),
}

/// Boots the cell's kernel and image for a person; returns the exit status to give (the command's
/// or the shell's, 0 for a guest that powered off).
pub fn hold(
    sh: &Shell,
    cache: &Cache,
    setup: &HoldSetup,
    what: Hold,
    ui: &Ui,
    mut on: impl FnMut(HoldEvent),
) -> Result<i32> {
    let cell = setup.cell;
    let kernel = kernel::build(sh, cache, &setup.recipes[cell.kernel], cell.arch, &setup.build, ui)?;
    let base = image::build(sh, cache, setup.images_dir, cell.arch, ui)?;
    let image = image::with_selftests(cache, &base, &kernel.selftests, ui)?;
    let client_key = crate::ssh_keys::client_key(sh, cache)?;
    let (accel, proof) = accel::for_guest(cache, setup.accel, cell.arch, &guest::probe_guest(&kernel, &image))?;
    if let Some(proof) = proof {
        on(HoldEvent::KvmVerdict(proof.verdict()));
    }
    let dir = setup.out.join("cells").join(&cell.id);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let guest = Guest::of_cell(cell, setup.matrix, &kernel, &image, true);
    let task = match &what {
        Hold::Boot => SshTask::WaitReady,
        Hold::Shell => guest::command("shell", String::new(), true),
        Hold::Command(command) => guest::command("command", command.clone(), false),
    };
    let ssh = guest::ssh(&image, &client_key.private, task);
    let deadlines = guest::held(setup.matrix.timeouts.boot);
    on(HoldEvent::Booting { console: dir.join("console.log"), qmp: dir.join("qmp.sock") });
    let boot = vm::boot(&guest.machine(accel), &dir, deadlines, &guest::watch(None), Some(&ssh), |seen| {
        match (&what, seen) {
            (Hold::Boot, Seen::Console(line)) => on(HoldEvent::Console(line)),
            (Hold::Boot, Seen::SshReady { machine, cpus, after_s }) => {
                on(HoldEvent::SshReady { machine, cpus, after_s, ssh_command: dir.join("ssh-command.sh") })
            }
            (Hold::Command(_), Seen::Workload(line)) => on(HoldEvent::Workload(line)),
            _ => {}
        }
    })?;
    if let Ok(stderr) = fs::read(dir.join("workload.stderr")) {
        on(HoldEvent::Stderr(&stderr));
    }
    let status = boot.result.as_ref().and_then(|r| r.get("exit")?.parse::<i32>().ok());
    match (status, &boot.end) {
        (Some(code), _) => Ok(if code < 0 { 1 } else { code }),
        (None, End::Exited) => Ok(0),
        (None, end) => {
            let why = match end {
                End::QemuFailed(why) | End::SshFailed(why) | End::LostConnection(why) => why.clone(),
                other => other.cell_end().name().to_string(),
            };
            bail!(
                "the guest of {} ended before the session did: {why} (console: {})",
                cell.id,
                boot.console_log.display()
            )
        }
    }
}
