//! Lines for whoever reads a test run, written to the process's real stderr.
//!
//! libtest captures what a passing test prints with `print!` and `eprint!` and throws it away.
//! A skip, an emulator fault that was retried or a slow step is a finding all the same, so
//! those lines go to the file descriptor itself, which the capture does not reach.

use std::io::Write;

/// Writes `text` to the real stderr, past libtest's capture, with a newline if it has none.
pub fn tell(text: &str) {
    let mut line = text.to_string();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_told_line_shows_when_the_test_passes_with_its_output_captured() {
        if std::env::var_os("VIRTKIT_TESTKIT_TELL_CHILD").is_some() {
            tell("told: past the capture");
            eprintln!("eprinted: captured");
            return;
        }
        // The child runs this test with libtest's default capture; it passes, so libtest
        // throws its captured output away and only what went past the capture remains.
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tell::tests::a_told_line_shows_when_the_test_passes_with_its_output_captured",
                "--test-threads=1",
            ])
            .env("VIRTKIT_TESTKIT_TELL_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("told: past the capture\n"), "{stderr}");
        // The control: the capture is on, or this test proves nothing.
        assert!(!stderr.contains("eprinted: captured"), "{stderr}");
    }
}
