//! Sizes written as people write them: `512M`, `2G`, `64MiB`, or plain bytes.

use std::fmt;

/// A byte count that prints in the largest whole binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        // The largest unit the value reaches: whole when exact, one decimal otherwise.
        for (shift, name) in units {
            if self.0 >= 1 << shift {
                return if self.0.is_multiple_of(1 << shift) {
                    write!(f, "{} {name}", self.0 >> shift)
                } else {
                    write!(f, "{:.1} {name}", self.0 as f64 / (1u64 << shift) as f64)
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Parses `512M`, `2G`, `1.5G`, `64MiB`, `4096` (bytes). Units are binary (K = 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}`; write a number with K, M, G or T, like 512M or 2G"
            ))
        }
    };
    let bad = || format!("`{text}` is not a size; write a number with K, M, G or T, like 512M or 2G");
    if number.is_empty() {
        return Err(bad());
    }
    let value = if let Some((whole, frac)) = number.split_once('.') {
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac_value: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(1 << shift)
            .and_then(|w| w.checked_add((frac_value * (1u64 << shift) as f64) as u64))
    } else {
        number.parse::<u64>().map_err(|_| bad())?.checked_mul(1 << shift)
    };
    value.ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1k "), Ok(1024));
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        for bad in ["", "M", "12Q", "lots", "1.2.3G", "99999999999T"] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.contains(bad.trim()) || err.contains("too large"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn displays_whole_units() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512 MiB");
        assert_eq!(ByteSize(4 << 30).to_string(), "4 GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 bytes");
        assert_eq!(ByteSize(24_730_032 * 1024).to_string(), "23.6 GiB");
    }
}
