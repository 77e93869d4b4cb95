//! Where virtkit keeps its virtual machines and images: `$VIRTKIT_HOME`, or `~/.virtkit`.

use std::path::{Path, PathBuf};

/// The environment variable that moves virtkit's home.
pub const HOME_ENV: &str = "VIRTKIT_HOME";

/// virtkit's home directory and the layout under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtkitHome {
    root: PathBuf,
}

/// No home directory can be found.
#[derive(Debug, thiserror::Error)]
#[error("cannot find virtkit's home: set {HOME_ENV} (or HOME) to a directory")]
pub struct NoHome;

impl VirtkitHome {
    pub fn new(root: impl Into<PathBuf>) -> VirtkitHome {
        VirtkitHome { root: root.into() }
    }

    /// `$VIRTKIT_HOME` if set and not empty, else `$HOME/.virtkit`.
    pub fn from_env() -> Result<VirtkitHome, NoHome> {
        match std::env::var_os(HOME_ENV) {
            Some(v) if !v.is_empty() => Ok(VirtkitHome::new(v)),
            _ => match std::env::var_os("HOME") {
                Some(h) if !h.is_empty() => Ok(VirtkitHome::new(Path::new(&h).join(".virtkit"))),
                _ => Err(NoHome),
            },
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One directory per virtual machine (its bundle).
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    /// Downloaded restore images and the user's image catalog.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
}
