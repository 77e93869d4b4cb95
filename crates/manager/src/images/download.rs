//! Downloading an image: streamed to `<name>.<format>.part`, resumed with an HTTP range request,
//! checked against its digest, and renamed to `<name>.<format>` only when the digest matches.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::catalog::CatalogImage;
use super::digest::{lookup_in_sums, ExpectedDigest, Hasher, SumsLookup};
use super::{fetch_text, http_agent, HttpError};

/// Bytes read and hashed at a time.
const CHUNK: usize = 1 << 20;

/// Why an image could not be downloaded. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the catalog entry for `{name}` cannot be downloaded: {problems}; fix the catalog")]
    InvalidImage { name: String, problems: String },
    #[error(
        "cannot create the images directory {}; check its permissions, or set VIRTKIT_HOME to a \
         writable directory",
        dir.display()
    )]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot fetch the checksums file {url}; check the network connection and the catalog's checksums_url"
    )]
    ChecksumsFetch {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error(
        "the checksums file {url} has no line for {file}; the catalog's url or checksums_url is out \
         of date"
    )]
    ChecksumsMissing { url: String, file: String },
    #[error(
        "the checksums file {url} gives `{digest}` for {file}, which is neither a SHA-256 (64 hex \
         digits) nor a SHA-512 (128 hex digits) digest"
    )]
    ChecksumsUnsupported {
        url: String,
        file: String,
        digest: String,
    },
    #[error(
        "another virtkit is downloading into {} (it holds the lock); wait for it to finish",
        part.display()
    )]
    InUse { part: PathBuf },
    #[error("cannot download {url}; check the network connection and pull again (it resumes)")]
    Request {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("{url} answered HTTP {status}; the image may have moved: update the catalog entry's url")]
    HttpStatus { url: String, status: u16 },
    #[error(
        "the download of {url} stopped after {done} bytes; {} keeps what arrived: pull again to \
         resume",
        part.display()
    )]
    Interrupted {
        url: String,
        done: u64,
        part: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
    #[error("cannot read or write {}; check free disk space and permissions", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "checksum mismatch for {name}: expected {expected}, got {actual}; the download was removed. \
         Pull again; if it fails the same way, the catalog's checksum or url is out of date"
    )]
    ChecksumMismatch {
        name: String,
        url: String,
        expected: ExpectedDigest,
        actual: String,
    },
}

/// What is on disk for an image in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalImage {
    Missing,
    /// An interrupted download that the next [`download`] resumes.
    Partial {
        path: PathBuf,
        bytes: u64,
    },
    /// A downloaded image (it was verified when it took this name).
    Downloaded {
        path: PathBuf,
        bytes: u64,
    },
}

/// Looks at `dir` for `image` without reading the file or the network.
pub fn local_image(image: &CatalogImage, dir: &Path) -> LocalImage {
    let path = image.local_path(dir);
    if let Ok(meta) = std::fs::metadata(&path) {
        return LocalImage::Downloaded {
            path,
            bytes: meta.len(),
        };
    }
    let part = part_path(image, dir);
    match std::fs::metadata(&part) {
        Ok(meta) => LocalImage::Partial {
            path: part,
            bytes: meta.len(),
        },
        Err(_) => LocalImage::Missing,
    }
}

fn part_path(image: &CatalogImage, dir: &Path) -> PathBuf {
    dir.join(format!("{}.part", image.file_name()))
}

/// Downloads `image` into `dir` and returns the path of the verified file, `<dir>/<name>.<format>`.
///
/// Bytes go to `<name>.<format>.part`. An existing part is resumed with a `Range` request: on
/// `206 Partial Content` the part is hashed and appended to; on `200 OK` (the server ignores
/// ranges) it is started again. Only a file whose digest matches is fsynced and renamed into
/// place; a mismatch removes the part. A file already in place is hashed again and, if it still
/// matches, not downloaded again. `progress` gets (bytes done, total if known) as data arrives.
pub fn download(
    image: &CatalogImage,
    dir: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, DownloadError> {
    let problems = image.problems();
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        return Err(DownloadError::InvalidImage {
            name: image.name.clone(),
            problems: problems.join("; "),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| DownloadError::CreateDir {
        dir: dir.to_owned(),
        source: e,
    })?;
    let expected = expected_digest(image)?;
    let target = image.local_path(dir);
    if target.exists() {
        let mut hasher = Hasher::new(expected.algorithm);
        let bytes = hash_file(&target, &mut hasher)?;
        if hasher.finish_hex() == expected.hex {
            tracing::info!(image = %image.name, path = %target.display(), "already downloaded and verified");
            progress(bytes, Some(bytes));
            return Ok(target);
        }
        // Most likely the catalog now points at a newer build; the old file stays until the new
        // one is verified and renamed over it.
        tracing::warn!(image = %image.name, path = %target.display(), "the local image no longer matches its checksum; downloading it again");
    }

    let part = part_path(image, dir);
    let io_err = |e| DownloadError::Io {
        path: part.clone(),
        source: e,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(io_err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(DownloadError::InUse { part }),
        Err(e) => return Err(io_err(e.into())),
    }
    let actual = fetch_into_part(image, &expected, &part, &mut file, progress)?;
    if actual != expected.hex {
        drop(file);
        std::fs::remove_file(&part).map_err(io_err)?;
        return Err(DownloadError::ChecksumMismatch {
            name: image.name.clone(),
            url: image.url.clone(),
            expected,
            actual,
        });
    }
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&part, &target).map_err(io_err)?;
    // The rename is durable once the directory is synced.
    crate::durable::sync_dir(dir).map_err(|e| DownloadError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    tracing::info!(image = %image.name, path = %target.display(), "downloaded and verified");
    Ok(target)
}

/// The digest from the catalog entry, or from its checksums file.
fn expected_digest(image: &CatalogImage) -> Result<ExpectedDigest, DownloadError> {
    if let Some(hex) = &image.sha256 {
        // Validation has checked it is 64 hex digits.
        return ExpectedDigest::from_hex(hex).ok_or_else(|| DownloadError::InvalidImage {
            name: image.name.clone(),
            problems: format!("sha256: `{hex}` is not a SHA-256 digest"),
        });
    }
    let url = image.checksums_url.as_deref().unwrap_or_default();
    let file = image.url_file_name().unwrap_or_default();
    let text = fetch_text(url).map_err(|e| DownloadError::ChecksumsFetch {
        url: url.to_owned(),
        source: e,
    })?;
    match lookup_in_sums(&text, file) {
        SumsLookup::Found(digest) => Ok(digest),
        SumsLookup::Unsupported { digest } => Err(DownloadError::ChecksumsUnsupported {
            url: url.to_owned(),
            file: file.to_owned(),
            digest,
        }),
        SumsLookup::NotListed => Err(DownloadError::ChecksumsMissing {
            url: url.to_owned(),
            file: file.to_owned(),
        }),
    }
}

/// Fills the (locked) part file from the server, resuming what it holds when the server allows,
/// and returns the digest of the whole part in hex.
fn fetch_into_part(
    image: &CatalogImage,
    expected: &ExpectedDigest,
    part: &Path,
    file: &mut File,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, DownloadError> {
    let io_err = |e| DownloadError::Io {
        path: part.to_owned(),
        source: e,
    };
    let url = &image.url;
    let agent = http_agent();
    let mut resume_from = file.metadata().map_err(io_err)?.len();
    loop {
        let mut request = agent.get(url);
        if resume_from > 0 {
            request = request.header("Range", format!("bytes={resume_from}-"));
        }
        let response = request.call().map_err(|e| DownloadError::Request {
            url: url.clone(),
            source: e.into(),
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
        let mut hasher = Hasher::new(expected.algorithm);
        let (done, total) = match status {
            206 if resume_from > 0 => {
                let range = header("content-range").and_then(|v| parse_content_range(&v));
                match range {
                    Some((start, total)) if start == resume_from => {
                        tracing::info!(image = %image.name, from = start, "resuming the download");
                        hash_file(part, &mut hasher)?;
                        file.seek(SeekFrom::End(0)).map_err(io_err)?;
                        let total = total.or(length.map(|l| start + l));
                        (start, total.or(image.size))
                    }
                    _ => {
                        // A range that is not the one asked for cannot be appended.
                        tracing::warn!(image = %image.name, "the server sent an unexpected range; starting again");
                        restart(file, &mut resume_from).map_err(io_err)?;
                        continue;
                    }
                }
            }
            200 => {
                if resume_from > 0 {
                    tracing::info!(image = %image.name, "the server does not resume downloads; starting again");
                }
                restart(file, &mut resume_from).map_err(io_err)?;
                (0, length.or(image.size))
            }
            416 if resume_from > 0 => {
                // The part may already be whole (a pull stopped before its rename); otherwise it
                // is longer than the image and useless.
                let bytes = hash_file(part, &mut hasher)?;
                let actual = hasher.finish_hex();
                if actual == expected.hex {
                    progress(bytes, Some(bytes));
                    return Ok(actual);
                }
                restart(file, &mut resume_from).map_err(io_err)?;
                continue;
            }
            status => {
                return Err(DownloadError::HttpStatus {
                    url: url.clone(),
                    status,
                })
            }
        };
        let reader = response.into_body().into_reader();
        return stream(reader, file, hasher, done, total, progress).map_err(|e| match e {
            StreamError::Read { done, source } => DownloadError::Interrupted {
                url: url.clone(),
                done,
                part: part.to_owned(),
                source,
            },
            StreamError::Write(e) => io_err(e),
        });
    }
}

/// Empties the part so the next request starts from the first byte.
fn restart(file: &mut File, resume_from: &mut u64) -> io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    *resume_from = 0;
    Ok(())
}

enum StreamError {
    /// The body ended early (`source` is `None` when it ended cleanly but short).
    Read {
        done: u64,
        source: Option<io::Error>,
    },
    Write(io::Error),
}

/// Copies the body to the file, hashing it, and returns the digest of everything hashed.
fn stream(
    mut body: impl Read,
    file: &mut File,
    mut hasher: Hasher,
    mut done: u64,
    total: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, StreamError> {
    let mut buf = vec![0u8; CHUNK];
    progress(done, total);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(StreamError::Read {
                    done,
                    source: Some(e),
                })
            }
        };
        file.write_all(&buf[..n]).map_err(StreamError::Write)?;
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    if total.is_some_and(|t| done < t) {
        return Err(StreamError::Read { done, source: None });
    }
    Ok(hasher.finish_hex())
}

/// Feeds a whole file to `hasher`; returns its length.
fn hash_file(path: &Path, hasher: &mut Hasher) -> Result<u64, DownloadError> {
    let io_err = |e| DownloadError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_gives_start_and_total() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn a_short_body_is_an_interruption_and_a_whole_one_is_hashed() {
        let dir = std::env::temp_dir().join(format!("virtkit-images-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.part");
        let body = b"hello, image".to_vec();
        let mut seen = Vec::new();

        let mut file = File::create(&path).unwrap();
        let algorithm = super::super::DigestAlgorithm::Sha256;
        let result = stream(
            &body[..5],
            &mut file,
            Hasher::new(algorithm),
            0,
            Some(body.len() as u64),
            &mut |d, t| seen.push((d, t)),
        );
        assert!(matches!(
            result,
            Err(StreamError::Read {
                done: 5,
                source: None
            })
        ));

        let mut file = File::create(&path).unwrap();
        let hex = stream(
            &body[..],
            &mut file,
            Hasher::new(algorithm),
            0,
            None,
            &mut |_, _| {},
        )
        .ok()
        .unwrap();
        let mut direct = Hasher::new(algorithm);
        direct.update(&body);
        assert_eq!(hex, direct.finish_hex());
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(seen.first(), Some(&(0, Some(12))));
        assert_eq!(seen.last(), Some(&(5, Some(12))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
