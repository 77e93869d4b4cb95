//! A real system: Debian 12 with systemd, cloud-init and openssh-server (what the genericcloud
//! image holds), built from Debian's packages by `scripts/debian-image.sh`, made a VM with
//! `virtkit create --from root.img --ssh-key --user`, booted in the emulated KVM host (its own
//! kernel and initramfs, a direct boot). cloud-init takes the seed: the user with the key, the
//! hostname, and the guest agent (on the seed, installed as a systemd service), so `run --wait`
//! returns on its hello, `virtkit exec` runs commands and `virtkit ssh` (the system's ssh through
//! `vsock-proxy`, no network card) logs in as the seed's user with the key. Then a clone boots as
//! a new instance with its own hostname, reached the same ways.
//!
//! The image is 2 GiB sparse (about 550 MB used); it reaches the emulated host on a disk of its
//! own (an ext4 image holding it, made with `mkfs.ext4 -d`), which also holds the bundles.
//! Slow under emulation (systemd and cloud-init's Python under nested software emulation): the
//! test has its own timeout and prints how long each boot took.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

const SCRIPT: &str = r#"
if [ -d /virtkit/host-modules ]; then
    # The emulated host: its disk's driver (virtio-mmio, virtio-blk), the same kernel's modules
    # taken from the guest's initramfs.
    for m in virtio_ring virtio virtio_mmio virtio_blk; do
        insmod $G/$m.ko 2>/dev/null
    done
    for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
    echo "CASE setup: vda=$([ -b /dev/vda ] && echo 1 || echo 0)"
    dmesg | grep -iE 'virtio|vda' | tail -n 5 | sed 's/^/CASE setup: dmesg: /'
fi
if [ -b /dev/vda ]; then
    D=/mnt/d; mkdir -p $D; mount -t ext4 /dev/vda $D || echo "CASE setup: mount-failed"
else
    D=$(cat $G/debian-dir)
fi
export VIRTKIT_HOME=$D/home
rm -rf $VIRTKIT_HOME
clog() { cat $VIRTKIT_HOME/vms/$1/console.log 2>/dev/null | tr -d '\r'; }
# start NAME CASE: `run --detach --wait` until the agent's hello, watching the console: a boot
# whose console does not grow for 300 s has stalled (one CI run here saw the emulated host sit
# idle for 20 minutes in this test, cause not known). A stall is said with the VM process's
# threads, their kernel stacks and KVM's exit counters (the harness's vk_diag), the VM is
# stopped, and it returns 99.
start() {
    $VIRTKIT run $1 --detach --wait 1500 >$W/run-$1.log 2>&1 &
    wp=$!
    last=-1; still=0
    while kill -0 $wp 2>/dev/null; do
        sleep 5
        size=$(clog $1 | wc -c)
        if [ "$size" = "$last" ]; then still=$((still + 5)); else still=0; last=$size; fi
        if [ $still -ge 300 ]; then
            echo "CASE $2: stalled-console-bytes=$size"
            mkdir -p $W/diag
            cp $VIRTKIT_HOME/vms/$1/pid $W/diag/$1.pid 2>/dev/null
            clog $1 >$W/diag/$1.log
            VK_DIR=$W/diag vk_diag $1 | sed "s/^/CASE $2: stall: /"
            $VIRTKIT stop $1 --timeout 0 >/dev/null 2>&1
            kill $wp 2>/dev/null
            wait $wp
            return 99
        fi
    done
    wait $wp
}
# wait_login NAME CASE: until cloud-init's final message and the login prompt are on the console
# (at most 600 s). A VM that ends meanwhile, or whose console stops for 300 s, is said with its
# traces (the VM process's log, the kernel's log with any seccomp kill, its threads and KVM's
# counters) and it returns 1.
wait_login() {
    end=$(($(date +%s) + 600))
    last=-1; still=0
    until clog $1 | grep -q "login:" && clog $1 | grep -q "Cloud-init v.* finished" || [ $(date +%s) -ge $end ]; do
        sleep 2
        size=$(clog $1 | wc -c)
        if [ "$size" = "$last" ]; then still=$((still + 2)); else still=0; last=$size; fi
        if ! $VIRTKIT list | grep -q "^$1  *running" || [ $still -ge 300 ]; then
            echo "CASE $2: ended-or-stalled-after=$(($(date +%s) - s))"
            $VIRTKIT logs $1 --vmm 2>&1 | tail -n 30 | sed "s/^/CASE $2: vmm: /"
            dmesg | tail -n 15 | sed "s/^/CASE $2: dmesg: /"
            mkdir -p $W/diag
            cp $VIRTKIT_HOME/vms/$1/pid $W/diag/$1.pid 2>/dev/null
            clog $1 >$W/diag/$1.log
            VK_DIR=$W/diag vk_diag $1 | sed "s/^/CASE $2: stall: /"
            return 1
        fi
    done
    return 0
}
# boot NAME CASE: run it until the agent's hello, then wait for cloud-init's final message and
# the login prompt; then exec and ssh into it
boot() {
    s=$(date +%s)
    attempt=1
    # A triple fault of the inner guest (seen in its first instructions and in the middle of
    # cloud-init, only in this emulated host: QEMU TCG's nested SVM, which also panics or
    # triple-faults the emulated host itself now and then), or a stall (above): said, with its
    # traces, and the boot tried again, at most twice. A third one, or any other failure, fails
    # the test. (One CI run here saw four emulator faults, two in a row on one boot.)
    while :; do
        start $1 $2; r=$?
        up=$r
        agent=$(($(date +%s) - s))
        [ $r = 0 ] && { wait_login $1 $2 || r=98; }
        why=
        if [ $r = 99 ]; then
            why=stalled
        elif [ $r != 0 ] && $VIRTKIT logs $1 --vmm 2>&1 | grep -q "triple-faulted"; then
            why=$($VIRTKIT logs $1 --vmm 2>&1 | grep -o 'vCPU [0-9]* triple-faulted' | tail -n1 | tr ' ' '_')
        fi
        if [ -z "$why" ] || [ $attempt -ge 3 ]; then
            break
        fi
        attempt=$((attempt + 1))
        echo "CASE $2: retried-after=$why"
        clog $1 | tail -n 5 | sed "s/^/CASE $2: attempt-$attempt-before-console: /"
        dmesg | tail -n 5 | sed "s/^/CASE $2: attempt-$attempt-before-dmesg: /"
        $VIRTKIT stop $1 --timeout 0 >/dev/null 2>&1
        s=$(date +%s)
    done
    echo "CASE $2: run=$up"
    sed "s/^/CASE $2: run: /" $W/run-$1.log
    if [ $up != 0 ]; then
        $VIRTKIT logs $1 --vmm 2>&1 | tail -n 30 | sed "s/^/CASE $2: vmm: /"
        clog $1 | tail -n 40 | sed "s/^/CASE $2: early-console: /"
        dmesg | tail -n 10 | sed "s/^/CASE $2: dmesg: /"
    fi
    echo "CASE $2: agent-seconds=$agent"
    echo "CASE $2: boot-seconds=$(($(date +%s) - s))"
    clog $1 | grep -E "login:|Cloud-init v.* finished|Authorized keys from|ci-info: \| (ssh-ed25519)|instance-id|Failed|Reached target" | sed "s/^/CASE $2: console: /"
    echo "CASE $2: login-prompt=$(clog $1 | grep -o '^[a-z0-9-]* login:' | tail -n1 | cut -d' ' -f1)"
    echo "CASE $2: keys-for=$(clog $1 | grep -o 'Authorized keys from /home/[a-z]*/.ssh/authorized_keys for user [a-z]*' | tail -n1 | awk '{print $NF}')"
    echo "CASE $2: exec-hostname=$($VIRTKIT exec $1 -- hostname 2>&1)"
    echo "CASE $2: exec-cloud-init=$($VIRTKIT exec $1 -- cloud-init status 2>&1 | tr ' ' '_')"
    $VIRTKIT exec $1 -- sh -c 'cloud-init status --long; grep -E "WARNING|ERROR|Traceback|Failed" /var/log/cloud-init.log | tail -n 15' 2>&1 |
        sed "s/^/CASE $2: cloud-init: /"
    $VIRTKIT exec $1 -- sh -c 'exit 7'; echo "CASE $2: exec-exit=$?"
    timeout 300 $VIRTKIT ssh $1 -- -o BatchMode=yes 'echo ssh-user=$(id -un) ssh-host=$(hostname)' </dev/null >$W/ssh-$1.log 2>&1
    echo "CASE $2: ssh-exit=$?"
    sed "s/^/CASE $2: ssh: /" $W/ssh-$1.log
}

# One vCPU: the CI failures of this test were the emulator's (QEMU 7.2 TCG's nested SVM): inner
# triple faults, and the emulated host's kernel recursing in its page fault handler until its
# stack guard page on the second vCPU's thread ("vcpu-1", its GS base wrong); the full-guest
# tests with one vCPU each never saw either. Linux on 2 vCPUs stays covered by full_guest_tap's bridged guest.
mkdir -p /root/.ssh && cp $G/key $W/key && chmod 600 $W/key && cp $G/key.pub $W/key.pub
export VIRTKIT_AGENT=$G/virtkit-agent
# at CASE STEP: the emulated host's uptime when STEP ended, so a slow run shows where its time went.
at() { echo "CASE $1: at-$2=$(cut -d' ' -f1 /proc/uptime)"; }
at first start
$VIRTKIT create deb --from $D/root.img --kernel $D/vmlinuz --initrd $D/initrd.img \
    --cmdline "root=/dev/vda ro console=ttyS0 systemd.show_status=1" --memory 1G --cpus 1 --network none \
    --ssh-key $W/key.pub --user dev 2>&1 | grep -v "create deb:" | sed 's/^/CASE first: create: /'
echo "CASE first: get $($VIRTKIT get deb --format json | tr -d ' \n')"
at first created
boot deb first
at first checked
said=$($VIRTKIT stop deb --timeout 120 2>&1); echo "CASE first: stop=$?"
echo "$said" | sed 's/^/CASE first: stop-said: /'
at first stopped

# A clone: a new machine id, so a new cloud-init instance with its own hostname.
$VIRTKIT clone deb deb-2 >/dev/null; echo "CASE clone: clone=$?"
at clone cloned
boot deb-2 clone
at clone checked
said=$($VIRTKIT stop deb-2 --timeout 120 2>&1); echo "CASE clone: stop=$?"
echo "$said" | sed 's/^/CASE clone: stop-said: /'
at clone stopped
"#;

/// `scripts/debian-image.sh`'s directory (building the image the first time), or `None` after
/// SKIPPED when it cannot be built here.
fn debian_image() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/debian-image.sh")).output().ok()?;
    if !out.status.success() {
        virtkit_testkit::skip(&format!(
            "scripts/debian-image.sh could not build the Debian image: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        ));
        return None;
    }
    let dir = root.join(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("root.img").is_file().then_some(dir)
}

/// An ext4 image holding the Debian image's files (hard links where possible), for the
/// emulated host's own disk; room for two bundles' disks too.
fn outer_disk(image: &Path, scratch: &Path) -> PathBuf {
    let content = scratch.join("content");
    std::fs::create_dir_all(&content).unwrap();
    for f in ["root.img", "vmlinuz", "initrd.img"] {
        if std::fs::hard_link(image.join(f), content.join(f)).is_err() {
            let ok = Command::new("cp")
                .arg("--sparse=always")
                .arg(image.join(f))
                .arg(content.join(f))
                .status();
            assert!(ok.is_ok_and(|s| s.success()), "cp {f}");
        }
    }
    let disk = scratch.join("outer.img");
    std::fs::File::create(&disk).unwrap().set_len(8 << 30).unwrap();
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&disk)
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mkfs.ext4 -d");
    disk
}

/// The modules the emulated host needs for its own disk, from the guest initramfs (the same
/// kernel): written to `dir`, named `<module>.ko`.
fn host_disk_modules(assets: &virtkit_testkit::Assets, dir: &Path) -> Vec<(PathBuf, String)> {
    let names = ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko"];
    let out = Command::new("zcat")
        .arg(assets.guest_initramfs())
        .output()
        .unwrap();
    let found = virtkit_testkit::cpio::extract_by_name(&out.stdout, &names);
    found
        .into_iter()
        .map(|(name, data)| {
            let path = dir.join(&name);
            std::fs::write(&path, data).unwrap();
            (path, name)
        })
        .collect()
}

#[test]
fn a_debian_cloud_system_takes_the_seed_and_a_clone_is_a_new_instance() {
    let Some(assets) = prerequisites() else { return };
    let Some(image) = debian_image() else { return };
    let scratch = Scratch::new("debian-files");
    let disk = outer_disk(&image, &scratch.0);
    // A real key pair: `virtkit ssh` logs in with the private half.
    let key = scratch.0.join("key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "virtkit-test", "-f"])
        .arg(&key)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        virtkit_testkit::skip("ssh-keygen is not installed (Debian package openssh-client)");
        return;
    }
    let Some(ssh) = host_tool("ssh") else {
        virtkit_testkit::skip("ssh is not installed (Debian package openssh-client)");
        return;
    };
    let public = key.with_extension("pub");
    let agent = virtkit_testkit::agent::static_agent();
    let dir_file = scratch.0.join("debian-dir");
    std::fs::write(&dir_file, image.display().to_string()).unwrap();
    let mut files: Vec<(&Path, &str)> = vec![
        (&key, "key"),
        (&public, "key.pub"),
        (&dir_file, "debian-dir"),
        (&agent, "virtkit-agent"),
    ];
    let modules = host_disk_modules(&assets, &scratch.0);
    for (path, name) in &modules {
        files.push((path, name));
    }
    let drive = format!("file={},format=raw,if=none,id=deb,cache=unsafe", disk.display());
    // A boot that still failed after its retries inside one emulated host, with a triple fault
    // of the inner guest, gets one new emulated host: in this emulator a boot after an inner
    // triple fault tends to fail again in the same host (a local run saw three in a row).
    let mut out = String::new();
    for host_attempt in 1..=2 {
        let (ssh, drive) = (ssh.clone(), drive.clone());
        let run = run_guest_script_with(&assets, "debian", &[], &files, SCRIPT, move |run| {
            run.timeout(Duration::from_secs(3600)).emulated_host(move |host| {
                // A local run's emulated host once wedged here, silent for half an hour with its
                // CPUs spinning: the heartbeat makes that a retried emulator fault.
                host.heartbeat(Duration::from_secs(300))
                    .memory_mib(3072)
                    .binary(&ssh, "/usr/bin/ssh")
                    .data("/etc/passwd", PASSWD, 0o644)
                    .data("/etc/group", GROUP, 0o644)
                    .qemu_arg("-drive")
                    .qemu_arg(&drive)
                    .qemu_arg("-device")
                    .qemu_arg("virtio-blk-device,drive=deb")
            })
        });
        let Some(run) = run else { return };
        let failed = ["first", "clone"].iter().any(|case| {
            case_value(&run, case, "run") != Some("0")
                || case_value(&run, case, "ended-or-stalled-after").is_some()
        });
        out = run;
        if !(failed && out.contains("triple-faulted")) || host_attempt == 2 {
            break;
        }
        eprintln!("debian: NOTICE: the inner guest kept triple-faulting; the whole emulated host is started once more");
    }
    assert_value(&out, "setup", "vda", "1");
    let first = case_lines(&out, "first").join("\n");
    let clone = case_lines(&out, "clone").join("\n");
    eprintln!(
        "debian: first boot {} s (agent up after {} s), clone's boot {} s (agent {} s)",
        case_value(&out, "first", "boot-seconds").unwrap_or("?"),
        case_value(&out, "first", "agent-seconds").unwrap_or("?"),
        case_value(&out, "clone", "boot-seconds").unwrap_or("?"),
        case_value(&out, "clone", "agent-seconds").unwrap_or("?")
    );
    // Written to the real stderr, past libtest's capture: a passing run's slow step is a finding
    // too (one run's first stop took the whole 120 s), and CI shows passing tests' output only so.
    let at = |case: &str, step: &str| {
        case_value(&out, case, &format!("at-{step}"))
            .unwrap_or("?")
            .to_string()
    };
    let mut timeline = format!(
        "debian: the emulated host's uptime, s: start {}, created {}, first checked {}, stopped {}, cloned {}, clone checked {}, stopped {}\n",
        at("first", "start"),
        at("first", "created"),
        at("first", "checked"),
        at("first", "stopped"),
        at("clone", "cloned"),
        at("clone", "checked"),
        at("clone", "stopped")
    );
    for case in ["first", "clone"] {
        for said in case_lines(&out, case)
            .iter()
            .filter_map(|l| l.split_once("stop-said: "))
        {
            timeline.push_str(&format!("debian: the {case} VM's stop said: {}\n", said.1));
        }
    }
    for case in ["first", "clone"] {
        if let Some(why) = case_value(&out, case, "retried-after") {
            // A retry is a finding, not a pass to forget.
            timeline.push_str(&format!(
                "debian: NOTICE: the {case} boot was tried again after: {why}\n"
            ));
        }
    }
    virtkit_testkit::tell(&timeline);
    assert_value(&out, "first", "run", "0");
    assert!(
        first.contains("Cloud-init v."),
        "cloud-init never finished:\n{first}"
    );
    // The seed's hostname and user (with the key) are the system's.
    assert_value(&out, "first", "login-prompt", "deb");
    assert_value(&out, "first", "keys-for", "dev");
    // The agent from the seed: its hello ended `run --wait`; exec runs in the guest.
    assert_value(&out, "first", "exec-hostname", "deb");
    assert_value(&out, "first", "exec-cloud-init", "status:_done");
    assert_value(&out, "first", "exec-exit", "7");
    // ssh through the vsock, as the seed's user with the key.
    assert_value(&out, "first", "ssh-exit", "0");
    assert_value(&out, "first", "ssh-user", "dev");
    assert_value(&out, "first", "ssh-host", "deb");
    assert_value(&out, "first", "stop", "0");
    // The clone: cloud-init ran again (a new instance) with the clone's name.
    assert_value(&out, "clone", "clone", "0");
    assert_value(&out, "clone", "login-prompt", "deb-2");
    assert_value(&out, "clone", "keys-for", "dev");
    assert_value(&out, "clone", "exec-hostname", "deb-2");
    assert_value(&out, "clone", "ssh-host", "deb-2");
    assert!(clone.contains("Cloud-init v."), "{clone}");
}
