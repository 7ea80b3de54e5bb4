use super::*;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::io::IoSliceMut;
use std::os::unix::net::UnixDatagram;

/// A datagram socket standing in for the manager's end, to check what goes on
/// the wire.
struct Peer {
    socket: UnixDatagram,
    dir: Option<std::path::PathBuf>,
}

impl Peer {
    fn at_path() -> (Peer, String) {
        let dir = std::env::temp_dir().join(format!(
            "fdstore-notify-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let address = path.to_str().unwrap().to_owned();
        (
            Peer {
                socket,
                dir: Some(dir),
            },
            address,
        )
    }

    fn abstract_name() -> (Peer, String) {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fdstore-test-{}-{}", std::process::id(), unique());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        (Peer { socket, dir: None }, format!("@{name}"))
    }

    /// Receives one message and the descriptors attached to it.
    fn recv(&self) -> (String, Vec<OwnedFd>) {
        self.socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(300))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        let text = String::from_utf8(buf[..msg.bytes].to_vec()).unwrap();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        (text, fds)
    }

    fn nothing_pending(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let empty = self.socket.recv(&mut buf).is_err();
        self.socket.set_nonblocking(false).unwrap();
        empty
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn formats_every_field() {
    let text = format_message(&[
        Notification::Ready,
        Notification::Stopping,
        Notification::Status("serving generation 3"),
        Notification::Errno(5),
        Notification::MainPid(1234),
        Notification::Watchdog,
        Notification::WatchdogTrigger,
        Notification::WatchdogUsec(2_000_000),
        Notification::ExtendTimeout(Duration::from_millis(1500)),
        Notification::NotifyAccess("all"),
    ])
    .unwrap();
    assert_eq!(
        text,
        "READY=1\nSTOPPING=1\nSTATUS=serving generation 3\nERRNO=5\nMAINPID=1234\n\
         WATCHDOG=1\nWATCHDOG=trigger\nWATCHDOG_USEC=2000000\nEXTEND_TIMEOUT_USEC=1500000\n\
         NOTIFYACCESS=all\n"
    );
}

#[test]
fn reloading_carries_a_current_monotonic_timestamp() {
    let before = monotonic_usec();
    let text = format_message(&[Notification::Reloading]).unwrap();
    let after = monotonic_usec();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let stamp: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(before <= stamp && stamp <= after);
}

#[test]
fn a_newline_in_a_value_is_refused_not_injected() {
    let err = format_message(&[Notification::Status("ok\nMAINPID=1")]).unwrap_err();
    assert!(matches!(
        err,
        NotifyError::BadField {
            field: "STATUS",
            ..
        }
    ));
    assert!(err.to_string().contains("one line"));
}

#[test]
fn main_pid_0_and_1_are_refused() {
    assert!(format_message(&[Notification::MainPid(1)]).is_err());
    assert!(format_message(&[Notification::MainPid(0)]).is_err());
}

#[test]
fn addresses_path_abstract_and_unsupported() {
    assert!(parse_notify_address("/run/systemd/notify").is_ok());
    let a = parse_notify_address("@/org/freedesktop/systemd1/notify").unwrap();
    assert_eq!(
        a.abstract_name(),
        Some(&b"/org/freedesktop/systemd1/notify"[..])
    );
    let vsock = parse_notify_address("vsock:2:1234")
        .unwrap_err()
        .to_string();
    assert!(
        vsock.contains("AF_VSOCK") && vsock.contains("not supported"),
        "{vsock}"
    );
    let rel = parse_notify_address("run/notify").unwrap_err().to_string();
    assert!(rel.contains("absolute path"), "{rel}");
    assert!(parse_notify_address("@").is_err());
    assert!(parse_notify_address(&format!("/{}", "x".repeat(200))).is_err());
}

#[test]
fn disabled_notifier_reports_no_manager() {
    let n = Notifier::disabled();
    assert!(!n.is_enabled());
    assert_eq!(n.ready().unwrap(), Delivery::NoManager);
    assert_eq!(
        n.barrier(Duration::from_millis(10)).unwrap(),
        Delivery::NoManager
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        n.store_fds("web", &[l.as_fd()], FdPoll::Watch).unwrap(),
        Delivery::NoManager
    );
    // A bad name is still an error without a manager: it is a bug either way.
    let stored = n.store_fds("a:b", &[l.as_fd()], FdPoll::Watch);
    assert!(
        matches!(&stored, Err(NotifyError::BadFdName { name, .. }) if name == "a:b"),
        "{stored:?}"
    );
    let removed = n.remove_fds("a\nb");
    assert!(
        matches!(&removed, Err(NotifyError::BadFdName { name, .. }) if name == "a\nb"),
        "{removed:?}"
    );
}

#[test]
fn sends_to_a_path_socket() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    assert_eq!(
        n.notify(&[Notification::Ready, Notification::Status("up")])
            .unwrap(),
        Delivery::Sent
    );
    assert_eq!(peer.recv().0, "READY=1\nSTATUS=up\n");
}

#[test]
fn sends_to_an_abstract_socket() {
    let (peer, address) = Peer::abstract_name();
    let n = Notifier::connect(&address).unwrap();
    n.status("abstract").unwrap();
    assert_eq!(peer.recv().0, "STATUS=abstract\n");
}

#[test]
fn store_and_remove_messages() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    n.store_fds("web", &[l.as_fd()], FdPoll::Watch).unwrap();
    let (text, fds) = peer.recv();
    assert_eq!(text, "FDSTORE=1\nFDNAME=web\n");
    assert_eq!(fds.len(), 1);
    let ours = rustix::fs::fstat(&l).unwrap();
    let theirs = rustix::fs::fstat(&fds[0]).unwrap();
    assert_eq!(ours.st_ino, theirs.st_ino, "the same socket arrives");

    n.store_fds("conn", &[l.as_fd()], FdPoll::DoNotWatch)
        .unwrap();
    assert_eq!(peer.recv().0, "FDSTORE=1\nFDNAME=conn\nFDPOLL=0\n");

    n.remove_fds("web").unwrap();
    assert_eq!(peer.recv().0, "FDSTOREREMOVE=1\nFDNAME=web\n");
}

#[test]
fn more_than_253_descriptors_are_split_into_batches() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let files: Vec<std::fs::File> = (0..300)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    n.store_fds("many", &fds, FdPoll::Watch).unwrap();
    let (first, a) = peer.recv();
    let (second, b) = peer.recv();
    assert_eq!(first, "FDSTORE=1\nFDNAME=many\n");
    assert_eq!(second, first);
    assert_eq!((a.len(), b.len()), (253, 47));
    assert!(peer.nothing_pending());
}

#[test]
fn raw_send_refuses_more_than_253() {
    let (_peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let files: Vec<std::fs::File> = (0..254)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    assert!(n.send_raw(b"X=1\n", &fds).is_err());
}

#[test]
fn fd_store_limits_from_the_manager_are_enforced() {
    let (_peer, address) = Peer::at_path();
    let mut n = Notifier::connect(&address).unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let two = [l.as_fd(), l.as_fd()];
    n.fd_store_max = Some(0);
    let err = n.store_fds("web", &two, FdPoll::Watch).unwrap_err();
    assert!(err.to_string().contains("FileDescriptorStoreMax="), "{err}");
    n.fd_store_max = Some(1);
    assert!(matches!(
        n.store_fds("web", &two, FdPoll::Watch).unwrap_err(),
        NotifyError::FdStoreTooSmall { max: 1, offered: 2 }
    ));
}

#[test]
fn main_pid_fd_attaches_the_pidfd_and_names_the_pid() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let me = rustix::process::getpid();
    let pidfd = rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty()).unwrap();
    n.main_pid_fd(me.as_raw_nonzero().get() as u32, pidfd.as_fd())
        .unwrap();
    let (text, fds) = peer.recv();
    let id = rustix::fs::fstat(&pidfd).unwrap().st_ino;
    assert_eq!(
        text,
        format!(
            "MAINPIDFD=1\nMAINPID={}\nMAINPIDFDID={id}\n",
            me.as_raw_nonzero()
        )
    );
    assert_eq!(fds.len(), 1);
}

#[test]
fn barrier_returns_once_the_peer_closes_the_descriptor() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let closer = std::thread::spawn(move || {
        let (text, fds) = peer.recv();
        assert_eq!(text, "BARRIER=1\n");
        assert_eq!(fds.len(), 1);
        std::thread::sleep(Duration::from_millis(50));
        drop(fds);
        peer
    });
    assert_eq!(n.barrier(Duration::from_secs(10)).unwrap(), Delivery::Sent);
    closer.join().unwrap();
}

#[test]
fn barrier_times_out_when_the_peer_holds_the_descriptor() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let holder = std::thread::spawn(move || {
        let (_, fds) = peer.recv();
        std::thread::sleep(Duration::from_millis(500));
        drop(fds);
    });
    let err = n.barrier(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, NotifyError::BarrierTimeout(_)));
    assert!(err.to_string().contains("barrier"));
    holder.join().unwrap();
}

#[test]
fn barrier_data_on_the_descriptor_is_not_the_hang_up() {
    let (peer, address) = Peer::at_path();
    let n = Notifier::connect(&address).unwrap();
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let (_, fds) = peer.recv();
        rustix::io::write(&fds[0], b"x").unwrap();
        // Held until the barrier has given up.
        let _ = wait_done.recv();
        drop(fds);
    });
    let err = n.barrier(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, NotifyError::BarrierTimeout(_)), "{err}");
    done.send(()).unwrap();
    writer.join().unwrap();
}

#[test]
fn sending_to_a_missing_socket_is_an_error() {
    let n = Notifier::connect("/nonexistent/fdstore/notify").unwrap();
    let err = n.ready().unwrap_err();
    assert!(
        err.to_string()
            .contains("sending to the notification socket"),
        "{err}"
    );
}
