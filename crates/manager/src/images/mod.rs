//! Restore images: a catalog of disk images virtkit knows how to fetch, and verified, resumable
//! downloads into `$VIRTKIT_HOME/images`.
//!
//! This plays the part of Apple's "latest supported restore image": [`ImageCatalog::load`] reads
//! the built-in catalog (Debian 12 cloud images), a user catalog file or one behind a URL;
//! [`download`] fetches one [`CatalogImage`] to `<dir>/<name>.<format>`, resuming an interrupted
//! download and checking its SHA-256 or SHA-512 digest before the file takes its final name. The
//! catalog format is described in `docs/IMAGES.md`.

mod catalog;
mod digest;
mod download;

use std::time::Duration;

pub use catalog::{
    CatalogError, CatalogImage, CatalogIssue, CatalogSource, ImageCatalog, ImageFormat,
    CATALOG_FORMAT_VERSION, USER_CATALOG_FILE,
};
pub use digest::{DigestAlgorithm, ExpectedDigest};
pub use download::{download, local_image, DownloadError, LocalImage};

/// How long to wait for a connection, and for each read once connected: long enough for a slow
/// mirror, short enough that a dead connection ends with an error that says to resume.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client for catalogs, checksum files and images. Statuses are checked by the caller
/// (a 206 or a 416 is an answer, not an error), and no compression is asked for, so byte counts
/// and ranges are the file's own.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .user_agent(concat!("virtkit/", env!("CARGO_PKG_VERSION")))
        .accept_encoding("")
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .build()
        .into()
}

/// Why an HTTP request did not give the answer wanted.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the server answered HTTP {status}")]
    Status { status: u16 },
    /// Connecting, TLS, or the connection breaking; the message is the HTTP client's.
    #[error(transparent)]
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl From<ureq::Error> for HttpError {
    fn from(e: ureq::Error) -> HttpError {
        HttpError::Transport(Box::new(e))
    }
}

/// Biggest catalog or checksums file read into memory.
const MAX_TEXT_SIZE: u64 = 16 << 20;

/// The body of a `200 OK` answer to a GET of `url`, as text.
fn fetch_text(url: &str) -> Result<String, HttpError> {
    let mut response = http_agent().get(url).call()?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(HttpError::Status { status });
    }
    Ok(response
        .body_mut()
        .with_config()
        .limit(MAX_TEXT_SIZE)
        .read_to_string()?)
}

/// True for the URLs virtkit fetches: `http://` and `https://`.
fn is_http_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}
