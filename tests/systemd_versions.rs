//! The harness runs the version it claims, and what differs between the
//! versions under test.

mod support;

use support::{Systemd, Version};

/// The manager's own `Version` property names the version asked for, its
/// services see neither `LD_LIBRARY_PATH` nor the unpacked tree's glibc (a
/// plain program of this machine runs), and `systemctl daemon-reexec`
/// re-executes the same version, not the machine's 252.
fn the_manager_is_the_version_asked_for(sd: &Systemd) {
    let expected = format!("{}", sd.version.number());
    let version = sd.ok(&["show", "-p", "Version", "--value"]);
    assert!(
        version.trim().starts_with(&expected),
        "asked for systemd {expected}, the manager says {version:?}"
    );
    let env = sd.path("env");
    sd.install(&[(
        "env.service",
        &format!(
            "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'env > {}'\n",
            env.display()
        ),
    )]);
    sd.ok(&["start", "env.service"]);
    let seen = std::fs::read_to_string(&env).unwrap();
    if sd.version != Version::V254 {
        assert!(!seen.contains("LD_LIBRARY_PATH="), "{seen}");
    }
    let manager = sd.manager_pid();
    sd.ok(&["daemon-reexec"]);
    support::wait_for(
        "the re-executed manager to run",
        std::time::Duration::from_secs(20),
        || {
            let out = sd.systemctl(&["show", "-p", "SystemState", "--value"]);
            (String::from_utf8_lossy(&out.stdout).trim() == "running").then_some(())
        },
    );
    assert_eq!(sd.manager_pid(), manager, "daemon-reexec keeps the pid");
    let version = sd.ok(&["show", "-p", "Version", "--value"]);
    assert!(
        version.trim().starts_with(&expected),
        "after daemon-reexec systemd {expected} became {version:?}"
    );
    std::fs::remove_file(&env).unwrap();
    sd.ok(&["start", "env.service"]);
    assert!(env.exists(), "a service starts after daemon-reexec");
}

on_each_systemd!(the_manager_is_the_version_asked_for);
