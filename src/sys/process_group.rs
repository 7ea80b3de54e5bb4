//! A program's process group: every process it started, also those whose
//! parent exited (they are re-parented to the service manager, out of any
//! walk of the program's children, but keep their process group).
//!
//! See [`setpgid(2)`](https://man7.org/linux/man-pages/man2/setpgid.2.html),
//! [`kill(2)`](https://man7.org/linux/man-pages/man2/kill.2.html) and
//! [`proc(5)`](https://man7.org/linux/man-pages/man5/proc.5.html)
//! (`/proc/PID/stat`, read by [`super::proc::stat`]).

use std::io;

/// At most this many members are listed (a fork bomb cannot make the list
/// unbounded; killing the group does not depend on it).
pub(crate) const MAX_LISTED: usize = 4096;

/// One process of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`, at most 15 bytes).
    pub command: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.pid, self.command)
    }
}

/// The live (not zombie) processes in process group `pgid`, found by
/// asking each process in `/proc` for its group (`getpgid`, one system
/// call) and reading `/proc/PID/stat` of the members only; at most
/// [`MAX_LISTED`]. A drain looks for survivors every time its program or
/// one of their processes ends, and a machine has thousands of processes:
/// reading every `/proc/PID/stat` made that cost grow with the machine.
pub(crate) fn members(pgid: u32) -> Vec<Member> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if super::proc::group_of(pid) != Some(pgid) {
            continue;
        }
        match super::proc::stat(pid) {
            Some(stat) if stat.pgrp == pgid && !stat.is_dead() => {
                out.push(Member {
                    pid,
                    command: stat.command,
                });
                if out.len() >= MAX_LISTED {
                    break;
                }
            }
            _ => {}
        }
    }
    out
}

/// Sends SIGKILL to every process in group `pgid` (`kill(-pgid, SIGKILL)`).
/// A group with no member left is not an error.
pub(crate) fn kill(pgid: u32) -> io::Result<()> {
    match signal(pgid, rustix::process::Signal::KILL) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// Sends `signal` to every process in group `pgid` (`kill(-pgid, SIG)`);
/// `ESRCH` when the group has no member left.
pub(crate) fn signal(pgid: u32, signal: rustix::process::Signal) -> io::Result<()> {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    Ok(rustix::process::kill_process_group(pid, signal)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn an_orphaned_grandchild_stays_a_member_until_the_group_is_killed() {
        // The shell starts a sleep in the background and exits: the sleep is
        // re-parented, but stays in the group.
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 >/dev/null & echo $!"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = shell.id();
        let mut out = String::new();
        std::io::Read::read_to_string(shell.stdout.as_mut().unwrap(), &mut out).unwrap();
        shell.wait().unwrap();
        let sleep: u32 = out.trim().parse().unwrap();
        let found = members(pgid);
        assert!(
            found.iter().any(|m| m.pid == sleep && m.command == "sleep"),
            "{found:?}"
        );
        kill(pgid).unwrap();
        let gone = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            members(pgid).is_empty()
        });
        assert!(gone, "{:?}", members(pgid));
        // Killing an empty group is fine.
        kill(pgid).unwrap();
    }
}
