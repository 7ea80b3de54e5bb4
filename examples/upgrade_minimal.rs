//! The smallest upgradable server: the upgrader is created, asked for a
//! listener and for readiness, and dropped; its thread goes on answering
//! reloads (units: `units/app-library.service`, with this program as
//! `/usr/bin/app`).
//!
//! ```text
//! upgrade_minimal [NAME=tcp:ADDRESS:PORT]
//! ```
//!
//! Answers every connection with one HTTP response (`minimal (pid P,
//! generation G)`) and stops accepting at the drain notice.

use std::io::{Read, Write};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1);
    let spec = spec.as_deref().unwrap_or("http=tcp:127.0.0.1:8080");
    // The upgrader need not live until exit: dropping it leaves its thread
    // serving reloads and the drain deadline, without using the CPU.
    let (listener, drain, generation) = {
        let upgrader = fdstore::Upgrader::from_env()?;
        let listener = upgrader.tcp_listener(spec)?;
        upgrader.ready()?;
        (listener, upgrader.drain(), upgrader.generation())
    };
    listener.set_nonblocking(true)?;
    let body = format!(
        "minimal (pid {}, generation {generation})\n",
        std::process::id()
    );
    while drain.notice().is_none() {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
