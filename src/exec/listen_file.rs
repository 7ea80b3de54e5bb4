//! The listener file (`--listen-file`): one `NAME=KIND:ADDRESS[,OPTION]...`
//! spec per line, as for `--listen`. Blank lines and lines starting with `#`
//! are ignored; leading and trailing white space is dropped.
//!
//! ```text
//! # /etc/app/listeners
//! web=tcp:[::]:8080
//! admin=unix:/run/app/admin.sock,mode=0660
//! ```
//!
//! Each generation reads the file when it starts, so a reload picks up
//! listeners added to it, and closes (and removes from the fd store) the
//! ones removed from it.

use std::path::Path;

use crate::spec::ListenerSpec;

/// Reads and parses a listener file. Errors name the file, the line and the
/// problem.
pub fn read_listen_file(path: &Path) -> Result<Vec<ListenerSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the listener file {}: {e}; check --listen-file",
            path.display()
        )
    })?;
    parse_listen_file(&text)
        .map_err(|(line, problem)| format!("{}, line {line}: {problem}", path.display()))
}

/// Parses listener-file text; an error carries the 1-based line number.
pub fn parse_listen_file(text: &str) -> Result<Vec<ListenerSpec>, (usize, String)> {
    let mut specs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = ListenerSpec::parse(line).map_err(|e| (index + 1, e.to_string()))?;
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let specs =
            parse_listen_file("# listeners\n\n  web=tcp:127.0.0.1:8080  \n#x\napi=unix:@app\n")
                .unwrap();
        let names: Vec<&str> = specs.iter().map(ListenerSpec::name).collect();
        assert_eq!(names, ["web", "api"]);
    }

    #[test]
    fn an_error_names_the_line() {
        let (line, problem) =
            parse_listen_file("web=tcp:127.0.0.1:8080\n\nbad=tcp:nowhere\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(problem.contains("nowhere"), "{problem}");
    }

    #[test]
    fn a_missing_file_says_which() {
        let e = read_listen_file(Path::new("/nonexistent/listeners")).unwrap_err();
        assert!(e.contains("/nonexistent/listeners"), "{e}");
        assert!(e.contains("--listen-file"), "{e}");
    }
}
