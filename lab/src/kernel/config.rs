//! Kconfig fragments and the check that every requested symbol stuck.
//!
//! `olddefconfig` silently drops a symbol whose dependencies are off (SCHED_MM_CID without
//! CGROUPS, LKDTM without RUNTIME_TESTING_MENU): a lab that trusted its fragment would test a
//! kernel without the code under test. So the final `.config` is always compared with the request.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// `Some(value)` for `CONFIG_X=value`, `None` for `# CONFIG_X is not set`.
pub type Symbols = BTreeMap<String, Option<String>>;

pub fn parse_fragment(text: &str) -> Result<Symbols> {
    let mut symbols = Symbols::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            symbols.insert(symbol_name(name, i)?, None);
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let Some((name, value)) = line.split_once('=') {
            symbols.insert(symbol_name(name, i)?, Some(value.to_string()));
        } else {
            bail!("line {}: `{line}` is neither CONFIG_X=value nor `# CONFIG_X is not set`", i + 1);
        }
    }
    Ok(symbols)
}

fn symbol_name(name: &str, line: usize) -> Result<String> {
    match name.strip_prefix("CONFIG_") {
        Some(rest) if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Ok(name.to_string())
        }
        _ => bail!("line {}: `{name}` is not a CONFIG_ symbol", line + 1),
    }
}

/// Symbols whose final value differs from the request, as `(symbol, wanted, got)`.
pub fn mismatches(requested: &Symbols, final_config: &str) -> Vec<(String, String, String)> {
    let actual = parse_fragment(final_config).unwrap_or_default();
    let show = |v: Option<&Option<String>>| match v {
        Some(Some(value)) => value.clone(),
        _ => "not set".to_string(),
    };
    requested
        .iter()
        .filter(|(name, wanted)| {
            let got = actual.get(*name).cloned().flatten();
            got != **wanted
        })
        .map(|(name, wanted)| (name.clone(), show(Some(wanted)), show(actual.get(name))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fragment: &str, final_config: &str, expect: &[&str]) {
        let got: Vec<String> = mismatches(&parse_fragment(fragment).unwrap(), final_config)
            .into_iter()
            .map(|(n, w, g)| format!("{n} wanted {w} got {g}"))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn requested_symbols_must_stick() {
        check("CONFIG_A=y\n", "CONFIG_A=y\n", &[]);
        check(
            "CONFIG_SCHED_MM_CID=y\n",
            "# CONFIG_SCHED_MM_CID is not set\n",
            &["CONFIG_SCHED_MM_CID wanted y got not set"],
        );
        check("CONFIG_LKDTM=y\n", "CONFIG_DEBUG_FS=y\n", &["CONFIG_LKDTM wanted y got not set"]);
        check("# CONFIG_A is not set\n", "", &[]);
        check("# CONFIG_A is not set\n", "CONFIG_A=y\n", &["CONFIG_A wanted not set got y"]);
        check("CONFIG_T=21\n", "CONFIG_T=60\n", &["CONFIG_T wanted 21 got 60"]);
        check("CONFIG_S=\"x\"\n", "CONFIG_S=\"x\"\n", &[]);
    }

    #[test]
    fn fragment_syntax_errors_give_the_line() {
        for (text, expect) in [
            ("CONFIG_A=y\nSCHED=y\n", "line 2: `SCHED` is not a CONFIG_ symbol"),
            ("CONFIG_A y\n", "line 1: `CONFIG_A y` is neither"),
            ("# CONFIG_ is not set\n", "line 1"),
        ] {
            let err = parse_fragment(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
        }
    }
}
