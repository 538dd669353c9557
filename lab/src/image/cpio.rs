//! A minimal writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Written in-process rather than with `cpio`/`gen_init_cpio` so the image needs no host tool and
//! is byte-for-byte reproducible (fixed owners, modes and mtimes).

pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

impl Archive {
    pub fn new() -> Archive {
        Archive { bytes: Vec::new(), next_ino: 1 }
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, S_IFDIR | mode, 2, (0, 0), &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, 1, (0, 0), data);
    }

    /// The kernel's unpacker creates the link as written: `target` may be relative to its directory.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | mode, 1, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newc header fields written out by hand from the format's definition: magic, then
    /// ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
    #[test]
    fn newc_layout() {
        let mut a = Archive::new();
        a.file("/init", 0o755, b"hi");
        a.char_device("/dev/console", 0o600, 5, 1);
        a.symlink("/bin/sh", "busybox");
        let bytes = a.finish();
        let header = |ino: &str, mode: &str, nlink: &str, size: &str, rdev: (&str, &str), namesize: &str| {
            format!(
                "070701{ino}{mode}0000000000000000{nlink}00000000{size}0000000000000000{}{}{namesize}00000000",
                rdev.0, rdev.1
            )
        };
        let mut expect =
            header("00000001", "000081ed", "00000001", "00000002", ("00000000", "00000000"), "00000005").into_bytes();
        expect.extend_from_slice(b"init\0"); // 110 + 5 = 115: pad to 116
        expect.push(0);
        expect.extend_from_slice(b"hi\0\0");
        expect.extend(
            header("00000002", "00002180", "00000001", "00000000", ("00000005", "00000001"), "0000000c").into_bytes(),
        );
        expect.extend_from_slice(b"dev/console\0"); // 110 + 12 = 122: pad to 124
        expect.extend_from_slice(b"\0\0");
        expect.extend(
            header("00000003", "0000a1ff", "00000001", "00000007", ("00000000", "00000000"), "00000007").into_bytes(),
        );
        expect.extend_from_slice(b"bin/sh\0"); // 110 + 7 = 117: pad to 120
        expect.extend_from_slice(b"\0\0\0");
        expect.extend_from_slice(b"busybox\0"); // the target, 7 bytes: pad to 8
        expect.extend(
            header("00000004", "00000000", "00000001", "00000000", ("00000000", "00000000"), "0000000b").into_bytes(),
        );
        expect.extend_from_slice(b"TRAILER!!!\0"); // 110 + 11 = 121: pad to 124
        expect.extend_from_slice(b"\0\0\0");
        assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&expect));
    }
}
