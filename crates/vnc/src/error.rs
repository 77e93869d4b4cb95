//! The crate's errors.

use std::io;

/// Why a client's bytes were refused. Every one ends the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The client's ProtocolVersion is not `RFB 003.00x\n`.
    #[error("the client sent an unknown protocol version {0:?}")]
    BadVersion([u8; 12]),
    /// The client picked a security type the server did not offer.
    #[error("the client chose security type {0}, which was not offered")]
    SecurityTypeNotOffered(u8),
    /// A message type the server does not know (its length cannot be known either).
    #[error("unknown client message type {0}")]
    UnknownMessage(u8),
    /// A QEMU client message (type 255) other than the extended key event.
    #[error("unsupported QEMU client message subtype {0}")]
    UnknownQemuMessage(u8),
    /// A SetPixelFormat the server cannot serve.
    #[error("unsupported pixel format: {0}")]
    BadPixelFormat(&'static str),
    /// A SetEncodings listing more encodings than the server reads.
    #[error("SetEncodings lists {0} encodings, over the limit")]
    TooManyEncodings(u16),
    /// A ClientCutText longer than the server reads.
    #[error("client cut text of {0} bytes is over the limit")]
    CutTextTooLong(u32),
}

/// An error of the VNC server or of one client's connection.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// Reading from or writing to the client failed (including the client closing it).
    #[error("VNC connection I/O failed")]
    Io(#[from] io::Error),
    /// The client broke the protocol.
    #[error("VNC client broke the protocol")]
    Protocol(#[from] ProtocolError),
    /// The client's VNC authentication response was wrong.
    #[error("VNC authentication failed")]
    AuthenticationFailed,
    /// A TCP listener was asked to serve without a password.
    #[error("a VNC TCP listener needs a password (VNC authentication)")]
    TcpNeedsPassword,
    /// The server was asked to serve a TCP address other than loopback.
    #[error("a VNC TCP listener must be on a loopback address, not {0}")]
    NotLoopback(std::net::SocketAddr),
    /// Starting a thread failed.
    #[error("starting a VNC thread failed")]
    Thread(#[source] io::Error),
}
