//! `virtkit images` as a user meets it, against a local HTTP server: the listing in JSON and
//! text, `images pull` writing the right bytes with progress on stderr, and a wrong body refused.

// The same small server the framework's download tests use.
#[path = "../../manager/tests/support/http_server.rs"]
mod http_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};
use virtkit::ByteSize;

use http_server::TestServer;

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");

/// A little over 2 MiB, so the download takes a few chunks.
const IMAGE_SIZE: usize = (2 << 20) + 4321;

fn image_bytes() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..IMAGE_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A `VIRTKIT_HOME` and a catalog file in a temporary directory, removed at the end.
struct Fixture {
    root: PathBuf,
    catalog: PathBuf,
}

impl Fixture {
    /// A catalog with one raw image, `test-image`, served at `/img/test.raw` by `server`.
    fn new(name: &str, server: &TestServer, bytes: &[u8]) -> Fixture {
        let root = std::env::temp_dir().join(format!("virtkit-cli-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home")).unwrap();
        server.add_file("img/test.raw", bytes.to_vec());
        let catalog = root.join("catalog.json");
        std::fs::write(&catalog, catalog_json(server, &sha256_hex(bytes))).unwrap();
        Fixture { root, catalog }
    }

    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    fn images_dir(&self) -> PathBuf {
        self.home().join("images")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(VIRTKIT)
            .args(args)
            .env("VIRTKIT_HOME", self.home())
            .stdin(Stdio::null())
            .output()
            .expect("virtkit runs")
    }

    fn catalog_arg(&self) -> &str {
        self.catalog.to_str().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn catalog_json(server: &TestServer, sha256: &str) -> String {
    serde_json::json!({
        "version": 1,
        "images": [{
            "name": "test-image",
            "description": "an image for tests",
            "url": server.url("img/test.raw"),
            "format": "raw",
            "sha256": sha256,
        }]
    })
    .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn listing(fixture: &Fixture, catalog: Option<&str>) -> serde_json::Value {
    let mut args = vec!["images", "--format", "json"];
    if let Some(c) = catalog {
        args.extend(["--catalog", c]);
    }
    let out = fixture.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn images_lists_the_catalog_in_json_and_text() {
    let server = TestServer::start();
    let fixture = Fixture::new("list", &server, &image_bytes());

    let doc = listing(&fixture, Some(fixture.catalog_arg()));

    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 1);
    let image = &images[0];
    assert_eq!(image["name"], "test-image");
    assert_eq!(image["format"], "raw");
    assert_eq!(image["url"], server.url("img/test.raw"));
    assert_eq!(image["downloaded"], false);
    let expected_path = fixture.images_dir().join("test-image.raw");
    assert_eq!(image["path"], expected_path.to_str().unwrap());

    let out = fixture.run(&["images", "list", "--catalog", fixture.catalog_arg()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("test-image "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("raw") && row.contains("not downloaded"), "{row}");
    assert!(row.ends_with(expected_path.to_str().unwrap()), "{row}");
}

#[test]
fn the_user_catalog_in_virtkit_home_is_used_without_catalog_flag() {
    let server = TestServer::start();
    let fixture = Fixture::new("usercat", &server, &image_bytes());
    std::fs::create_dir_all(fixture.images_dir()).unwrap();
    std::fs::copy(&fixture.catalog, fixture.images_dir().join("catalog.json")).unwrap();

    let doc = listing(&fixture, None);

    assert_eq!(doc["images"][0]["name"], "test-image");
    assert!(doc["catalog"].as_str().unwrap().contains("catalog.json"), "{doc}");
}

#[test]
fn pull_writes_the_verified_image_and_reports_progress() {
    let server = TestServer::start();
    let bytes = image_bytes();
    let fixture = Fixture::new("pull", &server, &bytes);

    let out = fixture.run(&["images", "pull", "test-image", "--catalog", fixture.catalog_arg()]);

    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let path = PathBuf::from(text(&out.stdout).trim());
    assert_eq!(path, fixture.images_dir().join("test-image.raw"));
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the pulled file differs from the image"
    );
    let size = ByteSize(IMAGE_SIZE as u64);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pull test-image: "))
        .collect();
    assert!(
        lines.contains(&&*format!("pull test-image: 100% ({size} of {size})")),
        "{stderr}"
    );
    assert!(
        lines.contains(&&*format!("pull test-image: 0% (0 bytes of {size})")),
        "{stderr}"
    );
    assert!(!Path::new(&format!("{}.part", path.display())).exists());

    let doc = listing(&fixture, Some(fixture.catalog_arg()));
    assert_eq!(doc["images"][0]["downloaded"], true);
    assert_eq!(doc["images"][0]["size"], IMAGE_SIZE as u64);
}

#[test]
fn a_wrong_body_fails_the_pull_with_a_checksum_message() {
    let server = TestServer::start();
    let fixture = Fixture::new("mismatch", &server, &image_bytes());
    server.corrupt("img/test.raw");

    let out = fixture.run(&["images", "pull", "test-image", "--catalog", fixture.catalog_arg()]);

    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    assert!(
        stderr.contains(&sha256_hex(&image_bytes())),
        "names the expected digest: {stderr}"
    );
    assert!(text(&out.stdout).is_empty());
    assert!(!fixture.images_dir().join("test-image.raw").exists());
    assert!(!fixture.images_dir().join("test-image.raw.part").exists());
}

#[test]
fn an_unknown_image_or_catalog_is_one_clear_error() {
    let server = TestServer::start();
    let fixture = Fixture::new("unknown", &server, &image_bytes());

    let out = fixture.run(&["images", "pull", "debian-99", "--catalog", fixture.catalog_arg()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no image named `debian-99`"), "{stderr}");
    assert!(stderr.contains("test-image"), "lists the known names: {stderr}");

    let missing = fixture.root.join("nope.json");
    let out = fixture.run(&["images", "--catalog", missing.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read the image catalog"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn create_from_a_catalog_name_downloads_verifies_and_installs_the_image() {
    if !std::path::Path::new("/usr/share/seabios/bios.bin").exists() {
        virtkit_testkit::skip("SeaBIOS is not installed (Debian package seabios)");
        return;
    }
    let server = TestServer::start();
    let bytes = image_bytes();
    let fixture = Fixture::new("create", &server, &bytes);
    let args = [
        "create",
        "vm",
        "--from",
        "test-image",
        "--catalog",
        fixture.catalog_arg(),
        "--memory",
        "128M",
    ];
    let out = fixture.run(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("pull test-image: 100%"), "{stderr}");
    let disk = std::fs::read(fixture.home().join("vms/vm/disk.img")).unwrap();
    assert!(disk == bytes, "the VM's disk is not the catalog image");

    // A corrupted download installs nothing.
    server.corrupt("img/test.raw");
    std::fs::remove_file(fixture.images_dir().join("test-image.raw")).unwrap();
    let out = fixture.run(&[
        "create",
        "vm2",
        "--from",
        "test-image",
        "--catalog",
        fixture.catalog_arg(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("checksum"), "{}", text(&out.stderr));
    assert!(!fixture.home().join("vms/vm2").exists());
}
