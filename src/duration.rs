//! Durations as operators write them in unit files: `500ms`, `5s`, `2min`,
//! `1h`, `1.5s`, or a bare number of seconds.

use std::time::Duration;

/// Parses a duration such as `500ms`, `5s`, `1.5s`, `2min`, `1h` or `30`
/// (seconds, as systemd reads a bare number).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(fdstore::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(fdstore::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            format!("{text:?} is not a duration; write it like 500ms, 5s, 1.5s, 2min or 1h")
        })?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "second" | "seconds" => 1.0,
        "ms" | "msec" => 0.001,
        "us" | "usec" => 0.000_001,
        "m" | "min" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hour" | "hours" => 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use ms, s, min or h (for example 500ms or 5s)"
            ))
        }
    };
    let seconds = value * scale;
    if seconds > 365.0 * 86400.0 {
        return Err(format!("{text:?} is longer than a year"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn errors_say_how_to_write_it() {
        for bad in ["", "soon", "-1s", "5 parsecs", "1e9h", ".s"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }
}
