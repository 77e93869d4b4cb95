//! The test-asset cache built by `scripts/assets.sh` (`.cache/assets/current/`).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Environment variable naming an asset directory (one holding `manifest.json`) to use instead
/// of `<repo>/.cache/assets/current`.
pub const ASSETS_DIR_ENV: &str = "VIRTKIT_ASSETS_DIR";

#[derive(Debug, Clone, Deserialize)]
struct Artifact {
    path: String,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Artifacts {
    vmlinuz: Artifact,
    vmlinux: Artifact,
    kernel_config: Artifact,
    busybox: Artifact,
    guest_initramfs: Artifact,
    /// Recipe 7 on: the generic kernel (with DRM) and its initramfs.
    #[serde(default)]
    display_vmlinuz: Option<Artifact>,
    #[serde(default)]
    display_initramfs: Option<Artifact>,
}

#[derive(Debug, Clone, Deserialize)]
struct HostModule {
    name: String,
    path: String,
    sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    recipe_version: u32,
    kernel_release: String,
    kernel_package_version: String,
    artifacts: Artifacts,
    host_modules: Vec<HostModule>,
    #[serde(default)]
    guest_modules: Vec<String>,
}

/// The prebuilt test assets: a stock Debian cloud kernel (bzImage and ELF vmlinux), a static
/// busybox, the guest initramfs, and the KVM modules for the emulated KVM host.
#[derive(Clone)]
pub struct Assets {
    dir: PathBuf,
    manifest: Manifest,
    vmlinuz: PathBuf,
    vmlinux: PathBuf,
    kernel_config: PathBuf,
    busybox: PathBuf,
    guest_initramfs: PathBuf,
    /// The display kernel and its initramfs (recipe 7 on).
    display_kernel: Option<(PathBuf, PathBuf)>,
    host_modules: Vec<PathBuf>,
}

impl fmt::Debug for Assets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assets")
            .field("dir", &self.dir)
            .field("kernel_release", &self.manifest.kernel_release)
            .field("recipe_version", &self.manifest.recipe_version)
            .finish()
    }
}

/// Finds the repository root: the first directory at or above `start` holding `.cache/assets`
/// or `Cargo.lock` (only a workspace root has one).
fn find_repo_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join(".cache").join("assets").is_dir() || d.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
}

/// The repository root (the workspace directory), found by walking up from the running test's
/// `CARGO_MANIFEST_DIR`, this crate's own manifest directory, or the current directory.
pub fn repo_root() -> Option<PathBuf> {
    let mut starts = Vec::new();
    if let Some(d) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(d));
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    starts.iter().find_map(|s| find_repo_root(s))
}

fn artifact_path(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(format!("manifest path {rel:?} is not inside the asset directory"));
    }
    let p = dir.join(rel);
    match fs::metadata(&p) {
        Ok(m) if m.is_file() => Ok(p),
        Ok(_) => Err(format!("{} is not a file", p.display())),
        Err(e) => Err(format!(
            "{}: {e} (asset cache incomplete; run scripts/assets.sh)",
            p.display()
        )),
    }
}

impl Assets {
    /// Loads `<repo>/.cache/assets/current/manifest.json` (or `$VIRTKIT_ASSETS_DIR/manifest.json`)
    /// and checks that every file it lists exists. Checksums are not read here; see
    /// [`Assets::verify`].
    pub fn load() -> Result<Assets, String> {
        if let Some(dir) = std::env::var_os(ASSETS_DIR_ENV) {
            return Self::load_dir(Path::new(&dir));
        }
        let root = repo_root().ok_or_else(|| {
            "cannot find the repository root (no Cargo.lock or .cache above CARGO_MANIFEST_DIR \
             or the current directory)"
                .to_string()
        })?;
        let current = root.join(".cache/assets/current");
        if !current.exists() {
            return Err(format!(
                "{} does not exist: run scripts/assets.sh to build the test assets",
                current.display()
            ));
        }
        // Resolve the link once, so that a concurrent rebuild switching `current` cannot mix
        // files of two asset directories.
        let dir = fs::canonicalize(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        Self::load_dir(&dir)
    }

    /// Loads the asset directory `dir` (one holding `manifest.json`).
    pub fn load_dir(dir: &Path) -> Result<Assets, String> {
        let mpath = dir.join("manifest.json");
        let text = fs::read_to_string(&mpath).map_err(|e| {
            format!(
                "{}: {e} (run scripts/assets.sh to build the test assets)",
                mpath.display()
            )
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| format!("{}: invalid manifest: {e}", mpath.display()))?;
        let a = &manifest.artifacts;
        let host_modules = manifest
            .host_modules
            .iter()
            .map(|m| artifact_path(dir, &m.path))
            .collect::<Result<Vec<_>, _>>()?;
        if host_modules.is_empty() {
            return Err(format!("{}: no host modules listed", mpath.display()));
        }
        Ok(Assets {
            dir: dir.to_path_buf(),
            vmlinuz: artifact_path(dir, &a.vmlinuz.path)?,
            vmlinux: artifact_path(dir, &a.vmlinux.path)?,
            kernel_config: artifact_path(dir, &a.kernel_config.path)?,
            busybox: artifact_path(dir, &a.busybox.path)?,
            guest_initramfs: artifact_path(dir, &a.guest_initramfs.path)?,
            display_kernel: match (&a.display_vmlinuz, &a.display_initramfs) {
                (Some(kernel), Some(initramfs)) => Some((
                    artifact_path(dir, &kernel.path)?,
                    artifact_path(dir, &initramfs.path)?,
                )),
                _ => None,
            },
            host_modules,
            manifest,
        })
    }

    /// The asset directory (`.cache/assets/<kernel-release>-v<N>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel's bzImage.
    pub fn vmlinuz(&self) -> &Path {
        &self.vmlinuz
    }

    /// The kernel as an ELF vmlinux with the Xen PVH entry note (bootable with QEMU `-kernel`
    /// through PVH, and by a VMM's ELF/PVH loader).
    pub fn vmlinux(&self) -> &Path {
        &self.vmlinux
    }

    /// The kernel's `.config`.
    pub fn kernel_config(&self) -> &Path {
        &self.kernel_config
    }

    /// The static busybox binary.
    pub fn busybox(&self) -> &Path {
        &self.busybox
    }

    /// The guest initramfs (gzip'ed newc cpio) whose `/init` prints `VIRTKIT-GUEST: ` markers.
    pub fn guest_initramfs(&self) -> &Path {
        &self.guest_initramfs
    }

    /// Debian's generic kernel of the same release (the cloud kernel has no DRM) and the guest
    /// initramfs with its modules, bochs-drm among them: for Linux on the display. `None` for
    /// assets before recipe 7.
    pub fn display_kernel(&self) -> Option<(&Path, &Path)> {
        self.display_kernel
            .as_ref()
            .map(|(kernel, initramfs)| (kernel.as_path(), initramfs.as_path()))
    }

    /// The emulated host's kernel modules (`irqbypass.ko`, `kvm.ko`, `kvm-amd.ko`), in load
    /// order.
    pub fn host_modules(&self) -> &[PathBuf] {
        &self.host_modules
    }

    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub fn kernel_release(&self) -> &str {
        &self.manifest.kernel_release
    }

    /// The Debian version of the kernel package, e.g. `6.1.192-2`.
    pub fn kernel_package_version(&self) -> &str {
        &self.manifest.kernel_package_version
    }

    /// The asset recipe version (`RECIPE_VERSION` in `scripts/assets.sh`).
    pub fn recipe_version(&self) -> u32 {
        self.manifest.recipe_version
    }

    /// Names of the modules the guest initramfs loads, in load order.
    pub fn guest_modules(&self) -> &[String] {
        &self.manifest.guest_modules
    }

    /// Checks every artifact against its sha256 in the manifest (runs `sha256sum`).
    pub fn verify(&self) -> Result<(), String> {
        let a = &self.manifest.artifacts;
        let mut list: Vec<(&str, &str)> = [
            &a.vmlinuz,
            &a.vmlinux,
            &a.kernel_config,
            &a.busybox,
            &a.guest_initramfs,
        ]
        .into_iter()
        .chain(a.display_vmlinuz.iter())
        .chain(a.display_initramfs.iter())
        .map(|x| (x.path.as_str(), x.sha256.as_str()))
        .collect();
        list.extend(
            self.manifest
                .host_modules
                .iter()
                .map(|m| (m.path.as_str(), m.sha256.as_str())),
        );
        let out = Command::new("sha256sum")
            .arg("--")
            .args(list.iter().map(|(p, _)| p))
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("cannot run sha256sum: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sha256sum failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for ((path, want), line) in list.iter().zip(text.lines()) {
            let got = line.split_whitespace().next().unwrap_or("");
            if got != *want {
                return Err(format!(
                    "{}: sha256 {got} does not match the manifest ({want}); delete {} and run \
                     scripts/assets.sh",
                    self.dir.join(path).display(),
                    self.dir.display()
                ));
            }
        }
        Ok(())
    }

    /// The names (without `.ko`) of the host modules, in load order.
    pub fn host_module_names(&self) -> Vec<&str> {
        self.manifest
            .host_modules
            .iter()
            .map(|m| m.name.as_str())
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fake asset directory with small placeholder files and a valid manifest. Leftovers of
    /// earlier test processes (whose pid is gone) are removed.
    pub(crate) fn fake_asset_dir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let tmp = std::env::temp_dir();
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("virtkit-fake-assets-") else {
                    continue;
                };
                let pid = rest.split('-').next().unwrap_or("");
                if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!(
            "virtkit-fake-assets-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("host-modules")).unwrap();
        for f in [
            "vmlinuz",
            "vmlinux",
            "kernel-config",
            "busybox",
            "guest-initramfs.cpio.gz",
            "host-modules/order",
            "host-modules/irqbypass.ko",
            "host-modules/kvm.ko",
            "host-modules/kvm-amd.ko",
        ] {
            fs::write(dir.join(f), f).unwrap();
        }
        let z = "0".repeat(64);
        let e = |p: &str| format!(r#"{{"path": "{p}", "sha256": "{z}"}}"#);
        let manifest = format!(
            r#"{{"format": 1, "recipe_version": 3, "kernel_release": "6.1.0-9-cloud-amd64",
            "kernel_package": "linux-image-6.1.0-9-cloud-amd64", "kernel_package_version": "6.1.1-1",
            "busybox_package_version": "1:1.35", "created": "x",
            "artifacts": {{"vmlinuz": {}, "vmlinux": {}, "kernel_config": {}, "busybox": {},
              "guest_initramfs": {}, "host_modules_order": {}}},
            "host_modules": [
              {{"name": "irqbypass", "path": "host-modules/irqbypass.ko", "sha256": "{z}"}},
              {{"name": "kvm", "path": "host-modules/kvm.ko", "sha256": "{z}"}},
              {{"name": "kvm_amd", "path": "host-modules/kvm-amd.ko", "sha256": "{z}"}}],
            "guest_modules": ["virtio", "virtio_blk"]}}"#,
            e("vmlinuz"),
            e("vmlinux"),
            e("kernel-config"),
            e("busybox"),
            e("guest-initramfs.cpio.gz"),
            e("host-modules/order"),
        );
        fs::write(dir.join("manifest.json"), manifest).unwrap();
        dir
    }

    /// [`Assets`] loaded from [`fake_asset_dir`].
    pub(crate) fn fake_assets() -> Assets {
        Assets::load_dir(&fake_asset_dir()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_workspace() {
        let root = repo_root().expect("repo root");
        assert!(root.join("Cargo.lock").is_file() || root.join(".cache").is_dir());
        assert!(root.join("crates/testkit").is_dir(), "{}", root.display());
    }

    #[test]
    fn parses_a_manifest() {
        let dir = super::tests_support::fake_asset_dir();
        let a = Assets::load_dir(&dir).unwrap();
        assert_eq!(a.kernel_release(), "6.1.0-9-cloud-amd64");
        assert_eq!(a.recipe_version(), 3);
        assert_eq!(a.vmlinuz(), dir.join("vmlinuz"));
        assert_eq!(a.guest_initramfs(), dir.join("guest-initramfs.cpio.gz"));
        assert_eq!(
            a.host_modules(),
            [
                dir.join("host-modules/irqbypass.ko"),
                dir.join("host-modules/kvm.ko"),
                dir.join("host-modules/kvm-amd.ko")
            ]
        );
        assert_eq!(a.host_module_names(), ["irqbypass", "kvm", "kvm_amd"]);
        assert_eq!(a.guest_modules(), ["virtio", "virtio_blk"]);
        let err = a.verify().unwrap_err();
        assert!(err.contains("does not match"), "{err}");

        fs::remove_file(dir.join("vmlinux")).unwrap();
        let err = Assets::load_dir(&dir).unwrap_err();
        assert!(err.contains("vmlinux"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The real cache, when it has been built: it must load and verify.
    #[test]
    fn real_cache_verifies() {
        match Assets::load() {
            Ok(a) => {
                a.verify().unwrap();
                assert_eq!(a.host_modules().len(), a.host_module_names().len());
            }
            Err(e) => crate::skip(&format!("test assets not built: {e}")),
        }
    }
}
