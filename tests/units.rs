//! The example units in `units/`: `systemd-analyze verify` accepts them
//! (252 and 254).

mod support;

use std::path::{Path, PathBuf};
use support::Version;

fn fdstore_exec() -> &'static str {
    env!("CARGO_BIN_EXE_fdstore-exec")
}

fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("units")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped unit with the binaries it names pointed at real ones.
fn localized(name: &str, program: &str) -> String {
    shipped(name)
        .replace("/usr/bin/fdstore-exec", fdstore_exec())
        .replace("/usr/bin/app", program)
}

fn verify(version: Version, dir: &Path, unit: &str) -> (bool, String) {
    let out = version
        .tool("systemd-analyze")
        .arg("verify")
        .arg(dir.join(unit))
        .output()
        .expect("running systemd-analyze");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdstore-units-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shipped_units_pass_systemd_analyze_verify(version: Version) {
    let dir = temp_dir(&version.number().to_string());
    let mut names: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("units"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        // A template is verified as an instance.
        let target = name.replace("@.", "@demo.");
        std::fs::write(dir.join(&target), localized(name, "/bin/true")).unwrap();
    }
    for name in &names {
        let target = name.replace("@.", "@demo.");
        let (ok, stderr) = verify(version, &dir, &target);
        if target.contains("notify-reload") && version == Version::V252 {
            // Documented as systemd >= 253: 252 must say why it cannot.
            assert!(stderr.contains("notify-reload"), "{stderr}");
            continue;
        }
        assert!(
            ok && stderr.trim().is_empty(),
            "{target} on {}: {stderr}",
            version.number()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shipped_units_pass_systemd_analyze_verify_252() {
    shipped_units_pass_systemd_analyze_verify(Version::V252);
}

#[test]
fn shipped_units_pass_systemd_analyze_verify_254() {
    shipped_units_pass_systemd_analyze_verify(Version::V254);
}
