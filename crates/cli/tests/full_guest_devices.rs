//! Full guests with our virtio devices beyond disks: the stock Debian kernel's own drivers
//! (`virtio_rng`, `virtio_balloon`, `virtio_console`) and Debian's `qemu-guest-agent` against
//! them, through the CLI a user has (`--entropy`, `set --balloon`, `get`, `--console hvc`,
//! `console --port`), and pausing a VM with disk I/O in flight. Every case runs
//! in one boot of the emulated KVM host (or directly on hardware KVM); the scripts' helpers are
//! in `support/`.

mod support;

use support::*;

/// The asset recipe that put Debian's qemu-guest-agent (`qemu-ga`) into the guest.
const RECIPE_WITH_QEMU_GA: u32 = 4;

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

/// A named VM with a balloon and console ports: a shell on `hvc0` (the VM's console with
/// `run --console hvc`), an echo service on the port `vt.echo`, and Debian's `qemu-ga` on
/// `org.qemu.guest_agent.0` when the assets have it.
const GUEST_DEVICES: &str = r#"
port_dev() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat $p/name 2>/dev/null)" = "$1" ] && echo /dev/${p##*/}
    done
}
say hvc0=$(cat /sys/class/tty/hvc0/dev 2>/dev/null)
setsid sh -c 'exec sh -i </dev/hvc0 >/dev/hvc0 2>&1' &
e=$(port_dev vt.echo); say echo-port=$e
# A read with no host client connected is an end of file: wait for one and read again.
( exec 3<>$e; while :; do while read -r l <&3; do echo "echo:$l" >&3; done; sleep 0.2; done ) &
q=$(port_dev org.qemu.guest_agent.0); say qga-port=$q
if [ -x /usr/sbin/qemu-ga ]; then
    mkdir -p /var/run /run /var/lib/qemu-ga
    /usr/sbin/qemu-ga -m virtio-serial -p $q >/tmp/qga.log 2>&1 &
    say qga-started
fi
say devices-ready
"#;

/// The virtio keyboard and tablet under Linux's `virtio_input` and `evdev`: their names in
/// `/proc/bus/input/devices`, then every event the guest reads from each one's event node (and
/// from the PS/2 keyboard's, which must get nothing while the virtio keyboard is up), decoded
/// from `struct input_event` (24 bytes: time, type, code, value) as `type:code:value`.
const GUEST_INPUT: &str = r#"
node() {
    for d in /sys/class/input/event*; do
        [ "$(cat $d/device/name 2>/dev/null)" = "$1" ] && echo /dev/input/${d##*/}
    done
}
say input-names=$(grep '^N: Name="virtkit' /proc/bus/input/devices | cut -d'"' -f2 | tr ' ' _ | sort | tr '\n' ,)
k=$(node "virtkit keyboard"); t=$(node "virtkit tablet"); p=$(node "AT Translated Set 2 keyboard")
say kbd-node=$k tablet-node=$t ps2-node=$p
: >/tmp/kbd; : >/tmp/tablet; : >/tmp/ps2
[ -n "$k" ] && cat $k >/tmp/kbd &
[ -n "$t" ] && cat $t >/tmp/tablet &
[ -n "$p" ] && cat $p >/tmp/ps2 &
say input-ready
# A click is 7 events, "aB" 12 (Shift around the B): wait for them, at most 100 s.
end=$(($(cut -d. -f1 /proc/uptime) + 100))
while [ $(($(wc -c </tmp/kbd) + $(wc -c </tmp/tablet))) -lt $((19 * 24)) ] && [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
    sleep 0.2
done
sleep 1
events() { od -An -v -tu2 -w24 $1 | awk '{ printf "%s:%s:%d,", $9, $10, $11 + 65536 * $12 }'; }
say tablet-events=$(events /tmp/tablet)
say kbd-events=$(events /tmp/kbd)
say ps2-bytes=$(wc -c </tmp/ps2)
say input-done
# Caps Lock's LED on, as a program sets it through evdev (EV_LED 0x11, LED_CAPSL 1, value 1,
# then SYN_REPORT): the driver puts it on the status queue, and a VNC client that asks is told.
printf '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\021\0\001\0\001\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0' >$k
say leds-set=$?
"#;

/// Linux's bochs-drm on the display (the generic kernel: the cloud kernel has no DRM): the
/// driver bound to the display, the mode it took from the EDID, the fbdev it made; then four
/// bands of colour (dark red, green, blue and grey: XRGB8888, so bytes B G R X) written into
/// `/dev/fb0` for a screenshot to show. The text console is unbound from the framebuffer first,
/// so its cursor cannot draw over them. Then a heartbeat every 2 s, for the run that resumes it
/// after a suspend.
const GUEST_DRM: &str = r#"
say drm-driver=$(basename "$(readlink /sys/class/drm/card0/device/driver)")
say drm-initialized=$(dmesg | grep -c 'Initialized bochs-drm')
say drm-mode=$(head -n1 /sys/class/drm/card0-Virtual-1/modes 2>/dev/null)
say fb-name=$(cat /sys/class/graphics/fb0/name) fb-size=$(cat /sys/class/graphics/fb0/virtual_size) fb-bpp=$(cat /sys/class/graphics/fb0/bits_per_pixel)
for c in /sys/class/vtconsole/vtcon*; do grep -q 'frame buffer' $c/name && echo 0 >$c/bind; done
stride=$(cat /sys/class/graphics/fb0/stride)
# band PIXEL BYTES: the 4-byte pixel repeated to BYTES bytes.
band() {
    printf "$1" >/tmp/b
    while [ $(wc -c </tmp/b) -lt $2 ]; do cat /tmp/b /tmp/b >/tmp/b2; mv /tmp/b2 /tmp/b; done
    head -c $2 /tmp/b
}
rows=$((stride * 120))
{ band '\012\012\170\001' $rows; band '\012\170\012\001' $rows; band '\170\012\012\001' $rows; band '\144\144\144\001' $rows; } >/dev/fb0
say drm-drawn=$?
# A heartbeat: after a suspend and a resume, the new run's log shows the guest runs on.
while :; do sleep 2; say heartbeat; done
"#;

const GUEST_SCRIPTS: [(&str, &str); 6] = [
    ("input", GUEST_INPUT),
    ("drm", GUEST_DRM),
    ("rng", GUEST_RNG),
    ("rng_limited", GUEST_RNG_LIMITED),
    ("pauseio", GUEST_PAUSE_IO),
    ("devices", GUEST_DEVICES),
];

const DEVICES_SCRIPT: &str = r#"
# display_vm CASE KERNEL INITRD SIZE CMDLINE: a named VM (called CASE) on a tmpfs home of its
# own, booting KERNEL and INITRD with CMDLINE and the guest script /vt/CASE.sh, run with a
# display of SIZE; prints `CASE CASE: create=` and `run=`.
display_vm() {
    # Room for a suspended guest's state file (the memory it used) beside its disk.
    mkdir -p $W/$1 && mount -t tmpfs -o size=512m tmpfs $W/$1 2>/dev/null
    export VIRTKIT_HOME=$W/$1/home
    truncate -s 8M $W/$1/root.img
    $VIRTKIT create $1 --kernel $2 --initrd $3 --from $W/$1/root.img --disk-size 16M \
        --cpus 1 --memory 256M --network none \
        --cmdline "console=ttyS0 quiet $5 virtkit.run=\"sh /vt/$1.sh\" virtkit.action=wait" >/dev/null 2>&1
    echo "CASE $1: create=$?"
    $VIRTKIT run $1 --detach --display $4 >/dev/null; echo "CASE $1: run=$?"
}
# wait_guest NAME MARKER: until the guest's console says `VT MARKER`, at most 180 s.
wait_guest() {
    end=$(($(date +%s) + 180))
    until $VIRTKIT logs $1 | grep -q "VT $2" || [ $(date +%s) -ge $end ]; do sleep 0.5; done
}
# end_guest NAME: its `VT` lines tagged with its case, then stop and delete it (and go back to
# the default VIRTKIT_HOME).
end_guest() {
    $VIRTKIT logs $1 | tr -d '\r' | grep '^VT ' | sed "s/^/CASE $1: /"
    $VIRTKIT stop $1 --timeout 0 >/dev/null; echo "CASE $1: stop=$?"
    $VIRTKIT delete $1 >/dev/null
    unset VIRTKIT_HOME
}

# Linux's own driver of the display: the generic kernel ($G/dvmlinuz, with its modules in
# $G/dinitrd) binds bochs-drm; what the guest draws into /dev/fb0, `virtkit screenshot` shows
# (printed as hex for the test to decode).
display_vm drm $G/dvmlinuz $G/dinitrd 640x480 ""
wait_guest drm drm-drawn
sleep 1
$VIRTKIT screenshot drm $W/drm/shot.png; echo "CASE drm: screenshot=$?"
echo "CASE drm: png=$(od -An -v -tx1 $W/drm/shot.png | tr -d ' \n')"
# Suspended, then resumed by a plain run (the display, given for the first run only, comes back
# from the state file): the screen is what the guest drew, and the guest runs on. The first
# run's lines first: each run's log starts anew.
$VIRTKIT logs drm | tr -d '\r' | grep '^VT drm\|^VT fb' | sed "s/^/CASE drm: /"
$VIRTKIT suspend drm >/dev/null; echo "CASE drm: suspend=$?"
$VIRTKIT run drm --detach >/dev/null; echo "CASE drm: resume=$?"
$VIRTKIT screenshot drm $W/drm/resumed.png; echo "CASE drm: resumed-screenshot=$?"
echo "CASE drm: resumed-png=$(od -An -v -tx1 $W/drm/resumed.png | tr -d ' \n')"
wait_guest drm heartbeat
echo "CASE drm: heartbeats-after-resume=$($VIRTKIT logs drm | grep -c 'VT heartbeat')"
echo "CASE drm: boots-after-resume=$($VIRTKIT logs drm | grep -c 'VIRTKIT-GUEST: cmdline=')"
end_guest drm

# Keyboard and pointer: a display brings a virtio keyboard and tablet; a VNC client's click and
# typing reach the guest's drivers through them (vnc_input speaks RFB on the bundle's vnc.sock).
# Linux also finds the PS/2 keyboard (the DSDT describes it with a display), which must get
# nothing while the virtio keyboard is up.
display_vm input $G/vmlinuz $G/initrd 800x600 ""
wait_guest input input-ready
sleep 1
$VNC_INPUT $VIRTKIT_HOME/vms/input/vnc.sock click 400 300 type aB >$W/input/vnc.out 2>&1
echo "CASE input: vnc=$?"
sed "s/^/CASE input: /" $W/input/vnc.out
wait_guest input leds-set
sleep 1
$VNC_INPUT $VIRTKIT_HOME/vms/input/vnc.sock leds >$W/input/leds.out 2>&1
echo "CASE input: vnc-leds=$?"
sed "s/^/CASE input: /" $W/input/leds.out
end_guest input

VM_ARGS="--entropy" run_guest rng
VM_ARGS="--entropy 8K,burst=1K" run_guest rng_limited

# Pause with disk I/O in flight: the disk image (sparse, on tmpfs, so its allocated blocks are
# the writes that reached it) must not grow while the VM is paused, and must after resume.
mkdir -p $W/p && mount -t tmpfs -o size=600m tmpfs $W/p 2>/dev/null
export VIRTKIT_HOME=$W/p/home
truncate -s 8M $W/p/root.img
$VIRTKIT create p1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/p/root.img --disk-size 160M \
    --cpus 1 --memory 256M --network none \
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
$VIRTKIT delete p1 >/dev/null

# A named VM on the virtio console, with a balloon (every new VM has one) and two ports.
$VIRTKIT create d1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/p/root.img --disk-size 16M \
    --cpus 1 --memory 512M --network none --port vt.echo --port org.qemu.guest_agent.0 \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/devices.sh\" virtkit.action=wait" >/dev/null 2>&1
echo "CASE dev: create=$?"
$VIRTKIT run d1 --detach --console hvc >/dev/null; echo "CASE dev: run=$?"
serial=$VIRTKIT_HOME/vms/d1/serial.log
end=$(($(date +%s) + 150))
until grep -q "VT devices-ready" $serial 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.5; done
tr -d '\r' <$serial | grep '^VT ' | sed "s/^/CASE dev: /"
# type COMMAND into hvc0 through `virtkit console`; print what comes back within SECONDS (3)
typed() { (echo "$1"; sleep ${2:-3}) | timeout $((${2:-3} + 2)) $VIRTKIT console d1 2>/dev/null | tr -d '\r'; }
# a port: send LINE, print what comes back
port() { (echo "$2"; sleep 3) | timeout 5 $VIRTKIT console d1 --port $1 2>/dev/null | tr -d '\r'; }
typed 'echo HVC-$((6*7))' | grep -o 'HVC-[0-9][0-9]*' | sed "s/^/CASE dev: typed=/"
memtotal() { typed "echo MEMTOTAL=\$(awk '/MemTotal/{print \$2}' /proc/meminfo)" | grep -o 'MEMTOTAL=[0-9][0-9]*' | tail -n1 | cut -d= -f2; }
port vt.echo hello-port | grep -o 'echo:hello-port' | sed "s/^/CASE dev: port-answer=/"
port org.qemu.guest_agent.0 '{"execute":"guest-ping"}' | tr -d ' ' | sed "s/^/CASE dev: qga-ping /"
port org.qemu.guest_agent.0 '{"execute":"guest-network-get-interfaces"}' | tr -d ' ' | head -c 300 | sed "s/^/CASE dev: qga-ifaces /"
echo

# The balloon: take half of the memory, give it back.
balloon_actual() { $VIRTKIT get d1 --format json | tr -d ' \n' | grep -o '"actual_bytes":[0-9]*' | cut -d: -f2; }
wait_actual() { end=$(($(date +%s) + 90)); until [ "$(balloon_actual)" = "$1" ] || [ $(date +%s) -ge $end ]; do sleep 1; done; }
echo "CASE dev: memtotal-before=$(memtotal)"
$VIRTKIT set d1 --balloon 256M; echo "CASE dev: inflate=$?"
wait_actual 268435456
echo "CASE dev: actual-inflated=$(balloon_actual) memtotal-inflated=$(memtotal)"
sleep 6
echo "CASE dev: get $($VIRTKIT get d1 --format json | tr -d ' \n')"
$VIRTKIT set d1 --balloon 0; echo "CASE dev: deflate=$?"
wait_actual 0
echo "CASE dev: actual-deflated=$(balloon_actual) memtotal-deflated=$(memtotal)"

# Free page reporting: the VM process's RSS follows the guest's use of its memory.
pid=$(cat $VIRTKIT_HOME/vms/d1/pid)
rss() { awk '/VmRSS/{print $2}' /proc/$pid/status; }
echo "CASE dev: rss-start=$(rss)"
typed 'dd if=/dev/zero of=/tmp/big bs=1M count=200 2>/dev/null; echo FILLED=$?' 20 | grep -o 'FILLED=[0-9]' | sed "s/^/CASE dev: /"
echo "CASE dev: rss-filled=$(rss)"
typed 'rm /tmp/big; echo REMOVED=$?' | grep -o 'REMOVED=[0-9]' | sed "s/^/CASE dev: /"
sleep 12
echo "CASE dev: rss-freed=$(rss)"
# A VM process gone by now (one CI run: during the guest's 200 MB write) says why, if it can.
if [ -z "$(rss)" ]; then
    $VIRTKIT logs d1 --vmm 2>&1 | tail -15 | sed "s/^/CASE dev: vmm: /"
    dmesg | tail -15 | sed "s/^/CASE dev: dmesg: /"
fi
$VIRTKIT stop d1 --timeout 30 >/dev/null; echo "CASE dev: stop=$?"
"#;

fn number(out: &str, name: &str, key: &str) -> f64 {
    let lines = case_lines(out, name).join("\n");
    case_value(out, name, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no number {key}=:\n{lines}"))
}

#[test]
fn guest_drivers_use_our_devices_and_a_paused_vm_does_no_disk_io() {
    let Some(assets) = prerequisites() else { return };
    if assets.recipe_version() < RECIPE_WITH_QEMU_GA {
        virtkit_testkit::skip(&format!(
            "the test assets are recipe {}; this test needs recipe {RECIPE_WITH_QEMU_GA} or later \
             (qemu-ga in the guest): run scripts/assets.sh",
            assets.recipe_version()
        ));
        return;
    }
    let Some((display_kernel, display_initramfs)) = assets.display_kernel() else {
        virtkit_testkit::skip(&format!(
            "the test assets are recipe {}; this test needs recipe 7 or later (the display \
             kernel): run scripts/assets.sh",
            assets.recipe_version()
        ));
        return;
    };
    let scratch = Scratch::new("devices-display");
    let display_initrd = scratch.0.join("dinitrd");
    initrd_from(display_initramfs, &display_initrd, &GUEST_SCRIPTS);
    let vnc_input = example("vnc_input");
    let files = [
        (display_kernel, "dvmlinuz"),
        (display_initrd.as_path(), "dinitrd"),
    ];
    let Some(out) = run_guest_script_with(
        &assets,
        "devices",
        &GUEST_SCRIPTS,
        &files,
        DEVICES_SCRIPT,
        |run| run.program("VNC_INPUT", &vnc_input),
    ) else {
        return;
    };
    check_input(&out);
    check_drm(&out);

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

    check_console_and_balloon(&out);
}

fn check_drm(out: &str) {
    let lines = case_lines(out, "drm").join("\n");
    for key in [
        "create",
        "run",
        "screenshot",
        "stop",
        "drm-drawn",
        "suspend",
        "resume",
        "resumed-screenshot",
        "boots-after-resume",
    ] {
        assert_value(out, "drm", key, "0");
    }
    let heartbeats = case_value(out, "drm", "heartbeats-after-resume").and_then(|n| n.parse::<u32>().ok());
    assert!(
        heartbeats.is_some_and(|n| n > 0),
        "the guest runs on after the resume:\n{lines}"
    );
    // bochs-drm bound the display, took the EDID's preferred mode and made an fbdev of it.
    assert_value(out, "drm", "drm-driver", "bochs-drm");
    assert_value(out, "drm", "drm-initialized", "1");
    assert_value(out, "drm", "drm-mode", "640x480");
    assert_value(out, "drm", "fb-name", "bochs-drmdrmfb");
    assert_value(out, "drm", "fb-size", "640,480");
    assert_value(out, "drm", "fb-bpp", "32");
    // The screenshots, before the suspend and after the resume, show the four bands the guest
    // drew, every pixel of them.
    for key in ["png", "resumed-png"] {
        check_bands(out, key, &lines);
    }
}

fn check_bands(out: &str, key: &str, lines: &str) {
    let hex = case_value(out, "drm", key).unwrap_or_else(|| panic!("no screenshot {key}:\n{lines}"));
    let png: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let mut reader = png::Decoder::new(png.as_slice())
        .read_info()
        .expect("a PNG header");
    let mut rgba = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgba).expect("a PNG image");
    assert_eq!((info.width, info.height), (640, 480));
    let bands = [[120, 10, 10], [10, 120, 10], [10, 10, 120], [100, 100, 100]];
    for (row, pixel) in rgba.chunks_exact(640 * 4).enumerate() {
        let want = bands[row / 120];
        let wrong = pixel.chunks_exact(4).filter(|p| p[..3] != want).count();
        assert_eq!(wrong, 0, "{key}: row {row}: {wrong} pixels are not {want:?}");
    }
}

fn check_input(out: &str) {
    let lines = case_lines(out, "input").join("\n");
    for key in ["create", "run", "vnc", "stop"] {
        assert_value(out, "input", key, "0");
    }
    // Linux's virtio_input bound both devices, and evdev made them event nodes.
    assert_value(out, "input", "input-names", "virtkit_keyboard,virtkit_tablet,");
    // The click at (400, 300) of 800x600: the tablet's 0..32767 axes (ABS_X 3:0, ABS_Y 3:1),
    // then BTN_LEFT (1:272) down and up, each report ended by SYN_REPORT (0:0).
    let (x, y) = ((400 * 32767 + 399) / 799, (300 * 32767 + 299) / 599);
    assert_value(
        out,
        "input",
        "tablet-events",
        &format!("3:0:{x},3:1:{y},0:0:0,1:272:1,0:0:0,1:272:0,0:0:0,"),
    );
    // "aB": KEY_A (30) down and up; Shift (42) around the press of KEY_B (48), as the client
    // sent the keysym `B` alone.
    assert_value(
        out,
        "input",
        "kbd-events",
        "1:30:1,0:0:0,1:30:0,0:0:0,1:42:1,0:0:0,1:48:1,0:0:0,1:42:0,0:0:0,1:48:0,0:0:0,",
    );
    // Not also to the PS/2 keyboard (the guest would read every key twice), which Linux found
    // through the DSDT (PNP0303).
    assert!(
        case_lines(out, "input")
            .iter()
            .any(|l| l.contains("ps2-node=/dev/input/")),
        "the guest's atkbd has no event node:\n{lines}"
    );
    assert_value(out, "input", "ps2-bytes", "0");
    // Caps Lock's LED, set by the guest on the virtio keyboard, told to a VNC client in QEMU's
    // LED-state bits (bit 2: Caps Lock).
    assert_value(out, "input", "leds-set", "0");
    assert_value(out, "input", "vnc-leds", "0");
    assert_value(out, "input", "leds", "4");
}

fn check_console_and_balloon(out: &str) {
    let lines = case_lines(out, "dev").join("\n");
    for key in ["create", "run", "inflate", "deflate", "stop"] {
        assert_value(out, "dev", key, "0");
    }
    // A shell on hvc0 answers what is typed through `virtkit console`.
    assert_value(out, "dev", "typed", "HVC-42");
    // A named port's bytes reach its socket and come back.
    assert_value(out, "dev", "port-answer", "echo:hello-port");
    // Debian's qemu-guest-agent answers over org.qemu.guest_agent.0.
    assert!(lines.contains("qga-ping {\"return\":{}}"), "guest-ping:\n{lines}");
    assert!(
        lines.contains("\"name\":\"lo\""),
        "guest-network-get-interfaces:\n{lines}"
    );
    // The balloon takes 256 MiB from the guest's MemTotal and gives it back.
    let before = number(out, "dev", "memtotal-before");
    let inflated = number(out, "dev", "memtotal-inflated");
    let deflated = number(out, "dev", "memtotal-deflated");
    assert_value(out, "dev", "actual-inflated", "268435456");
    assert!(
        (before - inflated - 262144.0).abs() <= 1024.0,
        "MemTotal went from {before} to {inflated} KiB, not 256 MiB less:\n{lines}"
    );
    assert_value(out, "dev", "actual-deflated", "0");
    assert!(
        (deflated - before).abs() <= 1024.0,
        "MemTotal after deflate: {deflated}, before: {before}"
    );
    // The guest's statistics reach `virtkit get`.
    let get: serde_json::Value = serde_json::from_str(
        case_lines(out, "dev")
            .iter()
            .find_map(|l| l.strip_prefix("get "))
            .expect(&lines),
    )
    .unwrap();
    let stats = &get["balloon"]["statistics"];
    let total = stats["total_memory"].as_u64().expect(&lines);
    assert!(
        (total as f64 / 1024.0 - inflated).abs() <= 8192.0,
        "statistics total {total} B against MemTotal {inflated} KiB"
    );
    assert!(stats["free_memory"].as_u64().expect(&lines) > 0);
    // Free page reporting: most of the 200 MiB the guest filled and freed leaves the VMM's RSS.
    assert_value(out, "dev", "FILLED", "0");
    assert_value(out, "dev", "REMOVED", "0");
    let (start, filled, freed) = (
        number(out, "dev", "rss-start"),
        number(out, "dev", "rss-filled"),
        number(out, "dev", "rss-freed"),
    );
    assert!(
        filled - start > 150.0 * 1024.0,
        "filling 200 MiB grew the RSS {start} -> {filled} KiB"
    );
    assert!(
        filled - freed > 0.75 * (filled - start),
        "the RSS fell only from {filled} to {freed} KiB after the guest freed 200 MiB (start {start})"
    );
}
