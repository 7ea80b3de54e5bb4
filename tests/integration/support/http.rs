//! One HTTP/1.1 request per connection, for the tests that check which
//! generation answers.

use std::io::{Read, Write};
use std::time::Duration;

/// The reply to `request` (a method and a path, `"GET /"`) on `stream`,
/// sent with `Connection: close`: the body of a 200, trimmed, or what failed.
pub fn ask(mut stream: impl Read + Write, request: &str) -> Result<String, String> {
    write!(
        stream,
        "{request} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.trim().to_owned()),
        _ => Err(format!("bad response {text:?}")),
    }
}

/// `GET path` on a new connection to 127.0.0.1:`port`, waiting at most
/// `patience` for the reply.
pub fn get(port: u16, path: &str, patience: Duration) -> Result<String, String> {
    let stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(patience))
        .map_err(|e| e.to_string())?;
    ask(stream, &format!("GET {path}"))
}
