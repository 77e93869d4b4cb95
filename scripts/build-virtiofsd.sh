#!/usr/bin/env bash
# Makes virtiofsd (the virtio-fs daemon, https://gitlab.com/virtio-fs/virtiofsd) available and
# prints its path:
#   scripts/build-virtiofsd.sh
# Debian 12 packages no Rust virtiofsd (qemu-system-common's /usr/lib/qemu/virtiofsd is QEMU's
# old C daemon, with other flags), so it is built once from crates.io into
# .cache/virtiofsd/<version>/bin/virtiofsd with its Cargo.lock (`--locked`), needing Debian's
# libseccomp-dev and libcap-ng-dev (scripts/install-deps.sh installs them). A virtiofsd at
# $VIRTKIT_VIRTIOFSD is used instead when set.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.14.0
if [ -n "${VIRTKIT_VIRTIOFSD:-}" ]; then
    [ -x "$VIRTKIT_VIRTIOFSD" ] || { echo "build-virtiofsd.sh: VIRTKIT_VIRTIOFSD=$VIRTKIT_VIRTIOFSD is not an executable" >&2; exit 1; }
    echo "$VIRTKIT_VIRTIOFSD"
    exit 0
fi
# One on PATH is used if it is the Rust daemon (its --help names --shared-dir).
if found=$(command -v virtiofsd) && "$found" --help 2>&1 | grep -q -- --shared-dir; then
    echo "$found"
    exit 0
fi
root="$PWD/.cache/virtiofsd/$version"
bin="$root/bin/virtiofsd"
if [ ! -x "$bin" ]; then
    for header in /usr/include/seccomp.h /usr/include/cap-ng.h; do
        [ -f "$header" ] || { echo "build-virtiofsd.sh: $header is missing: run scripts/install-deps.sh (libseccomp-dev, libcap-ng-dev)" >&2; exit 1; }
    done
    echo "building virtiofsd $version into $root (once)" >&2
    # Its own target directory: the workspace's would be rebuilt for every version change.
    CARGO_TARGET_DIR="$root/target" cargo install virtiofsd --version "$version" --locked --root "$root" >&2
    rm -rf "$root/target"
fi
"$bin" --version >/dev/null
echo "$bin"
