#!/usr/bin/env python3
"""virtkit display benchmark: SeaBIOS's first screen and the VNC server, against QEMU.

Both VMMs run on this host's KVM with the same SeaBIOS (Debian's bios-256k.bin), the same
display (QEMU's `-vga none -device bochs-display,xres=800,yres=600`; virtkit's `--display
800x600`: the same device model, whose VGA BIOS SeaBIOS runs and draws its text console into
the framebuffer) and the same disk: the `mbr_ticker` test program, which rewrites a 5-digit
counter at the start of a text row every ~20 ms through int 10h. Each VMM serves its display
over VNC on a Unix socket (virtkit: the bundle's `vnc.sock`; QEMU: `-vnc unix:PATH`), and the
same client (written here, standard library only) measures:

- first screen: from the spawn of the VMM's process (`virtkit run NAME --detach --display`,
  whose time includes the CLI starting the VM process; `qemu-system-x86_64`) to the first VNC
  frame that is 800x600 with SeaBIOS's banner drawn in its first text row; the client connects
  as soon as the socket accepts and asks for frames in Raw;
- full frames: non-incremental requests of the whole screen, one after the other, for
  --seconds: frames per second and bytes per frame, in Raw and in ZRLE;
- small changes: once the ticker runs (`ticker: ready` on COM1: SeaBIOS has drawn everything
  else), incremental requests, one after the other, for --seconds while the counter ticks:
  updates per second and bytes per update, in Raw and in ZRLE. The updates per second follow
  how fast the guest ticks (real-mode code is emulated by this host's KVM, so a tick takes far
  longer than its 20 ms wait): the figure says whether a VMM sends every change, the bytes say
  how much each costs.

--runs rounds (default 5), the VMMs taking turns; medians. Prints a Markdown section and writes
it to bench/out/display.md. Run from the repository as root, after `cargo build --release`:
`python3 bench/display_bench.py`.
"""

import argparse
import datetime
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
REPORT = OUT / "display.md"
VIRTKIT = ROOT / "target" / "release" / "virtkit"
SEABIOS = "/usr/share/seabios/bios-256k.bin"
QEMU = "qemu-system-x86_64"
WIDTH, HEIGHT = 800, 600
RAW, ZRLE, DESKTOP_SIZE = 0, 16, -223
TIMEOUT = 30


def log(msg):
    print(f"display-bench: {msg}", file=sys.stderr, flush=True)


def ticker_mbr():
    found = sorted(ROOT.glob("target/release/build/virtkit-test-guests-*/out/mbr_ticker.mbr"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("display-bench: no mbr_ticker.mbr: run cargo build --release -p virtkit-test-guests")
    return found[-1]


class Client:
    """A minimal RFB 3.8 client (security None) that counts the bytes it reads."""

    def __init__(self, path, deadline):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} does not accept connections")
                time.sleep(0.002)
        self.sock.settimeout(TIMEOUT)
        self.received = 0
        version = self.read(12)
        if not version.startswith(b"RFB 003."):
            raise RuntimeError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        count = self.read(1)[0]
        types = self.read(count)
        if 1 not in types:
            raise RuntimeError(f"no security type None: {list(types)}")
        self.sock.sendall(b"\x01")
        if self.read(4) != b"\0\0\0\0":
            raise RuntimeError("security failed")
        self.sock.sendall(b"\x01")
        init = self.read(24)
        self.width, self.height = struct.unpack(">HH", init[:4])
        self.read(struct.unpack(">I", init[20:24])[0])
        # 32 bits per pixel, depth 24, little-endian, true colour, R at bit 16, G 8, B 0.
        self.sock.sendall(struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))

    def read(self, n):
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        self.received += n
        return bytes(data)

    def encodings(self, *codes):
        self.sock.sendall(struct.pack(f">BxH{len(codes)}i", 2, len(codes), *codes))

    def request(self, incremental):
        self.sock.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    def update(self):
        """Reads messages up to a FramebufferUpdate; returns its rectangles as
        (x, y, w, h, encoding, raw pixel bytes or None)."""
        while True:
            kind = self.read(1)[0]
            if kind == 0:
                break
            if kind == 2:  # bell
                continue
            if kind == 3:  # server cut text
                self.read(3)
                self.read(struct.unpack(">I", self.read(4))[0])
                continue
            raise RuntimeError(f"unexpected server message {kind}")
        (count,) = struct.unpack(">xH", self.read(3))
        rects = []
        for _ in range(count):
            x, y, w, h, enc = struct.unpack(">HHHHi", self.read(12))
            data = None
            if enc == RAW:
                data = self.read(w * h * 4)
            elif enc == ZRLE:
                self.read(struct.unpack(">I", self.read(4))[0])
            elif enc == DESKTOP_SIZE:
                self.width, self.height = w, h
            else:
                raise RuntimeError(f"unexpected encoding {enc}")
            rects.append((x, y, w, h, enc, data))
        return rects

    def close(self):
        self.sock.close()


def banner_drawn(client, rects):
    """The frame is 800x600 and a Raw rectangle covering the first text row has lit pixels."""
    if (client.width, client.height) != (WIDTH, HEIGHT):
        return False
    for x, y, w, h, enc, data in rects:
        if enc == RAW and y == 0 and h >= 16 and any(data[: w * 16 * 4]):
            return True
    return False


class Vmm:
    def __init__(self, name, work, image):
        self.name, self.work, self.image = name, work, image
        self.proc = None

    def wait_ready(self, deadline):
        """Waits for the ticker's `ticker: ready` on COM1: SeaBIOS has drawn all it draws."""
        while b"ticker: ready" not in (self.serial.read_bytes() if self.serial.exists() else b""):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no `ticker: ready` on COM1")
            time.sleep(0.01)


class Virtkit(Vmm):
    def __init__(self, work, image):
        super().__init__("virtkit", work, image)
        self.env = dict(os.environ, VIRTKIT_HOME=str(work / "home"))
        subprocess.run([VIRTKIT, "create", "t", "--from", image, "--network", "none", "--cpus", "1",
                        "--memory", "128M"], env=self.env, check=True, capture_output=True)
        self.sock = work / "home" / "vms" / "t" / "vnc.sock"
        self.serial = work / "home" / "vms" / "t" / "console.log"

    def start(self):
        self.proc = subprocess.Popen([VIRTKIT, "run", "t", "--detach", "--display", f"{WIDTH}x{HEIGHT}"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        self.proc.wait(timeout=TIMEOUT)
        subprocess.run([VIRTKIT, "stop", "t", "--timeout", "0"], env=self.env, capture_output=True,
                       timeout=TIMEOUT)


class Qemu(Vmm):
    def __init__(self, work, image):
        super().__init__("QEMU", work, image)
        self.sock = work / "qemu-vnc.sock"
        self.serial = work / "qemu-serial.log"

    def start(self):
        if self.sock.exists():
            self.sock.unlink()
        self.proc = subprocess.Popen(
            [QEMU, "-enable-kvm", "-M", "pc", "-cpu", "host", "-m", "128M", "-smp", "1", "-nodefaults",
             "-no-user-config", "-display", "none", "-serial", f"file:{self.serial}", "-bios", SEABIOS,
             "-vga", "none", "-device", f"bochs-display,xres={WIDTH},yres={HEIGHT}",
             "-drive", f"file={self.image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
             "-vnc", f"unix:{self.sock}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)


def first_screen(vmm):
    t0 = time.monotonic()
    vmm.start()
    client = Client(vmm.sock, t0 + TIMEOUT)
    client.encodings(RAW, DESKTOP_SIZE)
    client.request(False)
    while True:
        rects = client.update()
        if banner_drawn(client, rects):
            break
        if time.monotonic() - t0 > TIMEOUT:
            raise TimeoutError(f"{vmm.name}: no banner within {TIMEOUT} s")
        # A full frame each time: a server may send only what changed, and the banner row
        # must be in the rectangles looked at.
        client.request(False)
    return (time.monotonic() - t0) * 1000, client


def stream(client, encoding, incremental, seconds):
    """Frames (or updates) per second and bytes per frame over `seconds`."""
    client.encodings(encoding, DESKTOP_SIZE)
    client.request(False)
    client.update()  # the first answer after a change of encoding: a full frame
    frames, start_bytes, t0 = 0, client.received, time.monotonic()
    while time.monotonic() - t0 < seconds:
        client.request(incremental)
        client.update()
        frames += 1
    elapsed = time.monotonic() - t0
    return frames / elapsed, (client.received - start_bytes) / max(frames, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    for need in (VIRTKIT, Path(SEABIOS)):
        if not need.exists():
            sys.exit(f"display-bench: {need} is missing (cargo build --release; Debian's seabios)")
    if not shutil.which(QEMU):
        sys.exit("display-bench: qemu-system-x86_64 is missing (Debian's qemu-system-x86)")
    work = Path(tempfile.mkdtemp(prefix="virtkit-display-bench-"))
    try:
        image = work / "ticker.img"
        with open(image, "wb") as f:
            f.truncate(1 << 20)
            f.write(ticker_mbr().read_bytes())
        vmms = [Virtkit(work, image), Qemu(work, image)]
        figures = {v.name: {} for v in vmms}
        for run in range(args.runs):
            order = vmms if run % 2 == 0 else vmms[::-1]
            for vmm in order:
                ms, client = first_screen(vmm)
                got = figures[vmm.name]
                got.setdefault("first", []).append(ms)
                vmm.wait_ready(time.monotonic() + TIMEOUT)
                time.sleep(1)  # the counter ticks
                for label, enc in (("raw", RAW), ("zrle", ZRLE)):
                    fps, bpf = stream(client, enc, False, args.seconds)
                    got.setdefault(f"full-{label}-fps", []).append(fps)
                    got.setdefault(f"full-{label}-bytes", []).append(bpf)
                    ups, bpu = stream(client, enc, True, args.seconds)
                    got.setdefault(f"small-{label}-ups", []).append(ups)
                    got.setdefault(f"small-{label}-bytes", []).append(bpu)
                client.close()
                vmm.stop()
                log(f"run {run + 1}: {vmm.name}: first screen {ms:.0f} ms, full raw "
                    f"{got['full-raw-fps'][-1]:.0f} fps, small zrle {got['small-zrle-ups'][-1]:.0f} "
                    f"updates/s of {got['small-zrle-bytes'][-1]:.0f} B")
        print(report(args, figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, figures):
    med = {v: {k: statistics.median(x) for k, x in f.items()} for v, f in figures.items()}
    v, q = med["virtkit"], med["QEMU"]
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    rows = [
        ("spawn → SeaBIOS's banner on the screen (ms, lower is better)", "first", "{:.0f}", False),
        ("full frame, Raw: frames/s", "full-raw-fps", "{:.0f}", True),
        ("full frame, Raw: bytes/frame", "full-raw-bytes", "{:.0f}", False),
        ("full frame, ZRLE: frames/s", "full-zrle-fps", "{:.0f}", True),
        ("full frame, ZRLE: bytes/frame", "full-zrle-bytes", "{:.0f}", False),
        ("small change, Raw: updates/s", "small-raw-ups", "{:.1f}", True),
        ("small change, Raw: bytes/update", "small-raw-bytes", "{:.0f}", False),
        ("small change, ZRLE: updates/s", "small-zrle-ups", "{:.1f}", True),
        ("small change, ZRLE: bytes/update", "small-zrle-bytes", "{:.0f}", False),
    ]
    lines = [
        f"## Display: SeaBIOS's first screen and VNC, virtkit against QEMU (`bench/display_bench.py`)",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `python3 bench/display_bench.py "
        f"--runs {args.runs} --seconds {args.seconds}`, direct on this host's KVM; {qemu_version}; medians "
        f"of {args.runs} rounds, the VMMs taking turns. Both: SeaBIOS `{SEABIOS}`, bochs-display "
        f"{WIDTH}x{HEIGHT}, the `mbr_ticker` disk (a 5-digit counter rewritten every ~20 ms), VNC on a "
        "Unix socket, the same client (the script's own, one request at a time).",
        "",
        "| figure | virtkit | QEMU | virtkit / QEMU |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt, higher_better in rows:
        ratio = v[key] / q[key] if q[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(v[key])} | {fmt.format(q[key])} | {ratio:.2f} |")
    text = "\n".join(lines) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return text


if __name__ == "__main__":
    main()
