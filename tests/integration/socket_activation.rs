//! Socket units' descriptors reach the library under their names and kinds.

use crate::support::{free_port, probe, wait_for_line, Systemd};
use std::io::{BufRead, BufReader};

fn named_sockets_are_received_by_name_and_kind(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    let dgram = sd.path("log.sock");
    let probe = probe();
    sd.install(&[
        (
            "web.socket",
            &format!(
                "[Socket]\nListenStream=127.0.0.1:{port}\nListenStream=[::1]:{port}\n\
                 FileDescriptorName=web\nService=probe.service\n"
            ),
        ),
        (
            "log.socket",
            &format!(
                "[Socket]\nListenDatagram={}\nFileDescriptorName=log\nService=probe.service\n",
                dgram.display()
            ),
        ),
        (
            "probe.service",
            &format!(
                "[Service]\nType=notify\nSockets=web.socket log.socket\nTimeoutStartSec=20\n\
                 ExecStart={} --report {} receive serve web ready\n",
                probe.display(),
                report.display()
            ),
        ),
    ]);
    sd.ok(&["start", "web.socket", "log.socket"]);
    sd.ok(&["start", "probe.service"]);

    let text = std::fs::read_to_string(&report).unwrap();
    let fds: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("fd "))
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(fds.len(), 3, "three descriptors expected:\n{text}");
    let mut seen: Vec<(&str, &str)> = fds.iter().map(|f| (f[1], f[3])).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("log", "unix-datagram"),
            ("web", "tcp-listener"),
            ("web", "tcp-listener")
        ],
        "{text}"
    );
    let mut numbers: Vec<i32> = fds.iter().map(|f| f[2].parse().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, [3, 4, 5], "descriptors start at 3:\n{text}");

    // Both listeners under the one name really are the socket unit's: the
    // service answers on both addresses.
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let stream = std::net::TcpStream::connect(&addr).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        let pid = sd.show("probe.service", "MainPID");
        assert_eq!(line.trim(), format!("pid {pid}"), "answer on {addr}");
    }
    wait_for_line(&report, "readiness", |l| l == "ready");
}

fn unnamed_socket_is_called_after_its_unit(sd: &Systemd) {
    let port = free_port();
    let report = sd.path("report");
    sd.install(&[
        (
            "plain.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{port}\n"),
        ),
        (
            "plain.service",
            &format!(
                "[Service]\nType=notify\nTimeoutStartSec=20\nExecStart={} --report {} receive ready\n",
                probe().display(),
                report.display()
            ),
        ),
    ]);
    sd.ok(&["start", "plain.socket"]);
    sd.ok(&["start", "plain.service"]);
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("fd plain.socket 3 tcp-listener")),
        "{text}"
    );
}

fn nothing_the_library_opens_leaks_into_children(sd: &Systemd) {
    let port = free_port();
    let store_port = free_port();
    let report = sd.path("report");
    sd.install(&[
        (
            "leak.socket",
            &format!("[Socket]\nListenStream=127.0.0.1:{port}\nFileDescriptorName=web\n"),
        ),
        (
            "leak.service",
            &format!(
                "[Service]\nType=notify\nFileDescriptorStoreMax=4\nTimeoutStartSec=20\n\
                 ExecStart={} --report {} receive bind-or-store \
                 extra=tcp:127.0.0.1:{store_port} barrier 5000 status x \
                 run /bin/ls /proc/self/fd end-run ready\n",
                probe().display(),
                report.display()
            ),
        ),
    ]);
    sd.ok(&["start", "leak.socket"]);
    sd.ok(&["start", "leak.service"]);
    // The received listener, the created one, the notification socket and
    // the barrier pipe are all close-on-exec: `ls` sees stdio and the one
    // directory it opened itself.
    let seen = wait_for_line(&report, "the child's descriptors", |l| {
        l.starts_with("run-output")
    });
    let fds: Vec<&str> = seen["run-output ".len()..].split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{seen}");
}

on_each_systemd!(
    nothing_the_library_opens_leaks_into_children,
    named_sockets_are_received_by_name_and_kind,
    unnamed_socket_is_called_after_its_unit,
);
