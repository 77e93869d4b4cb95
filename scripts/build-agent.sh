#!/usr/bin/env bash
# Builds the guest agent as a static binary (glibc, no musl target needed):
#   scripts/build-agent.sh            -> prints the path of the binary
# The binary is <target>/agent-static/x86_64-unknown-linux-gnu/release/virtkit-agent, where
# <target> is $CARGO_TARGET_DIR or ./target: the same place the tests' harness
# (virtkit_testkit::agent::static_agent) builds it, so either reuses the other's build.
# `--target` is given explicitly so that RUSTFLAGS reach only the agent, not build scripts or
# proc macros (which cannot be linked statically).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
CARGO_TARGET_DIR="$target_dir/agent-static" RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release -p virtkit-agent --target x86_64-unknown-linux-gnu >&2
bin="$target_dir/agent-static/x86_64-unknown-linux-gnu/release/virtkit-agent"
# Static: no shared library needed (readelf from binutils: scripts/install-deps.sh; `file` may
# be missing on a fresh machine).
dynamic=$(readelf -d "$bin" 2>&1) && [ -f "$bin" ] || { echo "build-agent.sh: cannot read $bin" >&2; exit 1; }
! grep -q NEEDED <<<"$dynamic" || { echo "build-agent.sh: $bin is not static" >&2; exit 1; }
echo "$bin"
