//! First-boot setup of cloud images through cloud-init's NoCloud data source: a small FAT
//! volume labelled `CIDATA` (`seed.img` in the bundle, attached read-only) holding `meta-data`
//! (the instance id, from the machine id, so a clone is a new instance; the hostname, the VM's
//! name), `user-data` (the user and SSH keys, the guest agent installed as a systemd service, and
//! the user's own user-data merged as multipart MIME) and, when virtkit has it, the agent binary.
//!
//! What the seed was made from is kept in `seed.json`; [`SeedSettings::refresh`] rewrites the
//! volume when what it says no longer matches the bundle (a clone's new machine id, a rename).

mod fat;
mod user_data;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use fat::{read_seed_file, write_seed_image, SeedFile};
pub use user_data::{meta_data, user_data, AGENT_PATH_IN_SEED, AGENT_UNIT};

/// The seed volume's file in the bundle.
pub const SEED_FILE: &str = "seed.img";
/// What the seed was made from, in the bundle.
pub const SEED_SETTINGS_FILE: &str = "seed.json";
/// The user made when neither `--user` nor a usable login name gives one.
pub const DEFAULT_USER: &str = "virtkit";

/// Why the seed could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the cloud-init seed {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The inputs of a VM's seed, kept in `seed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SeedSettings {
    /// The user cloud-init makes (sudo without a password, the keys below).
    pub user: String,
    /// Public keys, one `ssh-ed25519 AAAA... comment` line each.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The private key next to the public key given, for `virtkit ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    /// The guest's hostname; the VM's name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The user's own user-data (cloud-config or a script), merged after virtkit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_user_data: Option<String>,
    /// What the volume now on disk was written for: the machine id and the VM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_for: Option<WrittenFor>,
}

/// The bundle facts a seed volume depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct WrittenFor {
    pub machine_id: String,
    pub name: String,
    /// Whether the agent binary went in.
    pub agent: bool,
}

impl SeedSettings {
    /// Settings for a new VM: `user` (or the login name, or [`DEFAULT_USER`]), the public keys
    /// in `keys` (files), `extra_user_data` (a file).
    pub fn new(
        user: Option<&str>,
        keys: &[PathBuf],
        hostname: Option<&str>,
        extra_user_data: Option<&Path>,
    ) -> Result<SeedSettings, SeedError> {
        let user = match user {
            Some(u) => u.to_owned(),
            None => default_user(),
        };
        check_user(&user)?;
        if let Some(h) = hostname {
            check_hostname(h)?;
        }
        let mut ssh_authorized_keys = Vec::new();
        let mut identity_file = None;
        for key in keys {
            let text = std::fs::read_to_string(key).map_err(|source| SeedError::Read {
                path: key.clone(),
                source,
            })?;
            let lines: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            if lines.is_empty() || lines.iter().any(|l| !looks_like_public_key(l)) {
                return Err(SeedError::Refused(format!(
                    "{} is not an SSH public key (a line such as `ssh-ed25519 AAAA... you@host`); give the .pub file",
                    key.display()
                )));
            }
            ssh_authorized_keys.extend(lines);
            if identity_file.is_none() {
                let private = key.with_extension("");
                if key.extension().is_some_and(|e| e == "pub") && private.is_file() {
                    identity_file = Some(std::path::absolute(&private).unwrap_or(private));
                }
            }
        }
        let extra_user_data = match extra_user_data {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                user_data::check_extra(&text, path)?;
                Some(text)
            }
            None => None,
        };
        Ok(SeedSettings {
            user,
            ssh_authorized_keys,
            identity_file,
            hostname: hostname.map(str::to_owned),
            extra_user_data,
            written_for: None,
        })
    }

    /// The public keys in `~/.ssh/*.pub` of the user running virtkit (what lima does when no
    /// key is given), sorted by name.
    pub fn default_keys() -> Vec<PathBuf> {
        let Some(home) = std::env::var_os("HOME") else {
            return Vec::new();
        };
        let mut keys: Vec<PathBuf> = std::fs::read_dir(Path::new(&home).join(".ssh"))
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Writes `seed.img` in `dir` for the VM `name` with `machine_id`, with the agent binary if
    /// `agent` is given, and records what it was written for.
    pub fn write(
        &mut self,
        dir: &Path,
        name: &str,
        machine_id: &str,
        agent: Option<&Path>,
    ) -> Result<(), SeedError> {
        let hostname = self.hostname.clone().unwrap_or_else(|| hostname_for(name));
        let mut files = vec![
            SeedFile::text("meta-data", meta_data(machine_id, &hostname)),
            SeedFile::text("user-data", user_data(self, &hostname, agent.is_some())),
        ];
        if let Some(agent) = agent {
            let bytes = std::fs::read(agent).map_err(|source| SeedError::Read {
                path: agent.to_path_buf(),
                source,
            })?;
            files.push(SeedFile {
                name: AGENT_PATH_IN_SEED.into(),
                bytes,
            });
        }
        let path = dir.join(SEED_FILE);
        write_seed_image(&path, &files).map_err(|source| SeedError::Write { path, source })?;
        self.written_for = Some(WrittenFor {
            machine_id: machine_id.to_owned(),
            name: name.to_owned(),
            agent: agent.is_some(),
        });
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let settings = dir.join(SEED_SETTINGS_FILE);
        std::fs::write(&settings, json).map_err(|source| SeedError::Write {
            path: settings,
            source,
        })
    }

    /// Reads `seed.json` from `dir`; `None` when the VM has no seed.
    pub fn load(dir: &Path) -> Result<Option<SeedSettings>, SeedError> {
        let path = dir.join(SEED_SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                SeedError::Refused(format!(
                    "{} is damaged ({e}); recreate the VM or delete the file to drop its seed",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SeedError::Read { path, source }),
        }
    }

    /// Rewrites the seed when the bundle no longer matches what it was written for (a clone's
    /// new machine id, a new name, the agent now available); whether it did.
    pub fn refresh(
        &mut self,
        dir: &Path,
        name: &str,
        machine_id: &str,
        agent: Option<&Path>,
    ) -> Result<bool, SeedError> {
        let now = WrittenFor {
            machine_id: machine_id.to_owned(),
            name: name.to_owned(),
            agent: agent.is_some(),
        };
        if self.written_for.as_ref() == Some(&now) {
            return Ok(false);
        }
        self.write(dir, name, machine_id, agent)?;
        Ok(true)
    }
}

/// The login name of the user running virtkit, when it is one a guest can have; else
/// [`DEFAULT_USER`] (root's guest user would be root, which cloud-init does not make).
fn default_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| u != "root" && check_user(u).is_ok())
        .unwrap_or_else(|| DEFAULT_USER.to_owned())
}

/// A user name useradd takes: lower-case letters, digits, `_` and `-`, starting with a letter
/// or `_`, at most 32 bytes.
fn check_user(user: &str) -> Result<(), SeedError> {
    let ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok || user == "root" {
        return Err(SeedError::Refused(format!(
            "`{user}` cannot be the guest's user: use lower-case letters, digits, `_` and `-` (not root), such as dev"
        )));
    }
    Ok(())
}

/// A hostname label: letters, digits and `-`, not at either end, at most 63 bytes.
fn check_hostname(name: &str) -> Result<(), SeedError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(SeedError::Refused(format!(
            "`{name}` is not a hostname: use letters, digits and `-` (at most 63), such as web-1"
        )));
    }
    Ok(())
}

fn looks_like_public_key(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or("");
    let blob = words.next().unwrap_or("");
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && blob.len() > 16
        && blob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
}

/// The hostname a VM named `name` gets: its name where that is a hostname, else with every
/// character a hostname cannot have replaced by `-`.
pub fn hostname_for(name: &str) -> String {
    let mut h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while h.starts_with('-') {
        h.remove(0);
    }
    while h.ends_with('-') {
        h.pop();
    }
    if h.is_empty() {
        "virtkit".into()
    } else {
        h
    }
}

/// Where the agent binary the seed carries comes from: `VIRTKIT_AGENT`, else `virtkit-agent`
/// next to the running `virtkit`, if it is statically linked (a guest has its own libraries, or
/// none: a development build linked against this host's would not start there). `None`: the
/// seed goes without it (the guest gets no agent).
pub fn find_agent() -> Option<PathBuf> {
    let candidate = match std::env::var_os("VIRTKIT_AGENT") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe().ok()?.parent()?.join("virtkit-agent"),
    };
    if !candidate.is_file() {
        return None;
    }
    if !is_static_elf(&candidate) {
        tracing::warn!(
            path = %candidate.display(),
            "the guest agent there is not statically linked, so the seed goes without it; build it with scripts/build-agent.sh"
        );
        return None;
    }
    Some(candidate)
}

/// Whether `path` is a 64-bit ELF with no program interpreter (`PT_INTERP`): statically linked.
fn is_static_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let head = &head[..n];
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3; a header beyond what was read counts as not static.
        head.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod static_elf_tests {
    #[test]
    fn a_dynamic_program_is_not_static_and_a_text_file_is_not_elf() {
        assert!(!super::is_static_elf(std::path::Path::new("/bin/sh")));
        assert!(!super::is_static_elf(std::path::Path::new("/etc/hostname")));
        if std::path::Path::new("/bin/busybox").is_file() {
            assert!(
                super::is_static_elf(std::path::Path::new("/bin/busybox")),
                "busybox-static"
            );
        }
    }
}
