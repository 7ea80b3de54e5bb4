//! A private `systemd --user` manager for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Where `.ci/install-systemd-backports` unpacks systemd 254.
pub const BACKPORTS_DEFAULT: &str = "/opt/fdstore-test/systemd-backports";
/// Where `.ci/install-systemd-newer trixie` unpacks systemd 257.
pub const TRIXIE_DEFAULT: &str = "/opt/fdstore-test/systemd-trixie";
/// Where `.ci/install-systemd-newer sid` unpacks systemd 262.
pub const SID_DEFAULT: &str = "/opt/fdstore-test/systemd-sid";

/// The user units copied from the systemd tree so the manager can boot; no
/// other unit of the machine is visible to it.
const BOOT_UNITS: &[&str] = &[
    "basic.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "shutdown.target",
    "exit.target",
    "systemd-exit.service",
];

/// A systemd version under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Debian 12's installed systemd.
    V252,
    /// bookworm-backports' systemd, unpacked (not installed) by
    /// `.ci/install-systemd-backports`; runs with `LD_LIBRARY_PATH`.
    V254,
    /// Debian 13's (trixie) systemd, unpacked with its own glibc by
    /// `.ci/install-systemd-newer trixie`.
    V257,
    /// Debian sid's systemd, unpacked with its own glibc by
    /// `.ci/install-systemd-newer sid`.
    V262,
}

impl Version {
    /// Every version the suite runs on, oldest first (for the benchmark's
    /// choice; the tests name theirs through `on_each_systemd!`).
    #[cfg(not(test))]
    pub const ALL: [Version; 4] = [Version::V252, Version::V254, Version::V257, Version::V262];

    /// The major version number.
    pub fn number(self) -> u32 {
        match self {
            Version::V252 => 252,
            Version::V254 => 254,
            Version::V257 => 257,
            Version::V262 => 262,
        }
    }

    /// `Type=notify-reload` (253+).
    pub fn has_notify_reload(self) -> bool {
        self.number() >= 253
    }

    /// The root of the tree holding this version's binaries; panics, naming
    /// the command that installs it, when it is missing.
    pub fn root(self) -> PathBuf {
        let (variable, default, install) = match self {
            Version::V252 => return PathBuf::from("/"),
            Version::V254 => (
                "FDSTORE_TEST_SYSTEMD_NEW",
                BACKPORTS_DEFAULT,
                ".ci/install-systemd-backports".to_owned(),
            ),
            Version::V257 => (
                "FDSTORE_TEST_SYSTEMD_TRIXIE",
                TRIXIE_DEFAULT,
                format!(".ci/install-systemd-newer trixie {TRIXIE_DEFAULT}"),
            ),
            Version::V262 => (
                "FDSTORE_TEST_SYSTEMD_SID",
                SID_DEFAULT,
                format!(".ci/install-systemd-newer sid {SID_DEFAULT}"),
            ),
        };
        let root = std::env::var_os(variable)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        assert!(
            root.join("lib/systemd/systemd").exists(),
            "systemd {} is not unpacked in {}: run `{install}` as root \
             (or set {variable} to the folder holding it)",
            self.number(),
            root.display()
        );
        root
    }

    /// `LD_LIBRARY_PATH` for this version's binaries: only 254, which is
    /// built for Debian 12's glibc. 257 and 262 carry their own glibc and
    /// find it without (the manager passes its environment on to services,
    /// which must not see that glibc).
    fn library_path(self) -> Option<String> {
        match self {
            Version::V254 => {
                let root = self.root();
                Some(format!(
                    "{0}/usr/lib/x86_64-linux-gnu/systemd:{0}/usr/lib/x86_64-linux-gnu",
                    root.display()
                ))
            }
            Version::V252 | Version::V257 | Version::V262 => None,
        }
    }

    /// The `systemd-executor` a 255+ manager execs for every service (its
    /// compiled-in path is the machine's, which has none).
    fn executor(self) -> Option<PathBuf> {
        (self.number() >= 255).then(|| self.root().join("usr/lib/systemd/systemd-executor"))
    }

    /// A command running this version's `bin/NAME` (systemctl, journalctl,
    /// systemd-analyze).
    pub fn tool(self, name: &str) -> Command {
        let root = self.root();
        let path = ["bin", "usr/bin"]
            .iter()
            .map(|dir| root.join(dir).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} not found in {}", root.display()));
        let mut command = Command::new(path);
        if let Some(lib) = self.library_path() {
            command.env("LD_LIBRARY_PATH", lib);
        }
        command
    }
}

/// A running private systemd manager; stopped and cleaned up on drop.
pub struct Systemd {
    /// Which version runs.
    pub version: Version,
    work: PathBuf,
    cgroup: PathBuf,
    launcher: Option<Child>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Systemd {
    /// Boots a private manager of `version`, logging at debug level (what a
    /// failing test wants to read); panics (failing the test) when it cannot.
    pub fn start(version: Version) -> Systemd {
        Systemd::start_logging(version, "debug")
    }

    /// Boots a private manager of `version` that logs at `level` (`info` is
    /// what a production manager does; benchmarks use it, since debug
    /// logging costs the manager and journald CPU at every reload).
    pub fn start_logging(version: Version, level: &str) -> Systemd {
        clean_up_crashed_runs();
        let root = version.root();
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let work = PathBuf::from(format!("/tmp/fdst.{}.{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        for dir in ["xdg", "units", "journal", "run"] {
            std::fs::create_dir_all(work.join(dir)).expect("creating the work directory");
        }
        std::fs::set_permissions(
            work.join("xdg"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let user_units = [
            root.join("usr/lib/systemd/user"),
            PathBuf::from("/usr/lib/systemd/user"),
        ]
        .into_iter()
        .find(|d| d.join("basic.target").exists())
        .expect("no systemd user units found");
        for unit in BOOT_UNITS {
            std::fs::copy(user_units.join(unit), work.join("units").join(unit))
                .unwrap_or_else(|e| panic!("copying {unit}: {e}"));
        }
        std::fs::write(
            work.join("units/default.target"),
            "[Unit]\nDescription=Empty default target of the fdstore test manager\n",
        )
        .unwrap();

        let cgroup = new_cgroup(n);
        std::fs::write(work.join("launch.sh"), launch_script(version, &work, level)).unwrap();
        let log = std::fs::File::create(work.join("launch.log")).unwrap();
        let launcher = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec unshare --mount --cgroup --propagation private /bin/sh '{}/launch.sh'",
                cgroup.display(),
                work.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning the manager launcher");
        let mut sd = Systemd {
            version,
            work,
            cgroup,
            launcher: Some(launcher),
        };
        sd.wait_until_running();
        sd
    }

    fn wait_until_running(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.launcher.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the private systemd {} exited during start-up ({status}); launch log:\n{}",
                    self.version.number(),
                    std::fs::read_to_string(self.work.join("launch.log")).unwrap_or_default()
                );
            }
            let out = self.systemctl_output(&["show", "-p", "SystemState", "--value"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the private systemd {} did not reach 'running' (last: {state:?}, {}); launch log:\n{}",
                    self.version.number(),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(self.work.join("launch.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The test's work directory (for report files, sockets, configuration).
    pub fn dir(&self) -> &Path {
        &self.work
    }

    /// A path in the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join("run").join(name)
    }

    /// The pid of the manager process (as this process sees it).
    pub fn manager_pid(&self) -> i32 {
        self.find_manager_pid()
            .expect("no manager process in the cgroup's init.scope")
    }

    /// A unit's cgroup directory (from its `ControlGroup`, which the
    /// manager reports relative to its own cgroup namespace).
    pub fn unit_cgroup(&self, unit: &str) -> PathBuf {
        let group = self.show(unit, "ControlGroup");
        self.cgroup.join(group.trim_start_matches('/'))
    }

    /// The pids in a unit's cgroup (its `ControlGroup`, which the manager
    /// reports relative to its own cgroup namespace).
    pub fn unit_processes(&self, unit: &str) -> Vec<u32> {
        let dir = self.unit_cgroup(unit);
        cgroup_processes(&dir)
            .unwrap_or_else(|e| panic!("reading {}/cgroup.procs: {e}", dir.display()))
    }

    fn find_manager_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.cgroup.join("init.scope/cgroup.procs"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends a signal to the manager process (SIGSTOP freezes it).
    pub fn signal_manager(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.manager_pid()).unwrap();
        rustix::process::kill_process(pid, signal).expect("signalling the manager");
    }

    /// The manager's `XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.work.join("xdg")
    }

    /// Writes unit files and reloads the manager's configuration.
    pub fn install(&self, units: &[(&str, &str)]) {
        for (name, text) in units {
            std::fs::write(self.work.join("units").join(name), text)
                .unwrap_or_else(|e| panic!("writing {name}: {e}"));
        }
        self.ok(&["daemon-reload"]);
    }

    /// A `systemctl --user` command aimed at this manager.
    pub fn systemctl_command(&self) -> Command {
        let mut command = self.version.tool("systemctl");
        command
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .arg("--user")
            .arg("--no-pager");
        command
    }

    fn systemctl_output(&self, args: &[&str]) -> Output {
        let mut command = self.systemctl_command();
        command.args(args);
        run_with_timeout(command, Duration::from_secs(90))
    }

    /// Runs `systemctl --user ARGS` and returns its output, whatever the exit
    /// status.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.systemctl_output(args)
    }

    /// Runs `systemctl --user ARGS`, which must succeed, and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.systemctl_output(args);
        if !out.status.success() {
            panic!(
                "systemctl --user {} failed ({}):\n{}\n--- journal ---\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.journal_tail(60)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One property of a unit (`systemctl show -p PROP --value UNIT`).
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&["show", "-p", property, "--value", unit])
            .trim()
            .to_owned()
    }

    /// Waits until `property` of `unit` has `value`.
    pub fn wait_for_property(&self, unit: &str, property: &str, value: &str) {
        super::wait_for(
            &format!("{unit} {property}={value}"),
            Duration::from_secs(20),
            || (self.show(unit, property) == value).then_some(()),
        )
    }

    /// The whole journal of this manager and its services.
    pub fn journal(&self) -> String {
        let mut command = self.version.tool("journalctl");
        command.arg("-D").arg(self.work.join("journal")).args([
            "--no-pager",
            "-o",
            "short-monotonic",
            "--no-hostname",
        ]);
        let out = run_with_timeout(command, Duration::from_secs(30));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last `lines` lines of the journal, without the manager's D-Bus
    /// chatter.
    pub fn journal_tail(&self, lines: usize) -> String {
        let journal = self.journal();
        let all: Vec<&str> = journal
            .lines()
            .filter(|l| {
                ![
                    "Sent message type=",
                    "Got message type=",
                    "Registering bus object",
                    "Bus private-bus",
                ]
                .iter()
                .any(|noise| l.contains(noise))
            })
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the journal has a line containing `needle`.
    pub fn wait_for_journal(&self, needle: &str) -> String {
        super::wait_for(
            &format!("{needle:?} in the journal"),
            Duration::from_secs(20),
            || {
                self.journal()
                    .lines()
                    .find(|l| l.contains(needle))
                    .map(str::to_owned)
            },
        )
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- journal of the private systemd {} ({}) ---\n{}",
                self.version.number(),
                self.work.display(),
                self.journal_tail(80)
            );
        }
        if let Some(mut launcher) = self.launcher.take() {
            // A test may have frozen the manager (SIGSTOP) before it failed.
            if let Some(manager) = self.find_manager_pid() {
                if let Some(manager) = rustix::process::Pid::from_raw(manager) {
                    let _ = rustix::process::kill_process(manager, rustix::process::Signal::CONT);
                }
            }
            let pid = rustix::process::Pid::from_child(&launcher);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while launcher.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = launcher.kill();
            let _ = launcher.wait();
        }
        remove_cgroup(&self.cgroup);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// The pids in a cgroup directory's `cgroup.procs`, without asking the
/// manager (a `systemctl show` starts a process and a D-Bus call).
pub fn cgroup_processes(dir: &Path) -> std::io::Result<Vec<u32>> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    procs
        .lines()
        .map(|l| {
            l.trim().parse().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{l:?}: {e}"))
            })
        })
        .collect()
}

/// Runs a command, killing it if it takes longer than `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let shown = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(timeout).is_err() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = waiter.join();
        panic!("{shown} did not finish within {timeout:?}");
    }
    waiter.join().unwrap().unwrap()
}

/// The shell script that runs inside the private namespaces: file systems,
/// journald, the manager, and a clean stop on SIGTERM.
fn launch_script(version: Version, work: &Path, log_level: &str) -> String {
    let root = version.root();
    let root = root.display();
    let w = work.display();
    let lib = version
        .library_path()
        .map(|l| format!("LD_LIBRARY_PATH={l}"))
        .unwrap_or_default();
    let executor = version
        .executor()
        .map(|e| format!("SYSTEMD_EXECUTOR_PATH={}", e.display()))
        .unwrap_or_default();
    // `systemctl daemon-reexec` execs the compiled-in /usr/lib/systemd/systemd,
    // which is the machine's 252: in this mount namespace, it is this version.
    let reexec = if version == Version::V252 {
        String::new()
    } else {
        format!("mount --bind '{root}/lib/systemd/systemd' /usr/lib/systemd/systemd")
    };
    format!(
        r#"set -e
# One tmpfs on /run, as at boot (separate tmpfs mounts on /run/systemd and
# friends get lost in the mount namespaces systemd builds for sandboxed
# units, which then cannot reach the journal or the notification socket).
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/user /run/lock /run/systemd/system /run/systemd/journal /run/log/journal
# What PID 1 provides for ProtectHome=, InaccessiblePaths= and friends.
mkdir -p /run/systemd/inaccessible
# The manager's runtime directory (hence NOTIFY_SOCKET) where the units'
# sandboxing does not hide it (PrivateTmp= hides /tmp, ProtectHome=
# /run/user); systemctl outside the namespace reaches it as {w}/xdg.
mkdir -m 0700 /run/systemd/fdst-runtime
mount --bind '{w}/xdg' /run/systemd/fdst-runtime
mkdir -m 0000 /run/systemd/inaccessible/dir
: > /run/systemd/inaccessible/reg && chmod 0000 /run/systemd/inaccessible/reg
mkfifo -m 0000 /run/systemd/inaccessible/fifo
mknod -m 0000 /run/systemd/inaccessible/chr c 0 0
mknod -m 0000 /run/systemd/inaccessible/blk b 0 0
mount --bind '{w}/journal' /run/log/journal
mount -t cgroup2 cgroup2 /sys/fs/cgroup
{reexec}
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin {lib} '{root}/lib/systemd/systemd-journald' &
journald=$!
i=0
while [ ! -S /run/systemd/journal/socket ]; do
    i=$((i+1)); [ $i -lt 1000 ] || {{ echo 'journald did not start' >&2; exit 1; }}
    sleep 0.01
done
env -i XDG_RUNTIME_DIR=/run/systemd/fdst-runtime SYSTEMD_UNIT_PATH='{w}/units' HOME=/root \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin {lib} {executor} \
    '{root}/lib/systemd/systemd' --user --log-target=journal --log-level={log_level} &
manager=$!
trap 'kill -TERM $manager; wait $manager || true; kill -TERM $journald; wait $journald || true; exit 0' TERM
set +e
wait $manager
echo "manager exited: $?" >&2
kill -TERM $journald
wait $journald
exit 1
"#
    )
}

/// The cgroup2 mount point and this process's cgroup in it.
fn cgroup_parent() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| f[1].to_owned())
        })
        .min_by_key(|p| p.len())
        .expect("no cgroup2 file system is mounted; the tests need one");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup2 entry in /proc/self/cgroup");
    PathBuf::from(root).join(own.trim_start_matches('/'))
}

/// A fresh child cgroup for one manager. Never the root cgroup: systemd would
/// move every process of the machine.
fn new_cgroup(n: u32) -> PathBuf {
    let parent = cgroup_parent();
    let cgroup = parent.join(format!("fdst-{}-{n}", std::process::id()));
    let _ = std::fs::create_dir(&cgroup);
    assert!(
        cgroup.join("cgroup.procs").exists(),
        "could not create the cgroup {} (the tests need root and a writable cgroup2 tree)",
        cgroup.display()
    );
    cgroup
}

/// Kills what is left in a cgroup and removes it with its children.
fn remove_cgroup(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if events.contains("populated 0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut dirs = Vec::new();
    collect_dirs(cgroup, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let _ = std::fs::remove_dir(&dir);
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Removes the cgroups of earlier test processes that died without cleaning
/// up (`fdst-PID-N` whose PID is gone).
fn clean_up_crashed_runs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let parent = cgroup_parent();
        let Ok(entries) = std::fs::read_dir(&parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("fdst-") else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                remove_cgroup(&entry.path());
            }
        }
    });
}
