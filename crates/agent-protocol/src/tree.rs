//! Files, directories and symbolic links streamed as frames (`cp` both ways), in bounded
//! memory: the sender walks the tree depth first and sends each item as an `entry` frame (JSON
//! [`Entry`]), a file's contents as `data` frames after it, and `end` after the last; the
//! receiver creates each item as it comes. Permission bits are kept (not owners: the receiver
//! owns what it creates); links are copied as links, never followed.
//!
//! The receiver places the tree like `cp -r`: into `dest/NAME` when `dest` is a directory,
//! else as `dest`, whose parent directory must exist. It refuses entry paths that are absolute,
//! hold `..` or lead through a link it created, so a hostile sender cannot write outside the
//! destination.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{ErrorKind, Frame, FrameError, FrameReader, FrameWriter};

/// How much of a file one `data` frame carries.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One item of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated; empty for the root itself.
    pub path: String,
    /// The root's own name (its last path component); only on the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: Kind,
    /// Permission bits (`0o7777` at most).
    #[serde(default)]
    pub mode: u32,
    /// A file's length: exactly this many bytes of `data` follow.
    #[serde(default)]
    pub size: u64,
    /// A link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    pub fn parse(json: &[u8]) -> Result<Entry, TreeError> {
        serde_json::from_slice(json).map_err(|e| TreeError::Protocol(format!("a bad entry: {e}")))
    }
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("the directory {} does not exist; create it first", .0.display())]
    MissingDirectory(PathBuf),
    #[error("{} is not a file, directory or symbolic link", .0.display())]
    Unsupported(PathBuf),
    #[error("the name {} is not UTF-8 text", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot copy {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the other side broke the copy protocol: {0}")]
    Protocol(String),
    #[error("the connection failed during the copy")]
    Frame(#[from] FrameError),
    #[error("the connection failed during the copy")]
    Send(#[source] io::Error),
    /// The other side sent an `error` frame.
    #[error("{1}")]
    Remote(ErrorKind, String),
}

impl TreeError {
    /// The kind to send in an `error` frame.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TreeError::NotFound(_) => ErrorKind::NotFound,
            TreeError::MissingDirectory(_) => ErrorKind::NoSuchDirectory,
            TreeError::Protocol(_) => ErrorKind::BadRequest,
            TreeError::Remote(kind, _) => *kind,
            _ => ErrorKind::Other,
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn utf8(path: &Path, s: &std::ffi::OsStr) -> Result<String, TreeError> {
    s.to_str()
        .map(str::to_owned)
        .ok_or_else(|| TreeError::NotUtf8(path.to_owned()))
}

/// What a copy moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    pub entries: u64,
    pub bytes: u64,
}

/// Sends the tree at `src` (a file, directory or link), then `end`.
pub fn send_tree<W: Write>(src: &Path, w: &mut FrameWriter<W>) -> Result<CopyReport, TreeError> {
    let meta = fs::symlink_metadata(src).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            TreeError::NotFound(src.to_owned())
        } else {
            TreeError::Io {
                path: src.to_owned(),
                source: e,
            }
        }
    })?;
    let name = match src.file_name() {
        Some(n) => utf8(src, n)?,
        // `/` or `..`: the tree is called after the directory it names.
        None => {
            let real = fs::canonicalize(src).map_err(io_at(src))?;
            real.file_name()
                .map(|n| utf8(src, n))
                .transpose()?
                .unwrap_or_else(|| "root".into())
        }
    };
    let mut report = CopyReport::default();
    send_item(src, String::new(), Some(name), &meta, w, &mut report)?;
    w.write(&Frame::End).map_err(TreeError::Send)?;
    Ok(report)
}

fn send_item<W: Write>(
    path: &Path,
    rel: String,
    name: Option<String>,
    meta: &fs::Metadata,
    w: &mut FrameWriter<W>,
    report: &mut CopyReport,
) -> Result<(), TreeError> {
    let ft = meta.file_type();
    let mut entry = Entry {
        path: rel.clone(),
        name,
        kind: Kind::File,
        mode: meta.permissions().mode() & 0o7777,
        size: 0,
        target: None,
    };
    report.entries += 1;
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_at(path))?;
        entry.kind = Kind::Symlink;
        entry.target = Some(utf8(path, target.as_os_str())?);
        send_entry(w, &entry)
    } else if ft.is_dir() {
        entry.kind = Kind::Dir;
        send_entry(w, &entry)?;
        let mut children = Vec::new();
        for child in fs::read_dir(path).map_err(io_at(path))? {
            let child = child.map_err(io_at(path))?;
            children.push(child.file_name());
        }
        children.sort();
        for child in children {
            let child_path = path.join(&child);
            let child_name = utf8(&child_path, &child)?;
            let child_rel = if rel.is_empty() {
                child_name
            } else {
                format!("{rel}/{child_name}")
            };
            // Gone since it was listed: skip it, as tar does.
            let Ok(child_meta) = fs::symlink_metadata(&child_path) else {
                continue;
            };
            send_item(&child_path, child_rel, None, &child_meta, w, report)?;
        }
        Ok(())
    } else if ft.is_file() {
        let mut file = File::open(path).map_err(io_at(path))?;
        entry.size = meta.len();
        send_entry(w, &entry)?;
        let mut left = entry.size;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            let n = file.read(&mut buf[..want]).map_err(io_at(path))?;
            if n == 0 {
                return Err(TreeError::Io {
                    path: path.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was copied",
                    ),
                });
            }
            w.write(&Frame::Data(buf[..n].to_vec()))
                .map_err(TreeError::Send)?;
            left -= n as u64;
        }
        report.bytes += entry.size;
        Ok(())
    } else {
        Err(TreeError::Unsupported(path.to_owned()))
    }
}

fn send_entry<W: Write>(w: &mut FrameWriter<W>, entry: &Entry) -> Result<(), TreeError> {
    let json = serde_json::to_vec(entry).map_err(|e| TreeError::Protocol(e.to_string()))?;
    w.write(&Frame::Entry(json)).map_err(TreeError::Send)
}

/// Where a tree whose root is called `name` goes for the destination `dest` (`cp -r` rules).
pub fn placement(dest: &Path, name: &str) -> Result<PathBuf, TreeError> {
    if dest.is_dir() {
        return Ok(dest.join(name));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(TreeError::MissingDirectory(parent));
    }
    Ok(dest.to_owned())
}

/// A safe relative path: no root, no `..`, no `.` games.
fn relative(rel: &str) -> Result<PathBuf, TreeError> {
    let p = Path::new(rel);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(TreeError::Protocol(format!(
                    "the entry path `{rel}` leaves the tree"
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(TreeError::Protocol(format!("the entry path `{rel}` is empty")));
    }
    Ok(out)
}

fn next_frame<R: Read>(r: &mut FrameReader<R>) -> Result<Frame, TreeError> {
    match r.read()? {
        Some(Frame::Error(kind, text)) => Err(TreeError::Remote(kind, text)),
        Some(f) => Ok(f),
        None => Err(TreeError::Frame(FrameError::Truncated)),
    }
}

/// Receives a tree (as [`send_tree`] sends it) into `dest`; returns where it went and what
/// came. The tree may be a single file or link.
pub fn receive_tree<R: Read>(
    dest: &Path,
    r: &mut FrameReader<R>,
) -> Result<(PathBuf, CopyReport), TreeError> {
    let mut report = CopyReport::default();
    let Frame::Entry(json) = next_frame(r)? else {
        return Err(TreeError::Protocol(
            "the tree does not start with an entry".into(),
        ));
    };
    let root = Entry::parse(&json)?;
    let name = root.name.clone().unwrap_or_default();
    if !root.path.is_empty() || name.is_empty() || name.contains('/') || name == ".." || name == "." {
        return Err(TreeError::Protocol(
            "the tree's root entry has no usable name".into(),
        ));
    }
    let base = placement(dest, &name)?;
    let mut links: HashSet<PathBuf> = HashSet::new();
    // Directories get their modes last, deepest first, so a read-only one is still filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    create(&base, &root, r, &mut report, &mut dir_modes)?;
    if root.kind == Kind::Dir {
        loop {
            let entry = match next_frame(r)? {
                Frame::End => break,
                Frame::Entry(json) => Entry::parse(&json)?,
                _ => return Err(TreeError::Protocol("expected an entry or the end".into())),
            };
            let rel = relative(&entry.path)?;
            if rel.ancestors().skip(1).any(|a| links.contains(a)) {
                return Err(TreeError::Protocol(format!(
                    "the entry `{}` leads through a symbolic link",
                    entry.path
                )));
            }
            if entry.kind == Kind::Symlink {
                links.insert(rel.clone());
            }
            create(&base.join(&rel), &entry, r, &mut report, &mut dir_modes)?;
        }
    } else {
        match next_frame(r)? {
            Frame::End => {}
            _ => return Err(TreeError::Protocol("expected the end after a single item".into())),
        }
    }
    for (path, mode) in dir_modes.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(io_at(path))?;
    }
    Ok((base, report))
}

fn create<R: Read>(
    path: &Path,
    entry: &Entry,
    r: &mut FrameReader<R>,
    report: &mut CopyReport,
    dir_modes: &mut Vec<(PathBuf, u32)>,
) -> Result<(), TreeError> {
    report.entries += 1;
    let mode = entry.mode & 0o7777;
    match entry.kind {
        Kind::Dir => {
            match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(TreeError::Io {
                        path: path.to_owned(),
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "it exists and is not a directory",
                        ),
                    })
                }
                Err(_) => fs::create_dir(path).map_err(io_at(path))?,
            }
            // Owner rwx while it is filled; its own mode at the end.
            fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700)).map_err(io_at(path))?;
            dir_modes.push((path.to_owned(), mode));
        }
        Kind::Symlink => {
            let target = entry
                .target
                .as_deref()
                .ok_or_else(|| TreeError::Protocol("a link without a target".into()))?;
            if let Ok(m) = fs::symlink_metadata(path) {
                if m.is_dir() {
                    return Err(TreeError::Io {
                        path: path.to_owned(),
                        source: io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
                    });
                }
                fs::remove_file(path).map_err(io_at(path))?;
            }
            std::os::unix::fs::symlink(target, path).map_err(io_at(path))?;
        }
        Kind::File => {
            // Never through a link that is in the way: replace it.
            if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                fs::remove_file(path).map_err(io_at(path))?;
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc_o_nofollow())
                .open(path)
                .map_err(io_at(path))?;
            let mut left = entry.size;
            while left > 0 {
                let Frame::Data(bytes) = next_frame(r)? else {
                    return Err(TreeError::Protocol(format!(
                        "{} has less data than its size",
                        entry.path
                    )));
                };
                if bytes.len() as u64 > left {
                    return Err(TreeError::Protocol(format!(
                        "{} has more data than its size",
                        entry.path
                    )));
                }
                file.write_all(&bytes).map_err(io_at(path))?;
                left -= bytes.len() as u64;
            }
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_at(path))?;
            report.bytes += entry.size;
        }
    }
    Ok(())
}

/// `O_NOFOLLOW` on Linux (no libc dependency for one constant).
const fn libc_o_nofollow() -> i32 {
    0o400000
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vk-tree-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_directory_round_trips_with_modes_and_links() {
        let d = scratch("rt");
        let src = d.join("src");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("a.txt"), b"hello").unwrap();
        fs::write(src.join("sub/big"), vec![5u8; 200_000]).unwrap();
        fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("../a.txt", src.join("sub/link")).unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o555)).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let s = src.clone();
        let sender = std::thread::spawn(move || send_tree(&s, &mut FrameWriter::new(a)).unwrap());
        let out = d.join("out");
        fs::create_dir(&out).unwrap();
        let (placed, report) = receive_tree(&out, &mut FrameReader::new(b)).unwrap();
        assert_eq!(sender.join().unwrap(), report);
        assert_eq!(placed, out.join("src"));
        assert_eq!(fs::read(placed.join("sub/big")).unwrap(), vec![5u8; 200_000]);
        assert_eq!(
            fs::read_link(placed.join("sub/link")).unwrap(),
            Path::new("../a.txt")
        );
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&placed.join("a.txt")), 0o751);
        assert_eq!(mode(&placed.join("sub")), 0o555);
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(placed.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_parent_and_escaping_paths_are_refused() {
        let d = scratch("bad");
        assert!(matches!(
            placement(&d.join("nope/x"), "x"),
            Err(TreeError::MissingDirectory(p)) if p == d.join("nope")
        ));
        let mut bytes = Vec::new();
        let mut w = FrameWriter::new(&mut bytes);
        let root = Entry {
            path: String::new(),
            name: Some("t".into()),
            kind: Kind::Dir,
            mode: 0o755,
            size: 0,
            target: None,
        };
        send_entry(&mut w, &root).unwrap();
        let link = Entry {
            path: "l".into(),
            name: None,
            kind: Kind::Symlink,
            mode: 0o777,
            size: 0,
            target: Some("/".into()),
        };
        send_entry(&mut w, &link).unwrap();
        let file = Entry {
            path: "l/etc/x".into(),
            name: None,
            kind: Kind::File,
            mode: 0o644,
            size: 0,
            target: None,
        };
        send_entry(&mut w, &file).unwrap();
        let err = receive_tree(&d, &mut FrameReader::new(bytes.as_slice())).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(relative("../x").is_err() && relative("/x").is_err() && relative("a/./b").is_ok());
        fs::remove_dir_all(&d).unwrap();
    }
}
