//! Where a run's files go: a new directory per run, named for when it started, or one given
//! that must be new or empty.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A default output directory per run, so nightly runs never overwrite each other, named for
/// when it started so that a person finds last night's among them.
pub fn default_out(base: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    run_dir(base, secs, Path::exists)
}

/// `BASE/2026-12-05T07-16-11` (UTC; no `:`, which some file systems and `scp` treat specially),
/// then `-2`, `-3`, ... for runs started in the same second.
fn run_dir(base: &Path, unix_secs: u64, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let stamp = utc_stamp(unix_secs);
    let mut dir = base.join(&stamp);
    let mut n = 1;
    while exists(&dir) {
        n += 1;
        dir = base.join(format!("{stamp}-{n}"));
    }
    dir
}

fn utc_stamp(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86400, unix_secs % 86400);
    // Howard Hinnant's civil_from_days: 400-year eras counted from 0000-03-01, so that the leap
    // day ends a year; days since 1970 are never negative here.
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// An explicit --out must be new or empty: results of two runs never mix.
pub fn check_out_dir(out: &Path) -> Result<()> {
    if out.exists() && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("output directory {} is not empty: choose a new one (results of two runs must not mix)", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_run_dir(unix_secs: u64, existing: &[&str], expect: &str) {
        let dir =
            run_dir(Path::new("lab-out"), unix_secs, |p| existing.iter().any(|e| Path::new("lab-out").join(e) == p));
        assert_eq!(dir, Path::new("lab-out").join(expect), "{unix_secs} {existing:?}");
    }

    #[test]
    fn run_dirs_are_utc_start_times_never_reused() {
        check_run_dir(0, &[], "1970-01-01T00-00-00");
        check_run_dir(1_796_454_971, &[], "2026-12-05T07-16-11");
        check_run_dir(946_684_799, &[], "1999-12-31T23-59-59");
        check_run_dir(951_782_400, &[], "2000-02-29T00-00-00");
        check_run_dir(1_709_251_199, &[], "2024-02-29T23-59-59");
        check_run_dir(4_107_542_400, &[], "2100-03-01T00-00-00");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11"], "2026-12-05T07-16-11-2");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11", "2026-12-05T07-16-11-2"], "2026-12-05T07-16-11-3");
        check_run_dir(1_796_454_971, &["2026-12-05T07-16-11-2"], "2026-12-05T07-16-11");
    }
}
