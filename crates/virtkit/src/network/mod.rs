//! Host-side networking for a VM's NIC (issue 9): user-mode NAT through passt (`passt`), and
//! TAP and bridged attachments (`tap`).

pub mod passt;
pub mod tap;
