//! Test support for virtkit (dev-dependency only).
//!
//! * [`Assets`]: the test kernel, guest initramfs, busybox and KVM modules built by
//!   `scripts/assets.sh` into `.cache/assets/current/`.
//! * The skip policy: [`skip()`], [`require_kvm`], [`require_assets`], [`require_qemu`],
//!   [`host_kvm_kind`]. A test whose prerequisite is missing prints `SKIPPED: ...` and returns;
//!   with `VIRTKIT_REQUIRE_ALL=1` (CI) it fails instead.
//! * [`EmulatedHost`]: boots a KVM host under QEMU TCG (`-cpu max` emulates AMD-V), loads
//!   `kvm-amd` there and runs a test's shell script with a working `/dev/kvm`, for full guests on
//!   machines whose own KVM cannot run them (PVM, see `docs/TESTING.md`).
//! * [`cpio::CpioWriter`]: a newc cpio writer (initramfs images).
//!
//! # Typing into an inner guest
//!
//! The script runs in the emulated host with the helpers of `/virtkit/lib.sh`: `vk_start NAME
//! CMD...` runs a program with its stdin on a FIFO and its output copied to the serial console
//! (so the test sees it) and to a log; `vk_expect NAME REGEX [SECS]` waits for a line of that
//! output; `vk_send NAME TEXT` types a line; `vk_wait NAME [SECS]` returns its exit code. The
//! harness itself knows nothing about the VMM's command line:
//!
//! ```no_run
//! use std::time::Duration;
//! use virtkit_testkit::{require_assets, require_qemu, EmulatedHost};
//!
//! let Some(assets) = require_assets() else { return };
//! if !require_qemu() {
//!     return;
//! }
//! let vmm = env!("CARGO_MANIFEST_DIR").to_string() + "/../../target/debug/virtkit";
//! let run = EmulatedHost::new(&assets)
//!     .binary(&vmm, "/usr/bin/virtkit")
//!     .file(assets.vmlinuz(), "/guest/vmlinuz")
//!     .file(assets.guest_initramfs(), "/guest/initrd")
//!     .timeout(Duration::from_secs(180))
//!     .script(
//!         r#"
//! # The VMM's flags are the test's business; these are only an illustration.
//! vk_start g virtkit run --kernel /guest/vmlinuz --initrd /guest/initrd \
//!     --cmdline "console=ttyS0 virtkit.token=t1"
//! vk_expect g 'VIRTKIT-GUEST: shell-ready' 120 || exit 1
//! vk_send g 'echo $((6*7))'
//! vk_expect g '^42' 30 || exit 2
//! vk_send g 'poweroff -f'
//! vk_wait g 60
//! "#,
//!     )
//!     .run()
//!     .expect("emulated host");
//! run.assert_success();
//! assert_eq!(run.guest_value("token"), Some("t1"));
//! ```

pub mod agent;
pub mod assets;
pub mod cpio;
pub mod host;
pub mod skip;
pub mod stock_kernel;
pub mod tell;
pub mod virtiofsd;

pub use assets::{repo_root, Assets};
pub use host::{
    host_tsc_khz, lines_with_prefix, marker_value, EmulatedHost, HarnessError, HostRun, GUEST_PREFIX,
    HOST_PREFIX,
};
pub use skip::{
    host_kvm_kind, kvm_available, qemu_available, require_all, require_assets, require_kvm,
    require_kvm_and_seabios, require_qemu, skip, KvmKind, SEABIOS,
};
pub use stock_kernel::StockKernelScript;
pub use tell::tell;
