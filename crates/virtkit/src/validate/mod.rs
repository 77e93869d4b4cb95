//! Checking a configuration before anything is built: every problem at once, each naming the
//! field and how to fix it.

use std::fmt;
use std::path::Path;

use virtkit_machine::boot::{check_kernel, open_variable_store, FirmwareImage};
use virtkit_machine::layout::CMDLINE_MAX_SIZE;
use virtkit_machine::memory::low_ram_end;

use crate::config::{BootLoader, SerialAttachment, VirtualMachineConfiguration, CONFIG_FORMAT_VERSION};
use crate::host::HostCapabilities;
use crate::size::ByteSize;
use crate::storage::StorageDeviceConfiguration;

/// The least RAM a guest may have.
pub const MIN_MEMORY_SIZE: u64 = 64 << 20;
/// The most vCPUs our xAPIC-based machine describes.
pub const MAX_CPU_COUNT: u32 = 255;
const PAGE_SIZE: u64 = 4096;
/// Longest path a Unix socket address can hold (sun_path less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    /// The field, as it is spelled in the JSON configuration (`boot_loader.kernel`).
    pub field: String,
    /// What is wrong and how to fix it, as a sentence.
    pub message: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem `validate` found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub issues: Vec<ValidationIssue>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "the configuration has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

pub(crate) struct Issues(pub(crate) Vec<ValidationIssue>);

impl Issues {
    pub(crate) fn add(&mut self, field: &str, message: String) {
        self.0.push(ValidationIssue {
            field: field.to_owned(),
            message,
        });
    }
}

fn check_file(issues: &mut Issues, field: &str, what: &str, path: &Path) -> bool {
    use crate::regular_file::{open_regular, RegularFileError};
    // `open_regular` looks before it opens, so a FIFO or device here is reported, not waited on.
    let message = match open_regular(path) {
        Ok(_) => return true,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => format!(
            "the {what} {} does not exist; give the path of an existing file",
            path.display()
        ),
        Err(RegularFileError::NotRegular { kind, .. }) => format!(
            "the {what} {} is {kind}, not a regular file; give the path of a file",
            path.display()
        ),
        Err(e) => format!(
            "the {what} {} cannot be read ({}); check its permissions",
            path.display(),
            error_chain(&e)
        ),
    };
    issues.add(field, message);
    false
}

/// A disk must exist, be a regular file or a block device, and be writable unless read-only.
/// A file or Unix socket the VMM creates: its directory must exist, and a socket path must fit
/// a socket address.
pub(crate) fn check_socket_path(issues: &mut Issues, field: &str, path: &Path, socket: bool) {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            issues.add(
                field,
                format!(
                    "the directory {} does not exist; create it or choose another path",
                    parent.display()
                ),
            );
        }
    }
    if socket && path.as_os_str().len() > MAX_SOCKET_PATH {
        issues.add(
            field,
            format!("a Unix socket path may be at most {MAX_SOCKET_PATH} bytes; use a shorter path"),
        );
    }
}

pub(crate) fn check_disk(issues: &mut Issues, field: &str, disk: &StorageDeviceConfiguration) {
    use crate::storage::DiskImageFormat;
    use std::os::unix::fs::FileTypeExt;
    let path = &disk.path;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            issues.add(
                field,
                format!(
                    "the disk {} does not exist; create it (e.g. `truncate -s 8G {}`) or fix the path",
                    path.display(),
                    path.display()
                ),
            );
            return;
        }
        Err(e) => {
            issues.add(
                field,
                format!(
                    "the disk {} cannot be read ({e}); check its permissions",
                    path.display()
                ),
            );
            return;
        }
    };
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        issues.add(
            field,
            format!(
                "the disk {} is {}, neither a regular file nor a block device",
                path.display(),
                crate::regular_file::kind_of(&meta)
            ),
        );
        return;
    }
    if meta.is_file() && meta.len() == 0 {
        issues.add(
            field,
            format!(
                "the disk {} is empty (0 bytes); give it a size (e.g. `truncate -s 8G {}`)",
                path.display(),
                path.display()
            ),
        );
        return;
    }
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(path);
    if let (Ok(file), DiskImageFormat::Qcow2) = (&opened, disk.format) {
        if !virtkit_devices::block::qcow2::is_qcow2(file) {
            issues.add(
                field,
                format!(
                    "the disk {} is not a qcow2 image; attach it as raw (without format=qcow2), or \
                     convert it with `qemu-img convert -O qcow2`",
                    path.display()
                ),
            );
        }
    }
    if let Err(e) = opened {
        let how = if disk.read_only {
            "read"
        } else {
            "opened for writing"
        };
        issues.add(
            field,
            format!(
                "the disk {} cannot be {how} ({e}); check its permissions, or attach it read-only",
                path.display()
            ),
        );
    }
}

/// An error and its causes as one line, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl VirtualMachineConfiguration {
    /// Checks the configuration against the rules and this host's limits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_for(&HostCapabilities::detect())
    }

    /// Checks the configuration against the rules and the given host's limits.
    pub fn validate_for(&self, host: &HostCapabilities) -> Result<(), ValidationError> {
        let mut issues = Issues(Vec::new());
        if self.version > CONFIG_FORMAT_VERSION {
            issues.add(
                "version",
                format!(
                    "format version {} is newer than this virtkit understands ({CONFIG_FORMAT_VERSION}); upgrade virtkit",
                    self.version
                ),
            );
        }
        if self.version == 0 {
            issues.add("version", "format version 0 does not exist; use 1".into());
        }

        let kvm_max = host
            .max_vcpus()
            .map(|m| m.min(MAX_CPU_COUNT as usize) as u32)
            .unwrap_or(MAX_CPU_COUNT);
        if self.cpu_count == 0 || self.cpu_count > MAX_CPU_COUNT {
            issues.add(
                "cpu_count",
                format!(
                    "{} vCPUs is not possible; use 1 to {MAX_CPU_COUNT}",
                    self.cpu_count
                ),
            );
        } else if self.cpu_count > kvm_max {
            issues.add(
                "cpu_count",
                format!(
                    "{} vCPUs is more than this host's KVM allows; use at most {kvm_max}",
                    self.cpu_count
                ),
            );
        }

        if self.memory_size < MIN_MEMORY_SIZE {
            issues.add(
                "memory_size",
                format!(
                    "{} is too little; give the guest at least 64 MiB",
                    ByteSize(self.memory_size)
                ),
            );
        } else if !self.memory_size.is_multiple_of(PAGE_SIZE) {
            issues.add(
                "memory_size",
                format!(
                    "{} bytes is not a multiple of the 4 KiB page size; round it to {}",
                    self.memory_size,
                    ByteSize(self.memory_size / PAGE_SIZE * PAGE_SIZE)
                ),
            );
        }
        if self.memory_size > host.memory {
            issues.add(
                "memory_size",
                format!(
                    "{} is more than this host's {} of RAM; give the guest less",
                    ByteSize(self.memory_size),
                    ByteSize(host.memory)
                ),
            );
        }

        match &self.boot_loader {
            BootLoader::Linux {
                kernel,
                initrd,
                command_line,
            } => {
                if check_file(&mut issues, "boot_loader.kernel", "kernel", kernel) {
                    let needs = match check_kernel(kernel) {
                        Ok(needs) => needs,
                        Err(e) => {
                            issues.add(
                                "boot_loader.kernel",
                                format!(
                                    "{}; give a bzImage, or a 64- or 32-bit ELF kernel with a Xen PVH entry note",
                                    error_chain(&e)
                                ),
                            );
                            Default::default()
                        }
                    };
                    if let Some(needed) = needs.bzimage_memory_end {
                        if self.memory_size >= MIN_MEMORY_SIZE && needed > low_ram_end(self.memory_size) {
                            issues.add(
                                "memory_size",
                                format!(
                                    "{} is too little for the kernel {}, which decompresses into memory up to {} MiB; give the guest more",
                                    ByteSize(self.memory_size),
                                    kernel.display(),
                                    needed.div_ceil(1 << 20)
                                ),
                            );
                        }
                    } else if let Some(end) = needs.elf32_end {
                        if self.memory_size >= MIN_MEMORY_SIZE && end > low_ram_end(self.memory_size) {
                            issues.add(
                                "memory_size",
                                format!(
                                    "{} is too little for the 32-bit ELF kernel {}, whose segments end at {end:#x} ({} MiB); give the guest more",
                                    ByteSize(self.memory_size),
                                    kernel.display(),
                                    end.div_ceil(1 << 20)
                                ),
                            );
                        }
                    }
                }
                if let Some(initrd) = initrd {
                    check_file(&mut issues, "boot_loader.initrd", "initrd", initrd);
                }
                if command_line.len() >= CMDLINE_MAX_SIZE {
                    issues.add(
                        "boot_loader.command_line",
                        format!(
                            "{} bytes is too long; Linux takes at most {}",
                            command_line.len(),
                            CMDLINE_MAX_SIZE - 1
                        ),
                    );
                }
                if command_line.contains('\0') {
                    issues.add(
                        "boot_loader.command_line",
                        "contains a NUL byte, which would end it early; remove it".into(),
                    );
                }
                if !command_line.is_ascii() {
                    issues.add("boot_loader.command_line", "use only ASCII characters".into());
                }
            }
            BootLoader::Firmware { path, variable_store } => {
                let example = match variable_store {
                    Some(_) => "an EFI firmware's code such as /usr/share/OVMF/OVMF_CODE_4M.fd",
                    None => "a BIOS image such as /usr/share/seabios/bios.bin",
                };
                let mut code = None;
                if check_file(&mut issues, "boot_loader.path", "firmware image", path) {
                    match FirmwareImage::read(path) {
                        Ok(image) => code = Some(image),
                        Err(e) => {
                            issues.add("boot_loader.path", format!("{}; give {example}", error_chain(&e)))
                        }
                    }
                }
                if let Some(store) = variable_store {
                    if check_file(
                        &mut issues,
                        "boot_loader.variable_store",
                        "EFI variable store",
                        store,
                    ) {
                        if let Some(code) = &code {
                            if let Err(e) = open_variable_store(store, code, path) {
                                issues.add("boot_loader.variable_store", error_chain(&e));
                            }
                        }
                    }
                }
            }
        }

        crate::devices::validate_devices(self, &mut issues);

        if self.serial_ports.len() > 1 {
            issues.add(
                "serial_ports",
                format!(
                    "{} serial ports given; this machine has one (COM1)",
                    self.serial_ports.len()
                ),
            );
        }
        for (i, port) in self.serial_ports.iter().enumerate() {
            let field = format!("serial_ports[{i}].attachment.path");
            if let SerialAttachment::File { path, .. } | SerialAttachment::UnixSocket { path } =
                &port.attachment
            {
                let socket = matches!(port.attachment, SerialAttachment::UnixSocket { .. });
                check_socket_path(&mut issues, &field, path, socket);
            }
        }

        outputs::check_outputs(self, &mut issues);

        if issues.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { issues: issues.0 })
        }
    }
}

mod outputs;

#[cfg(test)]
mod tests;
