//! PC keys as Linux key codes. Linux's codes for the keys of an AT keyboard are its set-1
//! make codes for the plain keys (Esc 1, A 30, F1 59, ...) and a fixed table for the keys
//! with the 0xE0 prefix: what the kernel's `atkbd` driver makes of the same key on the PS/2
//! keyboard, so a key typed over VNC is the same key on either device.

/// The Linux key code of the key with set-1 make code `make` (with the 0xE0 prefix when
/// `extended`), or `None` for a code no key of a 105-key keyboard has.
pub fn linux_key(make: u8, extended: bool) -> Option<u16> {
    if !extended {
        return match make {
            0x01..=0x53 | 0x56..=0x58 => Some(u16::from(make)),
            _ => None,
        };
    }
    Some(match make {
        0x1c => 96,  // keypad Enter
        0x1d => 97,  // right Ctrl
        0x35 => 98,  // keypad /
        0x37 => 99,  // Print Screen (SysRq)
        0x38 => 100, // right Alt
        0x47 => 102, // Home
        0x48 => 103, // Up
        0x49 => 104, // Page Up
        0x4b => 105, // Left
        0x4d => 106, // Right
        0x4f => 107, // End
        0x50 => 108, // Down
        0x51 => 109, // Page Down
        0x52 => 110, // Insert
        0x53 => 111, // Delete
        0x5b => 125, // left Meta (Windows key)
        0x5c => 126, // right Meta
        0x5d => 127, // Menu (Compose)
        _ => return None,
    })
}

/// Every Linux key code [`linux_key`] can give: the keyboard's `EV_KEY` capabilities.
pub fn all_keys() -> impl Iterator<Item = u16> {
    (0u8..=0x7f)
        .flat_map(|make| [linux_key(make, false), linux_key(make, true)])
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_linux_codes() {
        // Esc, A, Space, F1, F12: the plain set-1 codes.
        assert_eq!(linux_key(0x01, false), Some(1));
        assert_eq!(linux_key(0x1e, false), Some(30));
        assert_eq!(linux_key(0x39, false), Some(57));
        assert_eq!(linux_key(0x3b, false), Some(59));
        assert_eq!(linux_key(0x58, false), Some(88));
        // Arrow keys and right Ctrl: the 0xE0 table.
        assert_eq!(linux_key(0x48, true), Some(103));
        assert_eq!(linux_key(0x50, true), Some(108));
        assert_eq!(linux_key(0x1d, true), Some(97));
        assert_eq!(linux_key(0x00, false), None);
        assert_eq!(linux_key(0x30, true), None);
        let all: Vec<u16> = all_keys().collect();
        assert!(all.contains(&111) && all.contains(&1) && !all.contains(&0));
        assert!(all.iter().all(|&k| k < 128));
    }
}
