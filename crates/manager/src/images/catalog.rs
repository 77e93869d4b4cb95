//! The image catalog: which images exist, where they come from and how to check them.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{fetch_text, is_http_url, HttpError};
use crate::home::VirtkitHome;

/// The catalog format this virtkit reads and writes.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// The user's catalog, in the images directory; when present it replaces the built-in one.
pub const USER_CATALOG_FILE: &str = "catalog.json";

/// The catalog compiled into virtkit.
const BUILT_IN_CATALOG: &str = include_str!("builtin-catalog.json");

/// The longest image name (it becomes a file name).
const MAX_NAME_LEN: usize = 100;

/// A list of images virtkit can download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageCatalog {
    /// [`CATALOG_FORMAT_VERSION`].
    pub version: u32,
    pub images: Vec<CatalogImage>,
}

/// One downloadable disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogImage {
    /// What `images pull` is given; also the local file name, `<name>.<format>`.
    pub name: String,
    pub description: String,
    /// Where the image is, `http://` or `https://`.
    pub url: String,
    pub format: ImageFormat,
    /// Size in bytes, if known; shown before the server says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the image in hex. Exactly one of `sha256` and `checksums_url` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A `SHA256SUMS`/`SHA512SUMS`-style file whose line for the URL's file name gives the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums_url: Option<String>,
}

/// The disk format of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The file name extension, which is also the name in the catalog.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

/// Where a catalog comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogSource {
    BuiltIn,
    File(PathBuf),
    Url(String),
}

impl CatalogSource {
    /// An `http://` or `https://` URL, or else a file path.
    pub fn parse(text: &str) -> CatalogSource {
        if is_http_url(text) {
            CatalogSource::Url(text.to_owned())
        } else {
            CatalogSource::File(PathBuf::from(text))
        }
    }

    /// The user's catalog (`<images dir>/catalog.json`) when it exists, otherwise the built-in one.
    pub fn for_home(home: &VirtkitHome) -> CatalogSource {
        let user = home.images_dir().join(USER_CATALOG_FILE);
        if user.exists() {
            CatalogSource::File(user)
        } else {
            CatalogSource::BuiltIn
        }
    }
}

impl fmt::Display for CatalogSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogSource::BuiltIn => f.write_str("the built-in catalog"),
            CatalogSource::File(path) => write!(f, "the catalog {}", path.display()),
            CatalogSource::Url(url) => write!(f, "the catalog {url}"),
        }
    }
}

/// One problem in a catalog, naming the entry and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIssue {
    /// `images[2] (debian-12-nocloud-amd64).sha256`, or `version`.
    pub field: String,
    /// What is wrong and how to fix it, as a sentence.
    pub message: String,
}

impl fmt::Display for CatalogIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a catalog could not be loaded or an image not found in it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the image catalog {}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the image catalog {url}; check the URL and the network connection")]
    Fetch {
        url: String,
        #[source]
        source: HttpError,
    },
    #[error("{source_name} is not a valid image catalog; see docs/IMAGES.md for the format")]
    Parse {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{source_name} has {} problem{}:{}",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" },
        issues.iter().map(|i| format!("\n  - {i}")).collect::<String>()
    )]
    Invalid {
        source_name: String,
        issues: Vec<CatalogIssue>,
    },
    #[error(
        "there is no image named `{name}` in {source_name}; choose one of: {}",
        if known.is_empty() { "(the catalog is empty)".to_owned() } else { known.join(", ") }
    )]
    UnknownImage {
        name: String,
        source_name: String,
        known: Vec<String>,
    },
}

impl ImageCatalog {
    /// Reads, parses and validates the catalog from `source`.
    pub fn load(source: &CatalogSource) -> Result<ImageCatalog, CatalogError> {
        let text = match source {
            CatalogSource::BuiltIn => BUILT_IN_CATALOG.to_owned(),
            CatalogSource::File(path) => std::fs::read_to_string(path).map_err(|e| CatalogError::Read {
                path: path.clone(),
                source: e,
            })?,
            CatalogSource::Url(url) => fetch_text(url).map_err(|e| CatalogError::Fetch {
                url: url.clone(),
                source: e,
            })?,
        };
        ImageCatalog::from_json(&text, &source.to_string())
    }

    /// Parses and validates catalog JSON; `source_name` says where it came from in errors.
    pub fn from_json(text: &str, source_name: &str) -> Result<ImageCatalog, CatalogError> {
        let catalog: ImageCatalog = serde_json::from_str(text).map_err(|e| CatalogError::Parse {
            source_name: source_name.to_owned(),
            source: e,
        })?;
        let issues = catalog.issues();
        if issues.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogError::Invalid {
                source_name: source_name.to_owned(),
                issues,
            })
        }
    }

    /// Every problem in the catalog: the version, then each entry in order.
    pub fn issues(&self) -> Vec<CatalogIssue> {
        let mut issues = Vec::new();
        if self.version != CATALOG_FORMAT_VERSION {
            issues.push(CatalogIssue {
                field: "version".into(),
                message: format!(
                    "catalog version {} is not supported; this virtkit reads version {CATALOG_FORMAT_VERSION}",
                    self.version
                ),
            });
        }
        for (index, image) in self.images.iter().enumerate() {
            let entry = format!("images[{index}] ({})", image.name);
            for (field, message) in image.problems() {
                issues.push(CatalogIssue {
                    field: format!("{entry}.{field}"),
                    message,
                });
            }
            if self.images[..index].iter().any(|other| other.name == image.name) {
                issues.push(CatalogIssue {
                    field: format!("{entry}.name"),
                    message: "another image has the same name; give each image its own name".into(),
                });
            }
        }
        issues
    }

    /// The image called `name`; `source_name` says which catalog was searched, in the error.
    pub fn find(&self, name: &str, source_name: &str) -> Result<&CatalogImage, CatalogError> {
        self.images
            .iter()
            .find(|image| image.name == name)
            .ok_or_else(|| CatalogError::UnknownImage {
                name: name.to_owned(),
                source_name: source_name.to_owned(),
                known: self.images.iter().map(|i| i.name.clone()).collect(),
            })
    }
}

impl CatalogImage {
    /// The local file name: `<name>.<format>`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format.extension())
    }

    /// Where the image lives once downloaded into `dir`.
    pub fn local_path(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name())
    }

    /// The last segment of the URL's path, which names the image in a checksums file.
    pub fn url_file_name(&self) -> Option<&str> {
        url_file_name(&self.url)
    }

    /// Every problem with this entry, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(message) = name_problem(&self.name) {
            problems.push(("name", message));
        }
        if !is_http_url(&self.url) {
            problems.push(("url", format!("`{}` is not an http:// or https:// URL", self.url)));
        }
        if self.size == Some(0) {
            problems.push((
                "size",
                "an image cannot be 0 bytes; give its size in bytes or leave size out".into(),
            ));
        }
        match (&self.sha256, &self.checksums_url) {
            (Some(_), Some(_)) => {
                problems.push(("sha256", "give either sha256 or checksums_url, not both".into()))
            }
            (None, None) => problems.push((
                "sha256",
                "the image has no checksum; give sha256 (64 hex digits) or checksums_url".into(),
            )),
            _ => {}
        }
        if let Some(hex) = &self.sha256 {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push((
                    "sha256",
                    format!("`{hex}` is not a SHA-256 digest; write its 64 hex digits"),
                ));
            }
        }
        if let Some(sums) = &self.checksums_url {
            if !is_http_url(sums) {
                problems.push((
                    "checksums_url",
                    format!("`{sums}` is not an http:// or https:// URL"),
                ));
            }
            if is_http_url(&self.url) && self.url_file_name().is_none() {
                problems.push((
                    "url",
                    "the URL does not end in a file name, so it cannot be looked up in \
                     checksums_url; give sha256 instead"
                        .into(),
                ));
            }
        }
        problems
    }
}

/// A name is used as a file name: letters, digits, `.`, `_` and `-`, not starting with a dot
/// or a dash.
fn name_problem(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        Some("the name is empty; give the image a name such as `debian-12-nocloud-amd64`".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!("the name is longer than {MAX_NAME_LEN} characters"))
    } else if !name.chars().all(allowed) || name.starts_with(['.', '-']) {
        Some(format!(
            "`{name}` cannot be a file name; use letters, digits, `.`, `_` and `-`, starting with a \
             letter or digit"
        ))
    } else {
        None
    }
}

/// The last path segment of `scheme://host/a/b/file?query#fragment` (`file`), if it has one.
fn url_file_name(url: &str) -> Option<&str> {
    let after_scheme = url.split_once("://")?.1;
    let end = after_scheme.find(['?', '#']).unwrap_or(after_scheme.len());
    let (_, path) = after_scheme[..end].split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> CatalogImage {
        CatalogImage {
            name: name.into(),
            description: "test".into(),
            url: format!("https://example.org/images/{name}.raw"),
            format: ImageFormat::Raw,
            size: None,
            sha256: Some("ab".repeat(32)),
            checksums_url: None,
        }
    }

    fn catalog_json(entries: &str) -> String {
        format!(r#"{{"version": 1, "images": [{entries}]}}"#)
    }

    fn issues_of(err: CatalogError) -> Vec<CatalogIssue> {
        match err {
            CatalogError::Invalid { issues, .. } => issues,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn built_in_catalog_is_valid_and_lists_debian_12_cloud_images() {
        let catalog = ImageCatalog::load(&CatalogSource::BuiltIn).unwrap();
        assert_eq!(catalog.version, CATALOG_FORMAT_VERSION);
        for name in ["debian-12-nocloud-amd64", "debian-12-genericcloud-amd64"] {
            let image = catalog.find(name, "built-in").unwrap();
            assert_eq!(image.format, ImageFormat::Qcow2);
            assert!(image
                .url
                .starts_with("https://cloud.debian.org/images/cloud/bookworm/latest/"));
            assert_eq!(image.url_file_name(), Some(&*format!("{name}.qcow2")));
            assert_eq!(
                image.checksums_url.as_deref(),
                Some("https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS")
            );
        }
    }

    #[test]
    fn a_catalog_round_trips_through_json() {
        let catalog = ImageCatalog {
            version: 1,
            images: vec![image("a"), image("b")],
        };
        let text = serde_json::to_string(&catalog).unwrap();
        assert_eq!(ImageCatalog::from_json(&text, "test").unwrap(), catalog);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = catalog_json(
            r#"{"name": "x", "description": "", "url": "https://e.org/x.raw", "format": "raw",
                "sha256": "00", "colour": "blue"}"#,
        );
        let err = ImageCatalog::from_json(&text, "the catalog t.json").unwrap_err();
        assert!(matches!(err, CatalogError::Parse { .. }), "{err:?}");
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("the catalog t.json") && text.contains("colour"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_format_is_refused() {
        let text = catalog_json(
            r#"{"name": "x", "description": "", "url": "https://e.org/x", "format": "vmdk", "sha256": "00"}"#,
        );
        let err = ImageCatalog::from_json(&text, "t").unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("vmdk"), "{source}");
    }

    #[test]
    fn each_bad_field_is_named_with_its_entry() {
        let mut both = image("both");
        both.checksums_url = Some("https://example.org/SHA256SUMS".into());
        let mut neither = image("neither");
        neither.sha256 = None;
        let mut short = image("short");
        short.sha256 = Some("abc".into());
        let mut bad = image("../escape");
        bad.url = "ftp://example.org/x.raw".into();
        bad.size = Some(0);
        let catalog = ImageCatalog {
            version: 2,
            images: vec![image("fine"), both, neither, short, bad, image("fine")],
        };
        let fields: Vec<String> = catalog.issues().into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "version",
                "images[1] (both).sha256",
                "images[2] (neither).sha256",
                "images[3] (short).sha256",
                "images[4] (../escape).name",
                "images[4] (../escape).url",
                "images[4] (../escape).size",
                "images[5] (fine).name",
            ]
        );
        let text = serde_json::to_string(&catalog).unwrap();
        let err = ImageCatalog::from_json(&text, "the catalog c.json").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("the catalog c.json has 8 problems:"),
            "{message}"
        );
        assert!(message.contains("images[1] (both).sha256: give either sha256 or checksums_url"));
        assert_eq!(issues_of(err).len(), 8);
    }

    #[test]
    fn checksums_url_needs_a_file_name_in_the_url_and_an_http_url() {
        let mut image = image("x");
        image.sha256 = None;
        image.url = "https://example.org/".into();
        image.checksums_url = Some("/local/SHA512SUMS".into());
        let problems: Vec<&str> = image.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(problems, ["checksums_url", "url"]);
    }

    #[test]
    fn url_file_names_ignore_query_and_fragment() {
        assert_eq!(url_file_name("https://h/a/b/f.qcow2?x=1#y"), Some("f.qcow2"));
        assert_eq!(url_file_name("http://h:8080/f.raw"), Some("f.raw"));
        assert_eq!(url_file_name("https://h/a/"), None);
        assert_eq!(url_file_name("https://h"), None);
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let catalog = ImageCatalog {
            version: 1,
            images: vec![image("alpha"), image("beta")],
        };
        let err = catalog.find("gamma", "the built-in catalog").unwrap_err();
        assert_eq!(
            err.to_string(),
            "there is no image named `gamma` in the built-in catalog; choose one of: alpha, beta"
        );
        assert_eq!(catalog.find("beta", "x").unwrap().name, "beta");
    }

    #[test]
    fn catalog_files_that_are_missing_or_broken_say_which_file() {
        let dir = std::env::temp_dir().join(format!("virtkit-images-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.json");
        let err = ImageCatalog::load(&CatalogSource::File(missing.clone())).unwrap_err();
        assert!(matches!(err, CatalogError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&*missing.to_string_lossy()));

        let broken = dir.join("broken.json");
        std::fs::write(&broken, "{ not json").unwrap();
        let err = ImageCatalog::load(&CatalogSource::File(broken.clone())).unwrap_err();
        assert!(matches!(err, CatalogError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains(&*broken.to_string_lossy()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_user_catalog_replaces_the_built_in_one_when_present() {
        let root = std::env::temp_dir().join(format!("virtkit-images-home-{}", std::process::id()));
        let home = VirtkitHome::new(&root);
        assert_eq!(CatalogSource::for_home(&home), CatalogSource::BuiltIn);
        std::fs::create_dir_all(home.images_dir()).unwrap();
        let user = home.images_dir().join(USER_CATALOG_FILE);
        std::fs::write(&user, catalog_json("")).unwrap();
        assert_eq!(CatalogSource::for_home(&home), CatalogSource::File(user));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sources_starting_with_http_are_urls_and_the_rest_are_paths() {
        assert_eq!(
            CatalogSource::parse("HTTPS://e.org/c.json"),
            CatalogSource::Url("HTTPS://e.org/c.json".into())
        );
        assert_eq!(
            CatalogSource::parse("http://e.org/c.json"),
            CatalogSource::Url("http://e.org/c.json".into())
        );
        assert_eq!(
            CatalogSource::parse("./http-catalog.json"),
            CatalogSource::File("./http-catalog.json".into())
        );
    }
}
