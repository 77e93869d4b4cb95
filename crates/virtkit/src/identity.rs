//! The machine identifier: one random 128-bit value per virtual machine from which everything
//! that must stay stable across runs, and differ between clones, is derived — the SMBIOS system
//! UUID and serial number, and the network cards' MAC addresses.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A machine identifier, written as a UUID (`8-4-4-4-12` lowercase hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MachineIdentifier([u8; 16]);

/// Text that is not a machine identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a machine identifier: expected a UUID such as 3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b")]
pub struct BadMachineIdentifier(pub String);

impl MachineIdentifier {
    /// A new random identifier (a version-4 UUID) from the kernel's random source.
    pub fn random() -> std::io::Result<MachineIdentifier> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(MachineIdentifier(bytes))
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> MachineIdentifier {
        MachineIdentifier(bytes)
    }

    /// The 16 bytes in UUID text order (big-endian fields, as printed).
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The SMBIOS system serial number: `VK-` and the first 12 hex digits, uppercase.
    pub fn serial_number(&self) -> String {
        let hex: String = self.0[..6].iter().map(|b| format!("{b:02X}")).collect();
        format!("VK-{hex}")
    }

    /// The MAC address of network card `index`: locally administered, unicast, from the
    /// identifier's hash so that clones (new identifiers) get new addresses.
    pub fn mac_address(&self, index: u8) -> [u8; 6] {
        // FNV-1a over the identifier and the index: stable across builds and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.0.iter().chain(std::iter::once(&index)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = hash.to_be_bytes();
        // 0x02: locally administered (bit 1 set), unicast (bit 0 clear).
        [0x02, h[0], h[1], h[2], h[3], h[4]]
    }

    /// [`mac_address`](Self::mac_address) as `02:xx:xx:xx:xx:xx`.
    pub fn mac_address_text(&self, index: u8) -> String {
        let m = self.mac_address(index);
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Display for MachineIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MachineIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineIdentifier({self})")
    }
}

impl FromStr for MachineIdentifier {
    type Err = BadMachineIdentifier;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadMachineIdentifier(text.to_owned());
        let t = text.trim();
        let groups: Vec<&str> = t.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(MachineIdentifier(bytes))
    }
}

impl Serialize for MachineIdentifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MachineIdentifier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let id: MachineIdentifier = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b".parse().unwrap();
        assert_eq!(id.to_string(), "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b");
        assert_eq!(id.as_bytes()[0], 0x3f);
        assert_eq!(id.as_bytes()[15], 0x2b);
        assert_eq!(id.serial_number(), "VK-3F2B8A7E1C4D");
    }

    #[test]
    fn bad_text_is_refused_with_an_example() {
        for bad in [
            "",
            "3f2b8a7e",
            "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2g",
            "3f2b8a7e1c4d4e5f9a6b7c8d9e0f1a2b",
        ] {
            let e = bad.parse::<MachineIdentifier>().unwrap_err();
            assert!(e.to_string().contains("expected a UUID"), "{e}");
        }
    }

    #[test]
    fn random_identifiers_are_version_4_and_differ() {
        let a = MachineIdentifier::random().unwrap();
        let b = MachineIdentifier::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[6] >> 4, 4);
        assert_eq!(a.as_bytes()[8] >> 6, 0b10);
    }

    #[test]
    fn mac_addresses_are_local_unicast_stable_and_differ_between_machines() {
        let a: MachineIdentifier = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b".parse().unwrap();
        let b: MachineIdentifier = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2c".parse().unwrap();
        assert_eq!(a.mac_address(0), a.mac_address(0));
        assert_ne!(a.mac_address(0), b.mac_address(0));
        assert_ne!(a.mac_address(0), a.mac_address(1));
        assert_eq!(a.mac_address(0)[0] & 0x03, 0x02);
        assert_eq!(a.mac_address_text(0).len(), 17);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let id: MachineIdentifier = "3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"3f2b8a7e-1c4d-4e5f-9a6b-7c8d9e0f1a2b\"");
        assert_eq!(serde_json::from_str::<MachineIdentifier>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MachineIdentifier>("\"nope\"").is_err());
    }
}
