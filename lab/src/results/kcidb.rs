//! A finished run as a KCIDB v5.3 submission (KernelCI's database): a checkout per kernel
//! recipe (its source and `patchset_hash`), a build per kernel and arch, a test per cell run
//! (`lab.<workload>`), an issue per failure signature and an incident per failing test.
//!
//! Statuses as KCIDB orders them: a pass is PASS, a failure FAIL; a timeout or an error the lab
//! could not judge is ERROR (the code's status is unknown); a run that never booted (no kernel
//! or image) or that a signal stopped is MISS; a skip is SKIP.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::Run;
use crate::report::{self, CellResult};
use crate::vocab::{CellEnd, Verdict};

/// A test's log excerpt is kept below this many bytes: the full console is in the cell.
const EXCERPT_BYTES: usize = 16 * 1024;

/// What a kernel was built from, for its checkout.
pub struct KernelSource {
    pub name: String,
    /// The recipe's source, as a person reads it (a Debian package, a git ref, a tarball).
    pub source: String,
    /// Each patch's sha256 (hex), in the order they apply.
    pub patch_sha256: Vec<String>,
}

/// KCIDB's patchset hash: the sha256 of the patches' sha256 hex digests, one a line, in order
/// (`sha256sum *.patch | cut -c-64 | sha256sum`); empty without patches.
pub fn patchset_hash(patch_sha256: &[String]) -> String {
    if patch_sha256.is_empty() {
        return String::new();
    }
    let lines: String = patch_sha256.iter().map(|h| format!("{h}\n")).collect();
    crate::cache::hex(&Sha256::digest(lines.as_bytes()))
}

fn status(cell: &CellResult) -> &'static str {
    match cell.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Skip => "SKIP",
        Verdict::Error if cell.end == CellEnd::NotBooted => "MISS",
        Verdict::Error | Verdict::Timeout => "ERROR",
        Verdict::Interrupted => "MISS",
    }
}

/// Ids are `origin:` and a name made of the run directory's name and the object's own.
fn id(origin: &str, run: &str, parts: &[&str]) -> String {
    format!("{origin}:{run}/{}", parts.join("/"))
}

fn excerpt(cell: &CellResult) -> String {
    report::bounded(&format!("{}\n{}", cell.reason, cell.excerpt), EXCERPT_BYTES, &report::console_of(cell))
}

/// The submission for `run`, whose kernels were built from `kernels` (by recipe name).
pub fn submission(run: &Run, kernels: &[KernelSource], origin: &str) -> Value {
    let name = run.dir.file_name().map_or("run".into(), |n| n.to_string_lossy().replace(['/', '\0'], "_"));
    let checkouts: Vec<Value> = kernels
        .iter()
        .map(|k| {
            json!({"id": id(origin, &name, &[&k.name]), "origin": origin, "tree_name": k.name,
                   "patchset_hash": patchset_hash(&k.patch_sha256), "comment": k.source, "valid": true})
        })
        .collect();
    let mut builds: Vec<Value> = Vec::new();
    let (mut tests, mut issues, mut incidents) = (Vec::new(), Vec::new(), Vec::new());
    for cell in &run.cells {
        let build_id = id(origin, &name, &[&cell.kernel, cell.arch.name()]);
        if !builds.iter().any(|b| b["id"] == build_id.as_str()) {
            let booted = run.cells.iter().filter(|c| c.kernel == cell.kernel && c.arch == cell.arch);
            let built = booted.clone().any(|c| !matches!(c.end, CellEnd::NotBooted | CellEnd::NotStarted));
            builds.push(json!({"id": build_id, "origin": origin, "checkout_id": id(origin, &name, &[&cell.kernel]),
                               "architecture": cell.arch.name(), "status": if built { "PASS" } else { "FAIL" }}));
        }
        let run_part = cell.run.map(|n| format!("run-{n:03}"));
        let mut parts = vec![cell.id.as_str()];
        parts.extend(run_part.as_deref());
        let test_id = id(origin, &name, &parts);
        tests.push(json!({"id": test_id, "origin": origin, "build_id": build_id,
            "path": format!("lab.{}", cell.workload), "status": status(cell), "duration": cell.duration_s,
            "log_excerpt": excerpt(cell),
            "environment": {"comment": format!("QEMU guest, {} vCPUs", cell.vcpus),
                            "misc": {"vcpus": cell.vcpus, "accel": cell.accel, "run": cell.run,
                                     "runs": run.cells.iter().filter(|c| c.id == cell.id).count()}}}));
        let Some(report) = cell.reports.first().filter(|_| cell.verdict == Verdict::Fail) else { continue };
        let issue_id = format!("{origin}:{}", report.signature.replace(['\0'], "_"));
        if !issues.iter().any(|i: &Value| i["id"] == issue_id.as_str()) {
            issues.push(json!({"id": issue_id, "version": 1, "origin": origin,
                               "report_subject": report.title, "culprit": {"code": true}, "comment": report.signature}));
        }
        incidents.push(json!({"id": format!("{test_id}/{}", report.kind), "origin": origin, "issue_id": issue_id,
                              "issue_version": 1, "test_id": test_id, "build_id": build_id, "present": true}));
    }
    json!({"version": {"major": 5, "minor": 3}, "checkouts": checkouts, "builds": builds, "tests": tests,
           "issues": issues, "incidents": incidents})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patchset_hash_is_a_hash_of_the_patches_hashes_in_order() {
        assert_eq!(patchset_hash(&[]), "");
        // printf 'aa\nbb\n' | sha256sum
        let ab = patchset_hash(&["aa".into(), "bb".into()]);
        assert_eq!(ab, "329d670e59ead1543a2d36865895972560bc434204c5f4a0c8219005dd312719");
        assert_ne!(ab, patchset_hash(&["bb".into(), "aa".into()]));
    }

    #[test]
    fn statuses_as_kcidb_orders_them() {
        let check = |verdict: Verdict, end: CellEnd, want: &str| {
            let cell = CellResult { end, ..crate::report::sample_cell(verdict, "", "") };
            assert_eq!(status(&cell), want, "{verdict} {end:?}");
        };
        check(Verdict::Pass, CellEnd::Exited, "PASS");
        check(Verdict::Fail, CellEnd::Silent, "FAIL");
        check(Verdict::Timeout, CellEnd::WorkloadTimeout, "ERROR");
        check(Verdict::Error, CellEnd::QemuFailed, "ERROR");
        check(Verdict::Error, CellEnd::NotBooted, "MISS");
        check(Verdict::Interrupted, CellEnd::NotStarted, "MISS");
        check(Verdict::Skip, CellEnd::Exited, "SKIP");
    }
}
