//! Recognising disk image formats by their magic numbers.
//!
//! Only qcow2 is read as a format; every other file is a raw disk. Other well-known image
//! formats are recognised only to be refused: importing a VMDK as raw would give the guest a
//! disk full of VMDK metadata.

use super::qcow2;

/// How many bytes of the file's start [`foreign_format`] wants to see.
pub(crate) const PROBE_LEN: usize = 512;

/// The name of the non-raw, non-qcow2 image format whose magic starts `head`, if any.
pub(crate) fn foreign_format(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"KDMV", "VMDK (sparse extent)"),
        (b"COWD", "VMware 3 (COWD)"),
        (b"# Disk DescriptorFile", "VMDK (descriptor)"),
        (b"vhdxfile", "VHDX"),
        (b"conectix", "VHD"),
        (b"QED\0", "QED"),
        (b"LUKS\xba\xbe", "LUKS"),
        (b"WithoutFreeSpace", "Parallels"),
        (b"WithouFreSpacExt", "Parallels"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(name);
    }
    // VDI: a text banner, then the signature 0xbeda107f (little-endian) at byte 64.
    if head.get(64..68) == Some(&0xbeda_107fu32.to_le_bytes()[..]) {
        return Some("VDI");
    }
    // The original qcow (version 1) shares qcow2's magic.
    if head.starts_with(&qcow2::MAGIC) && head.get(4..8) == Some(&1u32.to_be_bytes()[..]) {
        return Some("qcow (version 1)");
    }
    None
}

/// Whether `head` starts with the qcow magic (any version but 1, see [`foreign_format`]).
pub(crate) fn is_qcow2(head: &[u8]) -> bool {
    head.starts_with(&qcow2::MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(prefix: &[u8]) -> Vec<u8> {
        let mut head = prefix.to_vec();
        head.resize(PROBE_LEN, 0);
        head
    }

    #[test]
    fn known_formats_are_named() {
        assert_eq!(
            foreign_format(&padded(b"KDMV\x01\0\0\0")),
            Some("VMDK (sparse extent)")
        );
        assert_eq!(foreign_format(&padded(b"vhdxfile")), Some("VHDX"));
        assert_eq!(foreign_format(&padded(b"conectix")), Some("VHD"));
        let mut vdi = padded(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(foreign_format(&vdi), Some("VDI"));
        assert_eq!(
            foreign_format(&padded(b"QFI\xfb\0\0\0\x01")),
            Some("qcow (version 1)")
        );
    }

    #[test]
    fn raw_and_qcow2_are_not_foreign() {
        // An MBR boot sector, an all-zero disk, a short file, and qcow2 versions 2 and 3.
        let mut mbr = padded(b"\xeb\x63\x90");
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(foreign_format(&mbr), None);
        assert_eq!(foreign_format(&padded(b"")), None);
        assert_eq!(foreign_format(b"KD"), None);
        for version in [2u8, 3] {
            let head = padded(&[b'Q', b'F', b'I', 0xfb, 0, 0, 0, version]);
            assert_eq!(foreign_format(&head), None);
            assert!(is_qcow2(&head));
        }
        assert!(!is_qcow2(&mbr));
    }
}
