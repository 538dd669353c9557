//! Source lines for kernel frames, from the DWARF in the cell's `vmlinux`: `func+0xoff/0xsize`
//! becomes `func (kernel/sched/core.c:1234)`, with every function inlined at that address, like
//! the kernel's `scripts/faddr2line`, but in process: the file is mapped once and each frame is a
//! lookup (gimli through addr2line), not a child process.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, Range};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use gimli::Reader as _;
use object::{Object, ObjectSection, ObjectSymbol};

use super::{FrameSite, Report};

/// One function at a code address, innermost first: the inlined callees, then the function the
/// kernel named (which `scripts/faddr2line` prints last, as "inlined by").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceLine {
    pub function: String,
    /// Relative to the kernel tree (`kernel/sched/core.c`) when the path lies inside it.
    pub file: String,
    pub line: u32,
}

impl fmt::Display for SourceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}:{})", self.function, self.file, self.line)
    }
}

pub struct DebugInfo {
    context: addr2line::Context<Reader>,
    /// Text symbols by name: static functions share names, so a name may have several
    /// (address, size) pairs; the printed size tells them apart, as in `faddr2line`.
    functions: HashMap<String, Vec<(u64, u64)>>,
    /// Where relative source paths start: the kernel tree (the parent of an `O=` build directory
    /// inside it, as the lab builds, or the build directory itself for an in-tree build).
    roots: Vec<PathBuf>,
}

impl DebugInfo {
    /// `Ok(None)` when the file is a kernel without debug info (`CONFIG_DEBUG_INFO` off): frames
    /// then keep their function names only.
    pub fn load(vmlinux: &Path) -> Result<Option<DebugInfo>> {
        let file = std::fs::File::open(vmlinux).with_context(|| format!("cannot open {}", vmlinux.display()))?;
        // SAFETY: the lab's kernel cache is written once and renamed into place; a vmlinux that a
        // user rewrites while it is read gives wrong lines, never unsoundness beyond that file.
        let map = Arc::new(
            unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", vmlinux.display()))?,
        );
        let elf = object::File::parse(&**map).with_context(|| format!("{} is not an ELF file", vmlinux.display()))?;
        let Some(debug_info) = elf.section_by_name(".debug_info") else {
            return Ok(None);
        };
        let compressed =
            debug_info.compressed_file_range().map(|range| range.format != object::CompressionFormat::None);
        anyhow::ensure!(
            compressed == Ok(false),
            "{} has compressed debug info (CONFIG_DEBUG_INFO_COMPRESSED_*), which the lab reads in place only \
             uncompressed: rebuild with CONFIG_DEBUG_INFO_COMPRESSED_NONE=y, or decompress it with \
             `objcopy --decompress-debug-sections`",
            vmlinux.display()
        );
        let endian = match elf.is_little_endian() {
            true => gimli::RunTimeEndian::Little,
            false => gimli::RunTimeEndian::Big,
        };
        let section = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            let range = elf
                .section_by_name(id.name())
                .and_then(|section| section.file_range())
                .map(|(start, size)| start as usize..(start + size) as usize)
                .filter(|range| range.end <= map.len())
                .unwrap_or(0..0);
            Ok(Reader::new(Section { map: Arc::clone(&map), range }, endian))
        };
        let dwarf = gimli::Dwarf::load(section)
            .with_context(|| format!("cannot read the DWARF sections of {}", vmlinux.display()))?;
        let roots = source_roots(&dwarf);
        let context = addr2line::Context::from_dwarf(dwarf)
            .with_context(|| format!("cannot index the DWARF of {}", vmlinux.display()))?;
        let mut functions: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for symbol in elf.symbols().filter(|symbol| symbol.kind() == object::SymbolKind::Text) {
            if let Ok(name) = symbol.name() {
                functions.entry(name.to_owned()).or_default().push((symbol.address(), symbol.size()));
            }
        }
        Ok(Some(DebugInfo { context, functions, roots }))
    }

    /// Every text symbol with its address and size (for the bench).
    pub fn functions(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.functions
            .iter()
            .flat_map(|(name, places)| places.iter().map(move |&(address, size)| (name.as_str(), address, size)))
    }

    /// Fills in the source lines of every printed frame: each report's guilty frame and its stacks.
    pub fn symbolize(&self, reports: &mut [Report]) {
        let sites = reports.iter_mut().flat_map(|report| {
            report.frame_site.iter_mut().chain(report.stacks.iter_mut().flat_map(|stack| &mut stack.sites))
        });
        for site in sites {
            site.source = self.locate_site(site);
        }
    }

    /// The function a printed return address returns into, when its source says it is not the
    /// printed one: at offset 0 (a call to a noreturn function as its caller's last instruction),
    /// `%pS` names the next function.
    pub fn caller_behind(&self, site: &FrameSite) -> Option<String> {
        let (printed, _, _) = parse_printed(&site.printed)?;
        let caller = self.locate_site(site).pop()?.function;
        (site.return_address && caller != printed).then_some(caller)
    }

    fn locate_site(&self, site: &FrameSite) -> Vec<SourceLine> {
        match (site.address, parse_printed(&site.printed)) {
            (Some(address), Some((function, _, _))) => {
                self.locate_address(call_site(address, site.return_address), function)
            }
            (None, Some((function, offset, size))) => self.locate(function, offset, size, site.return_address),
            (_, None) => Vec::new(),
        }
    }

    /// The source of `function+offset` (`size`: the `/0x...` the kernel printed, which picks among
    /// static functions of the same name, and tells a log from another build: no function of that
    /// size, no lines, as `faddr2line` refuses a size mismatch). A return address is looked up one
    /// byte back, in the call instruction: the address after it may already belong to the next
    /// line, to no inlined callee at all, or (at offset 0, after a call that does not return) to
    /// the next function, whose name the kernel then printed. Empty when the symbol or its lines
    /// are unknown.
    pub fn locate(&self, function: &str, offset: u64, size: Option<u64>, return_address: bool) -> Vec<SourceLine> {
        let Some(candidates) = self.functions.get(function) else {
            return Vec::new();
        };
        // A static function in a header has a copy in every unit that did not inline it
        // (`__rcu_read_lock` about a hundred times), and the printed name cannot say which ran.
        // Copies of one source give the same lines; when they do not, no lines beat a guess.
        let mut answers = candidates
            .iter()
            .filter(|&&(_, symbol_size)| size.is_none_or(|size| size == symbol_size))
            .map(|&(start, _)| self.locate_address(call_site(start + offset, return_address), function));
        let Some(first) = answers.next() else {
            return Vec::new();
        };
        match answers.all(|other| other == first) {
            true => first,
            false => Vec::new(),
        }
    }

    /// The source at one code address (no return-address adjustment). `function`: the printed
    /// name, for the outermost frame when the DWARF has a line there but no subprogram (a 4-byte
    /// stub such as arm64's `do_sme_acc`).
    pub fn locate_address(&self, address: u64, function: &str) -> Vec<SourceLine> {
        let Ok(mut frames) = self.context.find_frames(address).skip_all_loads() else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        while let Ok(Some(frame)) = frames.next() {
            let name = frame.function.as_ref().and_then(|name| name.raw_name().ok()).map(|name| name.into_owned());
            let Some((Some(file), Some(line))) = frame.location.map(|location| (location.file, location.line)) else {
                continue;
            };
            lines.push(SourceLine { function: name.unwrap_or_default(), file: self.relative(file), line });
        }
        if let Some(outermost) = lines.last_mut().filter(|line| line.function.is_empty()) {
            outermost.function = function.to_owned();
        }
        lines.retain(|line| !line.function.is_empty());
        lines
    }

    fn relative(&self, file: &str) -> String {
        let path = normalize(Path::new(file));
        self.roots.iter().find_map(|root| path.strip_prefix(root).ok()).unwrap_or(&path).to_string_lossy().into_owned()
    }
}

/// Where to look up a frame: a return address one byte back, in its call (see `locate`).
fn call_site(address: u64, return_address: bool) -> u64 {
    match return_address {
        true => address.saturating_sub(1),
        false => address,
    }
}

/// `func+0xoff/0xsize` (the kernel's `%pS`) or `func+0xoff` (the host's samples).
fn parse_printed(printed: &str) -> Option<(&str, u64, Option<u64>)> {
    let (function, address) = printed.split_once("+0x")?;
    let (offset, size) = match address.split_once("/0x") {
        Some((offset, size)) => (offset, Some(u64::from_str_radix(size, 16).ok()?)),
        None => (address, None),
    };
    Some((function, u64::from_str_radix(offset, 16).ok()?, size))
}

/// What paths are made relative to, deepest first: each unit's build directory (files Kbuild
/// generated there) and the kernel tree it compiled from. Kbuild compiles in the build directory
/// and names the source `$(srctree)/path`: `path` in an in-tree build, `../path` with the lab's
/// build directories inside the tree, an absolute path with `O=` elsewhere, where the unit every
/// Kbuild vmlinux has, `init/main.c`, says where the tree is. Units differ: a patched variant's
/// recompiled units come from its own copy of the tree, the rest from the tree it was copied from.
fn source_roots(dwarf: &gimli::Dwarf<Reader>) -> Vec<PathBuf> {
    const MARKER: &str = "init/main.c";
    let mut roots = std::collections::BTreeSet::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else { continue };
        let text = |attribute: &Option<Reader>| {
            attribute.as_ref().and_then(|r| r.to_string_lossy().ok()).map(|s| s.into_owned())
        };
        let (Some(name), Some(comp_dir)) = (text(&unit.name), text(&unit.comp_dir)) else { continue };
        let (name, comp_dir) = (Path::new(&name), normalize(Path::new(&comp_dir)));
        if name.is_relative() {
            let up = name.components().take_while(|c| *c == Component::ParentDir).count();
            roots.extend(comp_dir.ancestors().nth(up).map(Path::to_path_buf));
        } else if name.ends_with(MARKER) {
            roots.extend(name.ancestors().nth(Path::new(MARKER).components().count()).map(normalize));
        }
        roots.insert(comp_dir);
    }
    let mut roots: Vec<PathBuf> = roots.into_iter().collect();
    roots.sort_by_key(|root| std::cmp::Reverse(root.components().count()));
    roots
}

/// `a/b/../c` is `a/c`, without asking the file system (the tree need not exist on this host).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir if normal.file_name().is_some() => {
                normal.pop();
            }
            Component::ParentDir if normal.has_root() => {}
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// A DWARF section borrowed from the mapped file, so gimli reads it in place without a copy.
#[derive(Clone)]
struct Section {
    map: Arc<memmap2::Mmap>,
    range: Range<usize>,
}

impl Deref for Section {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Section({:?})", self.range)
    }
}

// SAFETY: the bytes live in the mapping the Arc keeps alive; moving or cloning a Section moves
// the Arc, never the mapping, so the slice it derefs to stays put.
unsafe impl stable_deref_trait::StableDeref for Section {}
unsafe impl stable_deref_trait::CloneStableDeref for Section {}

type Reader = gimli::EndianReader<gimli::RunTimeEndian, Section>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A function inlined into another, with a symbol at an instruction inside the inlined body;
    /// a function whose last instruction calls a noreturn one, right before another function.
    const INLINED: &str = "\
static inline __attribute__((always_inline)) int add_one(int x)
{
	__asm__ volatile(\".globl lab_marker\\nlab_marker: nop\");
	return x + 1;
}

__attribute__((noinline)) int outer(int x)
{
	return add_one(x) * 3;
}

void _start(void)
{
	outer(1);
	for (;;)
		;
}

__attribute__((noreturn, noinline)) void stop(void)
{
	for (;;)
		__asm__ volatile(\"\");
}

__attribute__((noinline)) void gives_up(void)
{
	stop();
}

__attribute__((noinline)) void next_door(void)
{
	__asm__ volatile(\"nop\");
}
";

    /// Builds `INLINED` with the host's C compiler, as Kbuild builds a kernel (`-O2 -g`, and
    /// functions packed as arm64's are, so that `next_door` starts where `gives_up` ends), and
    /// returns the directory, the executable and the offset of `lab_marker` in `outer`.
    fn build(dwarf: &str) -> (PathBuf, PathBuf, u64) {
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lab-debuginfo-{}-{build}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("inlined.c"), INLINED).unwrap();
        let status = std::process::Command::new("cc")
            .current_dir(&dir)
            .args([
                "-O2",
                dwarf,
                "-fno-align-functions",
                "-nostdlib",
                "-static",
                "-fno-pie",
                "-no-pie",
                "-o",
                "inlined",
                "inlined.c",
            ])
            .status()
            .expect("the host C compiler (cc) runs");
        assert!(status.success(), "cc failed on inlined.c");
        let exe = dir.join("inlined");
        let bytes = std::fs::read(&exe).unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        let address = |name: &str| elf.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address()).unwrap();
        let offset = address("lab_marker") - address("outer");
        (dir, exe, offset)
    }

    fn render(lines: &[SourceLine]) -> String {
        lines.iter().map(ToString::to_string).collect::<Vec<_>>().join(" < ")
    }

    #[test]
    fn inlined_functions_come_out_innermost_first() {
        for dwarf in ["-gdwarf-4", "-gdwarf-5"] {
            let (dir, exe, offset) = build(dwarf);
            let debug = DebugInfo::load(&exe).unwrap().expect("built with -g");
            let lines = debug.locate("outer", offset, None, false);
            assert_eq!(render(&lines), "add_one (inlined.c:3) < outer (inlined.c:9)", "{dwarf}");
            // The same address as the return address of a call one byte further on.
            assert_eq!(render(&debug.locate("outer", offset + 1, None, true)), render(&lines), "{dwarf}");
            assert_eq!(render(&debug.locate("no_such_function", 0, None, false)), "", "{dwarf}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn symbolize_fills_the_guilty_frame_and_the_stacks() {
        let (dir, exe, offset) = build("-g");
        let debug = DebugInfo::load(&exe).unwrap().unwrap();
        let size = debug.functions["outer"][0].1;
        let log = format!("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [t:1]\nRIP: 0010:outer+{offset:#x}/{size:#x}\n _start+0x1/0x2\n");
        let mut reports = super::super::triage(log.as_bytes(), Some(&debug));
        debug.symbolize(&mut reports);
        let site = reports[0].frame_site.as_ref().expect("the guilty frame was printed");
        assert_eq!(render(&site.source), "add_one (inlined.c:3) < outer (inlined.c:9)");
        assert_eq!(reports[0].stacks[0].sites[0], *site);
        assert!(reports[0].stacks[0].sites[1].return_address);
        // A size no `outer` has: the log is from another build, whose lines these are not.
        assert_eq!(render(&debug.locate("outer", offset, Some(size + 1), false)), "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_return_address_at_the_next_functions_start_is_named_after_its_caller() {
        let (dir, exe, _) = build("-g");
        let debug = DebugInfo::load(&exe).unwrap().unwrap();
        let size = |name: &str| debug.functions[name][0].1;
        // As arm64 prints a panic() that ends its caller: the return address is the next function's.
        let log = |note: &str| {
            format!(
                "Kernel panic - not syncing: gave up\nCall trace:\n show_stack+0x14/0x1c (C)\n vpanic+0x274/0x338\n \
                 next_door+0x0/{:#x}{note}\n _start+0x5/{:#x}\n",
                size("next_door"),
                size("_start"),
            )
        };
        let judged = |note: &str, debug: Option<&DebugInfo>| {
            let report = super::super::triage(log(note).as_bytes(), debug).remove(0);
            (report.signature, report.frame_site.map(|site| site.printed))
        };
        let printed = format!("next_door+0x0/{:#x}", size("next_door"));
        assert_eq!(judged("", Some(&debug)), ("panic:gives_up".to_owned(), Some(printed.clone())));
        // Without the debug info the neighbour's name is passed over, never taken for the caller.
        assert_eq!(judged("", None).0, "panic:_start");
        assert_eq!(
            super::super::triage(log("").as_bytes(), None)[0].stacks[0].frames,
            ["show_stack", "vpanic", "_start"]
        );
        // arm64's "(P)" is the interrupted pc itself: at offset 0 it is the function's first instruction.
        assert_eq!(judged(" (P)", Some(&debug)), ("panic:next_door".to_owned(), Some(printed)));
        let mut reports = super::super::triage(log("").as_bytes(), Some(&debug));
        debug.symbolize(&mut reports);
        let source = &reports[0].frame_site.as_ref().unwrap().source;
        assert_eq!(source.last().map(|line| line.function.as_str()), Some("gives_up"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_without_debug_info_is_none() {
        let (dir, exe, _) = build("-g0");
        assert!(DebugInfo::load(&exe).unwrap().is_none());
        let err = DebugInfo::load(&dir.join("inlined.c")).err().unwrap();
        assert!(format!("{err:#}").contains("is not an ELF file"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compressed_debug_info_is_refused_with_the_fix() {
        let (dir, exe, _) = build("-g");
        let squeezed = dir.join("squeezed");
        let status = std::process::Command::new("objcopy")
            .arg("--compress-debug-sections=zlib")
            .arg(&exe)
            .arg(&squeezed)
            .status()
            .unwrap();
        assert!(status.success());
        let err = DebugInfo::load(&squeezed).err().expect("compressed DWARF is refused");
        assert!(format!("{err:#}").contains("objcopy --decompress-debug-sections"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn printed_frames() {
        assert_eq!(parse_printed("mm_get_cid+0x5c/0x60"), Some(("mm_get_cid", 0x5c, Some(0x60))));
        assert_eq!(parse_printed("mm_get_cid+0x5c"), Some(("mm_get_cid", 0x5c, None)));
        assert_eq!(parse_printed("mm_get_cid"), None);
        assert_eq!(parse_printed("?"), None);
    }

    #[test]
    fn normalize_resolves_parent_directories_lexically() {
        let check = |path: &str, expect: &str| assert_eq!(normalize(Path::new(path)), Path::new(expect), "{path}");
        check("/t/src/o-x86_64-1/../kernel/sched/core.c", "/t/src/kernel/sched/core.c");
        check("/t/src/o-x86_64-1/./include/generated/bounds.h", "/t/src/o-x86_64-1/include/generated/bounds.h");
        check("../kernel/fork.c", "../kernel/fork.c");
        check("/../a", "/a");
    }
}
