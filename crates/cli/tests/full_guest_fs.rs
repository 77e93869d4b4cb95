//! Shared directories in a full guest: the stock kernel's `virtiofs` driver against our
//! virtio-fs device and virtiofsd (the Rust daemon, `scripts/build-virtiofsd.sh`), through
//! `virtkit run --share`. One boot of the emulated KVM host (or a direct run on hardware KVM)
//! runs every case:
//!
//! - `fs`: two shares at once, `src` (read-write, tag from the directory's name) and `data`
//!   (`:data:ro`). The guest mounts both by tag; reads a 4 MiB file the host wrote (sha256), a
//!   mode, a symlink and a hard link the host made; writes 4 MiB, a file it chowns, a symlink
//!   and a hard link; reads an open file after `rm` and after `mv`; a write to `data` fails with
//!   EROFS.
//! - `host`: what the guest wrote, as the host sees it (sums, owners, links, modes), and no
//!   virtiofsd left once the VM has stopped.
//! - `kill`: `kill -9` of a VM process with a mounted share leaves no virtiofsd.
//! - `auto`: a named VM made with `create --share` (kept in its bundle, shown by `get`) whose
//!   guest runs the guest agent: the VM process mounts the share at `/mnt/<tag>` through the
//!   agent after its hello; `exec` reads the host's file there; virtiofsd's log is in the bundle;
//!   after `pause` and `resume` (rings stopped and started again at virtiofsd) a write goes through.
//! - `crash`: virtiofsd killed under a mounted share: the VMM logs why, the VM runs on, and the
//!   guest's requests fail with EIO (the VMM answers them; Linux's virtiofs driver would
//!   otherwise wait forever, as it does not act on NEEDS_RESET): a read, a listing, `sync` and
//!   `umount` return, and the guest powers off cleanly.

mod support;

use support::*;

const GUEST: &str = r#"
mkdir -p /mnt/src /mnt/data
mount -t virtiofs src /mnt/src; say mount-src=$?
mount -t virtiofs data /mnt/data; say mount-data=$?
say host-blob=$(sum /mnt/src/host.bin)
say host-mode=$(stat -c %a /mnt/src/mode640)
say host-link=$(readlink /mnt/src/link)
say host-nlink=$(stat -c %h /mnt/src/hard)
head -c 4194304 /dev/urandom >/tmp/g.bin
say guest-blob=$(sum /tmp/g.bin)
cp /tmp/g.bin /mnt/src/guest.bin
touch /mnt/src/owned && chown 1234:2345 /mnt/src/owned
echo hi >/mnt/src/by-root
ln -s guest.bin /mnt/src/glink
ln /mnt/src/guest.bin /mnt/src/ghard
chmod 600 /mnt/src/ghard
echo keep >/mnt/src/open
exec 3</mnt/src/open
rm /mnt/src/open
say open-after-unlink=$(cat <&3)
exec 3<&-
echo moved >/mnt/src/r1
exec 4</mnt/src/r1
mv /mnt/src/r1 /mnt/src/r2
say open-after-rename=$(cat <&4)
exec 4<&-
say data-read=$(cat /mnt/data/readme)
if (echo x >/mnt/data/new) 2>/tmp/err; then say ro-write=allowed; else say ro-write=refused; fi
say ro-erofs=$(grep -c 'Read-only file system' /tmp/err)
sync
umount /mnt/src /mnt/data; say umount=$?
say fs-done
"#;

/// For the `kill` case: mount, say so, and wait to be killed.
const GUEST_WAIT: &str = r#"
mkdir -p /mnt/src
mount -t virtiofs src /mnt/src && say mounted
sleep 600
"#;

/// For the `crash` case: mount, say so, wait for the host to kill virtiofsd, then read.
const GUEST_CRASH: &str = r#"
mkdir -p /mnt/src
mount -t virtiofs src /mnt/src && say mounted
i=0
while [ ! -e /tmp/never ] && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
timeout -s KILL 10 cat /mnt/src/host.bin >/dev/null 2>/tmp/e
say read-after-crash=$?
say read-eio=$(grep -c 'Input/output error' /tmp/e)
timeout -s KILL 10 ls /mnt/src >/dev/null 2>&1; say ls-after-crash=$?
timeout -s KILL 10 sync; say sync=$?
timeout -s KILL 10 umount /mnt/src; say umount=$?
say alive
"#;

/// For the `auto` case: the guest agent, until the VM stops.
const GUEST_AGENT: &str = r#"
/vt/virtkit-agent 2>/tmp/agent.log &
say agent-started
wait
"#;

const SCRIPT: &str = r#"
export VIRTKIT_VIRTIOFSD=$VIRTIOFSD
# Count this test's virtiofsd processes (by the directory they serve).
count_virtiofsd() {
    n=0
    for p in /proc/[0-9]*; do
        [ "$(cat $p/comm 2>/dev/null)" = virtiofsd ] && tr '\0' ' ' <$p/cmdline 2>/dev/null | grep -q "$W/" && n=$((n + 1))
    done
    echo $n
}
mkdir -p $W/src $W/data
head -c 4194304 /dev/urandom >$W/src/host.bin
echo "CASE host: host-blob=$(sha256sum <$W/src/host.bin | cut -d' ' -f1)"
echo x >$W/src/mode640 && chmod 640 $W/src/mode640
ln -s host.bin $W/src/link
echo h >$W/src/hard0 && ln $W/src/hard0 $W/src/hard
echo readme >$W/data/readme
timeout -s KILL $GUEST_TIMEOUT $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 256M \
    --share $W/src --share $W/data:data:ro \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/fs.sh\"" </dev/null >$W/fs.raw 2>&1
code=$?
tr -d '\r' <$W/fs.raw | sed "s/^/CASE fs: /"
echo "CASE fs: exit=$code"
echo "CASE host: guest-blob=$(sha256sum <$W/src/guest.bin | cut -d' ' -f1)"
echo "CASE host: owned=$(stat -c %u:%g $W/src/owned) by-root=$(stat -c %u:%g $W/src/by-root)"
echo "CASE host: glink=$(readlink $W/src/glink) ghard-nlink=$(stat -c %h $W/src/ghard) guest-mode=$(stat -c %a $W/src/guest.bin)"
echo "CASE host: r2=$(cat $W/src/r2) r1-gone=$([ -e $W/src/r1 ] && echo 0 || echo 1) open-gone=$([ -e $W/src/open ] && echo 0 || echo 1)"
echo "CASE host: data-untouched=$([ -e $W/data/new ] && echo 0 || echo 1)"
echo "CASE host: virtiofsd-after-stop=$(count_virtiofsd)"
dmesg | grep -E 'type=1326|seccomp' | sed "s/^/CASE fs: dmesg: /"

# kill -9 of the VM process: its virtiofsd goes too.
$VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 256M --share $W/src \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/wait.sh\" virtkit.action=wait" </dev/null >$W/kill.raw 2>&1 &
vm=$!
end=$(($(date +%s) + 150))
until grep -q "VT mounted" $W/kill.raw 2>/dev/null || [ $(date +%s) -ge $end ] || ! kill -0 $vm 2>/dev/null; do sleep 0.2; done
echo "CASE kill: mounted=$(grep -c 'VT mounted' $W/kill.raw) before=$(count_virtiofsd)"
kill -9 $vm
wait $vm 2>/dev/null
end=$(($(date +%s) + 10))
until [ "$(count_virtiofsd)" = 0 ] || [ $(date +%s) -ge $end ]; do sleep 0.2; done
echo "CASE kill: after=$(count_virtiofsd)"
tr -d '\r' <$W/kill.raw | grep -v '^VT ' | tail -5 | sed "s/^/CASE kill: log: /"

# A named VM with a share: kept in the bundle, mounted by the agent.
export VIRTKIT_HOME=$W/home
$VIRTKIT create am --kernel $G/vmlinuz --initrd $G/initrd-ag --memory 256M --cpus 1 --disk-size 1M \
    --network none --no-seed --share $W/src \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/ag.sh\" virtkit.action=poweroff" >$W/create.log 2>&1
echo "CASE auto: create=$?"
sed "s/^/CASE auto: create: /" $W/create.log
echo "CASE auto: get $($VIRTKIT get am --format json | tr -d ' \n')"
timeout 150 $VIRTKIT run am --detach --wait 120 >$W/run.log 2>&1
echo "CASE auto: run=$?"
sed "s/^/CASE auto: run: /" $W/run.log
end=$(($(date +%s) + 30))
until timeout 20 $VIRTKIT exec am -- grep -qsF ' /mnt/src virtiofs ' /proc/mounts 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.5; done
echo "CASE auto: mounted=$(timeout 20 $VIRTKIT exec am -- grep -cF ' /mnt/src virtiofs ' /proc/mounts)"
echo "CASE auto: blob=$(timeout 60 $VIRTKIT exec am -- sha256sum /mnt/src/host.bin | cut -d' ' -f1)"
echo "CASE auto: daemon-log=$([ -s $VIRTKIT_HOME/vms/am/virtiofsd-src.log ] && echo 1 || echo 0)"
tail -5 $VIRTKIT_HOME/vms/am/virtiofsd-src.log 2>/dev/null | sed "s/^/CASE auto: virtiofsd: /"
# Pause and resume: the rings stop at virtiofsd (GET_VRING_BASE) and start again from there.
$VIRTKIT pause am >/dev/null; echo "CASE auto: pause=$?"
$VIRTKIT resume am >/dev/null; echo "CASE auto: resume=$?"
timeout 60 $VIRTKIT exec am -- sh -c 'echo after-resume >/mnt/src/resumed' ; echo "CASE auto: write-after-resume=$?"
echo "CASE auto: resumed=$(cat $W/src/resumed)"
$VIRTKIT logs am --vmm 2>&1 | grep -E 'shared director|virtiofsd|vhost' | sed "s/^/CASE auto: vmm: /"
timeout 120 $VIRTKIT stop am --timeout 60 >/dev/null 2>&1; echo "CASE auto: stop=$?"
unset VIRTKIT_HOME

# virtiofsd dies under a mounted share: the VM goes on.
(
    timeout -s KILL $GUEST_TIMEOUT $VIRTKIT run --kernel $G/vmlinuz --initrd $G/initrd --memory 256M --share $W/src \
        --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/crash.sh\"" </dev/null >$W/crash.raw 2>&1
    echo "CASE crash: exit=$?"
) &
vm=$!
end=$(($(date +%s) + 150))
until grep -q "VT mounted" $W/crash.raw 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.2; done
for p in /proc/[0-9]*; do
    [ "$(cat $p/comm 2>/dev/null)" = virtiofsd ] && tr '\0' ' ' <$p/cmdline | grep -q "$W/" && kill -9 ${p#/proc/}
done
echo "CASE crash: killed-at=$(date +%s)"
wait $vm
tr -d '\r' <$W/crash.raw | sed "s/^/CASE crash: /"
"#;

#[test]
fn the_guests_virtiofs_driver_mounts_shared_directories_by_tag() {
    let Some(assets) = prerequisites() else { return };
    let virtiofsd = match virtkit_testkit::virtiofsd::virtiofsd() {
        Ok(path) => path,
        Err(reason) => return virtkit_testkit::skip(&reason),
    };
    // The named VM's initrd: the scripts and the static guest agent.
    let agent = virtkit_testkit::agent::static_agent();
    let scratch = Scratch::new("fs-agent-initrd");
    let initrd = scratch.0.join("initrd-ag");
    initrd_with_scripts(&assets, &initrd, &[("ag", GUEST_AGENT)]);
    let mut data = std::fs::read(&initrd).unwrap();
    data.resize(data.len().next_multiple_of(4), 0);
    let mut w = virtkit_testkit::cpio::CpioWriter::new(data);
    w.file("vt/virtkit-agent", 0o755, &std::fs::read(&agent).unwrap())
        .unwrap();
    std::fs::write(&initrd, w.finish().unwrap()).unwrap();
    let out = run_guest_script_with(
        &assets,
        "fs",
        &[("fs", GUEST), ("wait", GUEST_WAIT), ("crash", GUEST_CRASH)],
        &[(initrd.as_path(), "initrd-ag")],
        SCRIPT,
        |run| {
            let daemon = virtiofsd.clone();
            run.program("VIRTIOFSD", &virtiofsd)
                .emulated_host(move |host| host.binary(&daemon, "/usr/bin/virtiofsd"))
        },
    );
    let Some(out) = out else { return };
    let fs = case_lines(&out, "fs").join("\n");
    assert_value(&out, "fs", "exit", "0");
    assert_value(&out, "fs", "mount-src", "0");
    assert_value(&out, "fs", "mount-data", "0");
    // Host to guest: contents, mode, symlink, hard link.
    let host_blob = case_value(&out, "host", "host-blob").expect("the host's sum");
    assert_value(&out, "fs", "host-blob", host_blob);
    assert_value(&out, "fs", "host-mode", "640");
    assert_value(&out, "fs", "host-link", "host.bin");
    assert_value(&out, "fs", "host-nlink", "2");
    // Guest to host.
    let guest_blob = case_value(&out, "fs", "guest-blob").unwrap_or_else(|| panic!("{fs}"));
    assert_value(&out, "host", "guest-blob", guest_blob);
    // virtkit runs virtiofsd as root here: owners are the guest's, as it set them.
    assert_value(&out, "host", "owned", "1234:2345");
    assert_value(&out, "host", "by-root", "0:0");
    assert_value(&out, "host", "glink", "guest.bin");
    assert_value(&out, "host", "ghard-nlink", "2");
    assert_value(&out, "host", "guest-mode", "600");
    // Open files survive unlink and rename.
    assert_value(&out, "fs", "open-after-unlink", "keep");
    assert_value(&out, "fs", "open-after-rename", "moved");
    assert_value(&out, "host", "r2", "moved");
    assert_value(&out, "host", "r1-gone", "1");
    assert_value(&out, "host", "open-gone", "1");
    // The read-only share: readable, writes refused with EROFS, nothing reaches the host.
    assert_value(&out, "fs", "data-read", "readme");
    assert_value(&out, "fs", "ro-write", "refused");
    assert_value(&out, "fs", "ro-erofs", "1");
    assert_value(&out, "host", "data-untouched", "1");
    assert_value(&out, "fs", "umount", "0");
    assert!(!fs.contains("type=1326"), "a seccomp violation:\n{fs}");
    // virtiofsd goes with its VM, stopped or killed.
    assert_value(&out, "host", "virtiofsd-after-stop", "0");
    assert_value(&out, "kill", "mounted", "1");
    assert_value(&out, "kill", "before", "1");
    assert_value(&out, "kill", "after", "0");
    // A named VM's share: in its configuration, mounted by the agent, its daemon's log kept.
    let auto = case_lines(&out, "auto").join("\n");
    assert_value(&out, "auto", "create", "0");
    assert!(
        auto.contains(r#""shares":[{"path":"#) && auto.contains(r#""tag":"src""#),
        "`get` shows the share:\n{auto}"
    );
    assert_value(&out, "auto", "run", "0");
    assert_value(&out, "auto", "mounted", "1");
    assert_value(&out, "auto", "blob", host_blob);
    assert_value(&out, "auto", "daemon-log", "1");
    assert_value(&out, "auto", "pause", "0");
    assert_value(&out, "auto", "resume", "0");
    assert_value(&out, "auto", "write-after-resume", "0");
    assert_value(&out, "auto", "resumed", "after-resume");
    assert_value(&out, "auto", "stop", "0");
    // A daemon that dies: the VMM says why, the VM runs on and powers off cleanly.
    let crash = case_lines(&out, "crash").join("\n");
    assert!(
        crash.contains("the backend hung up"),
        "the VMM's log says why:\n{crash}"
    );
    assert_value(&out, "crash", "read-after-crash", "1");
    assert_value(&out, "crash", "read-eio", "1");
    assert_value(&out, "crash", "ls-after-crash", "1");
    assert_value(&out, "crash", "sync", "0");
    assert_value(&out, "crash", "umount", "0");
    assert!(crash.contains("VT alive"), "{crash}");
    assert_value(&out, "crash", "exit", "0");
}
