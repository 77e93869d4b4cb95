//! `virtkit_disk`: importing raw and qcow2 images into sparse raw disks, and cloning disk
//! files. Test images are made with `qemu-img` and `qemu-io` (Debian: qemu-utils) and the results
//! compared with `qemu-img convert -O raw`; without them those tests print `SKIPPED:`. The reflink
//! test mounts a small btrfs or XFS file system on a loop device (needs root and mkfs.btrfs or
//! mkfs.xfs: apt-get install btrfs-progs xfsprogs) and skips otherwise.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use virtkit_disk::{clone_file, import, inspect, CloneMethod, DiskImageError, ImageFormat};
use virtkit_testkit::skip;

const MIB: u64 = 1 << 20;

/// A directory under the target directory, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("disk_image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn program_runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether qemu-img and qemu-io are here; [`skip`] otherwise.
fn require_qemu_utils() -> bool {
    if program_runs("qemu-img") && program_runs("qemu-io") {
        return true;
    }
    skip("qemu-img/qemu-io not found (apt-get install qemu-utils)");
    false
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `len` pseudo-random bytes, none of them zero (so no 4 KiB block of it is all zeroes).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// A sparse file of `size` bytes with `pieces` written at their offsets.
fn make_sparse(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, data) in pieces {
        file.write_all_at(data, *offset).unwrap();
    }
    file.sync_all().unwrap();
}

/// Panics unless both files have the same length and bytes (naming the first difference).
fn assert_same_content(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(
        len,
        fb.metadata().unwrap().len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let chunk = 8 * MIB as usize;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(chunk as u64) as usize;
        fa.read_exact_at(&mut ba[..n], pos).unwrap();
        fb.read_exact_at(&mut bb[..n], pos).unwrap();
        if ba[..n] != bb[..n] {
            let at = (0..n).find(|&i| ba[i] != bb[i]).unwrap();
            panic!(
                "{} and {} differ at byte {}: {:#04x} != {:#04x}",
                a.display(),
                b.display(),
                pos + at as u64,
                ba[at],
                bb[at]
            );
        }
        pos += n as u64;
    }
}

/// Bytes of disk the file occupies (st_blocks).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// A progress callback that records its calls, and the check that they went forward to the end.
#[derive(Default)]
struct Progress(Vec<(u64, u64)>);

impl Progress {
    fn callback(&mut self) -> impl FnMut(u64, u64) + '_ {
        |done, total| self.0.push((done, total))
    }

    fn assert_complete(&self, total: u64) {
        assert!(!self.0.is_empty(), "no progress reported");
        assert!(
            self.0.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress went backwards: {:?}",
            self.0
        );
        assert!(
            self.0.iter().all(|&(done, t)| t == total && done <= total),
            "{:?}",
            self.0
        );
        assert_eq!(self.0.last(), Some(&(total, total)));
    }
}

fn import_quiet(
    src: &Path,
    dst: &Path,
    disk_size: Option<u64>,
) -> Result<virtkit_disk::ImportReport, DiskImageError> {
    import(src, dst, disk_size, &mut |_, _| {})
}

// ---------------------------------------------------------------------------------------------
// Raw images

#[test]
fn raw_import_copies_the_data_and_keeps_holes() {
    let dir = Scratch::new("raw");
    let (src, dst) = (dir.path("src.raw"), dir.path("disk.img"));
    let size = 1 << 30;
    make_sparse(
        &src,
        size,
        &[
            (0, pattern(1, 3 * 4096 + 17)),
            (300 * MIB + 512, pattern(2, MIB as usize)),
            (600 * MIB, vec![0u8; 2 * MIB as usize]), // allocated, but zero: must not be written
            (size - 4096, pattern(3, 4096)),
        ],
    );
    assert!(
        allocated(&src) >= 3 * MIB,
        "the zero range should be allocated in the source"
    );
    assert_eq!(
        inspect(&src).unwrap(),
        virtkit_disk::ImageInfo {
            format: ImageFormat::Raw,
            virtual_size: size
        }
    );

    let mut progress = Progress::default();
    let report = import(&src, &dst, None, &mut progress.callback()).unwrap();
    progress.assert_complete(size);
    assert_eq!(report.format, ImageFormat::Raw);
    assert_eq!((report.virtual_size, report.disk_size), (size, size));
    // The 4 KiB blocks holding non-zero bytes: 4 at the start, 257 around 300 MiB + 512, 1 at
    // the end.
    assert_eq!(report.bytes_written, (4 + 257 + 1) * 4096);
    assert_same_content(&src, &dst);
    let used = allocated(&dst);
    eprintln!(
        "raw import: {} bytes written, {used} bytes allocated for a {size}-byte disk",
        report.bytes_written
    );
    assert!(
        used <= report.bytes_written + 256 * 1024,
        "{used} bytes allocated"
    );
}

#[test]
fn disk_size_grows_the_disk() {
    let dir = Scratch::new("grow");
    let (src, dst) = (dir.path("src.raw"), dir.path("disk.img"));
    let data = pattern(4, 8 * MIB as usize);
    make_sparse(&src, 8 * MIB, &[(0, data.clone())]);
    let report = import_quiet(&src, &dst, Some(64 * MIB)).unwrap();
    assert_eq!((report.virtual_size, report.disk_size), (8 * MIB, 64 * MIB));
    assert_eq!(fs::metadata(&dst).unwrap().len(), 64 * MIB);
    let back = fs::read(&dst).unwrap();
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));
    assert!(allocated(&dst) < 9 * MIB);
}

#[test]
fn disk_size_smaller_than_the_image_is_refused() {
    let dir = Scratch::new("small");
    let (src, dst) = (dir.path("src.raw"), dir.path("disk.img"));
    make_sparse(&src, 8 * MIB, &[(0, pattern(5, 4096))]);
    let err = import_quiet(&src, &dst, Some(4 * MIB)).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(
        matches!(err, DiskImageError::DiskSizeTooSmall { requested, virtual_size } if requested == 4 * MIB && virtual_size == 8 * MIB),
        "{err:?}"
    );
    for needed in ["4194304", "8388608", "smallest allowed"] {
        assert!(text.contains(needed), "`{needed}` missing from: {text}");
    }
    assert!(!dst.exists());
}

#[test]
fn an_existing_destination_is_left_alone() {
    let dir = Scratch::new("exists");
    let (src, dst) = (dir.path("src.raw"), dir.path("disk.img"));
    make_sparse(&src, MIB, &[(0, pattern(6, 4096))]);
    fs::write(&dst, b"keep me").unwrap();
    let err = import_quiet(&src, &dst, None).unwrap_err();
    assert!(matches!(err, DiskImageError::DestinationExists { .. }), "{err:?}");
    let err = clone_file(&src, &dst, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, DiskImageError::DestinationExists { .. }), "{err:?}");
    assert_eq!(fs::read(&dst).unwrap(), b"keep me");
}

#[test]
fn a_missing_source_names_the_file() {
    let dir = Scratch::new("missing");
    let (src, dst) = (dir.path("nope.qcow2"), dir.path("disk.img"));
    let err = import_quiet(&src, &dst, None).unwrap_err();
    assert!(err.to_string().contains("nope.qcow2"), "{err}");
    assert!(!dst.exists());
}

#[test]
fn a_fifo_or_a_device_is_refused_at_once_and_an_empty_image_too() {
    let dir = Scratch::new("special");
    let fifo = dir.path("image.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let dst = dir.path("disk.img");
    // On a thread with a deadline: a regression blocks in open(2) and must fail, not hang.
    let (tx, rx) = std::sync::mpsc::channel();
    let (f, d) = (fifo.clone(), dst.clone());
    std::thread::spawn(move || {
        let _ = tx.send((
            import_quiet(&f, &d, None).map(|_| ()),
            inspect(Path::new("/dev/zero")).map(|_| ()),
        ));
    });
    let (from_fifo, from_zero) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("blocked on a FIFO");
    let e = from_fifo.unwrap_err();
    assert!(
        e.to_string().contains("is a FIFO (named pipe), not a disk image"),
        "{e}"
    );
    let e = from_zero.unwrap_err();
    assert!(e.to_string().contains("is a character device"), "{e}");
    assert!(!dst.exists());

    let empty = dir.path("empty.raw");
    fs::write(&empty, b"").unwrap();
    let e = import_quiet(&empty, &dst, Some(MIB)).unwrap_err();
    assert!(matches!(e, DiskImageError::EmptyImage { .. }), "{e}");
    assert!(!dst.exists());
}

// ---------------------------------------------------------------------------------------------
// qcow2 images

/// A raw disk with data in several places (unaligned pieces, an allocated zero range, the last
/// sector) and a size that is not a whole number of clusters.
fn make_test_disk(path: &Path) -> u64 {
    let size = 64 * MIB + 3 * 512;
    make_sparse(
        path,
        size,
        &[
            (MIB, pattern(7, 3 * MIB as usize)),
            (20 * MIB + 4096, pattern(8, 65536)),
            (30 * MIB, vec![0u8; MIB as usize]),
            (40 * MIB + 100, pattern(9, 1000)),
            (size - 512, pattern(10, 512)),
        ],
    );
    size
}

/// Converts a raw test disk to qcow2 with `options`, imports it, and checks the result against
/// both the raw disk and `qemu-img convert -O raw` of the qcow2 image.
fn check_qcow2_import(name: &str, options: &[&str]) {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new(name);
    let (raw, image, reference, dst) = (
        dir.path("src.raw"),
        dir.path("image.qcow2"),
        dir.path("reference.raw"),
        dir.path("disk.img"),
    );
    let size = make_test_disk(&raw);
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(options);
    args.extend([s(&raw), s(&image)]);
    qemu_img(&args);
    qemu_img(&["convert", "-O", "raw", s(&image), s(&reference)]);

    let info = inspect(&image).unwrap();
    assert_eq!((info.format, info.virtual_size), (ImageFormat::Qcow2, size));
    let mut progress = Progress::default();
    let report = import(&image, &dst, None, &mut progress.callback()).unwrap();
    progress.assert_complete(size);
    assert_eq!(
        (report.format, report.virtual_size, report.disk_size),
        (ImageFormat::Qcow2, size, size)
    );
    assert_same_content(&reference, &dst);
    assert_same_content(&raw, &dst);
    // 3 MiB + 64 KiB + the block around 40 MiB + 100 + the last, short block (64 MiB to the
    // end, 1536 bytes).
    let data_blocks = 3 * MIB + 65536 + 4096 + 1536;
    assert_eq!(report.bytes_written, data_blocks, "{report:?}");
    assert!(
        allocated(&dst) <= data_blocks + 256 * 1024,
        "{} bytes allocated",
        allocated(&dst)
    );
}

#[test]
fn qcow2_import_matches_qemu_img_convert() {
    check_qcow2_import("qcow2", &[]);
}

#[test]
fn compressed_qcow2_import_matches_qemu_img_convert() {
    check_qcow2_import("qcow2-compressed", &["-c"]);
}

#[test]
fn qcow2_version_2_with_small_clusters_imports() {
    check_qcow2_import("qcow2-v2", &["-o", "compat=0.10,cluster_size=4096"]);
}

#[test]
fn qcow2_zero_clusters_are_not_read() {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new("qcow2-zero");
    let (image, reference, dst) = (
        dir.path("zero.qcow2"),
        dir.path("reference.raw"),
        dir.path("disk.img"),
    );
    qemu_img(&["create", "-q", "-f", "qcow2", s(&image), "16M"]);
    // 4 MiB of 0xab, then the second MiB turned into zero clusters. Without unmapping, QEMU keeps
    // those clusters allocated with their old data and only sets the zero flag: an importer that
    // read them would copy 0xab bytes.
    run(
        "qemu-io",
        &["-c", "write -P 0xab 0 4M", "-c", "write -z 1M 1M", s(&image)],
    );
    let map: serde_json::Value =
        serde_json::from_str(&qemu_img(&["map", "--output=json", s(&image)])).unwrap();
    let zero_at_1m = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == MIB)
        .expect("a mapping at 1 MiB");
    assert_eq!(zero_at_1m["zero"], true, "{map}");
    assert_eq!(zero_at_1m["data"], false, "{map}");
    let stale = fs::read(&image).unwrap().iter().filter(|&&b| b == 0xab).count() as u64;
    if stale < 4 * MIB {
        eprintln!("note: this QEMU freed the zeroed clusters ({stale} 0xab bytes left in the file)");
    }

    qemu_img(&["convert", "-O", "raw", s(&image), s(&reference)]);
    let report = import_quiet(&image, &dst, None).unwrap();
    assert_same_content(&reference, &dst);
    assert_eq!(report.bytes_written, 3 * MIB);
    let back = fs::read(&dst).unwrap();
    assert!(back[MIB as usize..2 * MIB as usize].iter().all(|&b| b == 0));
    assert!(back[..MIB as usize].iter().all(|&b| b == 0xab));
}

#[test]
fn qcow2_with_a_backing_file_is_refused() {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new("backing");
    let (base, overlay, dst) = (
        dir.path("base.qcow2"),
        dir.path("overlay.qcow2"),
        dir.path("disk.img"),
    );
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "16M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "qcow2",
        s(&overlay),
    ]);
    let err = import_quiet(&overlay, &dst, None).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, DiskImageError::UnsupportedQcow2 { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("backing file") && text.contains("base.qcow2") && text.contains("qemu-img convert"),
        "{text}"
    );
    assert!(!dst.exists());
}

#[test]
fn other_image_formats_are_refused_by_their_magic() {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new("foreign");
    for (format, name) in [
        ("vmdk", "VMDK"),
        ("vhdx", "VHDX"),
        ("vdi", "VDI"),
        ("vpc", "VHD"),
        ("qed", "QED"),
    ] {
        let (image, dst) = (dir.path(&format!("image.{format}")), dir.path("disk.img"));
        qemu_img(&["create", "-q", "-f", format, s(&image), "16M"]);
        let err = import_quiet(&image, &dst, None).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, DiskImageError::UnsupportedFormat { format, .. } if format.starts_with(name)),
            "{format}: {err:?}"
        );
        assert!(
            text.contains("convert it to raw or qcow2 with qemu-img convert"),
            "{text}"
        );
        assert!(inspect(&image).is_err());
        assert!(!dst.exists());
    }
}

// ---------------------------------------------------------------------------------------------
// Damaged qcow2 images

/// A small qcow2 image (16 MiB disk, 64 KiB clusters, 2 MiB of data) and where its tables are.
struct Qcow2Sample {
    bytes: Vec<u8>,
    l1_offset: u64,
    l2_offset: u64,
}

fn qcow2_sample(dir: &Scratch) -> Qcow2Sample {
    let image = dir.path("sample.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&image), "16M"]);
    run("qemu-io", &["-c", "write -P 0x5a 0 2M", s(&image)]);
    let bytes = fs::read(&image).unwrap();
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l1_offset = be64(40);
    let l2_offset = be64(l1_offset as usize) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2_offset, 0);
    Qcow2Sample {
        bytes,
        l1_offset,
        l2_offset,
    }
}

/// Imports `bytes` (written to a file) and returns the error, checking that nothing was left.
fn import_damaged(dir: &Scratch, name: &str, bytes: &[u8]) -> DiskImageError {
    let (image, dst) = (dir.path(name), dir.path(&format!("{name}.img")));
    fs::write(&image, bytes).unwrap();
    let err = import_quiet(&image, &dst, None).expect_err(name);
    eprintln!("{name}: {err}");
    assert!(!dst.exists(), "{name}: the partial disk was left behind");
    err
}

fn put_be64(bytes: &mut [u8], at: u64, value: u64) {
    bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn damaged_qcow2_images_give_clear_errors() {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new("damaged");
    let sample = qcow2_sample(&dir);
    let len = sample.bytes.len() as u64;
    let far = (len * 16).next_multiple_of(65536);
    let corrupt_with = |err: &DiskImageError, words: &[&str]| {
        let text = err.to_string();
        assert!(matches!(err, DiskImageError::CorruptQcow2 { .. }), "{err:?}");
        for word in words {
            assert!(text.contains(word), "`{word}` missing from: {text}");
        }
        assert!(text.contains("qemu-img check"), "{text}");
    };

    // Truncated inside the header.
    let err = import_damaged(&dir, "short-header", &sample.bytes[..50]);
    corrupt_with(&err, &["shorter than a qcow2 header"]);

    // Truncated after the L2 table: the data clusters are gone. This fails after the disk file
    // was created, so it also checks that the partial disk is removed.
    let cut = (sample.l2_offset + 65536) as usize;
    assert!(cut < sample.bytes.len());
    let err = import_damaged(&dir, "truncated-data", &sample.bytes[..cut]);
    corrupt_with(&err, &["beyond the end of the file"]);

    // Header garbage: an impossible cluster size, and an unknown version.
    let mut bytes = sample.bytes.clone();
    bytes[20..24].copy_from_slice(&40u32.to_be_bytes());
    corrupt_with(&import_damaged(&dir, "cluster-bits", &bytes), &["cluster size"]);
    let mut bytes = sample.bytes.clone();
    bytes[4..8].copy_from_slice(&0xdead_beefu32.to_be_bytes());
    let err = import_damaged(&dir, "version", &bytes);
    assert!(matches!(err, DiskImageError::UnsupportedQcow2 { .. }), "{err:?}");
    assert!(err.to_string().contains("version 3735928559"), "{err}");

    // An L1 entry pointing past the end of the file.
    let mut bytes = sample.bytes.clone();
    put_be64(&mut bytes, sample.l1_offset, (1 << 63) | far);
    corrupt_with(
        &import_damaged(&dir, "l1-entry", &bytes),
        &["L1 entry 0", "beyond the end of the file"],
    );

    // An L2 entry (a data cluster) pointing past the end of the file.
    let mut bytes = sample.bytes.clone();
    put_be64(&mut bytes, sample.l2_offset + 8, (1 << 63) | far);
    corrupt_with(
        &import_damaged(&dir, "l2-entry", &bytes),
        &["disk offset 65536", "beyond the end of the file"],
    );

    // The L1 table and the refcount table themselves past the end.
    let mut bytes = sample.bytes.clone();
    put_be64(&mut bytes, 40, far);
    corrupt_with(
        &import_damaged(&dir, "l1-table", &bytes),
        &["the L1 table", "beyond the end of the file"],
    );
    let mut bytes = sample.bytes.clone();
    put_be64(&mut bytes, 48, far);
    corrupt_with(
        &import_damaged(&dir, "refcount-table", &bytes),
        &["the refcount table", "beyond the end"],
    );

    // An L1 table too small for the disk size.
    let mut bytes = sample.bytes.clone();
    put_be64(&mut bytes, 24, 1 << 40);
    corrupt_with(
        &import_damaged(&dir, "l1-size", &bytes),
        &["L1 table has 1 entries"],
    );
}

/// Every 32-bit word of the header and of the first table entries set to a few bad values:
/// whatever happens, no panic, and a failed import leaves no file.
#[test]
fn garbage_in_qcow2_metadata_never_panics() {
    if !require_qemu_utils() {
        return;
    }
    let dir = Scratch::new("garbage");
    let sample = qcow2_sample(&dir);
    let mut places: Vec<u64> = (0..192).step_by(4).collect();
    places.extend((0..32).step_by(4).map(|i| sample.l1_offset + i));
    places.extend((0..32).step_by(4).map(|i| sample.l2_offset + i));
    let (image, dst) = (dir.path("garbage.qcow2"), dir.path("garbage.img"));
    let (mut refused, mut imported) = (0, 0);
    for &at in &places {
        for value in [0xffff_ffffu32, 0, 0x8000_0000, 0x4000_0001, 0x0000_0200] {
            let mut bytes = sample.bytes.clone();
            bytes[at as usize..at as usize + 4].copy_from_slice(&value.to_be_bytes());
            fs::write(&image, &bytes).unwrap();
            match import_quiet(&image, &dst, None) {
                Ok(_) => {
                    imported += 1;
                    fs::remove_file(&dst).unwrap();
                }
                Err(_) => {
                    refused += 1;
                    assert!(!dst.exists(), "byte {at} = {value:#x}: partial disk left behind");
                }
            }
        }
    }
    eprintln!("garbage: {refused} refused, {imported} imported (harmless fields)");
    assert!(refused > 0 && imported > 0);
}

// ---------------------------------------------------------------------------------------------
// Clones

/// A 256 MiB sparse file with data in three places, mode 0640.
fn make_clone_source(path: &Path) -> u64 {
    let size = 256 * MIB;
    make_sparse(
        path,
        size,
        &[
            (0, pattern(11, 65536)),
            (100 * MIB + 4096, pattern(12, 5 * MIB as usize)),
            (size - 8192, pattern(13, 8192)),
        ],
    );
    fs::set_permissions(path, fs::Permissions::from_mode(0o640)).unwrap();
    size
}

fn check_clone(src: &Path, dst: &Path) -> CloneMethod {
    let size = fs::metadata(src).unwrap().len();
    let mut progress = Progress::default();
    let method = clone_file(src, dst, &mut progress.callback()).unwrap();
    progress.assert_complete(size);
    assert_same_content(src, dst);
    let (src_meta, dst_meta) = (fs::metadata(src).unwrap(), fs::metadata(dst).unwrap());
    assert_eq!(
        dst_meta.permissions().mode() & 0o7777,
        src_meta.permissions().mode() & 0o7777
    );
    // Holes stay holes (a reflink shares extents, so its st_blocks counts them too).
    assert!(
        allocated(dst) <= allocated(src) + 256 * 1024,
        "{} bytes allocated for the copy, {} for the source",
        allocated(dst),
        allocated(src)
    );
    method
}

#[test]
fn clone_here_keeps_content_and_holes() {
    let dir = Scratch::new("clone");
    let (src, dst) = (dir.path("disk.img"), dir.path("copy.img"));
    make_clone_source(&src);
    let method = check_clone(&src, &dst);
    eprintln!("clone_file in {}: {method}", dir.0.display());
}

/// Unmounts and detaches a loop-mounted file system when the test ends.
struct LoopMount {
    dir: PathBuf,
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Mounts a fresh reflink-capable file system (btrfs, else XFS) under `dir`, or says why not.
fn mount_reflink_fs(dir: &Scratch) -> Result<(LoopMount, &'static str), String> {
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        return Err("mounting a loop file system needs root".to_string());
    }
    let (fs_name, mkfs, options): (&str, &str, &[&str]) = if program_runs("mkfs.btrfs") {
        ("btrfs", "mkfs.btrfs", &["-q"])
    } else if Command::new("mkfs.xfs")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        ("xfs", "mkfs.xfs", &["-q", "-m", "reflink=1"])
    } else {
        return Err(
            "neither mkfs.btrfs nor mkfs.xfs found (apt-get install btrfs-progs xfsprogs)".to_string(),
        );
    };
    let image = dir.path(&format!("{fs_name}.fs"));
    File::create(&image).unwrap().set_len(512 * MIB).unwrap();
    let mkfs_out = Command::new(mkfs)
        .args(options)
        .arg(&image)
        .output()
        .map_err(|e| e.to_string())?;
    if !mkfs_out.status.success() {
        return Err(format!(
            "{mkfs} failed: {}",
            String::from_utf8_lossy(&mkfs_out.stderr)
        ));
    }
    let mount_dir = dir.path("mnt");
    fs::create_dir_all(&mount_dir).unwrap();
    let out = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mount_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "cannot loop-mount {fs_name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((LoopMount { dir: mount_dir }, fs_name))
}

#[test]
fn clone_on_a_reflink_file_system_shares_blocks() {
    let dir = Scratch::new("reflink");
    let (mount, fs_name) = match mount_reflink_fs(&dir) {
        Ok(m) => m,
        Err(why) => {
            skip(&why);
            return;
        }
    };
    let src = mount.dir.join("disk.img");
    make_clone_source(&src);
    let method = check_clone(&src, &mount.dir.join("copy.img"));
    eprintln!("clone_file on {fs_name}: {method}");
    assert_eq!(method, CloneMethod::Reflink);

    // From the loop file system to the one holding the scratch directory: no reflink across
    // file systems (EXDEV), so a sparse copy.
    let method = check_clone(&src, &dir.path("across.img"));
    assert_eq!(method, CloneMethod::SparseCopy);
    drop(mount);
}
