//! Printing that cannot kill the process. `println!` and `eprintln!` panic when the write fails
//! (a closed pipe: `virtkit list | head -1`, `2>&1 | head -c100`; a full disk behind `2>file`;
//! `2>/dev/full`), and with `panic = "abort"` that takes the VM process and its guest down. These
//! macros write the same text and ignore a failure: output nobody can receive is not a reason to
//! stop. Use them everywhere in the CLI instead of the std ones.

/// `println!` that ignores a failed write.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a failed write.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that ignores a failed write.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}
