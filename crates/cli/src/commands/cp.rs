//! `virtkit cp SRC DEST`: files and directories (modes and symbolic links kept) between this
//! host and a running VM's guest, through its agent. One side is `NAME:PATH` (PATH absolute in
//! the guest). Like `cp -r`: into DEST when it is a directory, else as DEST, whose parent must
//! exist.

use std::path::Path;

use clap::Args;

use crate::commands::agent::{agent_error, connect};
use crate::exit::{CliError, EXIT_ERROR};

#[derive(Args)]
pub struct CpArgs {
    /// What to copy: a local path, or NAME:PATH in the guest.
    pub src: String,
    /// Where to: a local path, or NAME:PATH in the guest.
    pub dest: String,
}

/// `NAME:PATH` when `arg` names a path in a VM (`./a:b` or `/a:b` are local paths).
fn vm_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (name, path) = arg.split_once(':')?;
    virtkit_manager::bundle::check_name(name).ok()?;
    Some((name, path))
}

fn guest_path<'a>(name: &str, path: &'a str) -> Result<&'a str, CliError> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(CliError::new(format!(
            "`{name}:{path}`: give an absolute path in the guest, like `{name}:/root/{path}`"
        )))
    }
}

pub fn run(args: &CpArgs) -> Result<u8, CliError> {
    match (vm_path(&args.src), vm_path(&args.dest)) {
        (None, Some((name, dest))) => {
            let dest = guest_path(name, dest)?;
            let src = Path::new(&args.src);
            if std::fs::symlink_metadata(src).is_err() {
                return Err(CliError::new(format!("{} does not exist here", args.src)));
            }
            let (b, client) = connect(name, EXIT_ERROR)?;
            client.copy_in(src, dest).map_err(|e| agent_error(&b, e, false))?;
            Ok(0)
        }
        (Some((name, src)), None) => {
            let src = guest_path(name, src)?;
            let (b, client) = connect(name, EXIT_ERROR)?;
            client
                .copy_out(src, Path::new(&args.dest))
                .map_err(|e| match e {
                    virtkit_manager::agent::AgentError::Copy(e) => {
                        CliError::with_chain(format!("cannot copy `{}` to {}", args.src, args.dest), &e)
                    }
                    e => agent_error(&b, e, false),
                })?;
            Ok(0)
        }
        (Some(_), Some(_)) => Err(CliError::new(
            "both paths are in VMs; copy through the host: one side of `virtkit cp` is NAME:PATH, the other a local path",
        )),
        (None, None) => Err(CliError::new(
            "neither path is in a VM; write one side as NAME:PATH, like `virtkit cp ./src dev:/root/src`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_and_local_paths() {
        assert_eq!(vm_path("dev:/root"), Some(("dev", "/root")));
        assert_eq!(vm_path("./dev:/root"), None);
        assert_eq!(vm_path("/tmp/a:b"), None);
        assert_eq!(vm_path("plain"), None);
        assert_eq!(vm_path("bad name:/x"), None);
    }
}
