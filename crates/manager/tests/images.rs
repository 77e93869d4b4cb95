//! Image downloads against a local HTTP server: verified, resumed after a cut, refused on a
//! checksum mismatch, with digests from the catalog or from SHA256SUMS/SHA512SUMS files.

#[path = "support/http_server.rs"]
mod http_server;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256, Sha512};
use virtkit_manager::images::{
    download, local_image, CatalogError, CatalogImage, CatalogSource, DigestAlgorithm, DownloadError,
    ImageCatalog, ImageFormat, LocalImage,
};

use http_server::TestServer;

/// Bigger than the downloader's 1 MiB chunk, and not a multiple of it.
const IMAGE_SIZE: usize = 3 * (1 << 20) + 12345;

fn image_bytes() -> Vec<u8> {
    // A simple LCG, so no two regions of the image are alike.
    let mut x: u32 = 0x1234_5678;
    (0..IMAGE_SIZE)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn sha512_hex(data: &[u8]) -> String {
    hex(&Sha512::digest(data))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("virtkit-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A catalog entry for `/img/test.raw` on the server, checked by SHA-256 in the catalog.
fn image_on(server: &TestServer, sha256: &str) -> CatalogImage {
    CatalogImage {
        name: "test-image".into(),
        description: "a test image".into(),
        url: server.url("img/test.raw"),
        format: ImageFormat::Raw,
        size: None,
        sha256: Some(sha256.into()),
        checksums_url: None,
    }
}

/// Each call of the progress callback: (done, total).
type ProgressCalls = Vec<(u64, Option<u64>)>;

/// Runs a download, recording every progress call.
fn pull(image: &CatalogImage, dir: &Path) -> (Result<PathBuf, DownloadError>, ProgressCalls) {
    let mut calls = Vec::new();
    let result = download(image, dir, &mut |done, total| calls.push((done, total)));
    (result, calls)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_full_download_is_verified_and_takes_its_final_name() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("full");
    let image = image_on(&server, &sha256_hex(&bytes));

    let (result, calls) = pull(&image, &dir.0);

    let path = result.unwrap();
    assert_eq!(path, dir.0.join("test-image.raw"));
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the file differs from the served image"
    );
    assert_eq!(names_in(&dir.0), ["test-image.raw"], "no part file is left");
    assert_eq!(calls.first(), Some(&(0, Some(IMAGE_SIZE as u64))));
    assert_eq!(calls.last(), Some(&(IMAGE_SIZE as u64, Some(IMAGE_SIZE as u64))));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "progress only grows");
    let requests = server.requests_for("img/test.raw");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].range, None);
    assert_eq!(
        local_image(&image, &dir.0),
        LocalImage::Downloaded {
            path,
            bytes: IMAGE_SIZE as u64
        }
    );
}

#[test]
fn a_verified_download_is_not_fetched_again() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("again");
    let image = image_on(&server, &sha256_hex(&bytes));
    pull(&image, &dir.0).0.unwrap();

    let (result, calls) = pull(&image, &dir.0);

    assert_eq!(result.unwrap(), dir.0.join("test-image.raw"));
    assert_eq!(server.requests_for("img/test.raw").len(), 1, "no second request");
    assert_eq!(calls, [(IMAGE_SIZE as u64, Some(IMAGE_SIZE as u64))]);
}

#[test]
fn a_local_file_that_no_longer_matches_is_downloaded_again() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("stale");
    let image = image_on(&server, &sha256_hex(&bytes));
    std::fs::write(dir.0.join("test-image.raw"), b"an older build").unwrap();

    let path = pull(&image, &dir.0).0.unwrap();

    assert!(std::fs::read(path).unwrap() == bytes);
    assert_eq!(server.requests_for("img/test.raw").len(), 1);
}

#[test]
fn a_cut_download_resumes_with_a_range_request() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("resume");
    let image = image_on(&server, &sha256_hex(&bytes));
    let cut = 1_500_000;
    server.cut_next_after(cut);

    let (first, _) = pull(&image, &dir.0);
    match first {
        Err(DownloadError::Interrupted { done, ref part, .. }) => {
            assert_eq!(done, cut as u64);
            assert_eq!(std::fs::metadata(part).unwrap().len(), cut as u64);
        }
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let message = first.unwrap_err().to_string();
    assert!(message.contains("pull again to resume"), "{message}");
    assert!(matches!(
        local_image(&image, &dir.0),
        LocalImage::Partial { bytes, .. } if bytes == cut as u64
    ));

    let (second, calls) = pull(&image, &dir.0);

    let path = second.unwrap();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the resumed file differs from the image"
    );
    assert_eq!(names_in(&dir.0), ["test-image.raw"]);
    let requests = server.requests_for("img/test.raw");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].range.as_deref(), Some(&*format!("bytes={cut}-")));
    assert_eq!(requests[1].status, 206);
    assert_eq!(
        calls.first(),
        Some(&(cut as u64, Some(IMAGE_SIZE as u64))),
        "resumes where it stopped"
    );
}

#[test]
fn a_server_that_ignores_ranges_makes_the_download_start_over() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("norange");
    let image = image_on(&server, &sha256_hex(&bytes));
    server.cut_next_after(700_000);
    assert!(pull(&image, &dir.0).0.is_err());
    server.set_refuse_range(true);

    let (result, calls) = pull(&image, &dir.0);

    assert!(std::fs::read(result.unwrap()).unwrap() == bytes);
    let requests = server.requests_for("img/test.raw");
    assert_eq!(
        requests[1].range.as_deref(),
        Some("bytes=700000-"),
        "it asked to resume"
    );
    assert_eq!(requests[1].status, 200);
    assert_eq!(
        calls.first(),
        Some(&(0, Some(IMAGE_SIZE as u64))),
        "and started from 0"
    );
}

#[test]
fn a_whole_part_left_before_its_rename_is_used_without_downloading() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("wholepart");
    let image = image_on(&server, &sha256_hex(&bytes));
    std::fs::write(dir.0.join("test-image.raw.part"), &bytes).unwrap();

    let path = pull(&image, &dir.0).0.unwrap();

    assert!(std::fs::read(path).unwrap() == bytes);
    let requests = server.requests_for("img/test.raw");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, 416);
}

#[test]
fn a_download_already_under_way_is_not_joined() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let dir = TempDir::new("inuse");
    let image = image_on(&server, &sha256_hex(&bytes));
    let part = std::fs::File::create(dir.0.join("test-image.raw.part")).unwrap();
    // What another virtkit pulling the same image holds.
    rustix::fs::flock(&part, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let err = pull(&image, &dir.0).0.unwrap_err();

    assert!(matches!(err, DownloadError::InUse { .. }), "{err:?}");
    assert!(server.requests_for("img/test.raw").is_empty());
    drop(part);
    assert!(std::fs::read(pull(&image, &dir.0).0.unwrap()).unwrap() == bytes);
}

#[test]
fn a_checksum_mismatch_leaves_neither_file_nor_part() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    server.corrupt("img/test.raw");
    let dir = TempDir::new("mismatch");
    let image = image_on(&server, &sha256_hex(&bytes));

    let (result, _) = pull(&image, &dir.0);

    let mut corrupted = bytes.clone();
    corrupted[IMAGE_SIZE / 2] ^= 0xff;
    match result {
        Err(
            ref e @ DownloadError::ChecksumMismatch {
                ref expected,
                ref actual,
                ..
            },
        ) => {
            assert_eq!(expected.algorithm, DigestAlgorithm::Sha256);
            assert_eq!(expected.hex, sha256_hex(&bytes));
            assert_eq!(*actual, sha256_hex(&corrupted));
            let message = e.to_string();
            assert!(message.contains("checksum mismatch"), "{message}");
            assert!(message.contains(&sha256_hex(&bytes)) && message.contains(actual.as_str()));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert!(names_in(&dir.0).is_empty(), "left behind: {:?}", names_in(&dir.0));
    assert_eq!(local_image(&image, &dir.0), LocalImage::Missing);
}

/// An entry whose digest is looked up in `sums_name`, served with `sums_text`.
fn image_with_sums(server: &TestServer, sums_name: &str, sums_text: &str) -> CatalogImage {
    server.add_file(&format!("img/{sums_name}"), sums_text);
    CatalogImage {
        sha256: None,
        checksums_url: Some(server.url(&format!("img/{sums_name}"))),
        ..image_on(server, "")
    }
}

#[test]
fn the_digest_is_looked_up_in_a_sha512sums_file() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let sums = format!(
        "{}  other.qcow2\n{}  test.raw\n",
        sha512_hex(b"other"),
        sha512_hex(&bytes)
    );
    let image = image_with_sums(&server, "SHA512SUMS", &sums);
    let dir = TempDir::new("sha512");

    let path = pull(&image, &dir.0).0.unwrap();
    assert!(std::fs::read(path).unwrap() == bytes);

    // The same lookup catches a wrong body, and says which algorithm it used.
    std::fs::remove_dir_all(&dir.0).unwrap();
    server.corrupt("img/test.raw");
    match pull(&image, &dir.0).0 {
        Err(DownloadError::ChecksumMismatch { expected, .. }) => {
            assert_eq!(expected.algorithm, DigestAlgorithm::Sha512);
            assert_eq!(expected.hex, sha512_hex(&bytes));
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
}

#[test]
fn the_digest_is_looked_up_in_a_sha256sums_file() {
    let server = TestServer::start();
    let bytes = image_bytes();
    server.add_file("img/test.raw", bytes.clone());
    let sums = format!("{} *test.raw\n", sha256_hex(&bytes));
    let image = image_with_sums(&server, "SHA256SUMS", &sums);
    let dir = TempDir::new("sha256");

    let path = pull(&image, &dir.0).0.unwrap();

    assert!(std::fs::read(path).unwrap() == bytes);
    assert_eq!(server.requests_for("img/SHA256SUMS").len(), 1);
}

#[test]
fn a_checksums_file_without_the_image_is_an_error_naming_both() {
    let server = TestServer::start();
    server.add_file("img/test.raw", image_bytes());
    let sums = format!("{}  another.raw\n", sha256_hex(b"x"));
    let image = image_with_sums(&server, "SHA256SUMS", &sums);
    let dir = TempDir::new("nosum");

    let err = pull(&image, &dir.0).0.unwrap_err();

    assert!(matches!(err, DownloadError::ChecksumsMissing { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("SHA256SUMS") && message.contains("test.raw"),
        "{message}"
    );
    assert!(
        server.requests_for("img/test.raw").is_empty(),
        "the image is not fetched"
    );
}

#[test]
fn a_missing_image_is_an_http_error_with_the_status() {
    let server = TestServer::start();
    let dir = TempDir::new("404");
    let image = image_on(&server, &sha256_hex(b""));

    let err = pull(&image, &dir.0).0.unwrap_err();

    assert!(
        matches!(err, DownloadError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
}

fn catalog_text(server: &TestServer) -> String {
    format!(
        r#"{{"version": 1, "images": [{{"name": "test-image", "description": "d",
            "url": "{}", "format": "raw", "sha256": "{}"}}]}}"#,
        server.url("img/test.raw"),
        sha256_hex(b"abc")
    )
}

#[test]
fn catalogs_load_from_files_and_urls_and_unknown_names_are_refused() {
    let server = TestServer::start();
    let dir = TempDir::new("catalog");
    let file = dir.0.join("catalog.json");
    std::fs::write(&file, catalog_text(&server)).unwrap();
    server.add_file("catalog.json", catalog_text(&server));

    for source in [
        CatalogSource::File(file.clone()),
        CatalogSource::Url(server.url("catalog.json")),
    ] {
        let catalog = ImageCatalog::load(&source).unwrap();
        assert_eq!(catalog.images.len(), 1);
        assert_eq!(catalog.images[0].url, server.url("img/test.raw"));
        let err = catalog.find("debian-13", &source.to_string()).unwrap_err();
        assert!(matches!(err, CatalogError::UnknownImage { .. }));
        assert!(err.to_string().contains("choose one of: test-image"), "{err}");
    }
}

#[test]
fn catalog_errors_name_the_source_and_the_entry() {
    let server = TestServer::start();
    let dir = TempDir::new("badcatalog");

    let err = ImageCatalog::load(&CatalogSource::Url(server.url("nothing.json"))).unwrap_err();
    assert!(matches!(err, CatalogError::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains(&server.url("nothing.json")));

    let file = dir.0.join("bad.json");
    std::fs::write(
        &file,
        catalog_text(&server).replace("\"raw\"", "\"raw\", \"sha512\": \"00\""),
    )
    .unwrap();
    let err = ImageCatalog::load(&CatalogSource::File(file.clone())).unwrap_err();
    assert!(matches!(err, CatalogError::Parse { .. }), "{err:?}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("bad.json") && chain.contains("sha512"), "{chain}");

    std::fs::write(
        &file,
        catalog_text(&server).replace("\"sha256\"", "\"checksums_url\": \"ftp://x/SUMS\", \"sha256\""),
    )
    .unwrap();
    let err = ImageCatalog::load(&CatalogSource::File(file)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("images[0] (test-image).sha256: give either sha256 or checksums_url"),
        "{message}"
    );
    assert!(
        message.contains("images[0] (test-image).checksums_url"),
        "{message}"
    );
}
