"""Appends the guest function to each line that ends in a kernel address, from a System.map:
`python3 bench/symbolize.py System.map < lines` (bench/exit_sources.sh uses it)."""
import bisect
import sys


def load(path):
    symbols = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                symbols.append((int(parts[0], 16), parts[2]))
    symbols.sort()
    return [a for a, _ in symbols], [n for _, n in symbols]


def main():
    addresses, names = load(sys.argv[1])
    for line in sys.stdin:
        words = line.split()
        last = words[-1] if words else ""
        if last.startswith("0xffffffff"):
            address = int(last, 16)
            i = bisect.bisect_right(addresses, address) - 1
            # Past the last text symbol (module space, say) no name is right: leave it bare.
            if i >= 0 and address - addresses[i] < 0x100000:
                line = f"{line.rstrip()}  {names[i]}+{address - addresses[i]:#x}\n"
        sys.stdout.write(line)


main()
