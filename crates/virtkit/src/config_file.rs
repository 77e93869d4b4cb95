//! Reading a configuration file: bounded, and never from a FIFO or device (which would block
//! or never end), so `validate` and `run --config` refuse such a path at once.

use std::path::{Path, PathBuf};

use crate::config::VirtualMachineConfiguration;
use crate::regular_file::{read_bounded, RegularFileError};

/// The largest configuration file read: a VM's configuration is a few KiB.
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Why a configuration file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error(
        "the configuration file {} is larger than 1 MiB; a configuration is a few KiB: check the path",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error(
        "the configuration file {} is {kind}; give the path of a JSON file",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot read the configuration {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid configuration: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl VirtualMachineConfiguration {
    /// Reads a JSON configuration file of at most [`MAX_CONFIG_SIZE`] bytes.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        let bytes = read_bounded(path, MAX_CONFIG_SIZE).map_err(|e| match e {
            RegularFileError::TooLarge { .. } => ConfigFileError::TooLarge {
                path: path.to_owned(),
            },
            RegularFileError::NotRegular { kind, .. } => ConfigFileError::NotRegular {
                path: path.to_owned(),
                kind,
            },
            RegularFileError::SymbolicLink { .. } => ConfigFileError::NotRegular {
                path: path.to_owned(),
                kind: "a symbolic link",
            },
            RegularFileError::Io { source, .. } => ConfigFileError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_or_an_oversized_file_is_refused_with_the_reason() {
        let e = VirtualMachineConfiguration::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("/dev/zero is a character device"), "{e}");
        let path = std::env::temp_dir().join(format!("virtkit-config-big-{}.json", std::process::id()));
        std::fs::write(&path, vec![b' '; (MAX_CONFIG_SIZE + 1) as usize]).unwrap();
        let e = VirtualMachineConfiguration::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
    }
}
