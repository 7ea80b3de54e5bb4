//! The rules for descriptor names (`FDNAME=`, `LISTEN_FDNAMES`).

/// The longest name systemd accepts for a stored descriptor.
pub const FD_NAME_MAX: usize = 255;

/// Checks a descriptor name against systemd's rules: 1 to 255 printable ASCII
/// characters, no `:` (it separates names in `LISTEN_FDNAMES`).
///
/// Returns the problem, in words, when the name is not valid.
///
/// ```
/// assert!(fdstore::check_fd_name("web").is_ok());
/// assert!(fdstore::check_fd_name("a:b").is_err());
/// ```
pub fn check_fd_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a descriptor name must not be empty".into());
    }
    if name.len() > FD_NAME_MAX {
        return Err(format!(
            "a descriptor name has at most {FD_NAME_MAX} characters, this one has {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c) || *c == ':') {
        return Err(format!(
            "a descriptor name holds only printable ASCII characters other than ':', not {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["web", "http-8080", "a.b_c", "x y", &"n".repeat(255)] {
            assert!(check_fd_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names_with_the_reason() {
        assert!(check_fd_name("").unwrap_err().contains("empty"));
        assert!(check_fd_name(&"n".repeat(256)).unwrap_err().contains("256"));
        assert!(check_fd_name("a:b").unwrap_err().contains("':'"));
        assert!(check_fd_name("a\nb").is_err());
        assert!(check_fd_name("caf\u{e9}").is_err());
    }
}
