//! Byte counts in messages, as the VM API prints them (`virtkit::ByteSize`).

use std::fmt;

/// A byte count that prints in the largest whole binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_the_largest_unit() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512 MiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(100).to_string(), "100 bytes");
    }
}
