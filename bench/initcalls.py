"""Compares the guest kernel's initcalls and boot phases between VMMs, from the kernel logs
bench/initcalls.sh collects (`INITCALLS <vmm> <round> [   t] message` lines on standard input):
medians over the rounds of each initcall's time (`initcall_debug`), of the phases before the
first initcall and after the last, and of the uptime at init; then the initcalls whose times
differ most between the first VMM and each other one."""
import re
import statistics
import sys
from collections import defaultdict

LINE = re.compile(r"INITCALLS (\S+) (\d+) \[\s*([\d.]+)\] (.*)")
# `calling  foo+0x0/0x20 @ 1`; not the PCI fixups' `calling  quirk_...+0x0/0x20 @ 1 for 0000:...`.
CALLING = re.compile(r"^calling  \S+ @ \d+$")
RETURNED = re.compile(r"initcall (\S+?)\+0x\S+ returned \S+ after (\d+) usecs")
UPTIME = re.compile(r"INITCALLS (\S+) (\d+) VIRTKIT-GUEST: uptime-at-init=([\d.]+)")


def read(lines):
    logs = defaultdict(list)  # (vmm, round) -> [(t, message)]
    uptime = {}
    for line in lines:
        line = line.removeprefix("[host] ").rstrip("\n")
        m = UPTIME.search(line)
        if m:
            uptime[(m.group(1), m.group(2))] = float(m.group(3))
            continue
        m = LINE.search(line)
        if m:
            logs[(m.group(1), m.group(2))].append((float(m.group(3)), m.group(4)))
    return logs, uptime


def until_init(log):
    """The log up to the kernel's `Run /init` (the modules the init loads come after)."""
    end = next((i for i, (_, msg) in enumerate(log) if msg.startswith("Run /init")), None)
    return (log, None) if end is None else (log[:end], log[end][0])


def phases(log):
    """The boot's phases (s): up to the first initcall, the initcalls, after the last."""
    log, init = until_init(log)
    calls = [t for t, msg in log if CALLING.match(msg) or RETURNED.search(msg)]
    if not calls or init is None:
        return None
    return {"before the first initcall": calls[0], "initcalls": calls[-1] - calls[0],
            "last initcall to /init": init - calls[-1], "kernel start to /init": init}


def initcalls(log):
    times = defaultdict(int)
    for _, msg in until_init(log)[0]:
        m = RETURNED.search(msg)
        if m:
            times[m.group(1)] += int(m.group(2))
    return times


def main():
    logs, uptime = read(sys.stdin)
    vmms = list(dict.fromkeys(v for v, _ in logs))
    if len(vmms) < 2:
        sys.exit(f"initcalls.py: logs of two VMMs wanted, found {vmms or 'none'}")
    # A boot that never reached `/init` (a timeout, a crash) would count its missing initcalls
    # as 0: only the complete ones are compared.
    rounds = {v: sorted(r for w, r in logs if w == v and until_init(logs[(w, r)])[1] is not None)
              for v in vmms}
    incomplete = [f"{w} {r}" for w, r in logs if until_init(logs[(w, r)])[1] is None]
    if incomplete:
        print("Left out (no `Run /init` in the log):", ", ".join(incomplete))
    if not all(rounds.values()):
        sys.exit("initcalls.py: a VMM has no boot that reached /init")
    med = statistics.median
    print("Boots:", ", ".join(f"{v} {len(rounds[v])}" for v in vmms))
    print("\nPhases (median s):")
    print(f"{'':28s}" + "".join(f"{v:>14s}" for v in vmms))
    per = {v: [p for p in (phases(logs[(v, r)]) for r in rounds[v]) if p] for v in vmms}
    for name in ["before the first initcall", "initcalls", "last initcall to /init",
                 "kernel start to /init"]:
        print(f"{name:28s}" + "".join(
            f"{med([p[name] for p in per[v]]):14.3f}" if per[v] else f"{'-':>14s}" for v in vmms))
    print(f"{'uptime at init (init)':28s}" + "".join(
        f"{med([uptime[(v, r)] for r in rounds[v] if (v, r) in uptime]):14.3f}"
        if any((v, r) in uptime for r in rounds[v]) else f"{'-':>14s}" for v in vmms))
    calls = {v: [initcalls(logs[(v, r)]) for r in rounds[v]] for v in vmms}
    names = set().union(*(c.keys() for v in vmms for c in calls[v]))
    median_us = {v: {n: med([c.get(n, 0) for c in calls[v]]) for n in names} for v in vmms}
    print("\nInitcall time (median ms):")
    print(f"{'':28s}" + "".join(f"{v:>14s}" for v in vmms))
    print(f"{'all initcalls, per boot':28s}" + "".join(
        f"{med([sum(c.values()) for c in calls[v]]) / 1000:14.1f}" for v in vmms))
    top = sorted(names, key=lambda n: -max(median_us[v][n] for v in vmms))[:15]
    print("\nThe 15 longest initcalls (median ms):")
    for n in top:
        print(f"{n[:40]:42s}" + "".join(f"{median_us[v][n] / 1000:10.1f}" for v in vmms))
    first = vmms[0]
    for other in vmms[1:]:
        diff = sorted(names, key=lambda n: -abs(median_us[first][n] - median_us[other][n]))[:15]
        print(f"\nLargest differences, {first} − {other} (median ms; > 0: {first} slower):")
        for n in diff:
            d = (median_us[first][n] - median_us[other][n]) / 1000
            print(f"{n[:40]:42s}{d:+10.1f}   ({median_us[first][n] / 1000:.1f} against "
                  f"{median_us[other][n] / 1000:.1f})")


if __name__ == "__main__":
    main()
