//! What the full-guest test files share: the guest scripts' helpers, the host script's
//! `run_guest`, the scratch directory, the initrd with the guest scripts appended, running a
//! script where stock kernels boot, and reading its tagged `CASE` lines.
//!
//! `home` is for the test files that drive the `virtkit` binary in a private VIRTKIT_HOME.
//!
//! The guest's part of each test is a shell script in `/vt/` of the guest, appended to the
//! asset initramfs as a second cpio archive and started with `virtkit.run="sh /vt/<name>.sh"`.
//! The guest scripts print `VT <what>` lines; the host scripts prefix every line they want
//! checked with `CASE <name>: `.

#![allow(dead_code)] // each test file uses its own part

pub mod home;

use std::path::{Path, PathBuf};
use std::time::Instant;

use virtkit_testkit::cpio::CpioWriter;
use virtkit_testkit::{require_assets, require_kvm, skip, Assets, EmulatedHost, StockKernelScript};

pub const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");
/// The asset recipe that put e2fsprogs' mke2fs (mkfs.ext4) and e2fsck into the guest.
const RECIPE_WITH_E2FSPROGS: u32 = 3;

/// Helpers every guest script starts with.
pub const GUEST_LIB: &str = r#"
say() { echo "VT $*"; }
# dev_by_serial ID: /dev/vdX of the disk whose virtio-blk serial (GET_ID) is ID
dev_by_serial() {
    for b in /sys/block/vd*; do
        [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${b##*/}" && return 0
    done
    return 1
}
sum() { sha256sum "$1" | cut -d' ' -f1; }
mkdir -p /mnt
"#;

/// Runs a guest script on disks: `run_guest NAME DISK-ARGS...` (each DISK-ARG a `--disk` value,
/// and `$VM_ARGS` more `virtkit run` flags);
/// the guest's console goes to `$W/NAME.log` and, tagged, to the output; then `CASE NAME: exit=`.
/// A guest that hangs is killed after `$GUEST_TIMEOUT` s (exit 137), so that a broken device
/// fails the test in minutes, not at the emulated host's timeout.
pub const HOST_LIB: &str = r#"
GUEST_TIMEOUT=180
run_guest() {
    name=$1; shift
    args=
    for d in "$@"; do args="$args --disk $d"; done
    timeout -s KILL $GUEST_TIMEOUT $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 256M $args $VM_ARGS \
        --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/$name.sh\"" </dev/null >$W/$name.raw 2>&1
    code=$?
    tr -d '\r' <$W/$name.raw >$W/$name.log
    sed "s/^/CASE $name: /" $W/$name.log
    echo "CASE $name: exit=$code"
}
"#;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("virtkit-fgdisk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The asset initramfs, padded to 4 bytes, then a newc archive with the guest scripts in /vt/
/// (the kernel unpacks concatenated archives one after the other).
pub fn initrd_with_scripts(assets: &Assets, dest: &Path, scripts: &[(&str, &str)]) {
    initrd_from(assets.guest_initramfs(), dest, scripts);
}

/// [`initrd_with_scripts`] over another initramfs (the display kernel's).
pub fn initrd_from(initramfs: &Path, dest: &Path, scripts: &[(&str, &str)]) {
    let mut data = std::fs::read(initramfs).unwrap();
    data.resize(data.len().next_multiple_of(4), 0);
    let mut w = CpioWriter::new(data);
    for (name, body) in scripts {
        w.file(
            &format!("vt/{name}.sh"),
            0o755,
            format!("{GUEST_LIB}{body}").as_bytes(),
        )
        .unwrap();
    }
    std::fs::write(dest, w.finish().unwrap()).unwrap();
}

/// A tool of this machine, looked up in PATH and the sbin directories.
pub fn host_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

pub fn prerequisites() -> Option<Assets> {
    if !require_kvm() {
        return None;
    }
    let assets = require_assets()?;
    if assets.recipe_version() < RECIPE_WITH_E2FSPROGS {
        skip(&format!(
            "the test assets are recipe {}; these tests need recipe {RECIPE_WITH_E2FSPROGS} or \
             later (mkfs.ext4 in the guest): run scripts/assets.sh",
            assets.recipe_version()
        ));
        return None;
    }
    Some(assets)
}

/// Runs `script` where stock kernels boot, with `$VIRTKIT`, `$DEBUGFS`, `$E2FSCK`, the guest
/// kernel and initrd (with `guest_scripts` in `/vt/`) and `files` in `$G`, and a scratch
/// directory `$W`.
pub fn run_guest_script(
    assets: &Assets,
    test: &str,
    guest_scripts: &[(&str, &str)],
    files: &[(&Path, &str)],
    script: &str,
) -> Option<String> {
    run_guest_script_with(assets, test, guest_scripts, files, script, |run| run)
}

/// [`run_guest_script`] with `configure` applied to the [`StockKernelScript`] (more programs,
/// `.emulated_host(...)` changes).
pub fn run_guest_script_with(
    assets: &Assets,
    test: &str,
    guest_scripts: &[(&str, &str)],
    files: &[(&Path, &str)],
    script: &str,
    configure: impl FnOnce(StockKernelScript) -> StockKernelScript,
) -> Option<String> {
    let (Some(debugfs), Some(e2fsck)) = (host_tool("debugfs"), host_tool("e2fsck")) else {
        skip("debugfs and e2fsck are not installed (Debian package e2fsprogs)");
        return None;
    };
    let scratch = Scratch::new(test);
    let initrd = scratch.0.join("initrd");
    initrd_with_scripts(assets, &initrd, guest_scripts);
    let started = Instant::now();
    let mut run = StockKernelScript::new(test)
        .file(assets.vmlinuz(), "vmlinuz")
        .file(&initrd, "initrd")
        .program("VIRTKIT", VIRTKIT)
        .program("DEBUGFS", debugfs)
        .program("E2FSCK", e2fsck);
    for (src, name) in files {
        run = run.file(src, name);
    }
    run = configure(run);
    let output = run.run(assets, &format!("{HOST_LIB}\n{script}"))?;
    eprintln!(
        "{test}: the script ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(output)
}

/// Lines the script tagged with `CASE name: `, without the tag.
pub fn case_lines<'a>(output: &'a str, name: &str) -> Vec<&'a str> {
    let tag = format!("CASE {name}: ");
    output
        .lines()
        .filter_map(|l| l.find(&tag).map(|i| l[i + tag.len()..].trim_end()))
        .collect()
}

/// The value of `key=value` in the first CASE line of `name` holding it (a word of its own),
/// the guest's echo of its command line left out.
pub fn case_value<'a>(output: &'a str, name: &str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    case_lines(output, name)
        .into_iter()
        .filter(|l| !l.contains("VIRTKIT-GUEST: cmdline="))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())))
}

/// `VT <kind> <file> <sha256>` lines of the guest (or `host <file> <sha256>` of the host) as
/// (file, sum) pairs.
pub fn sums<'a>(output: &'a str, name: &str, kind: &str) -> Vec<(&'a str, &'a str)> {
    case_lines(output, name)
        .into_iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (k, file, sum) = match w.next()? {
                "VT" => (w.next()?, w.next()?, w.next()?),
                k => (k, w.next()?, w.next()?),
            };
            (k == kind && sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some((file, sum))
        })
        .collect()
}

pub fn assert_value(output: &str, name: &str, key: &str, want: &str) {
    let lines = case_lines(output, name).join("\n");
    let got = case_value(output, name, key);
    let hint = if key == "exit" && got == Some("137") {
        " (137: killed by SIGKILL; a guest is killed after GUEST_TIMEOUT=180 s, so it hung)"
    } else {
        ""
    };
    assert_eq!(got, Some(want), "{name}: expected {key}={want}{hint}:\n{lines}");
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The emulated host made ready for NAT cards (docs/TESTING.md, "The network in full guests"):
/// root on a tmpfs (passt sandboxes itself with `pivot_root`), `passt` and, beside it,
/// `passt.avx2` (which passt re-executes where the CPU has AVX2, as QEMU's `-cpu max` has), and
/// `nobody` in /etc/passwd (passt started as root becomes it). The script still gives `lo` a
/// MAC and the default route (passt's template interface).
pub fn with_passt(host: EmulatedHost, passt: &Path) -> EmulatedHost {
    let avx2 = passt.with_file_name("passt.avx2");
    let mut host = host
        .root_on_tmpfs()
        .binary(passt, "/usr/bin/passt")
        .data("/etc/passwd", PASSWD, 0o644)
        .data("/etc/group", GROUP, 0o644)
        .data("/etc/resolv.conf", "nameserver 127.0.0.1\n", 0o644);
    if avx2.is_file() {
        host = host.binary(&avx2, "/usr/bin/passt.avx2");
    }
    host
}

/// An example of this crate (crates/cli/examples), which `cargo test` builds next to the tests.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p virtkit-cli`, which builds the examples",
        path.display()
    );
    path
}
