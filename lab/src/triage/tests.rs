//! Golden cases from `testdata/` (NAME.log judged against NAME.expected) and robustness checks.
//! `UPDATE_EXPECT=1 cargo test -p lab triage` rewrites the expected files; review the diff.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{starts_report, triage, workload_reports, CpuStack, Missing, Report, Source};
use crate::vocab::Kind;

mod formats;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/triage/testdata");

/// One line per report: what must not drift, and nothing that churns.
fn render(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|report| {
            format!(
                "{} cpu={}{} line={} lines={}{} frame={}{}{} sig={} | {}\n",
                report.kind,
                report.cpu.map_or("-".to_owned(), |cpu| cpu.to_string()),
                report.stuck_cpu.map_or(String::new(), |cpu| format!(" stuck={cpu}")),
                report.line,
                report.lines.len(),
                match report.repeated {
                    0 => String::new(),
                    more => format!(" repeated={more}"),
                },
                report.frame.as_deref().unwrap_or("-"),
                missing(&report.missing),
                stacks(&report.stacks),
                report.signature,
                report.title
            )
        })
        .collect()
}

fn missing(missing: &[Missing]) -> String {
    let names: Vec<&str> = missing
        .iter()
        .map(|what| match what {
            Missing::LockHolder => "lock-holder",
            Missing::Truncated => "truncated",
        })
        .collect();
    match names.is_empty() {
        true => String::new(),
        false => format!(" missing={}", names.join(",")),
    }
}

/// " stacks=2:lock,3,1:idle,-": each stack's CPU (`-` for a task), and whether it waits on a lock
/// or idles.
pub(super) fn stacks(stacks: &[CpuStack]) -> String {
    let stacks: Vec<String> = stacks
        .iter()
        .map(|stack| {
            format!(
                "{}{}{}",
                stack.cpu.map_or("-".to_owned(), |cpu| cpu.to_string()),
                if stack.waits_on_lock { ":lock" } else { "" },
                if stack.idle { ":idle" } else { "" }
            )
        })
        .collect();
    match stacks.is_empty() {
        true => String::new(),
        false => format!(" stacks={}", stacks.join(",")),
    }
}

fn cases() -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(TESTDATA)
        .expect("testdata directory")
        .map(|entry| entry.expect("testdata entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    logs.sort();
    logs
}

/// Judges `log` and compares with its `.expected` neighbour (or rewrites it under UPDATE_EXPECT=1).
fn check(log: &Path) -> Result<(), String> {
    let name = log.file_stem().unwrap_or_default().to_string_lossy();
    let bytes = fs::read(log).map_err(|error| format!("{name}: {error}"))?;
    let actual = render(&triage(&bytes, None));
    let expected_path = log.with_extension("expected");
    if std::env::var_os("UPDATE_EXPECT").is_some_and(|value| value == "1") {
        return fs::write(&expected_path, &actual).map_err(|error| format!("{name}: {error}"));
    }
    let expected = fs::read_to_string(&expected_path).map_err(|error| format!("{name}.expected: {error}"))?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!("{name}:\n--- expected\n{expected}--- actual\n{actual}"))
    }
}

#[test]
fn golden_cases() {
    let cases = cases();
    assert!(cases.len() >= 20, "testdata has only {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|case| check(case).err()).collect();
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The mm_cid live lock as the guest's watchdogs printed it on three architectures at 4 vCPUs, in
/// the seed e-mail (powerpc, 64 CPUs), and as the host sampled it on each architecture: one
/// signature, whichever CPU waited for the holder's lock.
#[test]
fn one_live_lock_one_signature() {
    let signatures = |name: &str| -> Vec<String> {
        let bytes = fs::read(Path::new(TESTDATA).join(format!("{name}.log"))).expect("case");
        triage(&bytes, None).into_iter().map(|report| report.signature).collect()
    };
    let check = |name: &str, expect: &[&str]| assert_eq!(signatures(name), expect, "{name}");
    check("real-x86_64-mmcid-no-transit-livelock", &["hard-lockup:mm_get_cid"]);
    check("real-aarch64-no-transit-reporter-idle-holder-in-mm-get-cid", &["hard-lockup:mm_get_cid"]);
    check("real-ppc64le-no-transit-holder-seen-through-paca", &["hard-lockup:mm_get_cid"]);
    check("seed-powerpc-email", &["hard-lockup:mm_get_cid", "hard-lockup:mm_cid_fixup_cpus_to_tasks"]);
    for arch in ["x86_64", "aarch64", "ppc64le"] {
        let host = Path::new(TESTDATA).join("host").join(format!("{arch}-no-transit-live-lock"));
        let samples = fs::read_to_string(host.with_extension("json")).expect("samples");
        let map = fs::read_to_string(host.with_extension("map")).expect("map");
        let samples = serde_json::from_str(&samples).expect("host-samples.json");
        let diagnosis = super::diagnose_host(&samples, &super::Symbols::parse(&map), 1);
        assert_eq!(diagnosis.reports[0].signature, "hard-lockup:mm_get_cid", "host {arch}");
    }
}

#[test]
fn every_expected_file_has_a_log() {
    for entry in fs::read_dir(TESTDATA).expect("testdata directory") {
        let path = entry.expect("testdata entry").path();
        if path.extension().is_some_and(|extension| extension == "expected") {
            assert!(path.with_extension("log").exists(), "{} has no .log", path.display());
        }
    }
}

/// The VM stage stops a guest on the first line for which `starts_report` holds.
#[test]
fn clean_boots_never_start_a_report() {
    let boots: Vec<PathBuf> = cases()
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("boot-")))
        .collect();
    assert_eq!(boots.len(), 3, "one clean boot per architecture");
    for boot in boots {
        let text = fs::read_to_string(&boot).expect("boot log");
        for (index, line) in text.lines().enumerate() {
            assert!(!starts_report(line), "{}:{}: {line}", boot.display(), index + 1);
        }
    }
}

/// Every headline of every golden case is seen by `starts_report` too, so that triage and the VM
/// stage agree on where reports begin.
#[test]
fn starts_report_sees_every_report_start() {
    for case in cases() {
        let bytes = fs::read(&case).expect("log");
        let lines: Vec<String> =
            bytes.split(|&byte| byte == b'\n').map(|line| super::sanitize(&String::from_utf8_lossy(line))).collect();
        for report in triage(&bytes, None) {
            let line = &lines[report.line - 1];
            assert!(starts_report(line), "{}:{}: {line}", case.display(), report.line);
        }
    }
}

/// A workload's stdout over SSH (`workload.log`): its violations are its reports, one per check,
/// and nothing else it printed is, not even a kernel's headline.
#[test]
fn a_workloads_stdout_over_ssh_reports_its_own_checks_only() {
    let check = |log: &str, expect: &str| {
        let reports = workload_reports(log.as_bytes());
        assert!(reports.iter().all(|r| r.source == Source::Workload), "{log}");
        assert_eq!(render(&reports), expect, "{log}");
    };
    let shared = "    4.250s| mmcid-churn: VIOLATION check=unique-cid cid=0 thread=3 cpu=3 thread=1 cpu=2\n";
    let one = "rseq-violation cpu=- line=2 lines=1 frame=- sig=rseq-violation:unique-cid | mm_cid shared by two running threads (unique-cid)\n";
    check(&format!("    2.000s| LAB-PROGRESS workload=mmcid-churn rounds=3\n{shared}"), one);
    check(&format!("    2.000s| BUG: soft lockup - CPU#0 stuck for 22s! [x:1]\n{shared}"), one);
    check(&format!("    2.000s| mmcid-churn: 60 s\n{shared}{shared}"), &one.replace("lines=1", "lines=1 repeated=1"));
    check("    2.000s| BUG: soft lockup - CPU#0 stuck for 22s! [x:1]\n", "");
    check("", "");
}

#[test]
fn kind_display_matches_serde() {
    let kinds = [
        Kind::HardLockup,
        Kind::SoftLockup,
        Kind::RcuStall,
        Kind::HungTask,
        Kind::WorkqueueLockup,
        Kind::Bug,
        Kind::Warning,
        Kind::Oops,
        Kind::Panic,
        Kind::Kasan,
        Kind::Lockdep,
        Kind::Kmemleak,
        Kind::RseqViolation,
        Kind::Silent,
        Kind::LostConnection,
        Kind::BootHang,
        Kind::Infra,
        Kind::Other,
    ];
    for kind in kinds {
        assert_eq!(serde_json::to_string(&kind).expect("serialize"), format!("\"{kind}\""));
    }
    assert_eq!(Kind::HardLockup.to_string(), "hard-lockup");
    assert_eq!(Kind::WorkqueueLockup.to_string(), "workqueue-lockup");
    assert_eq!(Kind::BootHang.to_string(), "boot-hang");
    assert_eq!(Kind::RseqViolation.to_string(), "rseq-violation");
}

#[test]
fn report_json_omits_what_is_empty() {
    let report = Report {
        kind: Kind::Silent,
        title: "silent".into(),
        signature: "silent".into(),
        frame: None,
        frame_site: None,
        cpu: None,
        stuck_cpu: None,
        line: 1,
        lines: Vec::new(),
        repeated: 0,
        source: super::Source::Console,
        missing: Vec::new(),
        stacks: Vec::new(),
    };
    let json = serde_json::to_string(&report).expect("serialize");
    assert_eq!(
        json,
        r#"{"kind":"silent","title":"silent","signature":"silent","frame":null,"cpu":null,"stuck_cpu":null,"line":1,"source":"console"}"#
    );
    assert_eq!(serde_json::from_str::<Report>(&json).expect("deserialize"), report);
    let lockup = Report {
        missing: vec![Missing::LockHolder, Missing::Truncated],
        stacks: vec![CpuStack {
            cpu: Some(0),
            frames: vec!["queued_spin_lock_slowpath".into(), "sched_mm_cid_fork".into()],
            sites: vec![
                super::FrameSite::new("queued_spin_lock_slowpath+0x6a8/0xd78".into(), false),
                super::FrameSite {
                    source: vec![super::SourceLine {
                        function: "sched_mm_cid_fork".into(),
                        file: "kernel/sched/core.c".into(),
                        line: 10612,
                    }],
                    ..super::FrameSite::new("sched_mm_cid_fork+0x1fc/0x2b8".into(), true)
                },
            ],
            waits_on_lock: true,
            idle: false,
        }],
        ..report.clone()
    };
    let json = serde_json::to_string(&lockup).expect("serialize");
    assert!(
        json.ends_with(concat!(
            r#""missing":["lock-holder","truncated"],"stacks":[{"cpu":0,"frames":["queued_spin_lock_slowpath","sched_mm_cid_fork"],"#,
            r#""sites":[{"printed":"queued_spin_lock_slowpath+0x6a8/0xd78"},"#,
            r#"{"printed":"sched_mm_cid_fork+0x1fc/0x2b8","return_address":true,"source":[{"function":"sched_mm_cid_fork","file":"kernel/sched/core.c","line":10612}]}],"#,
            r#""waits_on_lock":true,"idle":false}]}"#
        )),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<Report>(&json).expect("deserialize"), lockup);
    let violations = Report { kind: Kind::RseqViolation, repeated: 9, ..report };
    let json = serde_json::to_string(&violations).expect("serialize");
    assert!(json.contains(r#""kind":"rseq-violation","#) && json.contains(r#""line":1,"repeated":9,"#), "{json}");
    assert_eq!(serde_json::from_str::<Report>(&json).expect("deserialize"), violations);
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Console-shaped garbage: fragments of real report lines, prefixes, escapes and raw bytes.
fn console_noise(noise: &mut Noise, size: usize) -> Vec<u8> {
    const FRAGMENTS: &[&[u8]] = &[
        b"watchdog: CPU 23 self-detected hard LOCKUP @ ",
        b"watchdog: CPU2: Watchdog detected hard LOCKUP on cpu ",
        b"watchdog: CPU 3 Hard LOCKUP",
        b"Kernel panic - not syncing: ",
        b"Hard LOCKUP",
        b"------------[ cut here ]------------",
        b"BUG: ",
        b"BUG: KASAN: ",
        b"WARNING: ",
        b"Oops: ",
        b"INFO: task ",
        b"rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
        b"---[ end trace 0000000000000000 ]---",
        b"NMI backtrace for cpu ",
        b"CPU: 3 UID: 0 PID: 1 Comm: x",
        b"RIP: 0010:",
        b"mm_get_cid+0x1c/0x2a",
        b" ? __schedule+0x3a4/0x9c0",
        b"[c000000003a7fb40] [c0000000001b7a48] ",
        b"    1.234s| ",
        b"[   12.345678]",
        b"[    C3]",
        b"LAB-RESULT ",
        b"\x1b[31m",
        b"\x1b]0;",
        b"]]>",
        b"\xff\xfe",
        b"\xc3",
        b"\0",
        b"\r",
        b"\n",
        b"\n",
        b"\n",
    ];
    let mut bytes = Vec::with_capacity(size + 64);
    while bytes.len() < size {
        if noise.below(4) == 0 {
            let count = noise.below(16);
            bytes.extend((0..count).map(|_| noise.next() as u8));
        } else {
            bytes.extend_from_slice(FRAGMENTS[noise.below(FRAGMENTS.len())]);
            bytes.extend(std::iter::repeat_n(b'0' + noise.below(10) as u8, noise.below(3)));
        }
    }
    bytes
}

/// Judges `log` within a hang guard (generous: `lab bench --triage` measures the speed) and
/// checks what must hold of any report, whatever the input.
fn triage_quickly(log: &[u8], what: &str) -> Vec<Report> {
    let limit = Duration::from_secs(1) + Duration::from_secs(2).mul_f64(log.len() as f64 / 1e6);
    let started = Instant::now();
    let reports = triage(log, None);
    let elapsed = started.elapsed();
    assert!(elapsed < limit, "{what}: {} bytes took {elapsed:?}", log.len());
    let line_count = log.split(|&byte| byte == b'\n').count();
    let mut previous = 0;
    for report in &reports {
        assert!(report.line > previous && report.line <= line_count, "{what}: line {}", report.line);
        previous = report.line;
        assert!(report.lines.len() <= 80, "{what}: {} lines kept", report.lines.len());
        for text in report.lines.iter().chain([&report.title, &report.signature]) {
            let control = text.contains(|c: char| c.is_control() && c != '\t');
            assert!(text.len() <= 4096 && !control, "{what}: {text:?}");
        }
        let family = report.kind.family().name();
        assert!(report.signature.starts_with(family), "{what}: {}", report.signature);
        assert!(report.stacks.iter().all(|stack| !stack.frames.is_empty()), "{what}");
    }
    reports
}

/// A console log as a broken serial line, a dying guest or a cut file could leave it: runs of the
/// golden logs' bytes, console-shaped noise, invalid UTF-8, NULs, escape sequences, now and then a
/// 1 MB line, bytes overwritten at random, and the whole cut at a random point.
fn mangled_log(noise: &mut Noise, logs: &[Vec<u8>]) -> Vec<u8> {
    const GARBAGE: &[&[u8]] = &[
        b"\xff\xfe\xfd",
        b"\xc3",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\0",
        b"\0\0\0\0",
        b"\x1b[31m",
        b"\x1b[0m",
        b"\x1b[2J\x1b[H",
        b"\x1b]0;title\x07",
        b"\x1b]8;;x",
        b"\x1b",
        b"\x9b",
        b"\r",
        b"\r\n",
        b"]]>",
        b"\x07\x08\x7f",
    ];
    let mut log = Vec::new();
    for _ in 0..1 + noise.below(6) {
        match noise.below(12) {
            0..=6 => {
                let source = &logs[noise.below(logs.len())];
                let start = noise.below(source.len());
                let end = source.len().min(start + noise.below(32 * 1024));
                log.extend_from_slice(&source[start..end]);
            }
            7 | 8 => {
                let size = noise.below(4096);
                log.extend(console_noise(noise, size));
            }
            9 | 10 => {
                for _ in 0..noise.below(64) {
                    log.extend_from_slice(GARBAGE[noise.below(GARBAGE.len())]);
                }
            }
            _ if noise.below(20) == 0 => {
                let source = &logs[noise.below(logs.len())];
                let start = noise.below(source.len());
                let piece = source[start..source.len().min(start + 200)].iter().chain(b"x");
                log.extend(piece.filter(|&&byte| byte != b'\n').cycle().take(1 << 20));
            }
            _ => log.extend((0..noise.below(256)).map(|_| noise.next() as u8)),
        }
    }
    for _ in 0..noise.below(8) {
        if !log.is_empty() {
            let at = noise.below(log.len());
            log[at] = [0, 0xff, 0x1b, b'\r', b'\n', 0xc3, b'['][noise.below(7)];
        }
    }
    let cut = noise.below(log.len() + 1);
    if noise.below(2) == 0 {
        log.truncate(cut);
    }
    log
}

/// A property test: thousands of mangled logs never make triage panic, hang or break its promises.
#[test]
fn arbitrary_bytes_do_not_break_triage() {
    let logs: Vec<Vec<u8>> = cases().iter().map(|case| fs::read(case).expect("log")).collect();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    for input in 0..3000 {
        let log = mangled_log(&mut noise, &logs);
        triage_quickly(&log, &format!("input {input}"));
    }
    for round in 0..8 {
        let log = console_noise(&mut noise, 64 * 1024);
        triage_quickly(&log, &format!("noise round {round}"));
        for line in log.split(|&byte| byte == b'\n') {
            let line = String::from_utf8_lossy(line);
            starts_report(&line);
            let clean = super::sanitize(&line);
            assert!(!clean.contains("]]>") && !clean.contains('\u{1b}') && !clean.contains('\0'), "{clean:?}");
        }
    }
    for byte in [0u8, b'\n', b'\r', 0x1b, 0xff, b'[', b'+'] {
        triage_quickly(&vec![byte; 100_000], &format!("100 kB of {byte:#x}"));
    }
}

#[test]
fn megabyte_lines_do_not_break_triage() {
    let megabyte = 1 << 20;
    let mut long_headline = b"BUG: ".to_vec();
    long_headline.resize(megabyte, b'a');
    let frames = b" mm_get_cid+0x1c/0x2a".repeat(megabyte / 21);
    let brackets = b"[    C3]".repeat(megabyte / 8);
    for line in [long_headline, frames, brackets] {
        let mut log = b"watchdog: CPU 23 self-detected hard LOCKUP @ mm_get_cid+0xe8/0x188\n".to_vec();
        log.extend_from_slice(&line);
        log.push(b'\n');
        log.extend_from_slice(&line);
        let reports = triage_quickly(&log, "a 1 MB line");
        assert!(!reports.is_empty());
        assert!(reports.iter().all(|report| report.lines.iter().all(|kept| kept.len() <= 2048)));
    }
}

#[test]
fn five_megabyte_log_of_one_repeated_report() {
    let seed = fs::read(Path::new(TESTDATA).join("seed-powerpc-email.log")).expect("seed case");
    let copies = 5 * (1 << 20) / seed.len() + 1;
    let log = seed.repeat(copies);
    let reports = triage_quickly(&log, "5 MB log");
    assert_eq!(reports.len(), 2 * copies);
    assert!(reports.chunks(2).all(|pair| pair[0].title == "hard LOCKUP in mm_get_cid"
        && pair[1].title == "hard LOCKUP in mm_cid_fixup_cpus_to_tasks"));
}
