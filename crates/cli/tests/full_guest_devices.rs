//! Full guests with our virtio devices beyond disks: the stock Debian kernel's own drivers
//! (`virtio_rng`, ...) against them, and pausing a VM with disk I/O in flight. Every case runs
//! in one boot of the emulated KVM host (or directly on hardware KVM); the scripts' helpers are
//! in `support/`.

mod support;

use support::*;

/// Entropy: the driver binds, becomes the current hwrng, and 64 KiB read from `/dev/hwrng`
/// do not compress (gzip's output is no smaller than its input).
const GUEST_RNG: &str = r#"
say rng-current=$(cat /sys/class/misc/hw_random/rng_current)
head -c 65536 /dev/hwrng >/tmp/r; say rng-read=$?
say rng-bytes=$(wc -c </tmp/r) rng-gz=$(gzip -c /tmp/r | wc -c) zeros-gz=$(head -c 65536 /dev/zero | gzip -c | wc -c)
"#;

/// Entropy with a rate limit: 32 KiB at 8 KiB/s with a 1 KiB burst take about 4 s of the
/// guest's own clock.
const GUEST_RNG_LIMITED: &str = r#"
s=$(cut -d' ' -f1 /proc/uptime)
head -c 32768 /dev/hwrng >/tmp/r; say rng-read=$?
e=$(cut -d' ' -f1 /proc/uptime)
say rng-bytes=$(wc -c </tmp/r) start=$s end=$e
"#;

/// Disk I/O to pause in the middle of: 128 MiB of O_DIRECT writes, many requests in flight.
const GUEST_PAUSE_IO: &str = r#"
say pause-writing
yes vt-pause-data | dd of=/dev/vda bs=64k count=2048 iflag=fullblock oflag=direct 2>/tmp/dd.err
say pause-dd=$? "pause-dd-says: $(tr '\n' ' ' </tmp/dd.err)"
say pause-last-lines=$(dd if=/dev/vda bs=64k skip=2047 count=1 iflag=direct 2>/dev/null | grep -c vt-pause-data)
say pause-done
"#;

const GUEST_SCRIPTS: [(&str, &str); 3] = [
    ("rng", GUEST_RNG),
    ("rng_limited", GUEST_RNG_LIMITED),
    ("pauseio", GUEST_PAUSE_IO),
];

const DEVICES_SCRIPT: &str = r#"
VM_ARGS="--entropy" run_guest rng
VM_ARGS="--entropy 8K,burst=1K" run_guest rng_limited

# Pause with disk I/O in flight: the disk image (sparse, on tmpfs, so its allocated blocks are
# the writes that reached it) must not grow while the VM is paused, and must after resume.
mkdir -p $W/p && mount -t tmpfs -o size=600m tmpfs $W/p 2>/dev/null
export VIRTKIT_HOME=$W/p/home
truncate -s 8M $W/p/root.img
$VIRTKIT create p1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/p/root.img --disk-size 160M \
    --cpus 1 --memory 256M \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/pauseio.sh\" virtkit.action=wait" >/dev/null 2>&1
echo "CASE pause: create=$?"
disk=$VIRTKIT_HOME/vms/p1/disk.img
$VIRTKIT run p1 --detach; echo "CASE pause: run=$?"
blocks() { stat -c %b $disk; }
end=$(($(date +%s) + 150))
until [ "$(blocks)" -ge 16384 ] || [ $(date +%s) -ge $end ]; do sleep 0.2; done
echo "CASE pause: writing-blocks=$(blocks)"
$VIRTKIT pause p1; echo "CASE pause: pause=$?"
b1=$(blocks); sleep 3; b2=$(blocks)
echo "CASE pause: paused-blocks-start=$b1 paused-blocks-end=$b2"
$VIRTKIT resume p1; echo "CASE pause: resume=$?"
end=$(($(date +%s) + 150))
until $VIRTKIT logs p1 | grep -q "VT pause-done" || [ $(date +%s) -ge $end ]; do sleep 0.5; done
$VIRTKIT logs p1 | tr -d '\r' | grep '^VT ' | sed "s/^/CASE pause: /"
echo "CASE pause: final-blocks=$(blocks)"
$VIRTKIT stop p1 --timeout 30 >/dev/null; echo "CASE pause: stop=$?"
"#;

fn number(out: &str, name: &str, key: &str) -> f64 {
    let lines = case_lines(out, name).join("\n");
    case_value(out, name, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no number {key}=:\n{lines}"))
}

#[test]
fn guest_drivers_use_entropy_and_a_paused_vm_does_no_disk_io() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_guest_script(&assets, "devices", &GUEST_SCRIPTS, &[], DEVICES_SCRIPT) else {
        return;
    };

    // Entropy: the guest's driver is the current hwrng, its bytes are incompressible.
    assert_value(&out, "rng", "exit", "0");
    assert_value(&out, "rng", "rng-current", "virtio_rng.0");
    assert_value(&out, "rng", "rng-read", "0");
    assert_value(&out, "rng", "rng-bytes", "65536");
    let (gz, zeros) = (number(&out, "rng", "rng-gz"), number(&out, "rng", "zeros-gz"));
    assert!(
        gz >= 65536.0,
        "64 KiB of entropy compressed to {gz} bytes: not random"
    );
    assert!(zeros < 1024.0, "the control (zeros) compresses: {zeros}");

    // The rate limit: 31 KiB beyond the burst at 8 KiB/s is at least 3.8 s; well under a
    // minute unless the limiter stalls.
    assert_value(&out, "rng_limited", "exit", "0");
    assert_value(&out, "rng_limited", "rng-bytes", "32768");
    let took = number(&out, "rng_limited", "end") - number(&out, "rng_limited", "start");
    assert!(took >= 3.5, "32 KiB at 8 KiB/s took only {took:.2} s");
    assert!(took < 60.0, "32 KiB at 8 KiB/s took {took:.2} s");

    // Pause: no write reaches the disk while paused; all of them after resume.
    for key in ["create", "run", "pause", "resume", "stop"] {
        assert_value(&out, "pause", key, "0");
    }
    let writing = number(&out, "pause", "writing-blocks");
    assert!(writing >= 16384.0, "the guest was not writing yet: {writing}");
    let (start, end) = (
        number(&out, "pause", "paused-blocks-start"),
        number(&out, "pause", "paused-blocks-end"),
    );
    assert_eq!(start, end, "the disk grew while the VM was paused");
    assert_value(&out, "pause", "pause-dd", "0");
    // The last 64 KiB the guest wrote reads back: about 4681 lines of 14 bytes.
    assert!(number(&out, "pause", "pause-last-lines") >= 4600.0);
    assert!(
        number(&out, "pause", "final-blocks") >= f64::from(128 << 11),
        "all 128 MiB reached the disk after resume"
    );
    assert!(
        end < f64::from(128 << 11),
        "the pause came after the guest had finished writing"
    );
}
