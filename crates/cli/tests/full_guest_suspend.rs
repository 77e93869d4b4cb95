//! Suspend and resume a stock Linux guest through the CLI (issue 12): the guest writes and
//! fsyncs numbered records on its virtio-blk disk while `virtkit suspend` saves it; `virtkit
//! run` resumes the same boot (its boot id unchanged), the records go on from where they were,
//! every record is on the disk at the end, and the entropy device still answers. Runs in one
//! boot of the emulated KVM host (or directly on hardware KVM); the helpers are in `support/`.

mod support;

use support::*;

/// Numbered records, each written and fsynced to its own sector of the disk, one a tick.
const GUEST_RECORDS: &str = r#"
say boot-id=$(cat /proc/sys/kernel/random/boot_id)
i=0
while [ $i -lt 300 ]; do
    i=$((i + 1))
    printf 'vt-rec %08d\n' $i | dd of=/dev/vda bs=512 seek=$i count=1 conv=sync,fsync 2>/dev/null
    say rec=$i
    sleep 0.05
done
say rng-after=$(head -c 4096 /dev/hwrng | wc -c)
say boot-id-end=$(cat /proc/sys/kernel/random/boot_id)
say recs-done
"#;

const GUEST_SCRIPTS: [(&str, &str); 1] = [("records", GUEST_RECORDS)];

const SUSPEND_SCRIPT: &str = r#"
mkdir -p $W/s && mount -t tmpfs -o size=600m tmpfs $W/s 2>/dev/null
export VIRTKIT_HOME=$W/s/home
truncate -s 8M $W/s/root.img
$VIRTKIT create s1 --kernel $G/vmlinuz --initrd $G/initrd --from $W/s/root.img --disk-size 16M \
    --cpus 1 --memory 256M --network none \
    --cmdline "console=ttyS0 quiet virtkit.run=\"sh /vt/records.sh\" virtkit.action=wait" >/dev/null 2>&1
echo "CASE susp: create=$?"
disk=$VIRTKIT_HOME/vms/s1/disk.img
recs() { $VIRTKIT logs s1 | tr -d '\r' | grep -o 'VT rec=[0-9]*' | cut -d= -f2; }
$VIRTKIT run s1 --detach >/dev/null; echo "CASE susp: run=$?"
end=$(($(date +%s) + 170))
until [ "$(recs | tail -n1)" -ge 40 ] 2>/dev/null || [ $(date +%s) -ge $end ]; do sleep 0.5; done
$VIRTKIT suspend s1 >/dev/null; echo "CASE susp: suspend=$?"
echo "CASE susp: state-suspended=$($VIRTKIT get s1 --format json | tr -d ' \n' | grep -o '"state":"[a-z]*"' | cut -d'"' -f4)"
echo "CASE susp: last-before=$(recs | tail -n1)"
echo "CASE susp: boot-before=$($VIRTKIT logs s1 | tr -d '\r' | grep -o 'VT boot-id=[^ ]*' | cut -d= -f2)"
$VIRTKIT run s1 --detach >/dev/null; echo "CASE susp: resume=$?"
end=$(($(date +%s) + 170))
until $VIRTKIT logs s1 | grep -q "VT recs-done" || [ $(date +%s) -ge $end ]; do sleep 0.5; done
echo "CASE susp: first-after=$(recs | head -n1)"
echo "CASE susp: state-file-left=$(test -e $VIRTKIT_HOME/vms/s1/state.vksave && echo yes || echo no)"
$VIRTKIT logs s1 | tr -d '\r' | grep '^VT ' | grep -v 'rec=' | sed "s/^/CASE susp: /"
$VIRTKIT stop s1 --timeout 30 >/dev/null; echo "CASE susp: stop=$?"
ok=0
for i in $(seq 1 300); do
    [ "$(dd if=$disk bs=512 skip=$i count=1 2>/dev/null | head -c 15)" = "vt-rec $(printf %08d $i)" ] && ok=$((ok + 1))
done
echo "CASE susp: records-on-disk=$ok"
"#;

fn number(out: &str, key: &str) -> u64 {
    let lines = case_lines(out, "susp").join("\n");
    case_value(out, "susp", key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}=:\n{lines}"))
}

#[test]
fn a_suspended_linux_guest_resumes_its_boot_and_keeps_every_fsynced_record() {
    let Some(assets) = prerequisites() else { return };
    let Some(out) = run_guest_script(&assets, "suspend", &GUEST_SCRIPTS, &[], SUSPEND_SCRIPT) else {
        return;
    };
    for key in ["create", "run", "suspend", "resume", "stop"] {
        assert_value(&out, "susp", key, "0");
    }
    assert_value(&out, "susp", "state-suspended", "suspended");
    let (before, after) = (number(&out, "last-before"), number(&out, "first-after"));
    assert!(
        before >= 40 && after > before && after <= before + 2,
        "the records go on from {before}: the resumed run's first is {after}:\n{}",
        case_lines(&out, "susp").join("\n")
    );
    let boot = case_value(&out, "susp", "boot-before").expect("the boot id before");
    assert!(!boot.is_empty());
    assert_value(&out, "susp", "boot-id-end", boot);
    assert_value(&out, "susp", "rng-after", "4096");
    assert_value(&out, "susp", "state-file-left", "no");
    assert_value(&out, "susp", "records-on-disk", "300");
}
