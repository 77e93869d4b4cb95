//! Virtual machine names: they are directory names, socket path parts and CLI arguments.

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a VM name: 1–64 characters of letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit (so it is never hidden, never `..`, never an option).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_first || !ok_rest {
        return Err(format!(
            "`{name}` is not a valid VM name: use 1 to {MAX_NAME_LEN} letters, digits, `.`, `_` or `-`, \
             starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_refuses_paths_and_options() {
        for good in ["web", "web-2", "k1", "build_box.3", "A"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in ["", ".", "..", ".hidden", "-rf", "a/b", "a b", "é", long.as_str()] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("not a valid VM name"), "{e}");
        }
    }
}
