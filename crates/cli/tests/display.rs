//! The display on this host's KVM with real guest code: SeaBIOS runs the bochs-display VGA BIOS
//! (Debian's `vgabios-bochs-display.bin`, from fw_cfg), which sets the mode the display's EDID
//! offers and draws SeaBIOS's text console into the framebuffer; `virtkit screenshot` reads it
//! back as a PNG. Its first text row (SeaBIOS's banner) is compared pixel for pixel with a
//! reference image (`tests/data/seabios-banner-800x16.png`, taken from this test's first run and
//! checked by eye); the second (the machine's UUID, which differs per VM) must be drawn. A real
//! VNC client (vncdotool) captures the same screen from the VM's `vnc.sock`, pixel for pixel,
//! and its keys and pointer reach MBR programs through the PS/2 keyboard and mouse.

mod support;

use virtkit_test_guests::Guest;

use support::home::Home;

/// Decodes a PNG file into (width, height, RGBA bytes).
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("the PNG file"));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a PNG image");
    assert_eq!(info.color_type, png::ColorType::Rgba, "RGBA");
    pixels.truncate(info.buffer_size());
    (info.width, info.height, pixels)
}

/// How many pixels of rows `rows` are not black.
fn lit(width: u32, rgba: &[u8], rows: std::ops::Range<u32>) -> usize {
    let line = width as usize * 4;
    rgba[rows.start as usize * line..rows.end as usize * line]
        .chunks_exact(4)
        .filter(|p| p[..3] != [0, 0, 0])
        .count()
}

/// How many pixels of two RGBA images differ in colour (VNC captures' alpha may differ).
fn rgb_differences(a: &[u8], b: &[u8]) -> usize {
    a.chunks_exact(4)
        .zip(b.chunks_exact(4))
        .filter(|(a, b)| a[..3] != b[..3])
        .count()
}

#[test]
fn seabios_draws_its_console_on_the_display_and_a_screenshot_shows_it() {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return;
    }
    if !std::path::Path::new(virtkit::DISPLAY_OPTION_ROM).is_file() {
        println!(
            "SKIPPED: {} is missing (Debian package seabios)",
            virtkit::DISPLAY_OPTION_ROM
        );
        return;
    }
    let home = Home::new("display", "seabios");
    let image = home.session_image();
    home.create_with("s", &image, &["--network", "none"]);
    // No display: a screenshot says so.
    home.ok(&["run", "s", "--detach"]);
    home.wait_log("s", "session: ready", 1);
    home.fails(&["screenshot", "s", "/dev/null"], "has no display");
    home.ok(&["stop", "s", "--timeout", "0"]);

    home.fails(
        &["run", "s", "--detach", "--display", "100x100"],
        "100x100 is outside 320x200 to 4096x4096",
    );
    home.ok(&["run", "s", "--detach", "--display", "800x600"]);
    home.wait_log("s", "session: ready", 1);
    let shot = home.bundle("s").join("shot.png");
    let out = home.ok(&["screenshot", "s", shot.to_str().unwrap()]);
    assert!(out.contains("800x600"), "{out}");
    // The same screen through the VM's VNC server, as a real client sees it.
    let (socket, url) = vnc_addresses(&home, "s");
    let captured = home.bundle("s").join("vnc.png");
    let vnc = vncdo().map(|vncdo| {
        std::process::Command::new(vncdo)
            .args(["-t", "30", "-s", &socket, "capture", captured.to_str().unwrap()])
            .output()
            .expect("vncdo runs")
    });
    // And over 127.0.0.1 with this run's password; a wrong password gets nothing.
    let (server, password) = tcp_server_and_password(&url);
    let captured_tcp = home.bundle("s").join("vnc-tcp.png");
    let wrong_png = home.bundle("s").join("wrong.png");
    let tcp = vncdo().map(|vncdo| {
        let capture = |password: &str, file: &std::path::Path| {
            std::process::Command::new(&vncdo)
                .args([
                    "-t",
                    "20",
                    "-s",
                    &server,
                    "-p",
                    password,
                    "capture",
                    file.to_str().unwrap(),
                ])
                .output()
                .expect("vncdo runs")
        };
        let wrong = capture("wrong-pw", &wrong_png);
        (capture(&password, &captured_tcp), wrong)
    });
    home.ok(&["stop", "s", "--timeout", "0"]);
    assert!(
        !std::path::Path::new(&socket).exists(),
        "vnc.sock is removed at the stop"
    );
    assert!(
        !home.bundle("s").join("vnc.json").exists(),
        "vnc.json is removed at the stop"
    );

    let (width, height, rgba) = decode(&shot);
    assert_eq!((width, height), (800, 600), "the mode the EDID offers");
    let reference =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seabios-banner-800x16.png");
    let (rw, rh, banner) = decode(&reference);
    assert_eq!((rw, rh), (800, 16));
    let first_row = &rgba[..banner.len()];
    let differing = first_row
        .chunks_exact(4)
        .zip(banner.chunks_exact(4))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing,
        0,
        "SeaBIOS's banner row differs from the reference in {differing} pixels (the screenshot is {})",
        shot.display()
    );
    assert!(lit(width, &rgba, 0..16) > 500, "the banner is drawn");
    assert!(lit(width, &rgba, 16..32) > 500, "the UUID line is drawn");
    assert_eq!(
        lit(width, &rgba, 500..600),
        0,
        "the bottom of the screen is empty"
    );

    let Some(vnc) = vnc else {
        virtkit_testkit::skip(
            "vncdotool is not installed (scripts/install-deps.sh puts it in .cache/vncdotool-venv)",
        );
        return;
    };
    assert!(
        vnc.status.success(),
        "vncdo capture: {}",
        String::from_utf8_lossy(&vnc.stderr)
    );
    let (vw, vh, vnc_rgba) = decode_any(&captured);
    assert_eq!((vw, vh), (800, 600), "the VNC framebuffer's size");
    // The two text rows (the banner and the UUID line) as the screenshot has them; below them
    // the text cursor may have moved between the two captures.
    let rows = 32 * 800 * 4;
    let differing = rgb_differences(&vnc_rgba[..rows], &rgba[..rows]);
    assert_eq!(
        differing, 0,
        "the VNC capture's text differs from the screenshot in {differing} pixels"
    );
    assert!(
        lit(800, &vnc_rgba, 0..16) > 500,
        "the VNC capture shows the banner"
    );
    let (tcp, wrong) = tcp.expect("vncdo ran for the unix capture, so for TCP too");
    assert!(
        tcp.status.success(),
        "vncdo over TCP: {}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    let (_, _, tcp_rgba) = decode_any(&captured_tcp);
    assert_eq!(tcp_rgba[..rows], vnc_rgba[..rows], "the same text over TCP");
    assert!(!wrong.status.success(), "a wrong password is refused");
    assert!(!wrong_png.exists(), "nothing was captured with a wrong password");
}

/// `virtkit vnc NAME`'s two lines: the Unix socket's path, and the `vnc://:PASSWORD@HOST:PORT`
/// URL of the loopback listener.
fn vnc_addresses(home: &Home, name: &str) -> (String, String) {
    let out = home.ok(&["vnc", name]);
    let url = out
        .lines()
        .find(|l| l.starts_with("vnc://:"))
        .unwrap_or_else(|| panic!("no vnc:// line in {out:?}"))
        .to_owned();
    let socket = out
        .lines()
        .find(|l| l.starts_with('/'))
        .unwrap_or_else(|| panic!("no socket path in {out:?}"))
        .to_owned();
    (socket, url)
}

/// vncdo's `-s` and `-p` for a `vnc://:PASSWORD@127.0.0.1:PORT` URL.
fn tcp_server_and_password(url: &str) -> (String, String) {
    let rest = url.strip_prefix("vnc://:").expect("a vnc:// URL");
    let (password, address) = rest.split_once('@').expect("password@address");
    let (host, port) = address.rsplit_once(':').expect("host:port");
    (format!("{host}::{port}"), password.to_owned())
}

/// The vncdotool client from `scripts/install-deps.sh`'s virtual environment, or `PATH`.
fn vncdo() -> Option<String> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/vncdotool-venv/bin/vncdo");
    let program = if venv.is_file() {
        venv.display().to_string()
    } else {
        "vncdo".to_owned()
    };
    let works = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(program)
}

/// Decodes a PNG of any 8-bit RGB or RGBA kind into RGBA.
fn decode_any(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::fs::File::open(path).expect("the PNG file"));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a PNG image");
    pixels.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => pixels,
        png::ColorType::Rgb => pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 0xff])
            .collect(),
        other => panic!("a PNG of {other:?}"),
    };
    (info.width, info.height, rgba)
}

/// Runs vncdotool's `vncdo` with `args` on the Unix socket `socket`; it must succeed.
fn vncdo_ok(vncdo: &str, socket: &str, args: &[&str]) {
    let out = std::process::Command::new(vncdo)
        .args(["-t", "30", "-s", socket])
        .args(args)
        .output()
        .expect("vncdo runs");
    assert!(
        out.status.success(),
        "vncdo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM `v` booting the MBR program `guest` from its disk, with a 640x480 display, once its
/// console says `ready`; with vncdotool and the VM's `vnc.sock`. `None` after SKIPPED when KVM,
/// SeaBIOS or vncdotool is missing.
fn mbr_program_on_a_display(tag: &str, guest: Guest, ready: &str) -> Option<(Home, String, String)> {
    if !virtkit_testkit::require_kvm_and_seabios() {
        return None;
    }
    let Some(vncdo) = vncdo() else {
        virtkit_testkit::skip(
            "vncdotool is not installed (scripts/install-deps.sh puts it in .cache/vncdotool-venv)",
        );
        return None;
    };
    let home = Home::new("display", tag);
    let image = home.dir.join("disk.img");
    let mut bytes = guest.bytes().to_vec();
    bytes.resize(8 << 20, 0);
    std::fs::write(&image, bytes).unwrap();
    home.create_with("v", &image, &["--network", "none"]);
    home.ok(&["run", "v", "--detach", "--display", "640x480"]);
    home.wait_log("v", ready, 1);
    let (socket, _) = vnc_addresses(&home, "v");
    Some((home, vncdo, socket))
}

/// Keys typed by a real VNC client reach the guest: vncdotool types on the VM's `vnc.sock`, the
/// i8042's PS/2 keyboard sends them with IRQ 1, SeaBIOS's keyboard handler puts them in its
/// buffer, and the `mbr_keys` program reads them with int 16h and echoes them on COM1.
/// Uppercase and shifted characters arrive with Shift.
#[test]
fn keys_typed_over_vnc_reach_an_int_16h_reader() {
    let Some((home, vncdo, socket)) = mbr_program_on_a_display("keys", Guest::MbrKeys, "keys: ready") else {
        return;
    };
    vncdo_ok(&vncdo, &socket, &["type", "Hello, World! 42?", "key", "enter"]);
    let log = home.wait_log("v", "keys: enter", 1);
    home.ok(&["stop", "v", "--timeout", "0"]);
    assert!(
        log.contains("keys: ready\nHello, World! 42?\nkeys: enter"),
        "{log}"
    );
}

/// A pointer moved and clicked by a real VNC client reaches the guest: vncdotool moves on the
/// VM's `vnc.sock`, the PS/2 mouse on the i8042's auxiliary port sends packets with IRQ 12,
/// SeaBIOS's int 15h C2 services hand them to the `mbr_mouse` program's handler, which prints
/// them on COM1.
#[test]
fn a_pointer_moved_over_vnc_reaches_the_ps2_aux_port() {
    let Some((home, vncdo, socket)) = mbr_program_on_a_display("mouse", Guest::MbrMouse, "mouse: ready")
    else {
        return;
    };
    let vnc = |args: &[&str]| vncdo_ok(&vncdo, &socket, args);
    // The first position is where moves count from; then 50 right and 20 down (PS/2's Y grows
    // upwards: -20 is 0xec with the Y sign bit, 0x20, in the status); then a left click there:
    // a press and a release, no movement. One connection: a new one starts at (0, 0).
    vnc(&["move", "10", "10", "move", "60", "30", "click", "1"]);
    let log = home.wait_log("v", "mouse: status=08 x=00 y=00", 1);
    home.ok(&["stop", "v", "--timeout", "0"]);
    let packets: Vec<&str> = log.lines().filter(|l| l.starts_with("mouse: status=")).collect();
    assert_eq!(
        packets,
        [
            "mouse: status=28 x=32 y=ec",
            "mouse: status=09 x=00 y=00",
            "mouse: status=08 x=00 y=00"
        ],
        "{log}"
    );
}

/// A VM suspended with a display given for that run only comes back with it on a plain `run`
/// (the state file says which display it had): the resumed screen is the saved one, shown by
/// `virtkit screenshot` and by a VNC client on the new run's `vnc.sock`, and the `mbr_ticker`
/// program's counter moves on in its text row. A fresh boot would print SeaBIOS's banner and
/// `ticker: ready` on COM1 again; the resumed run's log has neither.
#[test]
fn a_suspended_vm_with_a_display_resumes_with_its_screen() {
    let Some((home, vncdo, socket)) = mbr_program_on_a_display("suspend", Guest::MbrTicker, "ticker: ready")
    else {
        return;
    };
    let shot = |file: &str| {
        let path = home.dir.join(file);
        home.ok(&["screenshot", "v", path.to_str().unwrap()]);
        decode(&path)
    };
    let (_, _, before) = shot("before.png");
    let out = home.ok(&["suspend", "v"]);
    assert!(out.contains("`v`: suspended"), "{out}");
    assert_eq!(home.state("v"), "suspended");

    let out = home.ok(&["run", "v", "--detach"]);
    assert!(out.contains("`v`: running"), "{out}");
    let (width, height, after) = shot("after.png");
    assert_eq!((width, height), (640, 480), "the display the suspended run had");
    // SeaBIOS's banner and the UUID line: the counter's row below them changes by itself.
    let text_rows = 32 * 640 * 4;
    assert_eq!(
        after[..text_rows],
        before[..text_rows],
        "the saved screen's first text rows"
    );
    assert!(lit(640, &after, 0..16) > 500, "the banner is there");
    let captured = home.dir.join("vnc.png");
    vncdo_ok(&vncdo, &socket, &["capture", captured.to_str().unwrap()]);
    let (_, _, vnc_rgba) = decode_any(&captured);
    let differing = rgb_differences(&vnc_rgba[..text_rows], &after[..text_rows]);
    assert_eq!(
        differing, 0,
        "the VNC capture's text rows differ in {differing} pixels"
    );

    let mut later = after.clone();
    support::home::wait_until(
        "the counter to move on",
        std::time::Duration::from_secs(30),
        || {
            later = shot("later.png").2;
            later != after
        },
    );
    let line = 640 * 4;
    let rows: Vec<usize> = (0..480)
        .filter(|y| later[y * line..(y + 1) * line] != after[y * line..(y + 1) * line])
        .collect();
    assert!(
        rows.last().unwrap() - rows.first().unwrap() < 16,
        "only the counter's text row changes: rows {rows:?}"
    );
    let log = home.log("v");
    home.ok(&["stop", "v", "--timeout", "0"]);
    assert!(
        !log.contains("SeaBIOS (version") && !log.contains("ticker: ready"),
        "the resumed run booted anew:\n{log}"
    );
}
