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

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::spec::ListenerSpec;

/// The largest listener file read: 1 MiB, room for some 20,000 listeners.
/// A bigger file (or `/dev/zero`) is an error, not an ever-growing read.
pub(crate) const MAX_LISTEN_FILE_BYTES: u64 = 1 << 20;

/// Reads and parses a listener file. Errors name the file, the line and the
/// problem.
///
/// Only a regular file of at most 1 MiB (`MAX_LISTEN_FILE_BYTES`) is read: the
/// file is opened without blocking (a FIFO with no writer would otherwise
/// hold fdstore-exec before it handles signals) and anything else (a FIFO,
/// a device, a directory) is refused.
pub(crate) fn read_listen_file(path: &Path) -> Result<Vec<ListenerSpec>, String> {
    let shown = path.display();
    let cannot = |e: std::io::Error| {
        format!("cannot read the listener file {shown}: {e}; check --listen-file")
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    let file_type = file.metadata().map_err(cannot)?.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!(
            "the listener file {shown} is {what}; --listen-file takes a regular file"
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_LISTEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_LISTEN_FILE_BYTES {
        return Err(format!(
            "the listener file {shown} is larger than {MAX_LISTEN_FILE_BYTES} bytes, the most fdstore-exec reads; split the listeners or check --listen-file"
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "the listener file {shown} is not UTF-8 text (byte {}); check --listen-file",
            e.utf8_error().valid_up_to()
        )
    })?;
    parse_listen_file(&text).map_err(|(line, problem)| format!("{shown}, line {line}: {problem}"))
}

/// Parses listener-file text; an error carries the 1-based line number.
pub(crate) fn parse_listen_file(text: &str) -> Result<Vec<ListenerSpec>, (usize, String)> {
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
    fn devices_fifos_and_directories_are_refused_without_reading() {
        let e = read_listen_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero is a device"), "{e}");
        assert!(e.contains("regular file"), "{e}");
        let e = read_listen_file(Path::new("/")).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        let dir = std::env::temp_dir().join(format!("fdstore-lf-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("listeners");
        let _ = std::fs::remove_file(&fifo);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // No writer: a blocking open would hang here.
        let e = read_listen_file(&fifo).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("is a FIFO"), "{e}");
    }

    #[test]
    fn a_file_over_the_bound_is_refused() {
        let dir = std::env::temp_dir().join(format!("fdstore-lf-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("listeners");
        let line = "# padding padding padding padding padding padding padding\n";
        let text = line.repeat((MAX_LISTEN_FILE_BYTES as usize / line.len()) + 1);
        std::fs::write(&big, &text).unwrap();
        let e = read_listen_file(&big).unwrap_err();
        std::fs::write(&big, &text[..MAX_LISTEN_FILE_BYTES as usize - 1]).unwrap();
        let at_bound = read_listen_file(&big);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        assert_eq!(at_bound.map(|s| s.len()), Ok(0));
    }

    #[test]
    fn a_missing_file_says_which() {
        let e = read_listen_file(Path::new("/nonexistent/listeners")).unwrap_err();
        assert!(e.contains("/nonexistent/listeners"), "{e}");
        assert!(e.contains("--listen-file"), "{e}");
    }
}
