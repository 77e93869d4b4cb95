#!/usr/bin/env bash
# Makes the peer VMMs that bench/run.py measures beside virtkit available and prints their paths:
#   scripts/build-peers.sh [firecracker] [cloud-hypervisor]     (no argument: both)
# Each is built once from its source at a release tag into .cache/peers/<name>-<tag>/<binary>,
# next to a VERSION file (tag, commit, the git dependencies' revisions, rustc), and reused from
# there afterwards. The release build is theirs (`cargo build --release`, default features,
# their Cargo.lock), linked statically as their released binaries are: those are musl builds (not
# installed here), these x86_64-unknown-linux-gnu static PIEs (`-C target-feature=+crt-static`,
# as scripts/build-release.sh links virtkit), so that no VMM of the benchmark pays the dynamic
# loader when the others do not. Firecracker's build needs libclang (bindgen, for
# userfaultfd-sys: apt-get install libclang-dev).
#
# Sources: a git repository per project, $VIRTKIT_PEERS_GIT with {owner} and {repo} in it
# (default https://github.com/{owner}/{repo}; a local mirror such as
# /srv/mirror/{owner}+{repo}/repo also works). Git dependencies named in a peer's Cargo.lock
# (micro-http for both) come from the same place, at the revision the lockfile names, wired with
# `[patch."<url>"]` path overrides in the build tree's .cargo/config.toml. Source trees go to
# $VIRTKIT_PEERS_SRC (default .cache/peers/src) and cargo's target directories to
# $VIRTKIT_PEERS_TARGET (default .cache/peers/target; a few GiB, removable once built).
# $VIRTKIT_FIRECRACKER and $VIRTKIT_CLOUD_HYPERVISOR, when set, name binaries to use instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=$root/.cache/peers
git_tpl=${VIRTKIT_PEERS_GIT:-'https://github.com/{owner}/{repo}'}
src_dir=${VIRTKIT_PEERS_SRC:-$cache/src}
target_dir=${VIRTKIT_PEERS_TARGET:-$cache/target}

# name -> owner/repo, tag, binary, cargo arguments, toolchain (their rust-toolchain.toml pins
# one; RUSTUP_TOOLCHAIN keeps rustup from fetching its musl targets).
declare -A REPO=([firecracker]=firecracker-microvm/firecracker [cloud-hypervisor]=cloud-hypervisor/cloud-hypervisor)
declare -A TAG=([firecracker]=v1.16.1 [cloud-hypervisor]=v53.0)
declare -A BIN=([firecracker]=firecracker [cloud-hypervisor]=cloud-hypervisor)
declare -A ARGS=([firecracker]="-p firecracker --bin firecracker" [cloud-hypervisor]="--bin cloud-hypervisor")
declare -A TOOLCHAIN=([firecracker]=1.95.0 [cloud-hypervisor]=)
declare -A OVERRIDE=([firecracker]=${VIRTKIT_FIRECRACKER:-} [cloud-hypervisor]=${VIRTKIT_CLOUD_HYPERVISOR:-})

say() { echo "build-peers.sh: $*" >&2; }

git_url() { # owner/repo
    local u=${git_tpl//\{owner\}/${1%%/*}}
    echo "${u//\{repo\}/${1#*/}}"
}

# A bare git directory holding owner/repo: the local mirror itself, or a clone in $src_dir.
git_dir() { # owner/repo
    local url; url=$(git_url "$1")
    if [ -d "$url" ]; then
        echo "$url"
        return
    fi
    local dir="$src_dir/git/${1/\//+}.git"
    if [ ! -d "$dir" ]; then
        say "cloning $url"
        git clone --quiet --bare "$url" "$dir.tmp" >&2 || { say "cannot clone $url (no network access to it? set VIRTKIT_PEERS_GIT to a local mirror)"; return 1; }
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Writes the tree of REV from owner/repo into DEST (once). Blobs a mirror lacks (large test
# files stored outside git) are left out: the builds do not read them.
extract() { # owner/repo rev dest
    [ -f "$3/Cargo.toml" ] && return 0
    local g; g=$(git_dir "$1") || return 1
    git --git-dir="$g" cat-file -e "$2^{commit}" 2>/dev/null || { say "$g has no $2"; return 1; }
    local skip=() tree state path
    tree=$(git --git-dir="$g" ls-tree -r "$2" | awk '$2 == "blob"')
    while IFS=$'\t' read -r state path; do
        [ "$state" != missing ] || skip+=(":!$path")
    done < <(paste <(cut -f1 <<<"$tree" | awk '{print $3}' |
                     git --git-dir="$g" cat-file --batch-check='%(objectname) present' | awk '{print $2}') \
                   <(cut -f2 <<<"$tree"))
    [ ${#skip[@]} -eq 0 ] || say "$1 $2: left out (not in the repository): ${skip[*]#:!}"
    rm -rf "$3.tmp" && mkdir -p "$3.tmp"
    git --git-dir="$g" archive "$2" -- . "${skip[@]}" | tar -x -C "$3.tmp"
    # The lockfile as released: cargo rewrites the git sources it patches.
    [ ! -f "$3.tmp/Cargo.lock" ] || cp "$3.tmp/Cargo.lock" "$3.tmp/Cargo.lock.orig"
    mv "$3.tmp" "$3"
}

build() { # name
    local name=$1 tag=${TAG[$1]} repo=${REPO[$1]}
    local out="$cache/$name-$tag-static" src="$src_dir/$name-$tag"
    local g; g=$(git_dir "$repo") || return 1
    local commit; commit=$(git --git-dir="$g" rev-parse "$tag^{commit}")
    extract "$repo" "$tag" "$src" || return 1
    # Git dependencies: "git+<url>[?query]#<rev>" sources in Cargo.lock.
    local deps=() patch=""
    while read -r crate url rev; do
        local dep_repo=${url#https://github.com/}
        local dep_src="$src_dir/${dep_repo#*/}-${rev:0:7}"
        extract "$dep_repo" "$rev" "$dep_src" || return 1
        local manifest; manifest=$(grep -rl --include=Cargo.toml -E "^name = \"$crate\"" "$dep_src" | head -1)
        [ -n "$manifest" ] || { say "no crate $crate in $dep_repo $rev"; return 1; }
        patch+="[patch.\"$url\"]"$'\n'"$crate = { path = \"$(dirname "$manifest")\" }"$'\n'
        deps+=("$crate $dep_repo $rev")
    done < <(awk '/^name = /{n=$3} /^source = "git\+/{print n, $3}' "$src/Cargo.lock.orig" | tr -d '"' |
             sed -E 's/ git\+([^?#]*)[^#]*#/ \1 /' | sort -u)
    if [ -n "$patch" ] && ! grep -q '^# virtkit: git dependencies' "$src/.cargo/config.toml" 2>/dev/null; then
        mkdir -p "$src/.cargo"
        printf '\n# virtkit: git dependencies from local trees, at the revisions Cargo.lock names\n%s' "$patch" >> "$src/.cargo/config.toml"
    fi
    local tc=${TOOLCHAIN[$name]}
    local rustc_v; rustc_v=$(cd "$src" && RUSTUP_TOOLCHAIN=${tc:-${RUSTUP_TOOLCHAIN:-}} rustc --version)
    say "building $name $tag ($commit) with $rustc_v (once; tens of minutes on 2 cores)"
    local t0=$SECONDS
    # shellcheck disable=SC2086 # ARGS is a word list
    # `--target` keeps the flag off their build scripts and proc macros (see build-release.sh);
    # `--config` appends it to their own rustflags (Firecracker's `.cargo/config.toml` has
    # `-Ccodegen-units=1`), which RUSTFLAGS would replace.
    (cd "$src" && RUSTUP_TOOLCHAIN=${tc:-${RUSTUP_TOOLCHAIN:-}} CARGO_TARGET_DIR="$target_dir/$name-$tag" \
        nice -n 19 cargo build --release --target x86_64-unknown-linux-gnu \
        --config 'build.rustflags = ["-C", "target-feature=+crt-static"]' ${ARGS[$name]} >&2) ||
        { say "cargo build of $name $tag failed (see above)"; return 1; }
    mkdir -p "$out"
    local built="$target_dir/$name-$tag/x86_64-unknown-linux-gnu/release/${BIN[$name]}" dynamic
    dynamic=$(readelf -d "$built") || { say "cannot read $built"; return 1; }
    ! grep -q NEEDED <<<"$dynamic" || { say "$built is not linked statically"; return 1; }
    cp "$built" "$out/${BIN[$name]}.tmp"
    {
        echo "name=$name"
        echo "tag=$tag"
        echo "commit=$commit"
        for d in "${deps[@]}"; do echo "git-dependency=$d"; done
        echo "rustc=$rustc_v"
        echo "target=x86_64-unknown-linux-gnu"
        echo "linkage=static PIE (build.rustflags += -C target-feature=+crt-static)"
        echo "cargo=cargo build --release --target x86_64-unknown-linux-gnu --config 'build.rustflags = [\"-C\", \"target-feature=+crt-static\"]' ${ARGS[$name]}"
        echo "build-seconds=$((SECONDS - t0))"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } > "$out/VERSION"
    mv "$out/${BIN[$name]}.tmp" "$out/${BIN[$name]}"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(firecracker cloud-hypervisor)
rc=0
for name in "${names[@]}"; do
    [ -n "${TAG[$name]:-}" ] || { say "unknown peer $name (firecracker, cloud-hypervisor)"; exit 2; }
    bin="$cache/$name-${TAG[$name]}-static/${BIN[$name]}"
    if [ -n "${OVERRIDE[$name]}" ]; then
        bin=${OVERRIDE[$name]}
    elif [ ! -x "$bin" ]; then
        command -v cargo >/dev/null || { say "cannot build $name: cargo is not in PATH"; rc=1; continue; }
        if [ "$name" = firecracker ] && [ -z "${LIBCLANG_PATH:-}" ] && ! ldconfig -p | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
            say "cannot build firecracker: bindgen (for userfaultfd-sys) needs libclang: apt-get install libclang-dev"
            rc=1
            continue
        fi
        build "$name" || { say "cannot build $name ${TAG[$name]}: see the reason above"; rc=1; continue; }
    fi
    "$bin" --version >/dev/null 2>&1 || { say "$bin does not run (--version failed)"; rc=1; continue; }
    echo "$bin"
done
exit $rc
