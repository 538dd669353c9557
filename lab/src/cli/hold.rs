//! `lab boot` and `lab ssh`: one cell's guest, booted the way the cell boots, held up for a person.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::args::HoldArgs;
use super::{images_dir, load, out_dir, Env};
use crate::run::{self, Hold, HoldEvent};
use crate::{doctor, triage, vm};

pub fn boot(env: &Env, cell: &str, args: HoldArgs) -> Result<ExitCode> {
    hold(env, cell, args, Hold::Boot)
}

/// A shell, or `command` (its words quoted for the guest's shell) when there is one.
pub fn ssh(env: &Env, cell: &str, args: HoldArgs, command: Vec<String>) -> Result<ExitCode> {
    let what = match command.is_empty() {
        true => Hold::Shell,
        false => Hold::Command(command.iter().map(|word| vm::ssh::shell_quote(word)).collect::<Vec<_>>().join(" ")),
    };
    hold(env, cell, args, what)
}

fn hold(env: &Env, cell: &str, args: HoldArgs, what: Hold) -> Result<ExitCode> {
    let cache = env.cache()?;
    let loaded = load(&args.select)?;
    let Some(found) = loaded.cells.iter().find(|c| c.id == cell) else {
        let ids: Vec<&str> = loaded.cells.iter().map(|c| c.id.as_str()).collect();
        anyhow::bail!("{}", unknown_cell(cell, &ids));
    };
    let accel = args.accel.resolve(loaded.matrix.matrix.accel)?;
    doctor::preflight(&env.sh, &env.ui)?;
    let out = out_dir(args.out)?;
    let images = images_dir();
    let setup = run::HoldSetup {
        matrix: &loaded.matrix.matrix,
        recipes: &loaded.recipes,
        cell: found,
        build: args.build.options(),
        images_dir: &images,
        out: &out,
        accel,
    };
    // Console text reaches the terminal sanitized; the command's own output as it wrote it.
    let code = run::hold(&env.sh, &cache, &setup, what, &env.ui, |event| match event {
        HoldEvent::KvmVerdict(verdict) => eprintln!("lab: {verdict}"),
        HoldEvent::Booting { console, qmp } => {
            eprintln!("lab: booting {} (console: {}; QMP: {})", found.id, console.display(), qmp.display())
        }
        HoldEvent::Console(line) => println!("{}", triage::sanitize(line)),
        HoldEvent::SshReady { machine, cpus, after_s, ssh_command } => {
            let cpus = cpus.map_or("?".to_string(), |n| n.to_string());
            let ssh = ssh_command.display();
            eprintln!("lab: {machine} guest with {cpus} CPUs, SSH ready after {after_s:.1}s: {ssh}; Ctrl-C stops it");
        }
        HoldEvent::Workload(line) => println!("{line}"),
        HoldEvent::Stderr(bytes) => {
            let _ = std::io::stderr().write_all(bytes);
        }
    })?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The error for a cell name the matrix does not have, with up to five it may have meant: those
/// that contain it (a part of a name) or that it contains (a name with a typo at the end).
fn unknown_cell(cell: &str, ids: &[&str]) -> String {
    let near: Vec<&str> = ids.iter().copied().filter(|id| id.contains(cell) || cell.contains(*id)).take(5).collect();
    let hint = match near.is_empty() {
        true => "`lab run --list` prints them".to_string(),
        false => format!("did you mean {}?", near.join(", ")),
    };
    format!("no cell `{cell}` in the matrix ({} cells): {hint}", ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_cell_names_the_cells_it_may_mean() {
        let ids = ["k-x86_64-1cpu-smoke", "k-x86_64-2cpu-smoke", "k-aarch64-2cpu-smoke", "k-x86_64-2cpu-churn"];
        let check = |cell: &str, want: &str| assert_eq!(unknown_cell(cell, &ids), want, "{cell}");
        check("nosuch", "no cell `nosuch` in the matrix (4 cells): `lab run --list` prints them");
        check(
            "x86_64-2cpu",
            "no cell `x86_64-2cpu` in the matrix (4 cells): did you mean k-x86_64-2cpu-smoke, k-x86_64-2cpu-churn?",
        );
        check(
            "k-x86_64-1cpu-smoke2",
            "no cell `k-x86_64-1cpu-smoke2` in the matrix (4 cells): did you mean k-x86_64-1cpu-smoke?",
        );
        check("k-", "no cell `k-` in the matrix (4 cells): did you mean k-x86_64-1cpu-smoke, k-x86_64-2cpu-smoke, k-aarch64-2cpu-smoke, k-x86_64-2cpu-churn?");
        let many = ["a1", "a2", "a3", "a4", "a5", "a6"];
        assert_eq!(unknown_cell("a", &many), "no cell `a` in the matrix (6 cells): did you mean a1, a2, a3, a4, a5?");
        assert_eq!(unknown_cell("a", &[]), "no cell `a` in the matrix (0 cells): `lab run --list` prints them");
    }
}
