//! The headline formats table (`testdata/formats.tsv`, its header says what the columns mean): each
//! row's format, rendered with the row's arguments as printk would, must be judged as the row says,
//! bare and behind every prefix a console line can carry. `lab/tests/e2e.rs` proves the 7.3 rows
//! verbatim against the stock tree.

use std::fs;

use crate::triage::console::ConsoleLine;
use crate::triage::{header, sanitize, starts_report};

const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/triage/testdata/formats.tsv");

/// What the kernel and the lab put in front of a message: nothing (a raw console), the printk
/// timestamp, with a CPU or task caller id (CONFIG_PRINTK_CALLER), the lab's host time, all of them.
const PREFIXES: &[&str] = &[
    "",
    "[   12.345678] ",
    "[  12.345678][    C3] ",
    "[   12.345678][ T1234] ",
    "    1.234s| ",
    "    1.234s| [ 1234.567890][   C23] ",
];

struct Row<'a> {
    line: usize,
    file: &'a str,
    version: &'a str,
    prefix: &'a str,
    expect: &'a str,
    format: &'a str,
    args: Vec<&'a str>,
}

fn rows(table: &str) -> Vec<Row<'_>> {
    table
        .lines()
        .enumerate()
        .filter(|(_, text)| !text.is_empty() && !text.starts_with('#'))
        .map(|(index, text)| {
            let columns: Vec<&str> = text.split('\t').collect();
            assert!(
                columns.len() >= 5,
                "formats.tsv:{}: {} columns, want file, version, prefix, expect, format and the args",
                index + 1,
                columns.len()
            );
            Row {
                line: index + 1,
                file: columns[0],
                version: columns[1],
                prefix: columns[2],
                expect: columns[3],
                format: columns[4],
                args: columns[5..].to_vec(),
            }
        })
        .collect()
}

/// The first console line the row's printk prints (a message's later lines are not its headline).
fn console_line(row: &Row<'_>) -> Result<String, String> {
    let message = printf(&unescape(unquote(row.format)?)?, &row.args)?;
    let message = match row.prefix {
        "-" => message,
        // vpanic: "Kernel panic - not syncing: %s\n" around the formatted reason.
        "panic" => format!("Kernel panic - not syncing: {message}"),
        pr_fmt => format!("{}{message}", unescape(unquote(pr_fmt)?)?),
    };
    Ok(message.split('\n').next().unwrap_or_default().to_owned())
}

fn unquote(literal: &str) -> Result<&str, String> {
    literal
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .ok_or_else(|| format!("{literal} is not a quoted C string"))
}

/// The C escapes the table's formats use.
fn unescape(literal: &str) -> Result<String, String> {
    let mut out = String::with_capacity(literal.len());
    let mut chars = literal.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some(c @ ('"' | '\'' | '\\')) => c,
            other => return Err(format!("escape \\{} in {literal:?}", other.unwrap_or(' '))),
        });
    }
    Ok(out)
}

/// `format` as the kernel's vsprintf prints it, one argument per conversion. Numbers are written
/// decimal or `0x` hex; `%p` with an extension (`%pS`, `%pSb`, `%pB`, `%*pbl`, ...) prints its
/// argument as it is, bare `%p` and `%px` a 64-bit address; a conversion with a `*` width or
/// precision prints its argument as it is (the table gives what `%.*s` and `%*pbl` show).
fn printf(format: &str, args: &[&str]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'%').is_some() {
            out.push('%');
            continue;
        }
        let mut flags = String::new();
        while let Some(flag) = chars.next_if(|c| "-+ #0".contains(*c)) {
            flags.push(flag);
        }
        let mut star = chars.next_if_eq(&'*').is_some();
        let mut width = String::new();
        while let Some(digit) = chars.next_if(char::is_ascii_digit) {
            width.push(digit);
        }
        if chars.next_if_eq(&'.').is_some() {
            star |= chars.next_if_eq(&'*').is_some();
            while chars.next_if(char::is_ascii_digit).is_some() {}
        }
        while chars.next_if(|c| "hlztj".contains(*c)).is_some() {}
        let conversion = chars.next().ok_or("the format ends inside a conversion")?;
        let mut extension = String::new();
        if conversion == 'p' {
            while let Some(c) = chars.next_if(char::is_ascii_alphanumeric) {
                extension.push(c);
            }
        }
        let spec = format!("%{flags}{}{width}{conversion}{extension}", if star { "*" } else { "" });
        let arg = *args.next().ok_or_else(|| format!("no argument for {spec}"))?;
        let number = || parse_number(arg).ok_or_else(|| format!("{spec}: {arg:?} is no number"));
        let unsigned = || u64::try_from(number()?).map_err(|_| format!("{spec}: {arg} is negative"));
        let text = match conversion {
            _ if star => arg.to_owned(),
            'd' | 'i' => number()?.to_string(),
            'u' => unsigned()?.to_string(),
            'x' if flags.contains('#') => format!("{:#x}", unsigned()?),
            'x' => format!("{:x}", unsigned()?),
            'X' => format!("{:X}", unsigned()?),
            'c' if arg.chars().count() == 1 => arg.to_owned(),
            'c' => return Err(format!("{spec} takes one character, not {arg:?}")),
            's' => arg.to_owned(),
            'p' if extension.is_empty() || extension == "x" => format!("{:016x}", number()?),
            'p' => arg.to_owned(),
            _ => return Err(format!("the renderer does not know {spec}")),
        };
        out.push_str(&pad(text, &flags, width.parse().unwrap_or(0)));
    }
    match args.len() {
        0 => Ok(out),
        unused => Err(format!("{unused} argument(s) left over")),
    }
}

fn parse_number(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => i128::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if negative { -value } else { value })
}

/// Width: zeros after any sign or `0x` with the `0` flag, blanks on the right with `-`, else on the left.
fn pad(text: String, flags: &str, width: usize) -> String {
    let missing = width.saturating_sub(text.chars().count());
    if missing == 0 {
        text
    } else if flags.contains('-') {
        format!("{text}{}", " ".repeat(missing))
    } else if flags.contains('0') {
        let split = ["-", "0x"].iter().find_map(|lead| text.strip_prefix(lead).map(|rest| (*lead, rest)));
        let (lead, digits) = split.unwrap_or(("", &text));
        format!("{lead}{}{digits}", "0".repeat(missing))
    } else {
        format!("{}{text}", " ".repeat(missing))
    }
}

/// Judges `line` the way triage and the VM stage do: sanitized, prefixes off, headline patterns.
fn judged(line: &str) -> String {
    header::describe(header::classify(ConsoleLine::parse(&sanitize::clean(line)).text))
}

/// What is wrong with the row, if anything.
fn check(row: &Row<'_>) -> Option<String> {
    let line = match console_line(row) {
        Ok(line) => line,
        Err(error) => return Some(error),
    };
    let variants = PREFIXES.iter().map(|prefix| format!("{prefix}{line}")).chain([format!("[   12.345678] {line}\r")]);
    let mut wrong: Vec<(String, String)> = Vec::new();
    for variant in variants {
        let got = format!("{} (starts_report {})", judged(&variant), starts_report(&variant));
        if got != format!("{} (starts_report {})", row.expect, row.expect != "-") {
            wrong.push((got, variant));
        }
    }
    wrong.sort();
    wrong.dedup_by(|next, first| next.0 == first.0);
    let wrong: Vec<String> = wrong.iter().map(|(got, variant)| format!("\n    {got} for {variant:?}")).collect();
    (!wrong.is_empty()).then(|| format!("want {}{}", row.expect, wrong.concat()))
}

#[test]
fn every_format_in_the_table_is_judged_as_it_says() {
    let table = fs::read_to_string(TABLE).expect("testdata/formats.tsv");
    let rows = rows(&table);
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            check(row)
                .map(|what| format!("formats.tsv:{}: {} ({}) {}: {what}", row.line, row.file, row.version, row.format))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} formats are judged wrong:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// The table is meant to hold every kind of report the console can open, each from the 7.3 source.
#[test]
fn the_table_covers_every_console_report_kind_in_7_3() {
    let table = fs::read_to_string(TABLE).expect("testdata/formats.tsv");
    let kinds: Vec<&str> =
        rows(&table).iter().filter(|row| row.version == "7.3").filter_map(|row| row.expect.split(' ').next()).collect();
    for kind in [
        "hard-lockup",
        "soft-lockup",
        "rcu-stall",
        "hung-task",
        "workqueue-lockup",
        "bug",
        "warning",
        "oops",
        "panic",
        "kasan",
        "lockdep",
        "other",
    ] {
        assert!(kinds.contains(&kind), "no 7.3 format in formats.tsv opens a {kind} report");
    }
}

#[test]
fn printf_renders_as_vsprintf() {
    let check = |format: &str, args: &[&str], expect: &str| {
        assert_eq!(printf(format, args).as_deref(), Ok(expect), "{format} {args:?}")
    };
    check("CPU%u: cpu %u\n", &["2", "3"], "CPU2: cpu 3\n");
    check("%d%%", &["-19"], "-19%");
    check("%016lx", &["0x96000005"], "0000000096000005");
    check("0x%08lx", &["0x10"], "0x00000010");
    check("%04lx [#%d]", &["2", "1"], "0002 [#1]");
    check("idle=%04x/%ld/%#lx", &["0xb9c", "1", "0x4000"], "idle=0b9c/1/0x4000");
    check("%8lld|%-4d|", &["42", "7"], "      42|7   |");
    check("%px %p", &["0", "0xa1b2c3d4"], "0000000000000000 00000000a1b2c3d4");
    check("@ %pS, %pSb (%ps)", &["f+0x1/0x2", "g+0x3/0x4 [m]", "h"], "@ f+0x1/0x2, g+0x3/0x4 [m] (h)");
    check("CPUs %*pbl:", &["23-24,30"], "CPUs 23-24,30:");
    check("%s %.*s%s", &["7.3.4", "#1", ""], "7.3.4 #1");
    check("->state=%c", &["I"], "->state=I");
    let fails = |format: &str, args: &[&str]| assert!(printf(format, args).is_err(), "{format} {args:?}");
    fails("%d %d", &["1"]);
    fails("%d", &["1", "2"]);
    fails("%d", &["one"]);
    fails("%u", &["-1"]);
    fails("%c", &["ab"]);
    fails("%f", &["1"]);
}
