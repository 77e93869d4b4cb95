//! A minimal VNC client that sends input: the full-guest tests run it inside the emulated KVM
//! host, which has no Python for vncdotool, to click and type into a VM's display through its
//! `vnc.sock` (security type None).
//!
//! ```text
//! vnc_input SOCKET move X Y | click X Y | key KEYSYM | type TEXT | leds ...
//! ```
//! Each action is sent as a real client would: `click` is a move, a press and a release of
//! button 1; `key` a press and a release of an X11 keysym (hex, e.g. ff0d for Return); `type`
//! each character's keysym (Latin-1 characters are their own keysyms); `leds` asks for QEMU's
//! LED-state pseudo-encoding and prints the keyboard LEDs the server tells
//! (`vnc_input: leds=N`: bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn pointer(stream: &mut UnixStream, buttons: u8, x: u16, y: u16) -> std::io::Result<()> {
    let mut message = vec![5, buttons];
    message.extend(x.to_be_bytes());
    message.extend(y.to_be_bytes());
    stream.write_all(&message)
}

fn key(stream: &mut UnixStream, keysym: u32, down: bool) -> std::io::Result<()> {
    let mut message = vec![4, u8::from(down), 0, 0];
    message.extend(keysym.to_be_bytes());
    stream.write_all(&message)
}

/// QEMU's LED-state pseudo-encoding.
const LED_STATE: i32 = -261;

/// Asks for the LED state and reads the server's messages until it comes.
fn leds(stream: &mut UnixStream) -> std::io::Result<u8> {
    let mut message = vec![2, 0, 0, 1];
    message.extend(LED_STATE.to_be_bytes());
    stream.write_all(&message)?;
    loop {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header)?;
        if header[0] != 0 {
            return Err(std::io::Error::other(format!(
                "unexpected message type {}",
                header[0]
            )));
        }
        if u16::from_be_bytes([header[2], header[3]]) == 0 {
            continue;
        }
        let mut rect = [0u8; 12];
        stream.read_exact(&mut rect)?;
        let encoding = i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]);
        if encoding != LED_STATE {
            return Err(std::io::Error::other(format!("unexpected encoding {encoding}")));
        }
        let mut leds = [0u8; 1];
        stream.read_exact(&mut leds)?;
        return Ok(leds[0]);
    }
}

fn handshake(stream: &mut UnixStream) -> std::io::Result<(u16, u16)> {
    let mut version = [0u8; 12];
    stream.read_exact(&mut version)?;
    stream.write_all(b"RFB 003.008\n")?;
    let mut count = [0u8; 1];
    stream.read_exact(&mut count)?;
    let mut types = vec![0u8; usize::from(count[0])];
    stream.read_exact(&mut types)?;
    if !types.contains(&1) {
        return Err(std::io::Error::other(format!(
            "the server offers no security type None: {types:?}"
        )));
    }
    stream.write_all(&[1])?;
    let mut result = [0u8; 4];
    stream.read_exact(&mut result)?;
    if result != [0; 4] {
        return Err(std::io::Error::other("the server refused the connection"));
    }
    stream.write_all(&[1])?; // ClientInit: shared
    let mut init = [0u8; 24];
    stream.read_exact(&mut init)?;
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
    let mut name = vec![0u8; name_len.min(4096) as usize];
    stream.read_exact(&mut name)?;
    Ok((
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    ))
}

fn run(args: &[String]) -> Result<(), String> {
    let (socket, actions) = args.split_first().ok_or("usage: vnc_input SOCKET ACTION ...")?;
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (width, height) = handshake(&mut stream).map_err(|e| format!("handshake: {e}"))?;
    println!("vnc_input: connected, screen {width}x{height}");
    let number = |s: Option<&String>| -> Result<u16, String> {
        s.ok_or("a position needs X and Y")?
            .parse()
            .map_err(|e| format!("not a position: {e}"))
    };
    let mut rest = actions.iter();
    let io = |e: std::io::Error| e.to_string();
    while let Some(action) = rest.next() {
        match action.as_str() {
            "move" | "click" => {
                let (x, y) = (number(rest.next())?, number(rest.next())?);
                pointer(&mut stream, 0, x, y).map_err(io)?;
                if action == "click" {
                    pointer(&mut stream, 1, x, y).map_err(io)?;
                    pointer(&mut stream, 0, x, y).map_err(io)?;
                }
            }
            "key" => {
                let text = rest.next().ok_or("key needs a keysym")?;
                let keysym = u32::from_str_radix(text, 16).map_err(|e| format!("not a keysym: {e}"))?;
                key(&mut stream, keysym, true).map_err(io)?;
                key(&mut stream, keysym, false).map_err(io)?;
            }
            "type" => {
                for c in rest.next().ok_or("type needs text")?.chars() {
                    key(&mut stream, u32::from(c), true).map_err(io)?;
                    key(&mut stream, u32::from(c), false).map_err(io)?;
                }
            }
            "leds" => println!("vnc_input: leds={}", leds(&mut stream).map_err(io)?),
            other => {
                return Err(format!(
                    "`{other}` is not an action: move, click, key, type or leds"
                ))
            }
        }
    }
    // Let the server read everything before the connection closes.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("vnc_input: {e}");
        std::process::exit(1);
    }
}
