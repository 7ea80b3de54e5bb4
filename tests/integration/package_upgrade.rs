//! A package of a service that uses fdstore upgrades from version 1 to 2
//! while it serves traffic, and loses no request.
//!
//! Needs the fdstore package installed (`/usr/bin/fdstore-exec`), root,
//! dpkg-buildpackage and debhelper, so it is ignored by a plain `cargo test`
//! and run by `tests/package` after it installed the package:
//!
//! ```text
//! cargo test --test integration -- --ignored package_upgrade::
//! ```
//!
//! The package is `tests/hello-package`, built twice. Its maintainer scripts
//! are the real ones (debhelper's, plus the reload in postinst) and run by
//! dpkg inside the private manager's mount namespace, where
//! `/run/systemd/system` exists; `systemctl` there is a shim that turns
//! `--system` into `--user` and logs every call, so that they reach the
//! private manager (offline calls with `--root=` run unchanged).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::load::{Load, Mode};
use crate::support::{free_port, Systemd, Version};

const UNIT: &str = "fdstore-hello.service";

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Builds version `version` of fdstore-hello listening on `port`; returns the
/// .deb.
fn build_package(work: &Path, version: u32, port: u16) -> PathBuf {
    let source = work.join(format!("v{version}")).join("fdstore-hello");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hello-package"),
        &source,
    );
    std::fs::copy(
        crate::support::example("hello_http"),
        source.join("fdstore-hello"),
    )
    .unwrap();
    std::fs::write(
        source.join("greeting"),
        format!("hello from package version {version}\n"),
    )
    .unwrap();
    let unit = source.join("debian").join(UNIT);
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, text.replace("@PORT@", &port.to_string())).unwrap();
    std::fs::write(
        source.join("debian/changelog"),
        format!(
            "fdstore-hello ({version}) unstable; urgency=medium\n\n  * Version {version}.\n\n \
             -- fdstore developers <fdstore-dev@lists.example.org>  Tue, 24 Nov 2026 12:00:00 +0000\n"
        ),
    )
    .unwrap();
    run(Command::new("dpkg-buildpackage")
        .args(["-us", "-uc", "-b"])
        .current_dir(&source));
    let deb = source
        .parent()
        .unwrap()
        .join(format!("fdstore-hello_{version}_{}.deb", arch()));
    assert!(deb.exists(), "{} was not built", deb.display());
    deb
}

fn arch() -> String {
    run(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned()
}

/// A `systemctl` that talks to the private manager and logs its arguments.
fn systemctl_shim(work: &Path, sd: &Systemd) -> (PathBuf, PathBuf) {
    let dir = work.join("shim");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.join("systemctl.log");
    // Debian 12's own systemctl, for Debian 12's own manager (252).
    assert_eq!(sd.version, Version::V252);
    let real = Path::new("/bin/systemctl");
    let script = format!(
        "#!/bin/sh\n\
         echo \"$*\" >> '{log}'\n\
         case \" $* \" in *' --root='*) exec '{real}' \"$@\";; esac\n\
         args=\n\
         for a in \"$@\"; do [ \"$a\" = --system ] || args=\"$args '$a'\"; done\n\
         eval exec env XDG_RUNTIME_DIR='{xdg}' '{real}' --user $args\n",
        log = log.display(),
        xdg = sd.runtime_dir().display(),
        real = real.display(),
    );
    let shim = dir.join("systemctl");
    std::fs::write(&shim, script).unwrap();
    run(Command::new("chmod").arg("0755").arg(&shim));
    (dir, log)
}

/// Lets maintainer scripts start and reload services in the manager's mount
/// namespace: container images ship a `/usr/sbin/policy-rc.d` that forbids
/// it (exit 101), which a real host does not have.
fn allow_service_actions(sd: &Systemd, work: &Path) {
    if !Path::new("/usr/sbin/policy-rc.d").exists() {
        return;
    }
    let allow = work.join("policy-rc.d");
    std::fs::write(&allow, "#!/bin/sh\nexit 0\n").unwrap();
    run(Command::new("chmod").arg("0755").arg(&allow));
    run(Command::new("nsenter")
        .arg(format!("--target={}", sd.manager_pid()))
        .args(["--mount", "--", "mount", "--bind"])
        .arg(&allow)
        .arg("/usr/sbin/policy-rc.d"));
}

/// `dpkg ARGS` inside the manager's mount namespace, with the shim first on
/// PATH.
fn dpkg_in_namespace(sd: &Systemd, shim: &Path, args: &[&str]) -> String {
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", shim.display());
    run(Command::new("nsenter")
        .arg(format!("--target={}", sd.manager_pid()))
        .arg("--mount")
        .arg("--")
        .arg("env")
        .arg(format!("PATH={path}"))
        .arg("dpkg")
        .args(args))
}

/// Purges the test package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        // Outside the namespace /run/systemd/system does not exist, so the
        // maintainer scripts leave the (private, soon gone) manager alone.
        let _ = Command::new("dpkg")
            .args(["--purge", "fdstore-hello"])
            .output();
    }
}

#[test]
#[ignore = "needs the fdstore package installed: run by tests/package"]
fn package_upgrade_under_traffic_hands_over_and_loses_nothing() {
    assert!(
        Path::new("/usr/bin/fdstore-exec").exists(),
        "the fdstore package is not installed; run bash tests/package"
    );
    let sd = Systemd::start(Version::V252);
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hello-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let port = free_port();
    let v1 = build_package(&work, 1, port);
    let v2 = build_package(&work, 2, port);
    let (shim, log) = systemctl_shim(&work, &sd);
    allow_service_actions(&sd, &work);
    let _purge = Purge;

    dpkg_in_namespace(&sd, &shim, &["--install", v1.to_str().unwrap()]);
    let unit = std::fs::read_to_string(format!("/lib/systemd/system/{UNIT}")).unwrap();
    sd.install(&[(UNIT, &unit)]);
    sd.ok(&["start", UNIT]);
    let first_main = sd.show(UNIT, "MainPID");
    let invocation = sd.show(UNIT, "InvocationID");
    std::fs::write(&log, "").unwrap();

    let loads = [
        Load::start(port, Mode::NewConnection, 2),
        Load::start(port, Mode::KeepAlive, 2),
    ];
    std::thread::sleep(Duration::from_millis(300));
    let output = dpkg_in_namespace(&sd, &shim, &["--install", v2.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let reports: Vec<_> = loads.into_iter().map(Load::stop).collect();

    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(
        calls.contains(&format!("try-reload-or-restart {UNIT}")),
        "postinst did not reload; systemctl calls:\n{calls}\ndpkg:\n{output}"
    );
    assert!(
        !calls
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == "stop" || w == "restart")),
        "the upgrade stopped or restarted the service:\n{calls}"
    );
    assert_ne!(
        sd.show(UNIT, "MainPID"),
        first_main,
        "no hand-over happened"
    );
    assert_eq!(
        sd.show(UNIT, "InvocationID"),
        invocation,
        "the unit was restarted instead of reloaded"
    );
    for report in reports {
        assert_eq!(
            report.failed(),
            0,
            "failed requests during the upgrade: {:?}, e.g. {:?}\n{}",
            report.failures,
            report.examples,
            sd.journal_tail(60)
        );
        assert!(
            report
                .bodies
                .iter()
                .any(|b| b.starts_with("hello from package version 2")),
            "version 2 never answered: {:?}",
            report.bodies
        );
    }
    sd.ok(&["stop", UNIT]);
    let _ = std::fs::remove_dir_all(&work);
}
