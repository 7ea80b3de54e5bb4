use super::*;
use crate::kind::FdKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;

fn spec(s: &str) -> ListenerSpec {
    s.parse().unwrap()
}

fn temp_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fdstore-bind-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free loopback port below the ephemeral range.
fn free_port() -> u16 {
    for _ in 0..200 {
        let port = 20000
            + (rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_nsec as u16
                % 10000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port");
}

#[test]
fn tcp_listener_is_listening_and_cloexec() {
    let port = free_port();
    let fd = spec(&format!("web=tcp:127.0.0.1:{port},backlog=8"))
        .bind()
        .unwrap();
    assert_eq!(fd.name(), "web");
    assert_eq!(fd.kind().unwrap(), FdKind::TcpListener);
    assert!(crate::sys::fd::is_cloexec(&fd).unwrap());
    let listener = std::net::TcpListener::from(fd.into_fd());
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(listener.accept().is_ok());
}

/// Whether `fd`'s open file description has `O_NONBLOCK`.
fn nonblocking(fd: impl std::os::fd::AsFd) -> bool {
    rustix::fs::fcntl_getfl(fd)
        .unwrap()
        .contains(rustix::fs::OFlags::NONBLOCK)
}

#[test]
fn nonblocking_is_set_only_when_asked() {
    let port = free_port();
    let plain = spec(&format!("w=tcp:127.0.0.1:{port}")).bind().unwrap();
    assert!(!nonblocking(&plain));
    drop(plain);
    let fd = spec(&format!("w=tcp:127.0.0.1:{port},nonblocking"))
        .bind()
        .unwrap();
    assert!(nonblocking(&fd));
    // An accept with nothing queued returns at once.
    let listener = std::net::TcpListener::from(fd.into_fd());
    let e = listener.accept().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    let abstract_name = format!("fdstore-nb-{}", std::process::id());
    let unix = spec(&format!("u=unix:@{abstract_name},nonblocking"))
        .bind()
        .unwrap();
    assert!(nonblocking(&unix));
}

#[test]
fn ipv6_v6only_and_reuseport_are_applied() {
    let port = free_port();
    let fd = spec(&format!("w=tcp:[::1]:{port},v6only,reuseport,freebind"))
        .bind()
        .unwrap();
    assert!(sockopt::ipv6_v6only(&fd).unwrap());
    assert!(sockopt::socket_reuseport(&fd).unwrap());
    assert!(sockopt::ipv6_freebind(&fd).unwrap());
    // reuseport lets a second socket bind the same port.
    assert!(spec(&format!("w=tcp:[::1]:{port},v6only,reuseport"))
        .bind()
        .is_ok());
}

#[test]
fn udp_socket() {
    let port = free_port();
    let fd = spec(&format!("d=udp:127.0.0.1:{port},freebind"))
        .bind()
        .unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UdpSocket);
    assert!(sockopt::ip_freebind(&fd).unwrap());
}

#[test]
fn address_in_use_has_a_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = spec(&format!("web=tcp:127.0.0.1:{port}"))
        .bind()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("binding 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("another socket is bound there"), "{text}");
}

#[test]
fn unix_path_with_mode_and_owner() {
    let dir = temp_dir();
    let path = dir.join("api.sock");
    let fd = spec(&format!(
        "api=unix:{},mode=0640,owner=0,group=root",
        path.display()
    ))
    .bind()
    .unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UnixListener);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stale_unix_socket_is_replaced() {
    let dir = temp_dir();
    let path = dir.join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
    assert!(path.exists());
    let fd = spec(&format!("s=unix:{}", path.display())).bind().unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UnixListener);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn live_unix_socket_is_not_replaced() {
    let dir = temp_dir();
    let path = dir.join("live.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = spec(&format!("s=unix:{}", path.display()))
        .bind()
        .unwrap_err();
    assert!(
        err.to_string().contains("a live socket is listening there"),
        "{err}"
    );
    // The live one still works.
    let _c = UnixStream::connect(&path).unwrap();
    assert!(live.accept().is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn regular_file_is_never_removed() {
    let dir = temp_dir();
    let path = dir.join("data");
    std::fs::write(&path, b"precious").unwrap();
    let err = spec(&format!("s=unix:{}", path.display()))
        .bind()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("it is a regular file, not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_owner_fails_and_leaves_no_file() {
    let dir = temp_dir();
    let path = dir.join("o.sock");
    let err = spec(&format!(
        "s=unix:{},owner=no-such-user-fdstore",
        path.display()
    ))
    .bind()
    .unwrap_err();
    assert!(err.to_string().contains("no such user"), "{err}");
    assert!(!path.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_directory_has_a_hint() {
    let err = spec("s=unix:/nonexistent-fdstore-dir/s.sock")
        .bind()
        .unwrap_err();
    assert!(err.to_string().contains("RuntimeDirectory="), "{err}");
}

#[test]
fn abstract_and_datagram_sockets() {
    let name = format!("fdstore-bind-test-{}", std::process::id());
    let fd = spec(&format!("c=unix:@{name}")).bind().unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UnixListener);
    let dir = temp_dir();
    let path = dir.join("d.sock");
    let fd = spec(&format!("d=unix-dgram:{}", path.display()))
        .bind()
        .unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UnixDatagram);
    drop(fd);
    // A datagram socket file left behind is stale too.
    assert!(spec(&format!("d=unix-dgram:{}", path.display()))
        .bind()
        .is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mismatch_compares_kind_and_address() {
    let port = free_port();
    let s = spec(&format!("web=tcp:127.0.0.1:{port}"));
    let fd = s.bind().unwrap();
    assert_eq!(s.mismatch(&fd), None);
    let moved = spec(&format!("web=tcp:127.0.0.1:{}", port + 1))
        .mismatch(&fd)
        .unwrap();
    assert!(moved.contains(&format!("127.0.0.1:{port}")), "{moved}");
    let kind = spec(&format!("web=udp:127.0.0.1:{port}"))
        .mismatch(&fd)
        .unwrap();
    assert!(kind.contains("TCP listener"), "{kind}");
    let dir = temp_dir();
    let path = dir.join("m.sock");
    let u = spec(&format!("api=unix:{}", path.display()));
    let ufd = u.bind().unwrap();
    assert_eq!(u.mismatch(&ufd), None);
    assert!(
        spec(&format!("api=unix:{}", dir.join("other.sock").display()))
            .mismatch(&ufd)
            .is_some()
    );
}

/// A root-owned 0600 file outside the socket's directory, which a hostile
/// writer of that directory would like us to chmod, chown or delete.
fn victim(dir: &std::path::Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    victim
}

fn assert_untouched(victim: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(victim).expect("the unrelated file must not be deleted");
    assert_eq!(meta.mode() & 0o7777, 0o600, "its mode changed");
    assert_eq!(
        meta.uid(),
        rustix::process::getuid().as_raw(),
        "its owner changed"
    );
    assert_eq!(std::fs::read(victim).unwrap(), b"precious");
}

const HOSTILE: &str = "mode=0666,owner=nobody,group=nogroup";

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    let dir = temp_dir();
    let other = temp_dir();
    let victim = victim(&other);
    let path = dir.join("api.sock");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let err = spec(&format!("api=unix:{},{HOSTILE}", path.display()))
        .bind()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("it is a symbolic link, not a socket"),
        "{err}"
    );
    assert_untouched(&victim);
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(other).unwrap();
}

#[test]
fn a_socket_swapped_for_a_symlink_after_bind_gets_no_mode_or_owner() {
    // The race of issue 14, point 5, made deterministic: between bind() and
    // chmod/chown, another writer of the directory replaces the socket by a
    // symlink to an unrelated file.
    let dir = temp_dir();
    let other = temp_dir();
    let victim = victim(&other);
    let path = dir.join("api.sock");
    let spec = spec(&format!("api=unix:{},{HOSTILE}", path.display()));
    let err = spec
        .bind_unix_path_with(&path, &mut |step| {
            if step == UnixBindStep::Bound {
                std::fs::remove_file(&path).unwrap();
                std::os::unix::fs::symlink(&victim, &path).unwrap();
            }
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("it is a symbolic link, not the socket just bound"),
        "{text}"
    );
    assert!(text.contains("RuntimeDirectory="), "{text}");
    assert_untouched(&victim);
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(other).unwrap();
}

#[test]
fn a_directory_swapped_during_the_stale_check_does_not_redirect_the_removal() {
    // The directory is swapped for a symlink to another one, where an
    // unrelated file has the socket's name: path-based check-then-unlink
    // deleted it. The removal now happens in the directory that was opened.
    let base = temp_dir();
    let dir = base.join("d");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("api.sock");
    drop(UnixListener::bind(&path).unwrap()); // a stale socket
    let other = temp_dir();
    let victim = other.join("api.sock");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let spec = spec(&format!("api=unix:{},{HOSTILE}", path.display()));
    let result = spec.bind_unix_path_with(&path, &mut |step| {
        if step == UnixBindStep::DirOpened {
            std::fs::rename(&dir, base.join("d.old")).unwrap();
            std::os::unix::fs::symlink(&other, &dir).unwrap();
        }
    });
    // The bind itself now meets the unrelated file: refused.
    let err = result.unwrap_err();
    assert!(err.to_string().contains("binding"), "{err}");
    assert_untouched(&victim);
    // The stale socket was removed where it was.
    assert!(!base.join("d.old/api.sock").exists());
    std::fs::remove_dir_all(base).unwrap();
    std::fs::remove_dir_all(other).unwrap();
}

#[test]
fn stale_datagram_socket_is_replaced_and_mode_applies() {
    let dir = temp_dir();
    let path = dir.join("dgram.sock");
    drop(UnixDatagram::bind(&path).unwrap());
    let fd = spec(&format!("d=unix-dgram:{},mode=0600", path.display()))
        .bind()
        .unwrap();
    assert_eq!(fd.kind().unwrap(), FdKind::UnixDatagram);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    std::fs::remove_dir_all(dir).unwrap();
}
