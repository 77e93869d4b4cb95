//! The RFB handshake (RFC 6143 section 7.1-7.3): protocol version, security (None or VNC
//! authentication), ClientInit and ServerInit.

use std::io::{self, Read, Write};

use des::cipher::{Block, BlockEncrypt, KeyInit};
use des::Des;

use crate::error::{ProtocolError, VncError};
use crate::protocol::PixelFormat;

/// Security type None.
pub const SECURITY_NONE: u8 = 1;
/// Security type VNC Authentication.
pub const SECURITY_VNC_AUTH: u8 = 2;

/// How a listener lets clients in.
#[derive(Clone, PartialEq, Eq)]
pub enum Security {
    /// No authentication: for a Unix socket whose file permissions are the access control.
    None,
    /// VNC authentication with this password (only its first 8 bytes count, as in every VNC
    /// implementation).
    Password(String),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.write_str(match self {
            Security::None => "None",
            Security::Password(_) => "Password(..)",
        })
    }
}

/// The protocol version both sides settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// RFB 3.3: the server picks the security type.
    V3_3,
    /// RFB 3.7: the client picks; no SecurityResult after None, no failure reason.
    V3_7,
    /// RFB 3.8.
    V3_8,
}

/// What the handshake learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Negotiated version.
    pub version: Version,
    /// The client's ClientInit shared flag.
    pub shared: bool,
}

/// Reads the client's version string: 3.3, 3.7 and 3.8 as such; 3.4 to 3.6 (and Apple's 3.889)
/// as 3.3 and anything newer as 3.8, as RFC 6143 says.
pub fn parse_version(bytes: &[u8; 12]) -> Result<Version, ProtocolError> {
    let bad = || ProtocolError::BadVersion(*bytes);
    if &bytes[..4] != b"RFB " || bytes[7] != b'.' || bytes[11] != b'\n' {
        return Err(bad());
    }
    let number = |digits: &[u8]| -> Result<u32, ProtocolError> {
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (major, minor) = (number(&bytes[4..7])?, number(&bytes[8..11])?);
    match (major, minor) {
        (3, 7) => Ok(Version::V3_7),
        (3, 8) => Ok(Version::V3_8),
        (3, 889) | (3, 0..=6) => Ok(Version::V3_3),
        (3, _) | (4.., _) => Ok(Version::V3_8),
        _ => Err(bad()),
    }
}

/// The 16-byte VNC authentication response to `challenge` under `password`: DES-ECB of the two
/// halves with the password (first 8 bytes, zero-padded) as key, each key byte's bits reversed.
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(&key.into());
    let mut response = [0u8; 16];
    for (half, out) in challenge.chunks_exact(8).zip(response.chunks_exact_mut(8)) {
        let mut block = Block::<Des>::clone_from_slice(half);
        cipher.encrypt_block(&mut block);
        out.copy_from_slice(&block);
    }
    response
}

/// 16 random bytes from the kernel.
fn random_challenge() -> io::Result<[u8; 16]> {
    let mut challenge = [0u8; 16];
    getrandom::getrandom(&mut challenge).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(challenge)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs the server's side of the handshake on `stream`, up to and including ServerInit.
/// `challenge` is for tests; `None` draws a random one.
pub fn server_handshake<S: Read + Write>(
    stream: &mut S,
    security: &Security,
    size: (u16, u16),
    name: &str,
    challenge: Option<[u8; 16]>,
) -> Result<Handshake, VncError> {
    stream.write_all(b"RFB 003.008\n")?;
    stream.flush()?;
    let mut client_version = [0u8; 12];
    stream.read_exact(&mut client_version)?;
    let version = parse_version(&client_version)?;

    let offered = match security {
        Security::None => SECURITY_NONE,
        Security::Password(_) => SECURITY_VNC_AUTH,
    };
    if version == Version::V3_3 {
        stream.write_all(&u32::from(offered).to_be_bytes())?;
    } else {
        stream.write_all(&[1, offered])?;
        stream.flush()?;
        let mut chosen = [0u8; 1];
        stream.read_exact(&mut chosen)?;
        if chosen[0] != offered {
            if version == Version::V3_8 {
                fail(stream, "security type not offered")?;
            }
            return Err(ProtocolError::SecurityTypeNotOffered(chosen[0]).into());
        }
    }

    match security {
        Security::None => {
            if version == Version::V3_8 {
                stream.write_all(&0u32.to_be_bytes())?;
            }
        }
        Security::Password(password) => {
            let challenge = match challenge {
                Some(challenge) => challenge,
                None => random_challenge()?,
            };
            stream.write_all(&challenge)?;
            stream.flush()?;
            let mut response = [0u8; 16];
            stream.read_exact(&mut response)?;
            if !constant_time_eq(&response, &vnc_auth_response(password.as_bytes(), &challenge)) {
                if version == Version::V3_8 {
                    fail(stream, "authentication failed")?;
                } else {
                    stream.write_all(&1u32.to_be_bytes())?;
                    stream.flush()?;
                }
                return Err(VncError::AuthenticationFailed);
            }
            stream.write_all(&0u32.to_be_bytes())?;
        }
    }
    stream.flush()?;

    let mut client_init = [0u8; 1];
    stream.read_exact(&mut client_init)?;
    stream.write_all(&server_init(size, name))?;
    stream.flush()?;
    Ok(Handshake {
        version,
        shared: client_init[0] != 0,
    })
}

/// SecurityResult "failed" with its reason (3.8).
fn fail<S: Write>(stream: &mut S, reason: &str) -> io::Result<()> {
    stream.write_all(&1u32.to_be_bytes())?;
    stream.write_all(&(reason.len() as u32).to_be_bytes())?;
    stream.write_all(reason.as_bytes())?;
    stream.flush()
}

/// The ServerInit message: size, the server's pixel format, the desktop name (cut at 255
/// bytes, on a character boundary).
fn server_init(size: (u16, u16), name: &str) -> Vec<u8> {
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = &name.as_bytes()[..end];
    let mut out = Vec::with_capacity(24 + name.len());
    out.extend_from_slice(&size.0.to_be_bytes());
    out.extend_from_slice(&size.1.to_be_bytes());
    out.extend_from_slice(&PixelFormat::XRGB8888.to_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A scripted client: reads come from `input`, writes are collected.
    struct Script {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(input: &[u8], security: &Security) -> (Result<Handshake, VncError>, Vec<u8>) {
        let mut script = Script {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        let result = server_handshake(&mut script, security, (640, 480), "vm", Some([7; 16]));
        (result, script.output)
    }

    fn server_init_bytes() -> Vec<u8> {
        let mut out = vec![2, 128, 1, 224];
        out.extend_from_slice(&PixelFormat::XRGB8888.to_bytes());
        out.extend_from_slice(&[0, 0, 0, 2, b'v', b'm']);
        out
    }

    #[test]
    fn des_and_vnc_auth_match_known_vectors() {
        // FIPS 81 style DES vector.
        let cipher = Des::new(&[0x13, 0x34, 0x57, 0x79, 0x9b, 0xbc, 0xdf, 0xf1].into());
        let mut block = Block::<Des>::clone_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        cipher.encrypt_block(&mut block);
        assert_eq!(
            block.as_slice(),
            &[0x85, 0xe8, 0x13, 0x54, 0x0f, 0x0a, 0xb4, 0x05]
        );
        // Computed with vncdotool's implementation (bit-reversed key, 8-byte cut).
        let challenge: [u8; 16] = std::array::from_fn(|i| i as u8);
        let expected = [
            0xee, 0x22, 0x53, 0x9f, 0x33, 0xa5, 0x98, 0x3e, 0xc1, 0x2f, 0x9c, 0x2e, 0xdb, 0xc9, 0x95, 0xdd,
        ];
        assert_eq!(vnc_auth_response(b"secret", &challenge), expected);
        let challenge: [u8; 16] = std::array::from_fn(|i| 16 + i as u8);
        let expected = [
            0xbb, 0x6b, 0x35, 0x02, 0xa3, 0xe8, 0xc5, 0x55, 0x43, 0x85, 0xc8, 0x99, 0x18, 0xf2, 0x4e, 0x0b,
        ];
        assert_eq!(vnc_auth_response(b"longpassword", &challenge), expected);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version(b"RFB 003.003\n"), Ok(Version::V3_3));
        assert_eq!(parse_version(b"RFB 003.007\n"), Ok(Version::V3_7));
        assert_eq!(parse_version(b"RFB 003.008\n"), Ok(Version::V3_8));
        assert_eq!(parse_version(b"RFB 003.889\n"), Ok(Version::V3_3));
        assert_eq!(parse_version(b"RFB 004.001\n"), Ok(Version::V3_8));
        assert!(parse_version(b"RFB 002.000\n").is_err());
        assert!(parse_version(b"HTTP/1.1 200").is_err());
        assert!(parse_version(b"RFB 003.0x8\n").is_err());
    }

    #[test]
    fn handshake_3_8_none() {
        let (result, output) = run(b"RFB 003.008\n\x01\x01", &Security::None);
        assert_eq!(
            result.unwrap(),
            Handshake {
                version: Version::V3_8,
                shared: true
            }
        );
        let mut expected = b"RFB 003.008\n\x01\x01\0\0\0\0".to_vec();
        expected.extend(server_init_bytes());
        assert_eq!(output, expected);
    }

    #[test]
    fn handshake_3_7_none_has_no_security_result() {
        let (result, output) = run(b"RFB 003.007\n\x01\x00", &Security::None);
        assert_eq!(
            result.unwrap(),
            Handshake {
                version: Version::V3_7,
                shared: false
            }
        );
        let mut expected = b"RFB 003.008\n\x01\x01".to_vec();
        expected.extend(server_init_bytes());
        assert_eq!(output, expected);
    }

    #[test]
    fn handshake_3_3_password() {
        let mut input = b"RFB 003.003\n".to_vec();
        input.extend(vnc_auth_response(b"pw", &[7; 16]));
        input.push(0);
        let (result, output) = run(&input, &Security::Password("pw".into()));
        assert_eq!(result.unwrap().version, Version::V3_3);
        let mut expected = b"RFB 003.008\n\0\0\0\x02".to_vec();
        expected.extend([7; 16]);
        expected.extend([0, 0, 0, 0]);
        expected.extend(server_init_bytes());
        assert_eq!(output, expected);
    }

    #[test]
    fn handshake_3_8_wrong_password_fails_with_reason() {
        let mut input = b"RFB 003.008\n\x02".to_vec();
        input.extend(vnc_auth_response(b"wrong", &[7; 16]));
        let (result, output) = run(&input, &Security::Password("pw".into()));
        assert!(matches!(result, Err(VncError::AuthenticationFailed)));
        assert!(output.ends_with(b"\0\0\0\x01\0\0\0\x15authentication failed"));
    }

    #[test]
    fn handshake_refuses_unoffered_type_and_truncation() {
        let (result, output) = run(b"RFB 003.008\n\x01", &Security::Password("pw".into()));
        assert!(matches!(
            result,
            Err(VncError::Protocol(ProtocolError::SecurityTypeNotOffered(1)))
        ));
        assert!(output.ends_with(b"security type not offered"));
        let (result, _) = run(b"RFB 003.0", &Security::None);
        assert!(matches!(result, Err(VncError::Io(_))));
    }
}
