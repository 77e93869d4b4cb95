//! One file per subcommand, each a thin `run()` over the framework.

pub mod agent;
pub mod clone;
pub mod console;
pub mod control;
pub mod cp;
pub mod create;
pub mod delete;
pub mod detach;
pub mod doctor;
pub mod exec;
pub mod get;
pub mod images;
pub mod ip;
pub mod list;
pub mod logs;
pub mod network_flags;
pub mod run;
pub mod screenshot;
pub mod snapshot;
pub mod ssh;
pub mod stats;
pub mod validate;
pub mod vms;
pub mod vnc;
pub mod vsock_proxy;
