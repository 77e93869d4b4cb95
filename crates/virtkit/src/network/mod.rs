//! Host-side networking for a VM's NIC: user-mode NAT through passt (issue 9, item 2).

pub mod passt;
