//! `virtkit_disk` from the command line, for benchmarks and manual checks:
//!
//! ```text
//! disk_image_tool import SRC DST [--disk-size SIZE]
//! disk_image_tool clone SRC DST
//! ```
//!
//! Prints one JSON object: what was done, bytes written or the clone method, and seconds taken.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use virtkit_disk::{clone_file, import};

const USAGE: &str = "usage: disk_image_tool import SRC DST [--disk-size SIZE] | clone SRC DST";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("disk_image_tool: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    match strs.as_slice() {
        ["import", src, dst, rest @ ..] => {
            let disk_size = match rest {
                [] => None,
                ["--disk-size", size] => Some(parse_size(size)?),
                _ => return Err(USAGE.to_string()),
            };
            let report = import(Path::new(src), Path::new(dst), disk_size, &mut |_, _| {}).map_err(chain)?;
            Ok(json!({
                "command": "import",
                "format": report.format.to_string(),
                "virtual_size": report.virtual_size,
                "disk_size": report.disk_size,
                "bytes_written": report.bytes_written,
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
        ["clone", src, dst] => {
            let method = clone_file(Path::new(src), Path::new(dst), &mut |_, _| {}).map_err(chain)?;
            Ok(json!({
                "command": "clone",
                "method": method.to_string(),
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
        _ => Err(USAGE.to_string()),
    }
}

/// The error and its sources, `: `-separated.
fn chain(err: impl std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `4096`, `512M`, `20G`: bytes, or binary K/M/G/T.
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size; write bytes or a number with K, M, G or T");
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}
