use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("virtkit-regular-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            Mode::RUSR | Mode::WUSR,
            0,
        )
        .unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` and fails (rather than hangs) if it takes more than a few seconds.
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let start = Instant::now();
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("blocked: a FIFO or device was opened like a file");
    assert!(start.elapsed() < Duration::from_secs(5));
    got
}

#[test]
fn fifos_and_devices_are_refused_for_reading_without_blocking() {
    let s = Scratch::new("read");
    let fifo = s.fifo("config.json");
    let e = promptly(move || read_bounded(&fifo, 1 << 20).unwrap_err());
    assert!(
        e.to_string()
            .contains("is a FIFO (named pipe), not a regular file"),
        "{e}"
    );
    let e = promptly(|| read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err());
    assert!(e.to_string().contains("is a character device"), "{e}");
    let e = open_regular(&s.0).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn reading_stops_at_the_limit() {
    let s = Scratch::new("limit");
    let path = s.0.join("big.json");
    std::fs::write(&path, vec![b' '; 1025]).unwrap();
    let e = read_bounded(&path, 1024).unwrap_err();
    assert!(matches!(e, RegularFileError::TooLarge { limit: 1024, .. }), "{e}");
    std::fs::write(&path, vec![b' '; 1024]).unwrap();
    assert_eq!(read_bounded(&path, 1024).unwrap().len(), 1024);
}

#[test]
fn an_output_file_is_emptied_only_when_it_is_a_file_and_never_waits_on_a_fifo() {
    let s = Scratch::new("output");
    let fifo = s.fifo("serial.log");
    let e = promptly(move || open_output(&fifo, false).unwrap_err());
    assert!(e.to_string().contains("FIFO"), "{e}");
    let e = open_output(Path::new("/dev/zero"), false).unwrap_err();
    assert!(e.to_string().contains("character device"), "{e}");
    assert!(open_output(Path::new("/dev/null"), false).is_ok());

    let log = s.0.join("out.log");
    std::fs::write(&log, b"old").unwrap();
    open_output(&log, true).unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"old");
    open_output(&log, false).unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"");
    let fresh = s.0.join("fresh.log");
    open_output(&fresh, false).unwrap();
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o077, 0, "owner-only");
}

#[test]
fn same_file_sees_through_links_and_spellings() {
    let s = Scratch::new("same");
    let disk = s.0.join("disk.img");
    std::fs::write(&disk, b"d").unwrap();
    let link = s.0.join("link.img");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    assert!(same_file(&disk, &link));
    assert!(same_file(&disk, &s.0.join(".").join("disk.img")));
    assert!(!same_file(&disk, &s.0.join("other.img")));
    assert!(same_file(&s.0.join("new.log"), &s.0.join(".").join("new.log")));
}
