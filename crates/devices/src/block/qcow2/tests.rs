//! The qcow2 backend on real image files made by `virtkit-disk` (and checked by `qemu-img`
//! where it is installed).

use std::path::{Path, PathBuf};
use std::process::Command;

use virtkit_disk::{create_qcow2_layer, ImageFormat};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("virtkit-qcow2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, read_only: bool) -> Qcow2Disk {
    Qcow2Disk::open(path, read_only, CacheMode::Cached, SyncMode::Full).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// `qemu-img check` says the image is clean, where qemu-img is installed.
fn qemu_img_check(path: &Path) {
    match Command::new("qemu-img").arg("check").arg(path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "qemu-img check {}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("SKIPPED: qemu-img check (qemu-img is not installed; Debian package qemu-utils)"),
    }
}

#[test]
fn writes_read_back_across_a_reopen_and_unwritten_sectors_are_zeros() {
    let dir = Dir::new("rw");
    let image = dir.path("disk.qcow2");
    create_qcow2_layer(&image, 64 << 20, None).unwrap();
    {
        let mut disk = open(&image, false);
        assert_eq!(disk.capacity(), 64 << 20);
        disk.write_at(4096, &pattern(1, 8192)).unwrap();
        // Across a cluster boundary (64 KiB clusters).
        disk.write_at((1 << 20) - 512, &pattern(2, 1024)).unwrap();
        disk.flush().unwrap();
    }
    let mut disk = open(&image, true);
    let mut buf = vec![0u8; 8192];
    disk.read_at(4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 8192));
    let mut buf = vec![0u8; 1024];
    disk.read_at((1 << 20) - 512, &mut buf).unwrap();
    assert_eq!(buf, pattern(2, 1024));
    let mut buf = vec![1u8; 4096];
    disk.read_at(32 << 20, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    drop(disk);
    qemu_img_check(&image);
}

#[test]
fn a_layer_reads_through_to_its_backing_image_and_never_writes_it() {
    let dir = Dir::new("layer");
    let base = dir.path("base.qcow2");
    create_qcow2_layer(&base, 16 << 20, None).unwrap();
    {
        let mut disk = open(&base, false);
        disk.write_at(0, &pattern(7, 65536)).unwrap();
        disk.flush().unwrap();
    }
    let base_bytes = std::fs::read(&base).unwrap();
    let top = dir.path("top.qcow2");
    create_qcow2_layer(&top, 16 << 20, Some(("base.qcow2", ImageFormat::Qcow2))).unwrap();
    {
        let mut disk = open(&top, false);
        let mut buf = vec![0u8; 65536];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, pattern(7, 65536), "the layer reads its backing image's data");
        disk.write_at(512, &pattern(9, 512)).unwrap();
        disk.discard(8192, 4096).unwrap();
        disk.flush().unwrap();
        disk.read_at(0, &mut buf).unwrap();
        let mut expected = pattern(7, 65536);
        expected[512..1024].copy_from_slice(&pattern(9, 512));
        expected[8192..12288].fill(0);
        assert_eq!(buf, expected, "writes and a discard show through the layer");
    }
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_bytes,
        "the backing image is unchanged"
    );
    qemu_img_check(&top);
    qemu_img_check(&base);
}

#[test]
fn the_chain_is_locked_and_a_missing_backing_image_is_named() {
    let dir = Dir::new("locks");
    let base = dir.path("base.qcow2");
    create_qcow2_layer(&base, 1 << 20, None).unwrap();
    let top = dir.path("top.qcow2");
    create_qcow2_layer(&top, 1 << 20, Some(("base.qcow2", ImageFormat::Qcow2))).unwrap();
    let disk = open(&top, false);
    // The top image is taken; the base is shared: readable by another reader, not writable.
    let err = Qcow2Disk::open(&top, true, CacheMode::Cached, SyncMode::Full).unwrap_err();
    assert!(matches!(err, DiskOpenError::Locked { .. }), "{err}");
    let err = Qcow2Disk::open(&base, false, CacheMode::Cached, SyncMode::Full).unwrap_err();
    assert!(matches!(err, DiskOpenError::Locked { .. }), "{err}");
    drop(open(&base, true));
    drop(disk);

    std::fs::remove_file(&base).unwrap();
    let err = Qcow2Disk::open(&top, false, CacheMode::Cached, SyncMode::Full).unwrap_err();
    assert!(
        matches!(&err, DiskOpenError::MissingBacking { backing, .. } if backing == &base),
        "{err}"
    );
    assert!(err.to_string().contains("base.qcow2"), "{err}");
}

#[test]
fn a_file_that_is_not_qcow2_and_a_backing_loop_are_refused() {
    let dir = Dir::new("bad");
    let raw = dir.path("raw.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let err = Qcow2Disk::open(&raw, false, CacheMode::Cached, SyncMode::Full).unwrap_err();
    assert!(err.to_string().contains("not a qcow2 image"), "{err}");

    // a.qcow2 backed by b.qcow2 backed by a.qcow2.
    let a = dir.path("a.qcow2");
    let b = dir.path("b.qcow2");
    create_qcow2_layer(&b, 1 << 20, Some(("a.qcow2", ImageFormat::Qcow2))).unwrap();
    create_qcow2_layer(&a, 1 << 20, Some(("b.qcow2", ImageFormat::Qcow2))).unwrap();
    let err = Qcow2Disk::open(&a, true, CacheMode::Cached, SyncMode::Full).unwrap_err();
    assert!(err.to_string().contains("backing chain is longer"), "{err}");
}

#[test]
fn a_raw_backing_image_ends_the_chain() {
    let dir = Dir::new("rawbase");
    let raw = dir.path("base.img");
    std::fs::write(&raw, pattern(3, 1 << 20)).unwrap();
    let top = dir.path("top.qcow2");
    create_qcow2_layer(&top, 1 << 20, Some(("base.img", ImageFormat::Raw))).unwrap();
    let mut disk = open(&top, false);
    let mut buf = vec![0u8; 4096];
    disk.read_at(8192, &mut buf).unwrap();
    assert_eq!(buf, pattern(3, 1 << 20)[8192..12288]);
    disk.write_zeroes(8192, 4096, true).unwrap();
    disk.read_at(8192, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}
