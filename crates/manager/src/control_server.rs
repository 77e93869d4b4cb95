//! The control socket server of a VM process (protocol: `crate::control`, docs/CONTROL.md).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use crate::control::{parse_request, ControlCommand, ControlRequest, ControlResponse};
use virtkit::VirtualMachine;

/// Serves `path` for as long as the process lives.
pub fn serve(path: &Path, vm: Arc<VirtualMachine>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ControlSocket)
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().filter_map(|s| s.ok()) {
                let vm = vm.clone();
                let _ = virtkit_sandbox::Builder::new(virtkit_sandbox::ThreadRole::ControlClient)
                    .name("control-client".into())
                    .spawn(move || serve_client(stream, &vm));
            }
        })?;
    Ok(())
}

fn serve_client(stream: UnixStream, vm: &VirtualMachine) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let response = match parse_request(&line) {
            Ok(request) => handle(&request, vm),
            Err(response) => response,
        };
        tracing::info!(request = %line.trim(), ok = response.ok, "control request");
        let mut text = serde_json::to_string(&response).unwrap_or_default();
        text.push('\n');
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn handle(request: &ControlRequest, vm: &VirtualMachine) -> ControlResponse {
    if request.command == ControlCommand::Balloon {
        return balloon(request.target_bytes, vm);
    }
    let result = match request.command {
        ControlCommand::State | ControlCommand::Balloon => Ok(()),
        ControlCommand::Pause => vm.pause(),
        ControlCommand::Resume => vm.resume(),
        ControlCommand::RequestStop => vm.request_stop(),
        ControlCommand::Stop => vm.stop(),
    };
    match result {
        Ok(()) => ControlResponse::success(vm.state()),
        Err(e) => ControlResponse::failure(e),
    }
}

/// Sets the balloon's target if one is given, then reports it.
fn balloon(target: Option<u64>, vm: &VirtualMachine) -> ControlResponse {
    let result = target
        .map_or(Ok(()), |bytes| vm.set_balloon_target(bytes))
        .and_then(|()| vm.balloon());
    match result {
        Ok(status) => ControlResponse {
            balloon: Some(Box::new(status)),
            ..ControlResponse::success(vm.state())
        },
        Err(e) => ControlResponse::failure(e),
    }
}
