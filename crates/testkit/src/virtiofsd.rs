//! virtiofsd for the tests: `$VIRTKIT_VIRTIOFSD`, or the one `scripts/build-virtiofsd.sh`
//! builds once into `.cache/virtiofsd/` (or finds on `PATH`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The Rust virtiofsd's path, building it the first time (a minute or two); `Err` says why
/// there is none, for a skip.
pub fn virtiofsd() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("VIRTKIT_VIRTIOFSD").filter(|p| !p.is_empty()) {
                return Ok(path.into());
            }
            let root = crate::assets::repo_root().ok_or("cannot find the repository root")?;
            let out = Command::new(root.join("scripts/build-virtiofsd.sh"))
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run scripts/build-virtiofsd.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/build-virtiofsd.sh failed ({}); run it by hand to see why",
                    out.status
                ));
            }
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(PathBuf::from(path))
        })
        .clone()
}
