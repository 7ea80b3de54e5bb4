//! Loopback ports that no other test, in this process or another, uses.
//!
//! A port is reserved by an exclusive `flock` on a file under
//! `/tmp/fdstore-test-ports/`, held until the test process exits, and checked
//! to be bindable on 127.0.0.1 and ::1. Ports come from 20000–31999, below the
//! ephemeral range, so TIME_WAIT from load tests cannot make them unbindable.

use std::fs::File;
use std::sync::Mutex;

use rustix::fs::{flock, FlockOperation};

const FIRST: u16 = 20000;
const COUNT: u16 = 12000;

static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Reserves a free loopback port for the rest of this test process.
pub fn free_port() -> u16 {
    let dir = std::path::Path::new("/tmp/fdstore-test-ports");
    std::fs::create_dir_all(dir).expect("creating the port lock directory");
    let start = (std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64)
        % COUNT as u64;
    for i in 0..COUNT as u64 {
        let port = FIRST + ((start + i * 13) % COUNT as u64) as u16;
        let Ok(file) = File::create(dir.join(port.to_string())) else {
            continue;
        };
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        let bindable = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if bindable {
            HELD.lock().unwrap().push(file);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}-{}", FIRST + COUNT - 1);
}
