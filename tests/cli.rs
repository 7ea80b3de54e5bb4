//! fdstore-exec's command line.

use std::process::Command;

fn fdstore_exec(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fdstore-exec"))
        .args(args)
        .output()
        .expect("running fdstore-exec")
}

#[test]
fn version_names_the_program_and_version() {
    let out = fdstore_exec(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fdstore-exec {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_the_program() {
    let out = fdstore_exec(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("systemctl reload"), "{text}");
    assert!(text.contains("Usage: fdstore-exec"), "{text}");
}

#[test]
fn an_unknown_option_is_a_usage_error() {
    let out = fdstore_exec(&["--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-option"));
}
