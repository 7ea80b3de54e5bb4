//! Processes as `/proc` shows them: a process's status line, a process
//! tree, whether a process holds a given socket, and what its `epoll` sets
//! wait for. The one reader of `/proc/PID/stat` (process groups, parents).
//!
//! See [`proc(5)`](https://man7.org/linux/man-pages/man5/proc.5.html)
//! (`/proc/PID/stat`, `/proc/PID/task/TID/children`, `/proc/PID/fd`,
//! `/proc/PID/fdinfo`).

use std::io;

/// At most this many processes are looked at in one tree, so that a fork
/// bomb cannot make a walk unbounded.
pub(crate) const MAX_TREE: usize = 4096;

/// The fields of `/proc/PID/stat` fdstore uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The command name (at most 15 bytes).
    pub(crate) command: String,
    /// The state letter (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// The parent's pid.
    pub(crate) ppid: u32,
    /// The process group.
    pub(crate) pgrp: u32,
}

impl Stat {
    /// Parses a `/proc/PID/stat` line. The command name is in parentheses
    /// and may itself contain them.
    pub(crate) fn parse(line: &str) -> Option<Stat> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let command = line.get(open + 1..close)?.to_owned();
        let mut fields = line.get(close + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(Stat {
            command,
            state,
            ppid,
            pgrp,
        })
    }

    /// Whether the process is gone but not reaped (zombie) or dead.
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// The status of process `pid`, if it exists.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The process group of process `pid` (`getpgid`), if it exists; 0 for
/// a kernel thread. (Not rustix's `getpgid`, whose result may not be 0.)
pub(crate) fn group_of(pid: u32) -> Option<u32> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    let group = nix::unistd::getpgid(Some(pid)).ok()?;
    u32::try_from(group.as_raw()).ok()
}

/// The direct children of `pid` (of all its threads).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        out.extend(
            text.split_whitespace()
                .filter_map(|w| w.parse::<u32>().ok()),
        );
    }
    out
}

/// `pid` and all its descendants (at most [`MAX_TREE`]), parents first.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut next = 0;
    while next < out.len() && out.len() < MAX_TREE {
        let parent = out[next];
        next += 1;
        for child in children(parent) {
            if out.len() < MAX_TREE && !out.contains(&child) {
                out.push(child);
            }
        }
    }
    out
}

/// Whether process `pid` has the socket with inode `inode` open. A process
/// that is gone holds nothing; one whose descriptors may not be read is an
/// error (`EACCES`).
pub(crate) fn holds_socket(pid: u32, inode: u64) -> io::Result<bool> {
    let wanted = format!("socket:[{inode}]");
    let entries = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.as_os_str() == wanted.as_str() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether every thread of every process of `pids` is stopped (state `T`,
/// or `t` under a tracer) or gone, from `/proc/PID/task/TID/stat`.
pub(crate) fn all_stopped(pids: &[u32]) -> bool {
    pids.iter().all(|pid| {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true;
        };
        tasks.flatten().all(|task| {
            match std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|line| Stat::parse(&line))
            {
                Some(stat) => matches!(stat.state, 'T' | 't') || stat.is_dead(),
                None => true,
            }
        })
    })
}

/// The most of one `/proc/PID/fdinfo/FD` that is read: an `epoll` set
/// lists each descriptor it watches on a line of about 80 bytes, so this is
/// room for some 10,000.
const FDINFO_MAX: u64 = 1 << 20;

/// Adds to `inodes` the inode numbers of the files that process `pid`
/// watches with `EPOLLEXCLUSIVE` in its `epoll` sets: the `tfd:` lines of
/// `/proc/PID/fdinfo/FD` for each of its `anon_inode:[eventpoll]`
/// descriptors, whose `events:` mask has the flag (both in hexadecimal).
/// A process that is gone watches nothing; one whose descriptors may not be
/// read is an error (`EACCES`).
pub(crate) fn exclusive_epoll_targets(
    pid: u32,
    inodes: &mut std::collections::HashSet<u64>,
) -> io::Result<()> {
    use std::io::Read;
    let entries = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:[eventpoll]" {
            continue;
        }
        let path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let mut text = String::new();
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        if file.take(FDINFO_MAX).read_to_string(&mut text).is_err() {
            continue;
        }
        inodes.extend(text.lines().filter_map(exclusive_target));
    }
    Ok(())
}

/// The inode of an `epoll` fdinfo line `tfd: 5 events: 10000019 data: ...
/// pos:0 ino:61af sdev:8` whose mask has `EPOLLEXCLUSIVE`.
fn exclusive_target(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    if words.next()? != "tfd:" {
        return None;
    }
    let mut events = None;
    let mut inode = None;
    while let Some(word) = words.next() {
        if word == "events:" {
            events = u32::from_str_radix(words.next()?, 16).ok();
        } else if let Some(hex) = word.strip_prefix("ino:") {
            inode = u64::from_str_radix(hex, 16).ok();
        }
    }
    let exclusive = libc::EPOLLEXCLUSIVE as u32;
    (events? & exclusive != 0).then_some(inode?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_stopped_process_is_seen_stopped_and_a_running_one_is_not() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!all_stopped(&[pid]));
        let target = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let seen = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            all_stopped(&[pid])
        });
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        assert!(seen, "the stop was never seen");
        assert!(all_stopped(&[pid]), "a reaped process is gone");
        assert!(!all_stopped(&[std::process::id()]));
    }

    #[test]
    fn epoll_lines_name_exclusive_targets_only() {
        assert_eq!(
            exclusive_target(
                "tfd:        5 events: 10000019 data:                5  pos:0 ino:61af sdev:8"
            ),
            Some(0x61af)
        );
        assert_eq!(
            exclusive_target(
                "tfd:        5 events:       19 data:                5  pos:0 ino:61af sdev:8"
            ),
            None
        );
        assert_eq!(exclusive_target("pos:\t0"), None);
        assert_eq!(exclusive_target("tfd: 5 events: zz ino:1"), None);
        assert_eq!(exclusive_target("tfd: 5 events: 10000001"), None);
    }

    #[test]
    fn finds_a_listener_it_waits_for_exclusively() {
        use rustix::event::epoll;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = |l: &std::net::TcpListener| rustix::fs::fstat(l).unwrap().st_ino;
        let set = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let data = epoll::EventData::new_u64(0);
        epoll::add(
            &set,
            &listener,
            data,
            epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE,
        )
        .unwrap();
        epoll::add(&set, &other, data, epoll::EventFlags::IN).unwrap();
        let mut found = std::collections::HashSet::new();
        exclusive_epoll_targets(std::process::id(), &mut found).unwrap();
        assert!(found.contains(&ino(&listener)), "{found:?}");
        assert!(!found.contains(&ino(&other)), "{found:?}");
        let mut none = std::collections::HashSet::new();
        exclusive_epoll_targets(u32::MAX - 1, &mut none).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let s = Stat::parse("42 (a) b)) S 1 42 42 0 -1").unwrap();
        assert_eq!(
            (s.command.as_str(), s.state, s.ppid, s.pgrp),
            ("a) b)", 'S', 1, 42)
        );
        let z = Stat::parse("7 (x) Z 1 9 9").unwrap();
        assert!(z.is_dead() && !s.is_dead());
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("7 (x) S one 9"), None);
        let me = stat(std::process::id()).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(group_of(std::process::id()), Some(me.pgrp));
        assert_eq!(group_of(u32::MAX - 1), None);
    }

    #[test]
    fn a_tree_holds_children_and_grandchildren() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let found = (0..200).find_map(|_| {
            let t = tree(pid);
            if t.len() == 2 {
                return Some(t);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            None
        });
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let t = found.expect("the shell and its sleep in the tree");
        assert_eq!(t[0], pid);
        assert!(tree(std::process::id()).contains(&std::process::id()));
    }

    #[test]
    fn finds_a_socket_of_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = std::fs::File::from(
            std::os::fd::AsFd::as_fd(&listener)
                .try_clone_to_owned()
                .unwrap(),
        )
        .metadata()
        .unwrap()
        .ino();
        assert!(holds_socket(std::process::id(), ino).unwrap());
        assert!(!holds_socket(std::process::id(), u64::MAX).unwrap());
        assert!(!holds_socket(u32::MAX - 1, ino).unwrap());
    }
}
