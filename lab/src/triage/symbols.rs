//! Kernel text symbols from `System.map`: addresses the host read out of a guest become
//! `function+0xoff`, in process (no `addr2line`, no `nm` on the host's PATH).

use std::path::Path;

use anyhow::{Context, Result};

pub struct Symbols {
    /// Text symbols sorted by address.
    functions: Vec<(u64, String)>,
    /// The end of kernel text (`_etext`, or `_einittext` where init text follows it, as on
    /// powerpc): an address past it is data, a module or user space.
    text_end: u64,
}

/// A code address named: the function it lies in and how far into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location<'a> {
    pub function: &'a str,
    pub offset: u64,
}

impl Symbols {
    pub fn load(system_map: &Path) -> Result<Symbols> {
        let text =
            std::fs::read_to_string(system_map).with_context(|| format!("cannot read {}", system_map.display()))?;
        let symbols = Symbols::parse(&text);
        anyhow::ensure!(!symbols.functions.is_empty(), "{} lists no text symbols", system_map.display());
        Ok(symbols)
    }

    /// `nm -n` lines: `ffffffff81000000 T _stext`. Lines that are not symbols are skipped.
    pub fn parse(text: &str) -> Symbols {
        let mut functions = Vec::new();
        let mut text_end = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            let Ok(address) = u64::from_str_radix(address, 16) else {
                continue;
            };
            if name == "_etext" || name == "_einittext" {
                text_end = text_end.max(Some(address));
            } else if matches!(kind, "t" | "T" | "w" | "W") {
                functions.push((address, name.to_string()));
            }
        }
        functions.sort();
        Symbols { functions, text_end: text_end.unwrap_or(u64::MAX) }
    }

    /// The function an instruction address lies in.
    pub fn locate(&self, address: u64) -> Option<Location<'_>> {
        if address >= self.text_end {
            return None;
        }
        let index = self.functions.partition_point(|(start, _)| *start <= address).checked_sub(1)?;
        let (start, function) = &self.functions[index];
        Some(Location { function, offset: address - start })
    }

    /// The function a return address returns into. A call as a function's last instruction (to a
    /// `noreturn` callee) leaves a return address just past its end: look up the call itself.
    pub fn locate_return(&self, address: u64) -> Option<Location<'_>> {
        let call = self.locate(address.checked_sub(1)?)?;
        Some(Location { offset: call.offset + 1, ..call })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81062080 T default_idle
ffffffff810620d0 t start_secondary
ffffffff810621af T cpu_coregroup_mask
ffffffff81294800 T queued_spin_lock_slowpath
ffffffff81300000 T _etext
ffffffff81400000 D some_data
";

    fn check(address: u64, ret: bool, expect: &str) {
        let symbols = Symbols::parse(MAP);
        let location = if ret { symbols.locate_return(address) } else { symbols.locate(address) };
        let got = location.map(|l| format!("{}+{:#x}", l.function, l.offset)).unwrap_or_else(|| "-".into());
        assert_eq!(got, expect, "{address:#x}");
    }

    #[test]
    fn locations() {
        check(0xffffffff81062093, false, "default_idle+0x13");
        check(0xffffffff81294871, false, "queued_spin_lock_slowpath+0x71");
        check(0xffffffff810621af, false, "cpu_coregroup_mask+0x0");
        // start_secondary ends in a noreturn call: its return address is the next function's start.
        check(0xffffffff810621af, true, "start_secondary+0xdf");
        check(0xffffffff81300010, false, "-");
        check(0x401000, false, "-");
        check(0, true, "-");
    }
}
