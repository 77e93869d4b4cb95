//! The files a run writes by path (a serial port's or console port's `file` attachment): each
//! must be a regular file or `/dev/null`, and none may be a file the machine reads, because
//! opening it empties it (`--disk d.img --serial file:d.img` would wipe the disk).

use std::path::Path;

use super::Issues;
use crate::config::{BootLoader, SerialAttachment, VirtualMachineConfiguration};
use crate::regular_file::{check_output, same_file, RegularFileError};

/// The files the machine reads or writes as its own: (what, field, path).
fn inputs(config: &VirtualMachineConfiguration) -> Vec<(&'static str, String, &Path)> {
    let mut found = Vec::new();
    match &config.boot_loader {
        BootLoader::Linux { kernel, initrd, .. } => {
            found.push(("the kernel", "boot_loader.kernel".to_owned(), kernel.as_path()));
            if let Some(i) = initrd {
                found.push(("the initrd", "boot_loader.initrd".to_owned(), i.as_path()));
            }
        }
        BootLoader::Firmware { path, variable_store } => {
            found.push(("the firmware", "boot_loader.path".to_owned(), path.as_path()));
            if let Some(v) = variable_store {
                found.push((
                    "the variable store",
                    "boot_loader.variable_store".to_owned(),
                    v.as_path(),
                ));
            }
        }
    }
    for (i, d) in config.storage_devices.iter().enumerate() {
        found.push(("the disk", format!("storage_devices[{i}].path"), d.path.as_path()));
    }
    found
}

/// The output files: (field, path).
fn outputs(config: &VirtualMachineConfiguration) -> Vec<(String, &Path)> {
    let mut found = Vec::new();
    for (i, port) in config.serial_ports.iter().enumerate() {
        if let SerialAttachment::File { path, .. } = &port.attachment {
            found.push((format!("serial_ports[{i}].attachment.path"), path.as_path()));
        }
    }
    for (d, device) in config.console_devices.iter().enumerate() {
        for (p, port) in device.ports.iter().enumerate() {
            if let Some(SerialAttachment::File { path, .. }) = &port.attachment {
                found.push((
                    format!("console_devices[{d}].ports[{p}].attachment.path"),
                    path.as_path(),
                ));
            }
        }
    }
    found
}

pub(super) fn check_outputs(config: &VirtualMachineConfiguration, issues: &mut Issues) {
    let inputs = inputs(config);
    for (field, path) in outputs(config) {
        match check_output(path) {
            Ok(()) => {}
            Err(RegularFileError::NotRegular { kind, .. }) => {
                issues.add(
                    &field,
                    format!(
                        "the output file {} is {kind}; give a regular file (or /dev/null), or a \
                         unix: socket for a live console",
                        path.display()
                    ),
                );
                continue;
            }
            Err(e) => {
                issues.add(
                    &field,
                    format!(
                        "the output file {} cannot be checked ({}); check its directory's permissions",
                        path.display(),
                        super::error_chain(&e)
                    ),
                );
                continue;
            }
        }
        if let Some((what, input_field, input)) = inputs.iter().find(|(_, _, p)| same_file(path, p)) {
            issues.add(
                &field,
                format!(
                    "the output file {} is {what} {} ({input_field}), which writing the output \
                     would destroy; choose another file",
                    path.display(),
                    input.display()
                ),
            );
        }
    }
}
