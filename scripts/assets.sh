#!/usr/bin/env bash
# Build the virtkit test-asset cache: $REPO/.cache/assets/<kernel-release>-v<RECIPE_VERSION>/
#
#   vmlinuz                  bzImage of the current Debian 12 cloud kernel (linux-image-cloud-amd64)
#   vmlinux                  ELF vmlinux extracted from that bzImage (has the Xen PVH entry note)
#   kernel-config            the kernel's config
#   busybox                  static busybox from Debian's busybox-static package
#   guest-initramfs.cpio.gz  busybox + virtio modules (virtiofs too) + e2fsprogs' mke2fs (mkfs.ext4) and e2fsck
#                            + qemu-guest-agent's /usr/sbin/qemu-ga, with their shared libraries
#                            + /init (scripts/assets/guest-init.sh)
#   host-modules/            kvm.ko, kvm-amd.ko, irqbypass.ko, tun.ko, bridge.ko, vhost_net.ko (+ deps:
#                            stp, llc, tap, vhost, vhost_iotlb); load order in host-modules/order
#   display/vmlinuz          Debian's generic kernel of the same release (linux-image-<n>-amd64):
#                            the cloud kernel has no DRM, this one has bochs-drm for the display
#   display/initramfs.cpio.gz  the guest initramfs with that kernel's modules (the guest modules
#                            and DISPLAY_MODULES) and their load order in place of the cloud kernel's
#   manifest.json            kernel release, package versions, sha256 + relative path of every artifact
#
# .cache/assets/current is a symlink to the finished directory. A finished directory is never
# modified: it is built in a temporary directory and renamed into place. Bump RECIPE_VERSION
# whenever what this script (or guest-init.sh) produces changes:
#   1  kernel, vmlinux, busybox, host modules, guest initramfs with busybox and virtio modules
#   2  guest modules pvpanic, pvpanic_mmio
#   3  e2fsprogs' mke2fs/mkfs.ext4 and e2fsck (+ libraries, loader) in the guest initramfs
#   4  qemu-guest-agent's qemu-ga (+ libraries) in /usr/sbin, /var/run -> /run and /etc/qemu in
#      the guest initramfs; qemu_guest_agent_package_version in manifest.json
#   5  host modules tun, bridge (stp, llc), vhost_net (vhost, vhost_iotlb, tap): TAP and
#      bridged networks in the emulated host (and vhost-net for a QEMU comparison)
#   6  guest modules fuse, virtiofs: shared directories (virtio-fs)
#   7  display/: the generic kernel and an initramfs with its modules, bochs-drm among them
#
# Usage: scripts/assets.sh [--verify] [--selftest] [--prune] [--quiet]
#   (no option)  make sure the cache is complete; print the asset directory on stdout
#   --verify     also check every artifact against the sha256 in manifest.json
#   --selftest   also boot the guest initramfs under QEMU TCG (q35) and check its markers, its
#                mkfs.ext4 on a virtio disk and its qemu-ga on a virtio-serial port
#   --prune      delete asset directories other than the current one
# Environment: VIRTKIT_KERNEL_PACKAGE=linux-image-<release>  use that package instead of the
#              one linux-image-cloud-amd64 depends on.
set -euo pipefail
shopt -s nullglob

RECIPE_VERSION=7

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$REPO/scripts/assets
CACHE=$REPO/.cache/assets

# Modules for the guest initramfs, loaded in this order (after their dependencies). Missing ones
# (not in this kernel) are skipped; built-in ones need no file.
GUEST_MODULES=(
	virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
	failover net_failover virtio_net virtio_blk virtio_console virtio_rng
	virtio_scsi virtio_balloon virtio_input vmw_vsock_virtio_transport
	button evdev pvpanic pvpanic_mmio fuse virtiofs
)
# More modules for the display kernel (display/): QEMU's bochs-display driver (bochs-drm, with
# the DRM core and helpers it depends on).
DISPLAY_MODULES=(bochs)
# Modules the emulated KVM host needs; all are required. tun and bridge: TAP and bridged
# networks; vhost_net: QEMU's vhost-net, for comparison.
HOST_MODULES=(irqbypass kvm kvm_amd tun bridge vhost_net)

VERIFY=0
SELFTEST=0
PRUNE=0
QUIET=0
for arg in "$@"; do
	case "$arg" in
	--verify) VERIFY=1 ;;
	--selftest) SELFTEST=1 ;;
	--prune) PRUNE=1 ;;
	--quiet) QUIET=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "assets: unknown option '$arg' (try --help)" >&2
		exit 2
		;;
	esac
done

log() { [ "$QUIET" = 1 ] || echo "assets: $*" >&2; }
warn() { echo "assets: warning: $*" >&2; }
die() {
	echo "assets: ERROR: $*" >&2
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Host tools

ensure_packages() {
	# Commands this script needs -> Debian package; plus packages the test suite needs.
	local -A cmd_pkg=(
		[apt-get]=apt [apt-cache]=apt [dpkg-deb]=dpkg [readelf]=binutils [cpio]=cpio
		[gzip]=gzip [xz]=xz-utils [zstd]=zstd [lz4]=lz4 [bzip2]=bzip2 [sha256sum]=coreutils
		[flock]=util-linux [timeout]=coreutils
	)
	local test_pkgs=(qemu-system-x86 busybox-static cpio seabios ovmf)
	local missing=() c p
	for c in "${!cmd_pkg[@]}"; do
		command -v "$c" >/dev/null 2>&1 || missing+=("${cmd_pkg[$c]}")
	done
	for p in "${test_pkgs[@]}"; do
		[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	[ "$(id -u)" = 0 ] ||
		die "missing packages: ${missing[*]} (run this script as root, or: sudo apt-get install -y ${missing[*]})"
	log "installing ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
		log "apt-get update"
		apt-get update >&2 || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
			die "apt-get install ${missing[*]} failed"
	fi
}

# ---------------------------------------------------------------------------------------------
# Kernel package resolution

resolve_kernel_package() { # prints nothing (and succeeds) when apt does not know the package
	{ apt-cache depends linux-image-cloud-amd64 2>/dev/null || true; } |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1
}

# ---------------------------------------------------------------------------------------------
# Manifest

manifest_files() { # DIR: print "<sha256>  <relpath>" for each artifact listed in the manifest
	sed -n 's/.*"path": *"\([^"]*\)", *"sha256": *"\([0-9a-f]\{64\}\)".*/\2  \1/p' "$1/manifest.json"
}

verify_dir() { # DIR
	local dir=$1 n
	n=$(manifest_files "$dir" | wc -l)
	[ "$n" -ge 5 ] || die "$dir/manifest.json lists only $n artifacts"
	(cd "$dir" && manifest_files "$dir" | sha256sum --check --quiet --strict) ||
		die "checksum mismatch in $dir (delete it and run scripts/assets.sh again)"
	log "verified $n artifacts in $dir"
}

set_current() { # NAME
	local tmp=$CACHE/.current.$$
	rm -f "$tmp"
	ln -s "$1" "$tmp"
	mv -Tf "$tmp" "$CACHE/current"
}

# ---------------------------------------------------------------------------------------------
# vmlinux extraction, the way linux/scripts/extract-vmlinux does it: find each compression magic
# in the bzImage, decompress from there, keep the first result that is an ELF file.

is_elf() { readelf -h "$1" >/dev/null 2>&1; }

try_decompress() { # IMAGE OUT MAGIC(printf fmt) DECOMPRESSOR...
	local img=$1 out=$2 magic=$3
	shift 3
	command -v "$1" >/dev/null 2>&1 || return 1
	local pos
	# grep -abo prints byte offsets of each match; -P with \x escapes works on binary data.
	# shellcheck disable=SC2013 # offsets are single words
	for pos in $(LC_ALL=C grep -aboP "$magic" "$img" | cut -d: -f1); do
		tail -c+$((pos + 1)) "$img" | "$@" >"$out" 2>/dev/null || true
		if is_elf "$out"; then
			log "vmlinux: payload at offset $pos, decompressed with '$*'"
			return 0
		fi
	done
	rm -f "$out"
	return 1
}

extract_vmlinux() { # BZIMAGE OUT
	local img=$1 out=$2
	try_decompress "$img" "$out" '\x1f\x8b\x08' gzip -dc ||
		try_decompress "$img" "$out" '\xfd\x37\x7a\x58\x5a\x00' xz -dc ||
		try_decompress "$img" "$out" '\x42\x5a\x68' bzip2 -dc ||
		try_decompress "$img" "$out" '\x5d\x00\x00\x00' xz -dc --format=lzma ||
		try_decompress "$img" "$out" '\x89\x4c\x5a' lzop -dc ||
		try_decompress "$img" "$out" '\x02\x21\x4c\x18' lz4 -dc ||
		try_decompress "$img" "$out" '\x28\xb5\x2f\xfd' zstd -dc ||
		die "no compressed ELF payload found in $img (tried gzip, xz, bzip2, lzma, lzo, lz4, zstd)"
	# The PVH entry point: ELF note owned by "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (0x12).
	if ! readelf -nW "$out" | grep -Eq '^[[:space:]]*Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x0*12\)|XEN_ELFNOTE_PHYS32_ENTRY)'; then
		die "the vmlinux extracted from $img has no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12)"
	fi
	log "vmlinux: ELF with the Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY)"
}

# ---------------------------------------------------------------------------------------------
# Kernel modules

declare -A MODPATH=() BUILTIN=() VISITED=()
MODORDER=()
MODSTAGE=

modname() { # path -> module name (basename without .ko[.xz|.zst|.gz], '-' -> '_')
	local b=${1##*/}
	b=${b%.ko*}
	echo "${b//-/_}"
}

index_modules() { # MODDIR
	local moddir=$1 f line
	while IFS= read -r f; do
		MODPATH[$(modname "$f")]=$f
	done < <(find "$moddir/kernel" -type f \( -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz' \))
	if [ -f "$moddir/modules.builtin" ]; then
		while IFS= read -r line; do
			BUILTIN[$(modname "$line")]=1
		done <"$moddir/modules.builtin"
	fi
	log "kernel: ${#MODPATH[@]} modules, ${#BUILTIN[@]} built in"
}

unpack_module() { # NAME -> $MODSTAGE/<basename>.ko (decompressed)
	local src=${MODPATH[$1]} base
	base=${src##*/}
	base=${base%.ko*}.ko
	case "$src" in
	*.ko) cp "$src" "$MODSTAGE/$base" ;;
	*.ko.xz) xz -dc "$src" >"$MODSTAGE/$base" ;;
	*.ko.zst) zstd -qdc "$src" >"$MODSTAGE/$base" ;;
	*.ko.gz) gzip -dc "$src" >"$MODSTAGE/$base" ;;
	esac
	echo "$base"
}

module_depends() { # KOFILE: the depends= field of .modinfo, space separated
	readelf -p .modinfo "$1" 2>/dev/null | sed -n 's/.*\]  *depends=\(.*\)$/\1/p' | tr ',' ' '
}

# visit NAME: append NAME's dependencies, then NAME, to MODORDER (as .ko basenames).
# Returns 1 if NAME is neither a module nor built in.
visit() {
	local n=${1//-/_} base dep
	[ -z "${VISITED[$n]:-}" ] || return 0
	VISITED[$n]=1
	if [ -n "${BUILTIN[$n]:-}" ]; then
		log "  $n: built in"
		return 0
	fi
	[ -n "${MODPATH[$n]:-}" ] || return 1
	base=$(unpack_module "$n")
	for dep in $(module_depends "$MODSTAGE/$base"); do
		visit "$dep" || die "module $n depends on $dep, which is neither a module nor built in"
	done
	MODORDER+=("$base")
}

resolve_modules() { # STAGEDIR NAME... (missing names are skipped unless REQUIRED=1)
	MODSTAGE=$1
	shift
	VISITED=()
	MODORDER=()
	mkdir -p "$MODSTAGE"
	local n
	for n in "$@"; do
		if ! visit "$n"; then
			[ "${REQUIRED:-0}" = 1 ] && die "required module $n is not in the kernel being staged"
			log "  $n: not in this kernel, skipped"
		fi
	done
}

# ---------------------------------------------------------------------------------------------
# cpio (newc) entry for a device node, so that building needs no root and no mknod.

cpio_dev_entry() { # NAME MODE(octal, with type bits) MAJOR MINOR
	local name=$1 mode=$((8#$2)) namesize=$((${#1} + 1)) pad
	CPIO_INO=$((${CPIO_INO:-0} + 1))
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
		$((0x7f000000 + CPIO_INO)) "$mode" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0 "$name"
	pad=$(((4 - (110 + namesize) % 4) % 4))
	head -c "$pad" /dev/zero
}

cpio_dir_entry() { # NAME
	cpio_dev_entry "$1" 040755 0 0
}

cpio_trailer() {
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
		0 0 0 0 1 0 0 0 0 0 0 11 0 'TRAILER!!!'
	head -c 3 /dev/zero # 110 + 11 = 121 -> pad to 124
}

# ---------------------------------------------------------------------------------------------
# Dynamically linked programs for the guest (e2fsprogs, qemu-guest-agent), from Debian packages,
# never from this machine's installed files: each program's package and the library packages its
# libraries come from are downloaded and unpacked; the shared libraries are found by the ELF
# NEEDED entries.

# E2FS_TOOLS: programs of the e2fsprogs package copied into the guest (sbin/), plus symlinks.
E2FS_TOOLS=(mke2fs e2fsck)
E2FS_LINKS=(mkfs.ext4:mke2fs mkfs.ext3:mke2fs mkfs.ext2:mke2fs fsck.ext4:e2fsck fsck.ext2:e2fsck)
# QGA_TOOLS: programs of the qemu-guest-agent package copied into the guest (usr/sbin/).
QGA_TOOLS=(qemu-ga)
# Directories qemu-ga uses at run time: its state dir (default /var/run; var/run is made a
# symlink to /run) must exist and be writable, or it exits "failed to load persistent state"
# (it writes qga.state there, and its pid file with -d); it reads /etc/qemu/qemu-ga.conf if
# present.
QGA_DIRS=(run etc/qemu)

APT_UPDATED=0

# apt_download DIR PKG...: apt-get download PKG... into DIR. If that fails (apt does not know a
# package, or its lists are stale and name a file the mirror no longer has), run apt-get update
# once and try again.
apt_download() {
	local dir=$1 aptopt=()
	shift
	[ "$(id -u)" = 0 ] && aptopt=(-o APT::Sandbox::User=root)
	(cd "$dir" && apt-get download -q "${aptopt[@]}" "$@" >/dev/null) && return 0
	[ "$APT_UPDATED" = 0 ] || return 1
	APT_UPDATED=1
	log "apt-get download $* failed; running apt-get update and retrying"
	apt-get update -q >&2 || warn "apt-get update failed"
	(cd "$dir" && apt-get download -q "${aptopt[@]}" "$@" >/dev/null)
}

pkg_depends() { # DEB: the package names in Depends and Pre-Depends (first alternative, no version)
	local f
	for f in Depends Pre-Depends; do
		dpkg-deb -f "$1" "$f" 2>/dev/null | tr ',' '\n'
	done | sed 's/|.*//; s/(.*)//; s/:any//; s/[[:space:]]//g' | grep -v '^$' || true
}

elf_needed() { # ELF: its NEEDED sonames
	readelf -dW "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
}

elf_interp() { # ELF: its program interpreter, if any
	readelf -lW "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p'
}

find_lib() { # ROOT SONAME: the path of SONAME in the unpacked packages under ROOT
	local d
	for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib; do
		if [ -e "$1/$d/$2" ]; then
			echo "$1/$d/$2"
			return 0
		fi
	done
	return 1
}

# missing_libs ROOT ELF...: the sonames (NEEDED, transitively) not found under ROOT
missing_libs() {
	local root=$1 f so p
	shift
	local -A seen=()
	local queue=("$@")
	while [ ${#queue[@]} -gt 0 ]; do
		f=${queue[0]}
		queue=("${queue[@]:1}")
		for so in $(elf_needed "$f"); do
			[ -z "${seen[$so]:-}" ] || continue
			seen[$so]=1
			if p=$(find_lib "$root" "$so"); then
				queue+=("$(readlink -f "$p")")
			else
				echo "$so"
			fi
		done
	done
}

# stage_debian_programs PKG VERSION_ARG DEBDIR ROOT GROOT DESTDIR PROG...: download the package PKG
# and the library packages its programs PROG... need into DEBDIR, unpack them into ROOT, and copy
# the programs (into GROOT/DESTDIR), their libraries (NEEDED, transitively; each under its soname
# in the same directory as in the packages) and the dynamic loader into the guest tree GROOT. Each
# staged program must then run with VERSION_ARG under the staged loader and libraries. Sets
# PKG_VERSION[PKG] and adds the sonames to STAGED_LIBS.
declare -A PKG_VERSION=() STAGED_LIBS=()
stage_debian_programs() {
	local pkg=$1 verarg=$2 debdir=$3 root=$4 groot=$5 destdir=$6
	shift 6
	local progs=("$@")
	mkdir -p "$debdir" "$root"
	apt_download "$debdir" "$pkg" || die "apt-get download $pkg failed"
	local pdeb=("$debdir/${pkg}"_*.deb)
	[ ${#pdeb[@]} = 1 ] || die "downloaded $pkg not found in $debdir"
	local version
	version=$(dpkg-deb -f "${pdeb[0]}" Version)
	PKG_VERSION[$pkg]=$version
	dpkg-deb -x "${pdeb[0]}" "$root"
	local t bins=() src
	for t in "${progs[@]}"; do
		src=
		for src in "$root/sbin/$t" "$root/usr/sbin/$t" "$root/bin/$t" "$root/usr/bin/$t" ""; do
			[ -z "$src" ] || [ -f "$src" ] && break
		done
		[ -n "$src" ] || die "no $t in $pkg $version"
		bins+=("$src")
	done
	# Fetch library packages, a level of dependencies at a time, until every NEEDED soname of
	# the programs (and of the libraries found so far) is there. Only library packages are
	# followed (lib*, and zlib1g whose name does not say so).
	local -A fetched=([$pkg]=1)
	local frontier=("${pdeb[0]}") missing d new deb
	for _ in 1 2 3 4 5 6; do
		mapfile -t missing < <(missing_libs "$root" "${bins[@]}")
		[ ${#missing[@]} -gt 0 ] || break
		new=()
		for deb in "${frontier[@]}"; do
			for d in $(pkg_depends "$deb"); do
				case "$d" in lib* | zlib1g) ;; *) continue ;; esac
				[ -z "${fetched[$d]:-}" ] || continue
				fetched[$d]=1
				new+=("$d")
			done
		done
		[ ${#new[@]} -gt 0 ] || break
		log "$pkg: missing ${missing[*]}; downloading ${new[*]}"
		apt_download "$debdir" "${new[@]}" || die "apt-get download ${new[*]} failed"
		frontier=()
		for d in "${new[@]}"; do
			deb=("$debdir/${d}"_*.deb)
			[ ${#deb[@]} = 1 ] || die "downloaded $d not found in $debdir"
			dpkg-deb -x "${deb[0]}" "$root"
			frontier+=("${deb[0]}")
		done
	done
	mapfile -t missing < <(missing_libs "$root" "${bins[@]}")
	[ ${#missing[@]} = 0 ] ||
		die "$pkg: no package among its dependencies holds ${missing[*]}"

	# Copy the programs, then each library under its soname in the same directory of the guest.
	mkdir -p "$groot/$destdir"
	for src in "${bins[@]}"; do
		rm -f "$groot/$destdir/${src##*/}" # busybox's applet of the same name, if any
		install -m 755 "$src" "$groot/$destdir/${src##*/}"
	done
	local -A copied=()
	local queue=("${bins[@]}") f so p rel interp
	while [ ${#queue[@]} -gt 0 ]; do
		f=${queue[0]}
		queue=("${queue[@]:1}")
		for so in $(elf_needed "$f"); do
			[ -z "${copied[$so]:-}" ] || continue
			copied[$so]=1
			STAGED_LIBS[$so]=1
			p=$(find_lib "$root" "$so")
			rel=${p#"$root"/}
			mkdir -p "$groot/${rel%/*}"
			cp -L "$p" "$groot/$rel"
			chmod 755 "$groot/$rel"
			queue+=("$groot/$rel")
		done
	done
	interp=$(elf_interp "${bins[0]}")
	[ -n "$interp" ] || die "$pkg's ${bins[0]##*/} names no program interpreter"
	[ -e "$root$interp" ] || die "the dynamic loader $interp is not in the downloaded packages"
	mkdir -p "$groot${interp%/*}"
	cp -L "$root$interp" "$groot$interp"
	chmod 755 "$groot$interp"
	# Each program runs with the staged loader, the staged libraries first in its search path.
	local out
	for t in "${progs[@]}"; do
		out=$("$groot$interp" --inhibit-cache \
			--library-path "$groot/lib/x86_64-linux-gnu:$groot/usr/lib/x86_64-linux-gnu" \
			"$groot/$destdir/$t" "$verarg" 2>&1) ||
			die "the staged $t does not run with the staged libraries: $out"
		log "  $t $verarg: $(echo "$out" | grep -v '^[[:space:]]*$' | head -n1)"
	done
	log "guest programs: ${progs[*]} from $pkg $version in /$destdir; libraries:" \
		"$(printf '%s\n' "${!copied[@]}" | sort | tr '\n' ' ')loader $interp"
}

# stage_guest_tools DEBDIR ROOT GROOT: stage e2fsprogs' tools and qemu-guest-agent's qemu-ga
# (see stage_debian_programs; DEBDIR and ROOT get a subdirectory per package) into the guest
# tree GROOT, with their symlinks, configuration and run-time directories. Sets E2FS_VERSION and
# QGA_VERSION.
stage_guest_tools() {
	local debdir=$1 root=$2 groot=$3 l d
	stage_debian_programs e2fsprogs -V "$debdir/e2fsprogs" "$root/e2fsprogs" "$groot" sbin \
		"${E2FS_TOOLS[@]}"
	E2FS_VERSION=${PKG_VERSION[e2fsprogs]}
	for l in "${E2FS_LINKS[@]}"; do
		rm -f "$groot/sbin/${l%%:*}"
		ln -s "${l#*:}" "$groot/sbin/${l%%:*}"
	done
	mkdir -p "$groot/etc"
	[ -f "$root/e2fsprogs/etc/mke2fs.conf" ] &&
		install -m 644 "$root/e2fsprogs/etc/mke2fs.conf" "$groot/etc/mke2fs.conf"
	ln -sfn /proc/self/mounts "$groot/etc/mtab" # where e2fsprogs looks for mounted filesystems

	stage_debian_programs qemu-guest-agent --version "$debdir/qemu-guest-agent" \
		"$root/qemu-guest-agent" "$groot" usr/sbin "${QGA_TOOLS[@]}"
	QGA_VERSION=${PKG_VERSION[qemu-guest-agent]}
	for d in "${QGA_DIRS[@]}"; do
		mkdir -p "$groot/$d"
	done
	mkdir -p "$groot/var"
	ln -sfn /run "$groot/var/run"
	log "guest tools: ${E2FS_TOOLS[*]} (e2fsprogs $E2FS_VERSION), ${QGA_TOOLS[*]}" \
		"(qemu-guest-agent $QGA_VERSION), ${#STAGED_LIBS[@]} shared libraries"
}

# ---------------------------------------------------------------------------------------------
# Build

build() { # PKG DEST
	local pkg=$1 dest=$2 t0=$SECONDS
	local tmp
	tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	local out=$tmp/out
	mkdir -p "$out" "$tmp/debs"

	log "downloading $pkg busybox-static"
	apt_download "$tmp/debs" "$pkg" busybox-static || die "apt-get download $pkg busybox-static failed"
	local kdeb=("$tmp/debs/${pkg}"_*.deb) bdeb=("$tmp/debs"/busybox-static_*.deb)
	if [ ${#kdeb[@]} != 1 ] || [ ${#bdeb[@]} != 1 ]; then
		die "downloaded packages not found in $tmp/debs"
	fi
	local kver bver
	kver=$(dpkg-deb -f "${kdeb[0]}" Version)
	bver=$(dpkg-deb -f "${bdeb[0]}" Version)
	log "unpacking $pkg $kver, busybox-static $bver"
	dpkg-deb -x "${kdeb[0]}" "$tmp/k"
	dpkg-deb -x "${bdeb[0]}" "$tmp/bb"

	# --- kernel
	local moddir
	for moddir in "$tmp/k/lib/modules/$RELEASE" "$tmp/k/usr/lib/modules/$RELEASE" ""; do
		[ -z "$moddir" ] || [ -d "$moddir" ] && break
	done
	[ -n "$moddir" ] || die "no lib/modules/$RELEASE in $pkg"
	local bz
	for bz in "$tmp/k/boot/vmlinuz-$RELEASE" "$moddir/vmlinuz" ""; do
		[ -z "$bz" ] || [ -f "$bz" ] && break
	done
	[ -n "$bz" ] || die "no vmlinuz in $pkg"
	cp "$bz" "$out/vmlinuz"
	local cfg
	for cfg in "$tmp/k/boot/config-$RELEASE" "$moddir/config"; do
		[ -f "$cfg" ] && cp "$cfg" "$out/kernel-config" && break
	done
	[ -f "$out/kernel-config" ] || die "no kernel config in $pkg"
	extract_vmlinux "$out/vmlinuz" "$out/vmlinux"

	# --- busybox
	local bb
	for bb in "$tmp/bb/bin/busybox" "$tmp/bb/usr/bin/busybox" ""; do
		[ -z "$bb" ] || [ -f "$bb" ] && break
	done
	[ -n "$bb" ] || die "no busybox in busybox-static"
	readelf -lW "$bb" | grep 'Requesting program interpreter' >/dev/null && die "busybox from busybox-static is not static"
	cp "$bb" "$out/busybox"
	chmod 755 "$out/busybox"
	"$out/busybox" true || die "the busybox from busybox-static does not run on this machine"

	# --- modules
	index_modules "$moddir"
	log "host modules: ${HOST_MODULES[*]}"
	REQUIRED=1 resolve_modules "$out/host-modules" "${HOST_MODULES[@]}"
	printf '%s\n' "${MODORDER[@]}" >"$out/host-modules/order"
	log "host module load order: ${MODORDER[*]}"
	# shellcheck disable=SC2034 # used through a nameref in write_manifest
	local host_order=("${MODORDER[@]}")

	log "guest modules: ${GUEST_MODULES[*]}"
	local groot=$tmp/groot
	mkdir -p "$groot"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/virtkit,var/log}
	REQUIRED=0 resolve_modules "$groot/lib/modules/$RELEASE" "${GUEST_MODULES[@]}"
	printf '%s\n' "${MODORDER[@]}" >"$groot/etc/virtkit/modules"
	log "guest module load order: ${MODORDER[*]}"
	local guest_order=("${MODORDER[@]}")

	# --- guest initramfs
	cp "$out/busybox" "$groot/bin/busybox"
	local applet
	while IFS= read -r applet; do
		[ "$applet" = bin/busybox ] || [ -e "$groot/$applet" ] || ln -s /bin/busybox "$groot/$applet"
	done < <("$out/busybox" --list-full)
	stage_guest_tools "$tmp/debs" "$tmp/pkgs" "$groot"
	install -m 755 "$HERE/guest-init.sh" "$groot/init"
	echo "$RELEASE" >"$groot/etc/virtkit/kernel-release"
	find "$groot" -exec touch -h -d @0 {} + # reproducible archive
	# Two concatenated newc archives (the kernel unpacks one after the other): first dev/ and
	# dev/console, which must exist before /init runs (the kernel opens it for init's stdio) and
	# which needs no root and no mknod this way; then the staged tree.
	{
		cpio_dir_entry dev
		cpio_dev_entry dev/console 020600 5 1
		cpio_trailer
	} >"$tmp/console.cpio"
	(cd "$groot" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --reproducible --quiet) >"$tmp/root.cpio" || die "cpio failed"
	[ "$(cpio -t --quiet <"$tmp/console.cpio" 2>/dev/null | tr '\n' ' ')" = "dev dev/console " ] ||
		die "guest initramfs check failed: bad dev/console archive"
	cpio -t --quiet <"$tmp/root.cpio" 2>/dev/null | grep -x 'init' >/dev/null || die "guest initramfs check failed: no init"
	cat "$tmp/console.cpio" "$tmp/root.cpio" | gzip -n -9 >"$out/guest-initramfs.cpio.gz"
	log "guest-initramfs.cpio.gz: $(($(stat -c %s "$out/guest-initramfs.cpio.gz") / 1024)) KiB, ${#guest_order[@]} modules"

	# --- the display kernel: the generic kernel of the same release, and the guest initramfs
	# with a third archive on top: that kernel's modules and their load order (the kernel
	# unpacks the archives in turn, a later file replacing an earlier one).
	case "$RELEASE" in
	*-cloud-amd64) ;;
	*) die "kernel release $RELEASE is not a cloud kernel's (<n>-cloud-amd64): cannot name its generic kernel" ;;
	esac
	local dpkg_name=linux-image-${RELEASE%-cloud-amd64}-amd64 drelease=${RELEASE%-cloud-amd64}-amd64
	log "downloading $dpkg_name (the display kernel)"
	apt_download "$tmp/debs" "$dpkg_name" || die "apt-get download $dpkg_name failed"
	local ddeb=("$tmp/debs/${dpkg_name}"_*.deb)
	[ ${#ddeb[@]} = 1 ] || die "downloaded package $dpkg_name not found in $tmp/debs"
	dpkg-deb -x "${ddeb[0]}" "$tmp/dk"
	local dmoddir=$tmp/dk/lib/modules/$drelease
	[ -d "$dmoddir" ] || dmoddir=$tmp/dk/usr/lib/modules/$drelease
	[ -d "$dmoddir" ] || die "no lib/modules/$drelease in $dpkg_name"
	mkdir -p "$out/display"
	cp "$tmp/dk/boot/vmlinuz-$drelease" "$out/display/vmlinuz" || die "no vmlinuz in $dpkg_name"
	MODPATH=()
	BUILTIN=()
	index_modules "$dmoddir"
	local droot=$tmp/droot
	mkdir -p "$droot/etc/virtkit"
	REQUIRED=0 resolve_modules "$droot/lib/modules/$drelease" "${GUEST_MODULES[@]}"
	local display_order=("${MODORDER[@]}")
	REQUIRED=1 resolve_modules "$droot/lib/modules/$drelease" "${DISPLAY_MODULES[@]}"
	# A module both lists need is loaded once, where the guest modules put it.
	local m
	for m in "${MODORDER[@]}"; do
		[[ " ${display_order[*]} " == *" $m "* ]] || display_order+=("$m")
	done
	printf '%s\n' "${display_order[@]}" >"$droot/etc/virtkit/modules"
	echo "$drelease" >"$droot/etc/virtkit/kernel-release"
	log "display kernel module load order: ${display_order[*]}"
	find "$droot" -exec touch -h -d @0 {} +
	(cd "$droot" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc -R 0:0 --reproducible --quiet) >"$tmp/display.cpio" || die "cpio failed"
	cat "$tmp/console.cpio" "$tmp/root.cpio" "$tmp/display.cpio" | gzip -n -9 >"$out/display/initramfs.cpio.gz"

	# --- manifest
	write_manifest "$out" "$pkg" "$kver" "$bver" "$E2FS_VERSION" "$QGA_VERSION" host_order guest_order
	verify_dir "$out"

	# --- publish atomically
	chmod -R a+rX "$out"
	mv -T "$out" "$dest" || die "could not rename $out to $dest"
	rm -rf "$tmp"
	trap - EXIT
	log "built $dest in $((SECONDS - t0)) s"
}

json_entry() { # DIR RELPATH
	printf '{"path": "%s", "sha256": "%s"}' "$2" "$(sha256sum "$1/$2" | cut -d' ' -f1)"
}

write_manifest() { # DIR PKG KVER BVER E2FSVER QGAVER HOST_ORDER_ARRAY GUEST_ORDER_ARRAY
	local dir=$1 pkg=$2 kver=$3 bver=$4 ever=$5 qver=$6
	local -n horder=$7 gorder=$8
	local m i sep
	{
		echo '{'
		echo '  "format": 1,'
		echo "  \"recipe_version\": $RECIPE_VERSION,"
		echo "  \"kernel_release\": \"$RELEASE\","
		echo "  \"kernel_package\": \"$pkg\","
		echo "  \"kernel_package_version\": \"$kver\","
		echo "  \"busybox_package_version\": \"$bver\","
		echo "  \"e2fsprogs_package_version\": \"$ever\","
		echo "  \"qemu_guest_agent_package_version\": \"$qver\","
		printf '  "guest_tools": [%s],\n' \
			"$(printf '"%s", ' "${E2FS_TOOLS[@]}" "${E2FS_LINKS[@]%%:*}" "${QGA_TOOLS[@]}" | sed 's/, $//')"
		echo "  \"created\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
		echo '  "artifacts": {'
		echo "    \"vmlinuz\": $(json_entry "$dir" vmlinuz),"
		echo "    \"vmlinux\": $(json_entry "$dir" vmlinux),"
		echo "    \"kernel_config\": $(json_entry "$dir" kernel-config),"
		echo "    \"busybox\": $(json_entry "$dir" busybox),"
		echo "    \"guest_initramfs\": $(json_entry "$dir" guest-initramfs.cpio.gz),"
		echo "    \"display_vmlinuz\": $(json_entry "$dir" display/vmlinuz),"
		echo "    \"display_initramfs\": $(json_entry "$dir" display/initramfs.cpio.gz),"
		echo "    \"host_modules_order\": $(json_entry "$dir" host-modules/order)"
		echo '  },'
		echo '  "host_modules": ['
		for i in "${!horder[@]}"; do
			m=${horder[$i]}
			sep=,
			[ "$i" = $((${#horder[@]} - 1)) ] && sep=
			echo "    {\"name\": \"$(modname "$m")\", $(json_entry "$dir" "host-modules/$m" | sed 's/^{//')$sep"
		done
		echo '  ],'
		printf '  "guest_modules": ['
		sep=
		for m in "${gorder[@]}"; do
			printf '%s"%s"' "$sep" "$(modname "$m")"
			sep=', '
		done
		echo ']'
		echo '}'
	} >"$dir/manifest.json"
}

# ---------------------------------------------------------------------------------------------
# Self test: boot the guest initramfs under QEMU TCG (q35) and check the markers.

selftest() { # DIR
	local dir=$1 work
	work=$(mktemp -d)
	# shellcheck disable=SC2064
	trap "rm -rf '$work'" EXIT
	command -v qemu-system-x86_64 >/dev/null || die "selftest needs qemu-system-x86_64"
	local fails=0

	# boot NAME KERNEL APPEND [QEMU-ARG...]: start QEMU in the background; serial ->
	# $work/NAME.log, serial input <- fifo $work/NAME.in, monitor <- $work/NAME.mon.in
	boot() {
		local name=$1 kernel=$2 append=$3
		shift 3
		mkfifo "$work/$name.in" "$work/$name.mon.in" "$work/$name.mon.out"
		timeout -k 5 180 qemu-system-x86_64 -M q35 -accel tcg -cpu max -m 512 -nographic -no-reboot \
			-nodefaults -no-user-config -serial stdio \
			-chardev pipe,id=mon,path="$work/$name.mon" -mon chardev=mon,mode=readline \
			-kernel "$kernel" -initrd "$dir/guest-initramfs.cpio.gz" -append "$append" "$@" \
			<"$work/$name.in" >"$work/$name.log" 2>&1 &
		QPID=$!
		exec 7>"$work/$name.in" 8<>"$work/$name.mon.in" 9<>"$work/$name.mon.out"
		STARTED=$SECONDS
	}
	# expect NAME REGEX [TIMEOUT]
	expect() {
		local deadline=$((SECONDS + ${3:-120}))
		until grep -Eq "$2" "$work/$1.log"; do
			if [ $SECONDS -ge $deadline ] || ! kill -0 "$QPID" 2>/dev/null; then
				grep -Eq "$2" "$work/$1.log" && return 0
				warn "selftest $1: did not see /$2/; serial log:"
				sed 's/^/    | /' "$work/$1.log" >&2
				return 1
			fi
			sleep 0.2
		done
	}
	finish_boot() { # NAME: wait for QEMU to exit on its own; returns its status
		local rc=0
		wait "$QPID" || rc=$?
		exec 7>&- 8>&- 9>&-
		return $rc
	}
	check() { # NAME DESCRIPTION COMMAND...
		local name=$1 what=$2
		shift 2
		if "$@"; then
			log "selftest $name: ok ($what, $((SECONDS - STARTED)) s)"
		else
			warn "selftest $name: FAILED ($what)"
			kill "$QPID" 2>/dev/null || true
			finish_boot "$name" || true
			fails=$((fails + 1))
		fi
	}

	log "selftest: booting the guest under QEMU TCG (-M q35 -cpu max)"
	boot poweroff "$dir/vmlinuz" "console=ttyS0 virtkit.token=abc virtkit.action=poweroff"
	check poweroff "bzImage, token, poweroff" eval \
		'expect poweroff "^VIRTKIT-GUEST: token=abc" && expect poweroff "^VIRTKIT-GUEST: memtotal_kib=[0-9]+" &&
		 expect poweroff "^VIRTKIT-GUEST: poweroff" && finish_boot poweroff'
	grep -E '^VIRTKIT-GUEST: (uptime|cpus|memtotal|modules)' "$work/poweroff.log" | sed 's/^/    /' >&2 || true

	boot pvh "$dir/vmlinux" "console=ttyS0 virtkit.token=pvh virtkit.run=\"uname -r\""
	check pvh "ELF vmlinux through the PVH note, virtkit.run" eval \
		'expect pvh "^VIRTKIT-GUEST: token=pvh" && expect pvh "^VIRTKIT-GUEST: run-exit=0" &&
		 expect pvh "^VIRTKIT-GUEST: poweroff" && finish_boot pvh'

	boot wait "$dir/vmlinuz" "console=ttyS0 virtkit.action=wait"
	check wait "action wait, acpid powers off on system_powerdown" eval \
		'expect wait "^VIRTKIT-GUEST: alive 2" && echo system_powerdown >&8 &&
		 expect wait "^VIRTKIT-GUEST: acpi-power-button" 30 && expect wait "^VIRTKIT-GUEST: poweroff" 30 &&
		 finish_boot wait'

	boot shell "$dir/vmlinuz" "console=ttyS0"
	# shellcheck disable=SC2016 # $((6*7)) is typed into the guest's shell
	check shell "default action shell, typed input, plain poweroff" eval \
		'expect shell "^VIRTKIT-GUEST: shell-ready" && sleep 1 && echo "echo \$((6*7))" >&7 &&
		 expect shell "^42" 30 && echo poweroff >&7 &&
		 expect shell "^VIRTKIT-GUEST: poweroff" 30 && finish_boot shell'

	truncate -s 64M "$work/disk.img"
	boot mkfs "$dir/vmlinuz" \
		"console=ttyS0 virtkit.run=\"mkfs.ext4 -q -F /dev/vda && e2fsck -fn /dev/vda >/dev/null && echo mkfs-ok\"" \
		-drive "file=$work/disk.img,if=virtio,format=raw"
	check mkfs "e2fsprogs: mkfs.ext4 and e2fsck on a virtio disk" eval \
		'expect mkfs "^mkfs-ok" && expect mkfs "^VIRTKIT-GUEST: poweroff" && finish_boot mkfs'

	# qemu-ga as the guest runs it (-m virtio-serial -p /dev/vport0pN; -d also needs /var/run for
	# its pid file); the host talks to it through a pipe chardev: $work/agent.in -> guest,
	# guest -> $work/agent.out.
	qga_info() {
		local line deadline=$((SECONDS + 60))
		echo '{"execute":"guest-info"}' >&5
		while [ $SECONDS -lt $deadline ]; do
			IFS= read -r -t 5 line <&6 || continue
			case "$line" in
			*'"return"'*'"version"'*)
				log "selftest qga: guest-info -> $(echo "$line" | grep -o '"version": *"[^"]*"')"
				return 0
				;;
			esac
		done
		warn "selftest qga: no guest-info answer from qemu-ga"
		return 1
	}
	mkfifo "$work/agent.in" "$work/agent.out"
	exec 5<>"$work/agent.in" 6<>"$work/agent.out"
	boot qga "$dir/vmlinuz" \
		"console=ttyS0 virtkit.run=\"qemu-ga -m virtio-serial -p /dev/vport0p1 -d && echo qga-started\" virtkit.action=wait" \
		-device virtio-serial-pci -chardev pipe,id=agent,path="$work/agent" \
		-device virtserialport,chardev=agent,name=org.qemu.guest_agent.0
	check qga "qemu-ga over virtio-serial: guest-info" eval \
		'expect qga "^qga-started" && expect qga "^VIRTKIT-GUEST: alive 1" && qga_info &&
		 echo system_powerdown >&8 && expect qga "^VIRTKIT-GUEST: poweroff" 30 && finish_boot qga'
	exec 5>&- 6>&-

	boot panic "$dir/vmlinuz" "console=ttyS0 panic=-1 virtkit.action=panic"
	check panic "action panic" eval \
		'expect panic "^VIRTKIT-GUEST: panic" && expect panic "Kernel panic" 30 && finish_boot panic'

	rm -rf "$work"
	trap - EXIT
	[ $fails = 0 ] || die "selftest: $fails boot(s) failed (logs above)"
	log "selftest: all boots passed"
}

# ---------------------------------------------------------------------------------------------

main() {
	local t0=$SECONDS
	ensure_packages
	mkdir -p "$CACHE"
	exec 3>"$CACHE/.lock"
	flock 3
	# Leftovers of builds that were killed (we hold the lock: no build is running).
	rm -rf "$CACHE"/.build.* "$CACHE"/.current.*

	local pkg=${VIRTKIT_KERNEL_PACKAGE:-}
	[ -n "$pkg" ] || pkg=$(resolve_kernel_package)
	if [ -z "$pkg" ]; then
		log "apt-cache does not know linux-image-cloud-amd64; running apt-get update"
		APT_UPDATED=1
		apt-get update -q >&2 || warn "apt-get update failed"
		pkg=$(resolve_kernel_package)
	fi
	if [ -z "$pkg" ]; then
		if [ -f "$CACHE/current/manifest.json" ]; then
			warn "cannot resolve linux-image-cloud-amd64; keeping $(readlink "$CACHE/current")"
			pkg=$(sed -n 's/.*"kernel_package": *"\([^"]*\)".*/\1/p' "$CACHE/current/manifest.json")
		else
			die "cannot resolve the kernel package of linux-image-cloud-amd64 (apt-cache depends failed)"
		fi
	fi
	RELEASE=${pkg#linux-image-}
	local name=$RELEASE-v$RECIPE_VERSION
	local dest=$CACHE/$name

	if [ -f "$dest/manifest.json" ]; then
		log "cache complete: $dest"
	else
		if [ -e "$dest" ]; then
			warn "$dest exists without manifest.json (interrupted by hand?); moving it aside"
			mv -T "$dest" "$CACHE/.broken.$name.$$"
		fi
		log "building $name (kernel package $pkg)"
		build "$pkg" "$dest"
	fi
	[ "$(readlink "$CACHE/current" 2>/dev/null || true)" = "$name" ] || set_current "$name"
	if [ "$PRUNE" = 1 ]; then
		local d
		for d in "$CACHE"/*-v[0-9]* "$CACHE"/.broken.*; do
			[ "$d" = "$dest" ] && continue
			log "pruning $d"
			rm -rf "$d"
		done
	fi
	[ "$VERIFY" = 1 ] && verify_dir "$dest"
	[ "$SELFTEST" = 1 ] && selftest "$dest"
	log "done in $((SECONDS - t0)) s: $CACHE/current -> $name"
	echo "$dest"
}

main
