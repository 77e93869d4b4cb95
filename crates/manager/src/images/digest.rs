//! The digest an image must have: SHA-256 or SHA-512 in hex, given in the catalog or looked up in
//! a `SHA256SUMS`/`SHA512SUMS`-style file published next to the image.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash functions a catalog may name, told apart by the length of the hex digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    /// SHA-256 for 64 hex digits, SHA-512 for 128, otherwise none.
    pub fn for_hex_len(len: usize) -> Option<DigestAlgorithm> {
        match len {
            64 => Some(DigestAlgorithm::Sha256),
            128 => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha512 => "SHA-512",
        })
    }
}

/// A digest in lowercase hex, with the algorithm that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    pub algorithm: DigestAlgorithm,
    pub hex: String,
}

impl ExpectedDigest {
    /// A digest from hex text of 64 or 128 digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<ExpectedDigest> {
        let algorithm = DigestAlgorithm::for_hex_len(text.len())?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(ExpectedDigest {
            algorithm,
            hex: text.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for ExpectedDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, self.hex)
    }
}

/// A running hash of one of the supported algorithms.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest in lowercase hex.
    pub(crate) fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => to_hex(&h.finalize()),
            Hasher::Sha512(h) => to_hex(&h.finalize()),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// What a checksums file says about one file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SumsLookup {
    Found(ExpectedDigest),
    /// The file has a line for the name, but its digest is neither 64 nor 128 hex digits.
    Unsupported {
        digest: String,
    },
    NotListed,
}

/// Looks `file_name` up in a checksums file. Understands the GNU coreutils form
/// (`<hex>  <name>`, `<hex> *<name>` in binary mode, and a leading `./`) that Debian and most
/// distributions publish, and the BSD form (`SHA512 (<name>) = <hex>`).
pub(crate) fn lookup_in_sums(text: &str, file_name: &str) -> SumsLookup {
    for line in text.lines().map(str::trim) {
        let Some((digest, name)) = parse_sums_line(line) else {
            continue;
        };
        if name.strip_prefix("./").unwrap_or(name) != file_name {
            continue;
        }
        return match ExpectedDigest::from_hex(digest) {
            Some(d) => SumsLookup::Found(d),
            None => SumsLookup::Unsupported {
                digest: digest.to_owned(),
            },
        };
    }
    SumsLookup::NotListed
}

/// `(digest, file name)` of one line, or `None` for blank lines, comments and anything else.
fn parse_sums_line(line: &str) -> Option<(&str, &str)> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // BSD: `SHA512 (name) = hex`.
    if let Some((left, digest)) = line.rsplit_once(") = ") {
        let (_, name) = left.split_once(" (")?;
        return Some((digest.trim(), name));
    }
    // GNU: `hex  name` or `hex *name`.
    let (digest, rest) = line.split_once(char::is_whitespace)?;
    let name = rest.trim_start();
    let name = name.strip_prefix('*').unwrap_or(name);
    (!name.is_empty()).then_some((digest, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(algorithm: DigestAlgorithm, data: &[u8]) -> String {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish_hex()
    }

    #[test]
    fn hashes_match_the_published_test_vectors() {
        // FIPS 180-2 example "abc".
        assert_eq!(
            hex_of(DigestAlgorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hex_of(DigestAlgorithm::Sha512, b"abc").starts_with("ddaf35a193617aba"));
        assert_eq!(hex_of(DigestAlgorithm::Sha512, b"abc").len(), 128);
    }

    #[test]
    fn hashing_in_pieces_equals_hashing_at_once() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = Hasher::new(DigestAlgorithm::Sha512);
        for chunk in data.chunks(333) {
            h.update(chunk);
        }
        assert_eq!(h.finish_hex(), hex_of(DigestAlgorithm::Sha512, &data));
    }

    #[test]
    fn hex_length_picks_the_algorithm_and_other_text_is_refused() {
        let d = ExpectedDigest::from_hex(&"AB".repeat(32)).unwrap();
        assert_eq!(d.algorithm, DigestAlgorithm::Sha256);
        assert_eq!(d.hex, "ab".repeat(32));
        assert_eq!(
            ExpectedDigest::from_hex(&"0".repeat(128)).unwrap().algorithm,
            DigestAlgorithm::Sha512
        );
        assert_eq!(ExpectedDigest::from_hex(&"0".repeat(40)), None);
        assert_eq!(ExpectedDigest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn sums_files_in_gnu_and_bsd_form_give_the_line_for_the_name() {
        let a = "a".repeat(128);
        let b = "b".repeat(128);
        let c = "c".repeat(64);
        let text = format!(
            "# comment\n\n{a}  debian-12-generic-amd64.qcow2\n{b} *debian-12-nocloud-amd64.qcow2\n\
             SHA256 (other.raw) = {c}\n{c}  ./dotted.img\n"
        );
        let found = |name: &str| match lookup_in_sums(&text, name) {
            SumsLookup::Found(d) => d,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(found("debian-12-generic-amd64.qcow2").hex, a);
        assert_eq!(found("debian-12-nocloud-amd64.qcow2").hex, b);
        assert_eq!(found("other.raw").hex, c);
        assert_eq!(found("other.raw").algorithm, DigestAlgorithm::Sha256);
        assert_eq!(found("dotted.img").hex, c);
        assert_eq!(lookup_in_sums(&text, "debian-12"), SumsLookup::NotListed);
        assert_eq!(
            lookup_in_sums("abc123  x.raw\n", "x.raw"),
            SumsLookup::Unsupported {
                digest: "abc123".into()
            }
        );
    }
}
