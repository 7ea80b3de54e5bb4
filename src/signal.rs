//! Signal names as operators write them: `SIGTERM`, `TERM`, `15`.

use nix::sys::signal::Signal;
use std::str::FromStr;

/// Parses a signal name or number: `SIGTERM`, `TERM`, `sigterm` or `15`.
///
/// ```
/// use nix::sys::signal::Signal;
/// assert_eq!(fdstore::parse_signal("TERM"), Ok(Signal::SIGTERM));
/// assert_eq!(fdstore::parse_signal("2"), Ok(Signal::SIGINT));
/// ```
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{text:?} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("{text:?} is not a signal name; use one like SIGTERM, SIGINT or SIGQUIT")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("QUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("SIGTERM"));
        assert!(parse_signal("99").is_err());
    }
}
