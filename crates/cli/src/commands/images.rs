//! `virtkit images [list]`: the restore-image catalog and what is downloaded;
//! `virtkit images pull NAME`: download an image, verify it, print its path.

use std::io::Write;
use std::path::Path;

use clap::{Args, Subcommand};
use virtkit::ByteSize;
use virtkit_manager::images::{download, local_image, CatalogSource, ImageCatalog, LocalImage};
use virtkit_manager::VirtkitHome;

use crate::commands::vms::Format;

use crate::exit::{CliError, EXIT_OK};
use crate::progress::Progress;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// List the catalog's images and which are downloaded (what `virtkit images` does).
    List(ListArgs),
    /// Download an image, check its checksum, and print its local path.
    Pull(PullArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// Output as text (a table) or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    #[command(flatten)]
    pub catalog: CatalogArg,
}

#[derive(Args)]
pub struct PullArgs {
    /// The image's name in the catalog (see `virtkit images`).
    pub name: String,
    #[command(flatten)]
    pub catalog: CatalogArg,
}

#[derive(Args)]
pub struct CatalogArg {
    /// A catalog file or http(s) URL to use instead of $VIRTKIT_HOME/images/catalog.json (or,
    /// without that, the built-in catalog).
    #[arg(long, value_name = "PATH|URL")]
    pub catalog: Option<String>,
}

pub fn run(args: &ImagesArgs) -> Result<u8, CliError> {
    let home = crate::commands::vms::home()?;
    match &args.command {
        None => list(&args.list, &home),
        Some(ImagesCommand::List(list_args)) => list(list_args, &home),
        Some(ImagesCommand::Pull(pull_args)) => pull(pull_args, &home),
    }
}

fn load_catalog(arg: &CatalogArg, home: &VirtkitHome) -> Result<(ImageCatalog, CatalogSource), CliError> {
    let source = match &arg.catalog {
        Some(text) => CatalogSource::parse(text),
        None => CatalogSource::for_home(home),
    };
    let catalog =
        ImageCatalog::load(&source).map_err(|e| CliError::with_chain("cannot load the image catalog", &e))?;
    Ok((catalog, source))
}

/// One row of the listing.
struct Row {
    name: String,
    format: &'static str,
    /// On disk when downloaded, otherwise the catalog's size.
    size: Option<u64>,
    status: String,
    downloaded: bool,
    partial_bytes: Option<u64>,
    path: String,
}

fn list(args: &ListArgs, home: &VirtkitHome) -> Result<u8, CliError> {
    let (catalog, source) = load_catalog(&args.catalog, home)?;
    let dir = home.images_dir();
    let rows: Vec<Row> = catalog
        .images
        .iter()
        .map(|image| {
            let (size, status, downloaded, partial_bytes) = match local_image(image, &dir) {
                LocalImage::Downloaded { bytes, .. } => (Some(bytes), "downloaded".to_owned(), true, None),
                LocalImage::Partial { bytes, .. } => (
                    image.size,
                    format!("partial ({})", ByteSize(bytes)),
                    false,
                    Some(bytes),
                ),
                LocalImage::Missing => (image.size, "not downloaded".to_owned(), false, None),
            };
            Row {
                name: image.name.clone(),
                format: image.format.extension(),
                size,
                status,
                downloaded,
                partial_bytes,
                path: image.local_path(&dir).display().to_string(),
            }
        })
        .collect();
    let output = match args.format {
        Format::Json => json_listing(&catalog, &source, &dir, &rows),
        Format::Text => table(&source, &rows),
    };
    write_stdout(&output)?;
    Ok(EXIT_OK)
}

/// Writes to stdout; a reader that went away (`virtkit images | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), CliError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::with_chain("cannot write the listing", &e))
        }
        _ => Ok(()),
    }
}

fn json_listing(catalog: &ImageCatalog, source: &CatalogSource, dir: &Path, rows: &[Row]) -> String {
    let images: Vec<serde_json::Value> = catalog
        .images
        .iter()
        .zip(rows)
        .map(|(image, row)| {
            serde_json::json!({
                "name": image.name,
                "description": image.description,
                "url": image.url,
                "format": row.format,
                "size": row.size,
                "downloaded": row.downloaded,
                "partial_bytes": row.partial_bytes,
                "path": row.path,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "catalog": source.to_string(),
        "images_dir": dir.display().to_string(),
        "images": images,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn table(source: &CatalogSource, rows: &[Row]) -> String {
    if rows.is_empty() {
        return format!("{source} has no images\n");
    }
    let size_text: Vec<String> = rows
        .iter()
        .map(|r| r.size.map_or_else(|| "-".to_owned(), |s| ByteSize(s).to_string()))
        .collect();
    let width = |header: &str, cells: &mut dyn Iterator<Item = usize>| cells.fold(header.len(), usize::max);
    let name_w = width("NAME", &mut rows.iter().map(|r| r.name.len()));
    let size_w = width("SIZE", &mut size_text.iter().map(String::len));
    let status_w = width("STATUS", &mut rows.iter().map(|r| r.status.len()));
    let mut text = format!(
        "{:name_w$}  {:6}  {:size_w$}  {:status_w$}  PATH\n",
        "NAME", "FORMAT", "SIZE", "STATUS"
    );
    for (row, size) in rows.iter().zip(&size_text) {
        text.push_str(&format!(
            "{:name_w$}  {:6}  {:size_w$}  {:status_w$}  {}\n",
            row.name, row.format, size, row.status, row.path
        ));
    }
    text
}

fn pull(args: &PullArgs, home: &VirtkitHome) -> Result<u8, CliError> {
    let path = pull_image(&args.name, &args.catalog, home)?;
    outln!("{}", path.display());
    Ok(EXIT_OK)
}

/// Downloads (or finds, verified, in the images directory) the catalog image `name`.
pub fn pull_image(
    name: &str,
    catalog: &CatalogArg,
    home: &VirtkitHome,
) -> Result<std::path::PathBuf, CliError> {
    let (catalog, source) = load_catalog(catalog, home)?;
    let context = || format!("cannot pull `{name}`");
    let image = catalog
        .find(name, &source.to_string())
        .map_err(|e| CliError::with_chain(context(), &e))?;
    errln!("pull {}: {}", image.name, image.url);
    let mut progress = Progress::new(format!("pull {}", image.name), image.size);
    let path = download(image, &home.images_dir(), &mut |done, total| {
        progress.set_total(total);
        progress.update(done);
    })
    .map_err(|e| CliError::with_chain(context(), &e))?;
    progress.finish();
    Ok(path)
}
