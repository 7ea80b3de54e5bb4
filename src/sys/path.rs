//! File operations on a Unix socket's path that never follow a symlink.
//!
//! A socket's directory may be writable by another user, who can replace
//! the socket file by a symlink (or the directory by another) between two
//! path-based calls. So the directory is opened once, everything else is
//! relative to that descriptor, the entry itself is opened `O_PATH |
//! O_NOFOLLOW` and checked to be a socket, and its mode and owner are
//! changed through that descriptor: on the inode that was checked, never on
//! what a symlink points to.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, Stat, CWD};

/// A directory, held open so that a rename or symlink swap of its path
/// changes nothing for operations relative to it.
#[derive(Debug)]
pub(crate) struct Dir(OwnedFd);

/// A directory entry opened without following it (`O_PATH | O_NOFOLLOW`),
/// with what `fstat` said about it when it was opened.
#[derive(Debug)]
pub(crate) struct Entry {
    fd: OwnedFd,
    stat: Stat,
}

impl Dir {
    /// Opens `path` as a directory (`O_PATH | O_DIRECTORY`). Symlinks in
    /// the directory's own path are resolved once, here (`/var/run` is one
    /// on most systems); nothing after this resolves the path again.
    ///
    /// See [`openat(2)`](https://man7.org/linux/man-pages/man2/openat.2.html).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let fd = openat(
            CWD,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir(fd))
    }

    /// Opens the entry `name` without following it: a symlink is opened as
    /// the link itself. `Ok(None)` when there is no such entry.
    pub(crate) fn entry(&self, name: &OsStr) -> io::Result<Option<Entry>> {
        let fd = match openat(
            &self.0,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stat = rustix::fs::fstat(&fd)?;
        Ok(Some(Entry { fd, stat }))
    }

    /// Removes the entry `name` if it is still the inode `entry` was opened
    /// on (same device and inode, checked without following a symlink).
    /// Returns whether it removed it.
    ///
    /// A window remains between the check and `unlinkat(2)`, in which only
    /// someone allowed to rename entries of this directory can act; and
    /// they could remove the entry themselves.
    pub(crate) fn remove_if_same(&self, name: &OsStr, entry: &Entry) -> io::Result<bool> {
        let now = match statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if now.st_dev != entry.stat.st_dev || now.st_ino != entry.stat.st_ino {
            return Ok(false);
        }
        rustix::fs::unlinkat(&self.0, name, AtFlags::empty())?;
        Ok(true)
    }
}

impl Entry {
    /// Whether the entry is a socket (not a symlink, file or directory).
    pub(crate) fn is_socket(&self) -> bool {
        FileType::from_raw_mode(self.stat.st_mode) == FileType::Socket
    }

    /// What the entry is, for error messages.
    pub(crate) fn describe(&self) -> &'static str {
        match FileType::from_raw_mode(self.stat.st_mode) {
            FileType::Socket => "a socket",
            FileType::Symlink => "a symbolic link",
            FileType::RegularFile => "a regular file",
            FileType::Directory => "a directory",
            FileType::Fifo => "a FIFO",
            _ => "a device or other special file",
        }
    }

    /// A path that names exactly this inode, through `/proc/self/fd`: for
    /// `connect(2)` and `chmod(2)`, which have no descriptor-based form that
    /// accepts an `O_PATH` descriptor.
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Sets the mode of this inode (`chmod(2)` through
    /// [`proc_path`](Self::proc_path): `fchmod` refuses `O_PATH`
    /// descriptors, and the kernel's `fchmodat2` is too new to rely on).
    pub(crate) fn set_mode(&self, mode: u32) -> io::Result<()> {
        rustix::fs::chmod(self.proc_path(), Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Sets the owner and group of this inode
    /// ([`fchownat(2)`](https://man7.org/linux/man-pages/man2/fchownat.2.html)
    /// with `AT_EMPTY_PATH`).
    pub(crate) fn set_owner(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        rustix::fs::chownat(
            &self.fd,
            "",
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }
}

impl AsFd for Entry {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Splits an absolute socket path into its directory and last component,
/// as written: `/run/app/api.sock` → (`/run/app`, `api.sock`). `None` when
/// the last component is empty, `.` or `..`.
pub(crate) fn split_socket_path(path: &Path) -> Option<(&Path, &OsStr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let slash = bytes.iter().rposition(|b| *b == b'/')?;
    let name = &bytes[slash + 1..];
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    let dir = if slash == 0 {
        &b"/"[..]
    } else {
        &bytes[..slash]
    };
    Some((Path::new(OsStr::from_bytes(dir)), OsStr::from_bytes(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_last_component_as_written() {
        fn split(p: &str) -> Option<(&Path, &OsStr)> {
            split_socket_path(Path::new(p))
        }
        assert_eq!(
            split("/run/app/api.sock"),
            Some((Path::new("/run/app"), OsStr::new("api.sock")))
        );
        assert_eq!(split("/s"), Some((Path::new("/"), OsStr::new("s"))));
        assert_eq!(split("/a//b"), Some((Path::new("/a/"), OsStr::new("b"))));
        for bad in ["/run/app/", "/run/.", "/run/..", "relative"] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }
}
