//! virtkit's VM manager: each VM a bundle under virtkit's home ([`bundle`], [`VirtkitHome`]),
//! the restore-image catalog and verified downloads ([`images`]), the control protocol of a
//! running VM with its client and server ([`control`]), and the process that runs one bundle's
//! VM ([`vm_process`]). Built on the VM API (`virtkit`) and disk images (`virtkit-disk`).
#![forbid(unsafe_code)]

pub mod admission;
pub mod agent;
pub mod bundle;
pub mod control;
mod control_exec;
pub mod control_framing;
#[doc(hidden)]
pub mod control_fuzz;
mod control_server;
mod home;
pub mod images;
pub mod running_snapshot;
pub mod screenshot;
pub mod seed;
pub mod suspend;
pub mod vm_process;
pub mod vnc_display;
pub mod vnc_input;

/// File system durability helpers, shared with disk imports.
pub(crate) use virtkit_disk::durable;

pub use home::{NoHome, VirtkitHome, HOME_ENV};
