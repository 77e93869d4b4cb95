//! `virtkit ssh NAME [-- ARGS]`: the system's `ssh` to the guest through its vsock (no network
//! card needed): `ProxyCommand` is `virtkit vsock-proxy NAME 22`, the user and key are the
//! cloud-init seed's, and host keys are remembered in the bundle's `known_hosts` (the first one
//! accepted, a changed one refused). `--print-config` prints the same as an ssh_config block
//! for other tools (VS Code, ansible, scp).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::Args;
use virtkit_manager::seed::SeedSettings;

use crate::commands::vms::{home, open};
use crate::exit::CliError;

/// The bundle file with the guest's SSH host keys.
pub const KNOWN_HOSTS_FILE: &str = "known_hosts";

#[derive(Args)]
pub struct SshArgs {
    pub name: String,
    /// Log in as this user [default: the cloud-init seed's user].
    #[arg(short = 'l', long = "user")]
    pub user: Option<String>,
    /// Print an ssh_config block for this VM instead of connecting.
    #[arg(long)]
    pub print_config: bool,
    /// More arguments for ssh (after `--`): a command to run, ssh options.
    #[arg(last = true)]
    pub ssh_args: Vec<String>,
}

/// What ssh needs to reach the VM.
struct Target {
    alias: String,
    user: String,
    proxy: String,
    known_hosts: PathBuf,
    identity: Option<PathBuf>,
}

fn target(args: &SshArgs) -> Result<Target, CliError> {
    let home = home()?;
    let b = open(&home, &args.name)?;
    let seed = SeedSettings::load(b.path()).map_err(|e| CliError::new(e.to_string()))?;
    let user = match (&args.user, &seed) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.user.clone(),
        (None, None) => {
            return Err(CliError::new(format!(
                "`{}` has no cloud-init seed, so virtkit does not know its user: give one with `virtkit ssh {} -l USER`",
                args.name, args.name
            )))
        }
    };
    let known_hosts = b.path().join(KNOWN_HOSTS_FILE);
    if !known_hosts.exists() {
        write_private(&known_hosts)?;
    }
    let exe =
        std::env::current_exe().map_err(|e| CliError::with_chain("cannot find the virtkit program", &e))?;
    Ok(Target {
        alias: format!("virtkit-{}", args.name),
        user,
        proxy: format!(
            "{} vsock-proxy {} 22",
            shell_word(&exe),
            shell_word(Path::new(&args.name))
        ),
        known_hosts,
        identity: seed.and_then(|s| s.identity_file),
    })
}

/// An empty owner-only file (the bundle's files are the user's alone).
fn write_private(path: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| CliError::with_chain(format!("cannot make {}", path.display()), &e))
}

/// `path` quoted for ssh's ProxyCommand (run by a shell) when it needs it.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

pub fn run(args: &SshArgs) -> Result<u8, CliError> {
    let t = target(args)?;
    if args.print_config {
        outln!("Host {}", t.alias);
        outln!("  User {}", t.user);
        outln!("  ProxyCommand {}", t.proxy);
        outln!("  UserKnownHostsFile {}", shell_word(&t.known_hosts));
        outln!("  StrictHostKeyChecking accept-new");
        if let Some(id) = &t.identity {
            outln!("  IdentityFile {}", shell_word(id));
        }
        return Ok(0);
    }
    let mut ssh = std::process::Command::new("ssh");
    ssh.arg("-o")
        .arg(format!("ProxyCommand={}", t.proxy))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", t.known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg("-o")
        .arg(format!("HostKeyAlias={}", t.alias))
        .arg("-l")
        .arg(&t.user);
    if let Some(id) = &t.identity {
        ssh.arg("-i").arg(id);
    }
    ssh.arg(&t.alias).args(&args.ssh_args);
    // Only returns on failure: ssh takes over this process (its exit code is ours).
    let e = ssh.exec();
    Err(CliError::new(if e.kind() == std::io::ErrorKind::NotFound {
        "ssh is not installed: install the OpenSSH client (Debian/Ubuntu: apt install openssh-client)"
            .to_string()
    } else {
        format!("cannot run ssh: {e}")
    }))
}
