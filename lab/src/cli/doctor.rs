//! `lab doctor` and `lab setup`: the host's requirements as a checklist with a fix per missing
//! one, and what installing them did.

use std::process::ExitCode;

use anyhow::Result;

use super::{images_dir, Env};
use crate::doctor::Check;

pub fn doctor(env: &Env) -> Result<ExitCode> {
    let cache = env.cache()?;
    let checks = crate::doctor::checks(&env.sh, &cache, &images_dir(), &env.ui);
    let (text, code) = checklist(&checks);
    print!("{text}");
    Ok(ExitCode::from(code))
}

pub fn setup(env: &Env, dry_run: bool) -> Result<ExitCode> {
    println!("{}", crate::doctor::setup(&env.sh, &env.ui, dry_run)?);
    Ok(ExitCode::SUCCESS)
}

/// A line per check (and its fix), then the verdict; 2 when something is missing, as for any
/// set-up error.
fn checklist(checks: &[Check]) -> (String, u8) {
    let mut text = String::new();
    for c in checks {
        text += &format!("{} {:<44} {}\n", if c.ok { "ok  " } else { "MISS" }, c.what, c.detail);
        if let Some(fix) = &c.fix {
            text += &format!("     fix: {fix}\n");
        }
    }
    let missing = checks.iter().filter(|c| !c.ok).count();
    if missing > 0 {
        text += &format!("{missing} requirement(s) missing: `lab setup` installs the packages (as root)\n");
        return (text, 2);
    }
    text += "all requirements met\n";
    (text, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(what: &str, ok: bool, fix: Option<&str>) -> Check {
        Check { what: what.into(), ok, detail: "detail".into(), fix: fix.map(String::from) }
    }

    #[test]
    fn the_checklist_ends_with_its_verdict() {
        let ok = |what| check(what, true, None);
        let miss = |what, fix| check(what, false, Some(fix));
        let cases: &[(&[Check], &str, u8)] = &[
            (&[], "all requirements met\n", 0),
            (&[ok("qemu")], "ok   qemu                                         detail\nall requirements met\n", 0),
            (
                &[ok("qemu"), miss("gcc", "apt-get install gcc")],
                "ok   qemu                                         detail\n\
                 MISS gcc                                          detail\n     fix: apt-get install gcc\n\
                 1 requirement(s) missing: `lab setup` installs the packages (as root)\n",
                2,
            ),
        ];
        for (checks, text, code) in cases {
            assert_eq!(checklist(checks), (text.to_string(), *code));
        }
    }
}
