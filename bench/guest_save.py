"""Part 11 of bench/run.py: save and restore of the stock kernel inside the emulated KVM host.

One boot of the emulated host (as in part 2). For each VMM in turn (virtkit through its CLI,
QEMU -M microvm, Firecracker), the guest (the stock Debian kernel with the test initramfs;
vmlinux for Firecracker) is booted once; its init runs GUEST_RUN: it writes TOUCH_MIB MiB of
non-zero data into its tmpfs, prints `SB-READY` with the memory it uses, then prints
`SB-TICK N` every TICK_S seconds for ever. Then a chain, all in the emulated host:

  save 0 (of the booted VM) → restore 1 (a new process) → save 1 (of that restored VM) → ...

- save: virtkit `virtkit suspend NAME` (the whole command, timed by spawntime to its exit);
  QEMU QMP `stop` + `migrate exec:cat > FILE` until query-migrate says completed (bench/savectl.c);
  Firecracker `PATCH /vm` Paused + `PUT /snapshot/create` Full (savectl). The state file(s):
  apparent and allocated size.
- restore: spawntime from the spawn of the new VMM process to the first output line holding
  `SB-TICK` (the guest's next tick after the restore): virtkit `virtkit run NAME` (a suspended
  bundle restores); QEMU `-incoming exec:cat FILE` + QMP `cont` once it has left inmigrate;
  Firecracker `--api-sock` + `PUT /snapshot/load` with resume_vm.

The state files live on a tmpfs of the emulated host (RAM: nothing to sync). The restored VMM
process runs SETTLE_S seconds before it is itself saved (and then killed, for QEMU and
Firecracker; `virtkit suspend` ends virtkit's own process).
"""

import re
import shlex

INNER = "/guest"
WORK = "/sb"  # a tmpfs in the emulated host
TOUCH_MIB = 96
TICK_S = 0.02
SETTLE_S = 4
MEMORY_MIB = 256
READY = "SB-READY"
TICK = "SB-TICK"
RESTORE_TIMEOUT = 180  # spawntime's limit for a restored process (it runs until the next save)

# The guest's work: TOUCH_MIB MiB of one random MiB repeated (no zero page, cheap to write
# under the emulator), the ready line, then the ticks. No double quote inside: the init's
# getarg ends the value at the next one. The markers are split by quotes (SB-TIC'K') so that
# the init's echo of the command line does not hold them.
GUEST_RUN = (
    "dd if=/dev/urandom of=/tmp/r bs=1048576 count=1 2>/dev/null; "
    f"for j in $(seq {TOUCH_MIB}); do cat /tmp/r; done >/tmp/t; "
    f"echo {READY[:-1]}'{READY[-1]}' touched_mib={TOUCH_MIB} used_kib=$(awk '/^MemTotal:/{{t=$2}}"
    "/^MemFree:/{f=$2}END{print t-f}' /proc/meminfo); "
    f"i=0; while :; do i=$((i+1)); echo {TICK[:-1]}'{TICK[-1]}' $i; sleep {TICK_S}; done"
)
CMDLINE = f'console=ttyS0 quiet virtkit.action=wait virtkit.run="{GUEST_RUN}"'

VMMS = ["virtkit", "virtkit-lib", "QEMU microvm", "Firecracker"]
LABELS = {"virtkit": "virtkit CLI (`virtkit suspend` / `virtkit run NAME`, bundle)",
          "virtkit-lib": "virtkit library API (`save_restore` example)",
          "QEMU microvm": "QEMU microvm (`migrate exec:cat > FILE` / `-incoming` + `cont`)",
          "Firecracker": "Firecracker (`/snapshot/create` Full / `/snapshot/load`)"}
# The library rows: the boot's save comes LIB_BOOT_MS after the guest's first output (the
# example cannot see the ready line; the guest is ready in about 10 s here, and the pages the
# save wrote say what it held); each save of a restored VM LIB_RUN_MS after its first output.
LIB_BOOT_MS = 30000
LIB_RUN_MS = 1000


def firecracker_config():
    """Firecracker's boot configuration (JSON text), for /guest/fc-save.json."""
    import json
    return json.dumps({
        "boot-source": {"kernel_image_path": f"{INNER}/vmlinux", "initrd_path": f"{INNER}/initrd",
                        "boot_args": CMDLINE},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEMORY_MIB},
    }, indent=1) + "\n"


FC_CONFIG = f"{INNER}/fc-save.json"


def qemu_cmd():
    return ["qemu-system-x86_64", "-M", "microvm,rtc=on", "-enable-kvm", "-cpu", "host", "-smp",
            "1", "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", f"{INNER}/vmlinuz", "-initrd",
            f"{INNER}/initrd", "-append", CMDLINE]


def commands():
    """The commands, for the report (shell words; $i is the chain's step, $a its state slot)."""
    q = " ".join(shlex.quote(c) for c in qemu_cmd())
    qsock = f"-qmp unix:{WORK}/q$i.sock,server=on,wait=off"
    return {
        "virtkit create": " ".join(shlex.quote(c) for c in [
            "virtkit", "create", "sb", "--kernel", f"{INNER}/vmlinuz", "--initrd",
            f"{INNER}/initrd", "--cmdline", CMDLINE, "--cpus", "1", "--memory",
            f"{MEMORY_MIB}M", "--disk-size", "1M", "--network", "none"]),
        "virtkit boot": "virtkit run sb --detach",
        "virtkit save": "virtkit suspend sb",
        "virtkit restore": "virtkit run sb",
        "virtkit-lib save (boot)": " ".join(shlex.quote(c) for c in lib_cmd("save"))
        + f" --state {WORK}/lib0.vksave --saves 1 --run-ms {LIB_BOOT_MS} --no-wait",
        "virtkit-lib restore": " ".join(shlex.quote(c) for c in lib_cmd("restore"))
        + f" --state {WORK}/lib0.vksave --run-ms 3000 --timings {WORK}/t.json",
        "virtkit-lib save (of a restored VM)": " ".join(shlex.quote(c) for c in lib_cmd("save"))
        + f" --state {WORK}/lib1.vksave --from {WORK}/lib0.vksave --saves 1 --run-ms {LIB_RUN_MS}",
        "QEMU boot": f"{q} {qsock}",
        "QEMU save": f"savectl qmp-save {WORK}/q$i.sock {WORK}/qstate$a  "
                     "# QMP stop; migrate exec:cat > FILE; query-migrate until completed",
        "QEMU restore": f"{q} {qsock} -incoming 'exec:cat {WORK}/qstate$a'  # + QMP cont "
                        "once query-status leaves inmigrate (savectl qmp-cont)",
        "Firecracker boot": f"firecracker --api-sock {WORK}/f$i.sock --config-file {FC_CONFIG}",
        "Firecracker save": "PATCH /vm {\"state\":\"Paused\"}; PUT /snapshot/create "
                            "{\"snapshot_type\":\"Full\",\"snapshot_path\":\"" + WORK
                            + "/fsnap$a\",\"mem_file_path\":\"" + WORK + "/fmem$a\"}",
        "Firecracker restore": f"firecracker --api-sock {WORK}/f$i.sock; PUT /snapshot/load "
                               "{\"snapshot_path\":\"" + WORK + "/fsnap$a\",\"mem_backend\":"
                               "{\"backend_type\":\"File\",\"backend_path\":\"" + WORK
                               + "/fmem$a\"},\"resume_vm\":true}",
        "guest command line": CMDLINE,
        "Firecracker configuration": firecracker_config().replace("\n", " "),
    }


def lib_cmd(mode):
    return ["save_restore", mode, "--kernel", f"{INNER}/vmlinuz", "--initrd", f"{INNER}/initrd",
            "--cmdline", CMDLINE, "--memory-mib", str(MEMORY_MIB)]


def host_script(runs, with_firecracker, with_lib=True):
    """The script the emulated host runs: RUNS restores per VMM (RUNS+1 saves)."""
    q = " ".join(shlex.quote(c) for c in qemu_cmd())
    vk_create = " ".join(shlex.quote(c) for c in [
        "virtkit", "create", "sb", "--kernel", f"{INNER}/vmlinuz", "--initrd", f"{INNER}/initrd",
        "--cmdline", CMDLINE, "--cpus", "1", "--memory", f"{MEMORY_MIB}M", "--disk-size", "1M",
        "--network", "none"])
    restore = f"spawntime -t {RESTORE_TIMEOUT} -m {TICK} -f {TICK}"
    fc_load = ("{\\\"snapshot_path\\\":\\\"" + WORK + "/fsnap$a\\\",\\\"mem_backend\\\":"
               "{\\\"backend_type\\\":\\\"File\\\",\\\"backend_path\\\":\\\"" + WORK
               + "/fmem$a\\\"},\\\"resume_vm\\\":true}")
    fc_create = ("{\\\"snapshot_type\\\":\\\"Full\\\",\\\"snapshot_path\\\":\\\"" + WORK
                 + "/fsnap$a\\\",\\\"mem_file_path\\\":\\\"" + WORK + "/fmem$a\\\"}")
    ls = " ".join(shlex.quote(c) for c in lib_cmd("save"))
    lr = " ".join(shlex.quote(c) for c in lib_cmd("restore"))
    lib = "" if not with_lib else f"""
# ---- virtkit (the library API: crates/virtkit/examples/save_restore.rs)
echo "SB11-VMM virtkit-lib"
echo "SB11-RUN vmm=virtkit-lib run=0"
{ls} --state {WORK}/lib0.vksave --saves 1 --run-ms {LIB_BOOT_MS} --no-wait >{WORK}/lib.out 2>&1 ||
    {{ echo "SB11-ERROR vmm=virtkit-lib save failed"; tail -n 5 {WORK}/lib.out | sed 's/^/SB11-TAIL vmm=virtkit-lib: /'; }}
grep '^SAVE ' {WORK}/lib.out | sed 's/^/SB11-LIBSAVE /'
echo "SB11-SIZE vmm=virtkit-lib run=0 $(sizes {WORK}/lib0.vksave)"
i=1
while [ $i -le {runs} ]; do
    echo "SB11-RUN vmm=virtkit-lib run=$i"
    rm -f {WORK}/t.json
    {restore} -k -l virtkit-lib-restore -- {lr} --state {WORK}/lib0.vksave --run-ms 3000 \
        --timings {WORK}/t.json </dev/null >{WORK}/restore.out 2>&1
    grep SPAWNTIME {WORK}/restore.out | grep -v SPAWNTIME-OUTPUT
    echo "SB11-LIBTIMINGS $(cat {WORK}/t.json 2>/dev/null)"
    {ls} --state {WORK}/lib1.vksave --from {WORK}/lib0.vksave --saves 1 --run-ms {LIB_RUN_MS} \
        >{WORK}/lib.out 2>&1 ||
        {{ echo "SB11-ERROR vmm=virtkit-lib save --from failed"; tail -n 5 {WORK}/lib.out | sed 's/^/SB11-TAIL vmm=virtkit-lib: /'; }}
    grep '^SAVE ' {WORK}/lib.out | sed 's/^/SB11-LIBSAVE /'
    echo "SB11-SIZE vmm=virtkit-lib run=$i $(sizes {WORK}/lib1.vksave)"
    i=$((i + 1))
done
rm -f {WORK}/lib0.vksave {WORK}/lib1.vksave
"""
    fc = "" if not with_firecracker else f"""
# ---- Firecracker
echo "SB11-VMM Firecracker"
firecracker --api-sock {WORK}/f0.sock --config-file {FC_CONFIG} </dev/null >{WORK}/boot.out 2>&1 &
vp=$!
if wait_ready {WORK}/boot.out Firecracker; then
    sleep {SETTLE_S}
    pend=
    i=0
    while [ $i -le {runs} ]; do
        a=$((i % 2)); b=$(((i + 1) % 2))
        echo "SB11-RUN vmm=Firecracker run=$i"
        rm -f {WORK}/fsnap$a {WORK}/fmem$a
        echo "SB11-STEP pause"
        savectl http {WORK}/f$i.sock PATCH /vm '{{"state":"Paused"}}'
        echo "SB11-STEP create"
        savectl http {WORK}/f$i.sock PUT /snapshot/create "{fc_create}"
        echo "SB11-SIZE vmm=Firecracker run=$i $(sizes {WORK}/fsnap$a {WORK}/fmem$a)"
        kill -9 $vp 2>/dev/null
        collect
        rm -f {WORK}/fsnap$b {WORK}/fmem$b
        [ $i -eq {runs} ] && break
        i=$((i + 1))
        {restore} -l Firecracker-restore -- firecracker --api-sock {WORK}/f$i.sock \\
            </dev/null >{WORK}/restore.out 2>&1 &
        pend=$!
        echo "SB11-STEP load"
        if ! savectl http {WORK}/f$i.sock PUT /snapshot/load "{fc_load}"; then
            echo "SB11-ERROR vmm=Firecracker snapshot/load of step $i failed; the chain ends"
            vp=$(child_of $pend); kill -9 $vp 2>/dev/null; collect; break
        fi
        sleep {SETTLE_S}
        vp=$(child_of $pend)
    done
fi
kill -9 $vp 2>/dev/null
rm -f {WORK}/fsnap* {WORK}/fmem*
"""
    return f"""# generated by bench/run.py: part 11, run inside the emulated KVM host
echo "BENCH-HOST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) \\
memtotal_kib=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)"
mkdir -p {WORK} && mount -t tmpfs -o size=1400m tmpfs {WORK}
# sizes FILE...: apparent and allocated bytes together
sizes() {{ stat -c '%s %b %B' "$@" | awk '{{a += $1; b += $2 * $3}} END {{print "apparent=" a " allocated=" b}}'; }}
# wait_ready FILE VMM: the guest's ready line in FILE (up to 400 s)
wait_ready() {{
    n=0
    while ! grep -q '{READY}' "$1" 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt 4000 ]; then
            echo "SB11-ERROR vmm=$2 no {READY} line within 400 s"
            tail -n 15 "$1" | tr -d '\\r' | sed "s/^/SB11-TAIL vmm=$2: /"
            return 1
        fi
        sleep 0.1
    done
    echo "SB11-READY vmm=$2 $(grep -o '{READY}.*' "$1" | head -n1 | tr -d '\\r')"
}}
# child_of PID: a child process of PID (spawntime's VMM; busybox here has no pgrep)
child_of() {{
    for d in /proc/[0-9]*; do
        [ "$(sed -n 's/^PPid:[[:space:]]*//p' $d/status 2>/dev/null)" = "$1" ] && {{ echo ${{d#/proc/}}; return; }}
    done
}}
# collect: the pending restore's spawntime result (its process was just saved and ended)
collect() {{
    [ -n "$pend" ] || return 0
    wait $pend
    grep SPAWNTIME {WORK}/restore.out | grep -v SPAWNTIME-OUTPUT
    grep -q 'marker_ms=-1' {WORK}/restore.out && tail -n 15 {WORK}/restore.out | tr -d '\\r' |
        sed 's/^/SB11-TAIL restore: /'
    pend=
}}

# ---- virtkit (the CLI on a bundle)
echo "SB11-VMM virtkit"
export VIRTKIT_HOME={WORK}/home
{vk_create} >{WORK}/create.out 2>&1 || {{ echo "SB11-ERROR vmm=virtkit create failed"; sed 's/^/SB11-TAIL vmm=virtkit: /' {WORK}/create.out; }}
virtkit run sb --detach >{WORK}/boot.out 2>&1 || {{ echo "SB11-ERROR vmm=virtkit run --detach failed"; sed 's/^/SB11-TAIL vmm=virtkit: /' {WORK}/boot.out; }}
n=0
until virtkit logs sb 2>/dev/null | grep -q '{READY}'; do
    n=$((n + 1)); [ $n -gt 800 ] && break
    sleep 0.5
done
virtkit logs sb >{WORK}/boot.out 2>&1
if wait_ready {WORK}/boot.out virtkit; then
    sleep {SETTLE_S}
    pend=
    i=0
    while [ $i -le {runs} ]; do
        echo "SB11-RUN vmm=virtkit run=$i"
        spawntime -t 300 -l virtkit-save -- virtkit suspend sb
        echo "SB11-SIZE vmm=virtkit run=$i $(sizes $VIRTKIT_HOME/vms/sb/state.vksave)"
        collect
        [ $i -eq {runs} ] && break
        i=$((i + 1))
        {restore} -l virtkit-restore -- virtkit run sb </dev/null >{WORK}/restore.out 2>&1 &
        pend=$!
        sleep {SETTLE_S}
    done
fi
virtkit logs sb --vmm 2>&1 | tail -n 5 | sed 's/^/SB11-VMMLOG virtkit: /'
virtkit stop sb --timeout 0 >/dev/null 2>&1
virtkit delete sb >/dev/null 2>&1
rm -rf {WORK}/home
{lib}
# ---- QEMU microvm
echo "SB11-VMM QEMU microvm"
{q} -qmp unix:{WORK}/q0.sock,server=on,wait=off </dev/null >{WORK}/boot.out 2>&1 &
vp=$!
if wait_ready {WORK}/boot.out "QEMU microvm"; then
    sleep {SETTLE_S}
    pend=
    i=0
    while [ $i -le {runs} ]; do
        a=$((i % 2)); b=$(((i + 1) % 2))
        echo "SB11-RUN vmm=QEMU_microvm run=$i"
        rm -f {WORK}/qstate$a
        savectl qmp-save {WORK}/q$i.sock {WORK}/qstate$a
        echo "SB11-SIZE vmm=QEMU_microvm run=$i $(sizes {WORK}/qstate$a)"
        kill -9 $vp 2>/dev/null
        collect
        rm -f {WORK}/qstate$b
        [ $i -eq {runs} ] && break
        i=$((i + 1))
        {restore} -l QEMU_microvm-restore -- {q} \\
            -qmp unix:{WORK}/q$i.sock,server=on,wait=off -incoming "exec:cat {WORK}/qstate$a" \\
            </dev/null >{WORK}/restore.out 2>&1 &
        pend=$!
        if ! savectl qmp-cont {WORK}/q$i.sock; then
            echo "SB11-ERROR vmm=QEMU_microvm cont of step $i failed; the chain ends"
            vp=$(child_of $pend); kill -9 $vp 2>/dev/null; collect; break
        fi
        sleep {SETTLE_S}
        vp=$(child_of $pend)
    done
fi
kill -9 $vp 2>/dev/null
rm -f {WORK}/qstate*
{fc}
echo "SB11-DONE"
exit 0
"""


def new_results():
    return {v: {"used_kib": None, "ready": None, "save": [], "save_parts": [], "sizes": [],
                "restore": [], "errors": [], "tail": [], "pages": [], "phases": []}
            for v in VMMS}


class Parser:
    """Reads the emulated host's output lines into results[vmm]."""

    def __init__(self, parse_spawn):
        self.res = new_results()
        self.vmm = None
        self.step = None
        self.parts = {}
        self.last_spawn = None
        self.parse_spawn = parse_spawn

    def line(self, body):
        r = self.res.get(self.vmm) if self.vmm else None
        if body.startswith("SB11-VMM "):
            self.vmm = body[len("SB11-VMM "):].strip()
            return True
        if r is None:
            return False
        if body.startswith("SB11-READY "):
            r["ready"] = body
            m = re.search(r"used_kib=(\d+)", body)
            if m:
                r["used_kib"] = int(m.group(1))
            return True
        if body.startswith("SB11-LIBSAVE "):
            kv = dict(w.split("=", 1) for w in body.split() if "=" in w)
            p, sv = float(kv["pause_ms"]), float(kv["save_ms"])
            r["save"].append(p + sv)
            r["save_parts"].append({"pause": p, "save_machine_state": sv})
            r["pages"].append(int(kv["pages"]))
            return True
        if body.startswith("SB11-LIBTIMINGS "):
            m = re.findall(r'"(\w+)_ns": (\d+)', body)
            t = {k: int(v) for k, v in m}
            if self.last_spawn and {"main", "new", "restored", "resumed"} <= set(t):
                sp, first = self.last_spawn
                r["phases"].append({
                    "spawn → main": (t["main"] - sp) / 1e6,
                    "VirtualMachine::new": (t["new"] - t["main"]) / 1e6,
                    "restore_machine_state": (t["restored"] - t["new"]) / 1e6,
                    "resume": (t["resumed"] - t["restored"]) / 1e6,
                    "resume → the tick line read": first - (t["resumed"] - sp) / 1e6})
            self.last_spawn = None
            return True
        if body.startswith("SB11-RUN "):
            self.parts = {}
            return True
        if body.startswith("SB11-STEP "):
            self.step = body.split()[1]
            return True
        if body.startswith("SB11-SIZE "):
            kv = dict(w.split("=", 1) for w in body.split()[3:] if "=" in w)
            try:
                r["sizes"].append((int(kv["apparent"]), int(kv["allocated"])))
            except (KeyError, ValueError):
                r["errors"].append(f"no state file: {body}")
            return True
        if body.startswith(("SB11-ERROR ", "SB11-TAIL ", "SB11-VMMLOG ")):
            (r["errors"] if body.startswith("SB11-ERROR") else r["tail"]).append(body)
            return True
        if body.startswith("SAVECTL "):
            kv = dict(w.split("=", 1) for w in body.split() if "=" in w)
            if body.startswith("SAVECTL qmp-save"):
                if kv.get("status") == "completed":
                    s, m = float(kv["stop_ms"]), float(kv["migrate_ms"])
                    r["save"].append(s + m)
                    r["save_parts"].append({"stop": s, "migrate": m})
                else:
                    r["errors"].append(f"QEMU save: {body}")
            elif body.startswith("SAVECTL http"):
                ok = kv.get("status", "0").startswith("2")
                if not ok:
                    r["errors"].append(f"Firecracker {self.step}: {body}")
                elif self.step in ("pause", "create"):
                    self.parts[self.step] = float(kv["ms"])
                    if self.step == "create" and "pause" in self.parts:
                        r["save"].append(self.parts["pause"] + self.parts["create"])
                        r["save_parts"].append(dict(self.parts))
            elif body.startswith("SAVECTL qmp-error"):
                r["errors"].append(f"QEMU: {body}")
            return True
        s = self.parse_spawn(body)
        if s:
            if s["label"].endswith("-save"):
                if s["status"] == "exit:0":
                    r["save"].append(s["exit_ms"])
                else:
                    r["errors"].append(f"virtkit suspend: status {s['status']}")
            elif s["label"].endswith("-restore"):
                t = s["first_byte_ms"][0] if s["first_byte_ms"] else s["marker_ms"]
                m = re.search(r"spawn_ns=(\d+)", body)
                self.last_spawn = (int(m.group(1)), t) if m and t >= 0 else None
                if t >= 0:
                    r["restore"].append(t)
                else:
                    r["errors"].append(f"restore {len(r['restore']) + 1}: no {TICK} line "
                                       f"(status {s['status']})")
            return True
        return False
