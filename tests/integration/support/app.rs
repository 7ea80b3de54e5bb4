//! An `app.service` for fault and hand-over tests: fdstore-exec runs a
//! script that execs the probe, so that a test can put a "new version" in
//! place before a reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::free_port;
use super::{probe, report_lines, wait_for, Systemd};

/// The fdstore-exec binary cargo built for this test.
pub fn fdstore_exec() -> &'static str {
    match option_env!("CARGO_BIN_EXE_fdstore-exec") {
        Some(exe) => exe,
        None => panic!("support::app is for integration tests"),
    }
}

/// The program of the unit: a script, so that a test can put a "new
/// version" in place before a reload.
pub struct App {
    /// The script the unit runs.
    pub script: PathBuf,
    /// The probe's report file.
    pub report: PathBuf,
}

impl App {
    pub fn new(sd: &Systemd) -> App {
        App {
            script: sd.path("app.sh"),
            report: sd.path("report"),
        }
    }

    /// Installs the version that runs the probe with `actions`.
    pub fn version(&self, actions: &str) {
        let text = format!(
            "#!/bin/sh\nexec {} --report {} {actions}\n",
            probe().display(),
            self.report.display()
        );
        let tmp = self.script.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&tmp, &self.script).unwrap();
    }

    /// The pids of the programs started so far, in order.
    pub fn starts(&self) -> Vec<String> {
        report_lines(&self.report, "start pid ")
            .iter()
            .map(|l| l["start pid ".len()..].to_owned())
            .collect()
    }
}

/// A Type=notify unit: fdstore-exec with `options` runs the app script,
/// `fdstore-exec reload` is its ExecReload=.
pub fn unit(app: &App, options: &str, extra: &str) -> String {
    format!(
        "[Service]\nType=notify\nFileDescriptorStoreMax=8\nTimeoutStartSec=20\nKillMode=mixed\n{extra}\
         ExecStart={fe} {options} -- {}\nExecReload={fe} reload\n",
        app.script.display(),
        fe = fdstore_exec(),
    )
}

/// Starts app.service: fdstore-exec with `--listen web=tcp:127.0.0.1:PORT`
/// and `options`, running the probe with `actions`; `extra` goes into
/// `[Service]`.
pub fn start_app(sd: &Systemd, actions: &str, options: &str, extra: &str) -> (u16, App) {
    let port = free_port();
    let app = App::new(sd);
    app.version(actions);
    sd.install(&[(
        "app.service",
        &unit(
            &app,
            &format!("--listen web=tcp:127.0.0.1:{port} {options}"),
            extra,
        ),
    )]);
    sd.ok(&["start", "app.service"]);
    (port, app)
}

pub fn main_pid(sd: &Systemd) -> u32 {
    sd.show("app.service", "MainPID").parse().unwrap()
}

/// `main`, the unit's main process after a reload, once asserted to be a
/// new one (none of `earlier`) and the manager's own child; `what` names the
/// reload in the messages.
pub fn assert_new_main(sd: &Systemd, main: u32, earlier: &[u32], what: &str) -> u32 {
    assert!(!earlier.contains(&main), "{what}: MainPID did not change");
    assert_eq!(
        fdstore::protocol::handover::parent_of(main).map(|p| p as i32),
        Some(sd.manager_pid()),
        "{what}: the new main process {main} must be the manager's own child"
    );
    main
}

pub fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn wait_gone(pid: &str) {
    wait_for(
        &format!("pid {pid} to end"),
        Duration::from_secs(20),
        || (!alive(pid)).then_some(()),
    );
}

/// Runs `fdstore-exec reload --pid PID` (as ExecReload= would).
pub fn reload_command(pid: u32) -> std::process::Output {
    std::process::Command::new(fdstore_exec())
        .args(["reload", "--pid", &pid.to_string()])
        .output()
        .unwrap()
}
