//! The control protocol of a multiport console (virtio 1.x, 5.3.6.2): 8-byte messages
//! (`struct virtio_console_control`: port id, event, value) on the control queues, some followed
//! by a payload (a port's name, a console size). Parsing is pure and checks everything the
//! driver controls, so short or unknown messages are refused here, not misread later.

/// Events (`VIRTIO_CONSOLE_*`).
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const DEVICE_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// Bytes of `struct virtio_console_control`.
pub const CONTROL_LEN: usize = 8;
/// Longest port name sent to the guest; a control rx buffer (a page in Linux) always holds it.
pub const NAME_MAX_LEN: usize = 255;

/// A message the driver sent on the control tx queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverMessage {
    /// The driver is ready (`ok`) or failed to set up (`!ok`).
    DeviceReady { ok: bool },
    /// The driver set up port `id` (`ok`) or failed to.
    PortReady { id: u32, ok: bool },
    /// A guest program opened (`open`) or closed port `id`.
    PortOpen { id: u32, open: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("a control message of {0} bytes is shorter than 8")]
    Short(usize),
    #[error("control event {event} (port {id}) is not one a driver sends")]
    UnknownEvent { id: u32, event: u16 },
}

/// Parses a driver's control message from the first bytes of its buffer (extra bytes are
/// ignored: no driver message has a payload).
pub fn parse(bytes: &[u8]) -> Result<DriverMessage, ControlError> {
    let Some(header) = bytes.get(..CONTROL_LEN) else {
        return Err(ControlError::Short(bytes.len()));
    };
    let id = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let event = u16::from_le_bytes([header[4], header[5]]);
    let value = u16::from_le_bytes([header[6], header[7]]);
    // Linux sends 1 for yes and 0 for no; anything else non-zero is taken as yes.
    let yes = value != 0;
    match event {
        event::DEVICE_READY => Ok(DriverMessage::DeviceReady { ok: yes }),
        event::PORT_READY => Ok(DriverMessage::PortReady { id, ok: yes }),
        event::PORT_OPEN => Ok(DriverMessage::PortOpen { id, open: yes }),
        _ => Err(ControlError::UnknownEvent { id, event }),
    }
}

/// A message the device sends on the control rx queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMessage {
    /// Port `id` exists.
    DeviceAdd { id: u32 },
    /// Port `id` is a console (`hvc`).
    ConsolePort { id: u32 },
    /// Port `id`'s name (`/dev/virtio-ports/<name>` in Linux).
    PortName { id: u32, name: String },
    /// The host side of port `id` is connected (`open`) or not.
    PortOpen { id: u32, open: bool },
    /// Console port `id` has a new size.
    Resize { id: u32, cols: u16, rows: u16 },
}

impl DeviceMessage {
    /// The message as the driver reads it.
    pub fn encode(&self) -> Vec<u8> {
        let (id, ev, value) = match self {
            DeviceMessage::DeviceAdd { id } => (*id, event::DEVICE_ADD, 1),
            DeviceMessage::ConsolePort { id } => (*id, event::CONSOLE_PORT, 1),
            DeviceMessage::PortName { id, .. } => (*id, event::PORT_NAME, 1),
            DeviceMessage::PortOpen { id, open } => (*id, event::PORT_OPEN, u16::from(*open)),
            DeviceMessage::Resize { id, .. } => (*id, event::RESIZE, 0),
        };
        let mut bytes = Vec::with_capacity(CONTROL_LEN + 4);
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&ev.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
        match self {
            // The driver takes the rest of the buffer as the name; no terminating NUL needed.
            DeviceMessage::PortName { name, .. } => {
                let name = name.as_bytes();
                bytes.extend_from_slice(&name[..name.len().min(NAME_MAX_LEN)]);
            }
            // `struct virtio_console_resize { le16 cols; le16 rows; }`, the spec's order. Linux
            // before commit 5326ab737a47 (2025) read rows first; a guest that old sees the two
            // swapped, as with every VMM that follows the spec.
            DeviceMessage::Resize { cols, rows, .. } => {
                bytes.extend_from_slice(&cols.to_le_bytes());
                bytes.extend_from_slice(&rows.to_le_bytes());
            }
            _ => {}
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: u32, ev: u16, value: u16) -> Vec<u8> {
        let mut b = id.to_le_bytes().to_vec();
        b.extend_from_slice(&ev.to_le_bytes());
        b.extend_from_slice(&value.to_le_bytes());
        b
    }

    #[test]
    fn driver_messages_parse_and_others_are_refused() {
        assert_eq!(
            parse(&raw(0, event::DEVICE_READY, 1)),
            Ok(DriverMessage::DeviceReady { ok: true })
        );
        assert_eq!(
            parse(&raw(3, event::PORT_READY, 0)),
            Ok(DriverMessage::PortReady { id: 3, ok: false })
        );
        let mut long = raw(2, event::PORT_OPEN, 1);
        long.extend_from_slice(b"trailing");
        assert_eq!(parse(&long), Ok(DriverMessage::PortOpen { id: 2, open: true }));
        assert_eq!(parse(&raw(0, 0, 0)[..7]), Err(ControlError::Short(7)));
        assert_eq!(parse(&[]), Err(ControlError::Short(0)));
        assert_eq!(
            parse(&raw(1, event::RESIZE, 0)),
            Err(ControlError::UnknownEvent {
                id: 1,
                event: event::RESIZE
            })
        );
        assert!(parse(&raw(1, 0xffff, 0)).is_err());
    }

    #[test]
    fn device_messages_encode_header_and_payload() {
        assert_eq!(
            DeviceMessage::DeviceAdd { id: 2 }.encode(),
            raw(2, event::DEVICE_ADD, 1)
        );
        assert_eq!(
            DeviceMessage::PortOpen { id: 1, open: false }.encode(),
            raw(1, event::PORT_OPEN, 0)
        );
        let mut name = raw(1, event::PORT_NAME, 1);
        name.extend_from_slice(b"org.virtkit.agent");
        assert_eq!(
            DeviceMessage::PortName {
                id: 1,
                name: "org.virtkit.agent".into()
            }
            .encode(),
            name
        );
        let mut resize = raw(0, event::RESIZE, 0);
        resize.extend_from_slice(&[80, 0, 25, 0]);
        assert_eq!(
            DeviceMessage::Resize {
                id: 0,
                cols: 80,
                rows: 25
            }
            .encode(),
            resize
        );
        let long = "x".repeat(1000);
        assert_eq!(
            DeviceMessage::PortName { id: 1, name: long }.encode().len(),
            CONTROL_LEN + NAME_MAX_LEN
        );
    }
}
