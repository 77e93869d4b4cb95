//! A small writer for the `newc` cpio format, the format the Linux kernel unpacks as an
//! initramfs (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Paths are written relative (`bin/busybox`, never `/bin/busybox`); a leading `/` is accepted
//! and removed. Parent directories are emitted automatically (mode 0755) before their first
//! entry, because the kernel does not create them. All entries are owned by root with mtime 0, so
//! the same input gives the same archive.
//!
//! ```
//! use virtkit_testkit::cpio::CpioWriter;
//! let mut w = CpioWriter::new(Vec::new());
//! w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
//! w.symlink("bin/sh", "/bin/busybox").unwrap();
//! w.char_device("dev/console", 0o600, 5, 1).unwrap();
//! let archive: Vec<u8> = w.finish().unwrap();
//! assert!(archive.starts_with(b"070701"));
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a `newc` archive into `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: HashSet<String>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Normalizes an archive path: strips leading `/` and `./`, rejects empty paths and `..`.
pub fn normalize(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid(format!("cpio path {path:?} contains '..'"))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid(format!("cpio path {path:?} names no file")));
    }
    Ok(parts.join("/"))
}

impl<W: Write> CpioWriter<W> {
    /// A writer that appends entries to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            dirs: HashSet::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = ((4 - self.written % 4) % 4) as usize;
        self.put(&[0u8; 3][..n])
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| invalid(format!("{name}: {size} bytes is too big for cpio newc")))?;
        let nlink = if mode & 0o170_000 == S_IFDIR { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {maj:08X}{min:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.put(hdr.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// Emits the directories above `path` that were not emitted yet.
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let dir = &path[..end + i];
            if !self.dirs.contains(dir) {
                let dir = dir.to_string();
                self.header(&dir, S_IFDIR | 0o755, 0, (0, 0))?;
                self.dirs.insert(dir);
            }
            end += i + 1;
        }
        Ok(())
    }

    /// A directory (and its parents). Adding the same directory twice writes it once.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.header(&path, S_IFDIR | (mode & 0o7777), 0, (0, 0))?;
        }
        Ok(())
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.file_from_reader(path, mode, data.len() as u64, data)
    }

    /// A regular file whose `size` bytes are read from `reader`; fails if it has fewer.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        reader: impl Read,
    ) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.header(&path, S_IFREG | (mode & 0o7777), size, (0, 0))?;
        let copied = io::copy(&mut reader.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {copied} (file changed?)"),
            ));
        }
        self.pad()
    }

    /// A regular file with the contents and permission bits of the host file `src` (symlinks
    /// are followed).
    pub fn file_from_path(&mut self, path: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let f = File::open(src)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(invalid(format!("{} is not a regular file", src.display())));
        }
        self.file_from_reader(path, meta.permissions().mode(), meta.len(), f)
    }

    /// A symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.header(&path, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        self.header(&path, S_IFCHR | (mode & 0o7777), 0, (major, minor))
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The regular files of concatenated `newc` archives (an initramfs decompressed) whose base
/// names are in `names`, as (base name, data); archives are separated by zero padding, as the
/// kernel allows. Stops at the first malformed header.
pub fn extract_by_name(data: &[u8], names: &[&str]) -> Vec<(String, Vec<u8>)> {
    let field = |at: usize, i: usize| -> Option<usize> {
        let text = std::str::from_utf8(data.get(at + 6 + 8 * i..at + 14 + 8 * i)?).ok()?;
        usize::from_str_radix(text, 16).ok()
    };
    let mut found = Vec::new();
    let mut at = 0;
    while at + 110 <= data.len() {
        if &data[at..at + 6] != b"070701" {
            if data[at] == 0 {
                at += 1;
                continue;
            }
            break;
        }
        let (Some(mode), Some(size), Some(name_len)) = (field(at, 1), field(at, 6), field(at, 11)) else {
            break;
        };
        let name_at = at + 110;
        let data_at = (name_at + name_len).next_multiple_of(4);
        let Some(name) = data.get(name_at..name_at + name_len.saturating_sub(1)) else {
            break;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let Some(body) = data.get(data_at..data_at + size) else {
            break;
        };
        let base = name.rsplit('/').next().unwrap_or("");
        if mode & 0o170_000 == S_IFREG as usize && names.contains(&base) {
            found.push((base.to_owned(), body.to_vec()));
        }
        at = (data_at + size).next_multiple_of(4);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"#!/bin/sh\necho hello\n").unwrap();
        w.dir("etc/empty", 0o700).unwrap();
        w.file("usr/share/data/abc", 0o644, b"abc").unwrap();
        w.file("usr/share/data/empty", 0o644, b"").unwrap();
        w.symlink("bin/sh", "/bin/busybox").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.finish().unwrap()
    }

    /// One parsed entry: (name, mode, rdev, data).
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back.
    fn parse(mut a: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut off = 0usize;
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
        };
        loop {
            assert_eq!(&a[..6], b"070701", "bad magic at offset {off}");
            let h = &a[..110];
            let mode = field(h, 1);
            let size = field(h, 6) as usize;
            let rdev = (field(h, 9), field(h, 10));
            let namesize = field(h, 11) as usize;
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0);
            let data_off = (110 + namesize).div_ceil(4) * 4;
            let data = a[data_off..data_off + size].to_vec();
            let next = (data_off + size).div_ceil(4) * 4;
            a = &a[next..];
            off += next;
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "bytes after the trailer");
                assert_eq!(off % 4, 0);
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn layout_and_parents() {
        let entries = parse(&sample());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "etc",
                "etc/empty",
                "usr",
                "usr/share",
                "usr/share/data",
                "usr/share/data/abc",
                "usr/share/data/empty",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("init").1, 0o100_755);
        assert_eq!(get("init").3, b"#!/bin/sh\necho hello\n");
        assert_eq!(get("etc/empty").1, 0o040_700);
        assert_eq!(get("usr").1, 0o040_755);
        assert_eq!(get("bin/sh").1, 0o120_777);
        assert_eq!(get("bin/sh").3, b"/bin/busybox");
        assert_eq!(get("dev/console").1, 0o020_600);
        assert_eq!(get("dev/console").2, (5, 1));
    }

    #[test]
    fn rejects_bad_paths() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
        assert_eq!(normalize("//a/./b/").unwrap(), "a/b");
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.file_from_reader("f", 0o644, 10, &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn deterministic() {
        assert_eq!(sample(), sample());
    }

    /// Round trip through GNU cpio, when it is installed: it must list and extract the archive.
    #[test]
    fn gnu_cpio_round_trip() {
        if Command::new("cpio").arg("--version").output().is_err() {
            crate::skip("cpio (GNU cpio) not installed");
            return;
        }
        let archive = sample();
        let run = |args: &[&str], dir: Option<&Path>| {
            let mut cmd = Command::new("cpio");
            cmd.args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(d) = dir {
                cmd.current_dir(d);
            }
            let mut child = cmd.spawn().unwrap();
            child.stdin.take().unwrap().write_all(&archive).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "cpio {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let listing = run(&["-t", "--quiet"], None);
        let names: Vec<&str> = listing.lines().collect();
        assert!(names.contains(&"init"), "{listing}");
        assert!(names.contains(&"usr/share/data/abc"), "{listing}");
        assert!(names.contains(&"dev/console"), "{listing}");
        assert!(names.contains(&"bin/sh"), "{listing}");

        let dir = std::env::temp_dir().join(format!("virtkit-cpio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Extract everything but the device node (mknod may be refused).
        run(
            &[
                "-i",
                "-d",
                "--quiet",
                "--no-absolute-filenames",
                "-f",
                "dev/console",
            ],
            Some(&dir),
        );
        assert_eq!(
            std::fs::read(dir.join("init")).unwrap(),
            b"#!/bin/sh\necho hello\n"
        );
        assert_eq!(std::fs::read(dir.join("usr/share/data/abc")).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_link(dir.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
