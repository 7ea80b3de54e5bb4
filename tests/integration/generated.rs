//! Files generated from `fdstore-exec`'s clap definitions and checked in:
//! the manual pages `man/fdstore-exec*.1` (clap_mangen) and the shell
//! completions under `completions/` (clap_complete).
//!
//! `cargo test --test integration generated::` fails when a checked-in file
//! differs from what the current command line generates; regenerate them with
//!
//! ```text
//! FDSTORE_REGENERATE=1 cargo test --test integration generated::
//! ```
//!
//! It also renders every page under `man/` with mandoc and groff and fails on
//! any warning.

#[path = "../../src/bin/fdstore-exec/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// The date printed in the pages' footer. Change it when the pages' content
/// changes in a release (a fixed value keeps the check reproducible).
const MANUAL_DATE: &str = "2026-11-24";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn command() -> clap::Command {
    cli::Cli::command()
}

fn man(command: clap::Command) -> Man {
    Man::new(command)
        .date(MANUAL_DATE)
        .source(format!("fdstore {}", env!("CARGO_PKG_VERSION")))
        .manual("fdstore manual")
}

/// A roff section: a heading, then paragraphs of (term, text) pairs or plain
/// paragraphs.
struct Section {
    roff: Roff,
    /// Nothing written since the heading (where `.PP` is redundant).
    fresh: bool,
}

impl Section {
    fn new(title: &str) -> Section {
        let mut roff = Roff::new();
        roff.control("SH", [title]);
        Section { roff, fresh: true }
    }

    /// Starts a paragraph.
    fn paragraph(&mut self) {
        if !std::mem::replace(&mut self.fresh, false) {
            self.roff.control("PP", []);
        }
    }

    fn para(mut self, text: &str) -> Section {
        self.paragraph();
        self.roff.text([roman(text)]);
        self
    }

    fn item(mut self, term: &str, text: &str) -> Section {
        self.fresh = false;
        self.roff
            .control("TP", [])
            .text([bold(term)])
            .text([roman(text)]);
        self
    }

    fn example(mut self, intro: &str, lines: &[&str]) -> Section {
        self.paragraph();
        self.roff.text([roman(intro)]);
        self.roff.control("PP", []).control("RS", ["4"]);
        self.roff.control("nf", []);
        for line in lines {
            self.roff.text([roman(*line)]);
        }
        self.roff.control("fi", []).control("RE", []);
        self
    }

    fn see_also(mut self, pages: &[(&str, &str)]) -> Section {
        self.paragraph();
        let last = pages.len() - 1;
        for (i, (name, section)) in pages.iter().enumerate() {
            let sep = if i == last { "" } else { "," };
            self.roff
                .control("BR", [*name, &format!("({section}){sep}")]);
        }
        self
    }

    /// Appends the section (without the preamble the first clap_mangen
    /// section already wrote).
    fn render(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.roff.to_roff().as_bytes());
    }
}

/// fdstore-exec(1): clap's sections plus exit status, environment, examples.
fn fdstore_exec_page() -> Vec<u8> {
    let page = man(command());
    let mut out = Vec::new();
    page.render_title(&mut out).unwrap();
    page.render_name_section(&mut out).unwrap();
    page.render_synopsis_section(&mut out).unwrap();
    page.render_description_section(&mut out).unwrap();
    page.render_options_section(&mut out).unwrap();
    page.render_subcommands_section(&mut out).unwrap();
    Section::new("EXIT STATUS")
        .para("When the program ends, fdstore-exec ends the same way: with the program's exit status, or killed by the same signal, so that Restart= and systemctl status see the truth. Before that, and for the reload and status commands:")
        .item("0", "Success. For reload: the new generation serves; also when the unit is stopping, which abandons the reload (a failing ExecReload= would mark the stopped unit failed).")
        .item("64", "EX_USAGE: a bad option, listener spec, listener file line, readiness mode, signal or duration; the message quotes the bad part. Also a readiness check that cannot work with the program's listeners (accept or http: without a stream listener, or naming a listener that does not exist), at start or, for a new generation, as the reason the reload fails.")
        .item("69", "EX_UNAVAILABLE: a listener could not be bound; the program was not ready in time; a reload failed and the old generation still serves (the message gives the reason); the target process has no control socket (no @fdstore/control/PID/... name in /proc/net/unix).")
        .item("71", "EX_OSERR: the operating system refused something fdstore-exec needs (fork, a socket, a signal descriptor).")
        .item("75", "EX_TEMPFAIL: reload refused because another reload is in progress; or the main process has as many control clients as it serves at once (16, 8 of them from other users).")
        .item("76", "EX_PROTOCOL: the main process did not understand the request (fdstore-exec versions too far apart); or sockets under the target's control socket name answer but none is the target's own (SO_PEERCRED): another user may be squatting the name, and nothing they answer is believed.")
        .item("77", "EX_NOPERM: reload refused: only root, the service's own user and the unit's own processes (same cgroup) may reload.")
        .item("78", "EX_CONFIG: bad environment (such as an unparsable $MAINPID or LISTEN_FDS), or reload asked of an fdstore-exec running with --mode restart.")
        .item("126, 127", "The program could not be executed, or was not found, as in a shell.")
        .render(&mut out);
    Section::new("ENVIRONMENT")
        .item("LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID", "Read from systemd (socket units and the fd store) and set anew for the program, with LISTEN_PID its own pid.")
        .item("NOTIFY_SOCKET", "systemd's notification socket. The program gets fdstore-exec's own socket instead; READY=1, STATUS=, WATCHDOG=, EXTEND_TIMEOUT_USEC=, ERRNO= and FDSTORE= reach systemd through fdstore-exec.")
        .item("FDSTORE", "Set by systemd 254 and later to FileDescriptorStoreMax=; informational.")
        .item("WATCHDOG_USEC, WATCHDOG_PID", "Passed on, with WATCHDOG_PID rewritten to the program's pid.")
        .item("MAINPID", "Set by systemd for ExecReload=; the process that reload and status talk to unless --pid or --unit is given.")
        .item("FDSTORE_READY_PID, FDSTORE_READY_GENERATION", "Set for a --ready command: check: the pid of the program whose readiness it checks, and its generation (1 at start, one more at each reload). Use them to ask that program rather than the shared listener, which the old generation answers during a reload.")
        .item("JOURNAL_STREAM", "When set (as under systemd), fdstore-exec logs to the journal, otherwise to standard error.")
        .render(&mut out);
    Section::new("EXAMPLES")
        .example("A service whose listener comes from app.socket (FileDescriptorName=http) and is handed over on reload:", &[
            "[Service]",
            "Type=notify",
            "FileDescriptorStoreMax=16",
            "KillMode=mixed",
            "ExecStart=/usr/bin/fdstore-exec -- /usr/bin/app",
            "ExecReload=/usr/bin/fdstore-exec reload",
        ])
        .example("A listener created by fdstore-exec and kept in the fd store, a longer drain, and a program that is ready once the new generation itself answers GET /health with a 2xx status (a probe answered by the old generation is retried, not counted):", &[
            "ExecStart=/usr/bin/fdstore-exec \\",
            "    --listen web=tcp:[::]:8080 --drain-timeout 120s \\",
            "    --ready http:/health \\",
            "    -- /usr/bin/app --config /etc/app.conf",
        ])
        .example("A program that sends READY=1 before its workers accept (gunicorn's arbiter does): ready once READY=1 came and then a worker of the new generation accepted a probe on every listener (what the default notify does too; notify+accept says it):", &[
            "ExecStart=/usr/bin/fdstore-exec --ready notify+accept \\",
            "    -- /usr/bin/gunicorn --workers 4 app:application",
        ])
        .example("A program that does not accept on one of its listeners (metrics, served by a process it does not start): the other listeners are still proven, metrics is trusted:", &[
            "ExecStart=/usr/bin/fdstore-exec --listen web=tcp:[::]:8080 \\",
            "    --listen metrics=tcp:127.0.0.1:9100 --ready notify+unproven:metrics \\",
            "    -- /usr/bin/app",
        ])
        .example("Reload by hand and look at the result:", &[
            "systemctl reload app.service",
            "fdstore-exec status --unit app.service",
        ])
        .para("Ready-to-copy units are in /usr/share/doc/fdstore/examples.")
        .render(&mut out);
    Section::new("SEE ALSO")
        .see_also(&[
            ("fdstore", "7"),
            ("systemd.service", "5"),
            ("systemd.socket", "5"),
            ("sd_notify", "3"),
            ("sd_listen_fds", "3"),
        ])
        .render(&mut out);
    out
}

/// fdstore-exec-SUBCOMMAND(1): the subcommand pages clap_mangen refers to.
fn subcommand_pages() -> Vec<(String, Vec<u8>)> {
    let command = command();
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .map(|sub| {
            let name = format!("fdstore-exec-{}", sub.get_name());
            let sub = sub
                .clone()
                .name(&*name.clone().leak())
                .bin_name(format!("fdstore-exec {}", sub.get_name()));
            let page = man(sub);
            let mut out = Vec::new();
            page.render_title(&mut out).unwrap();
            page.render_name_section(&mut out).unwrap();
            page.render_synopsis_section(&mut out).unwrap();
            page.render_description_section(&mut out).unwrap();
            page.render_options_section(&mut out).unwrap();
            Section::new("SEE ALSO")
                .see_also(&[("fdstore-exec", "1"), ("fdstore", "7")])
                .render(&mut out);
            (format!("man/{name}.1"), out)
        })
        .collect()
}

fn completions() -> Vec<(String, Vec<u8>)> {
    [
        (Shell::Bash, "completions/fdstore-exec.bash"),
        (Shell::Zsh, "completions/_fdstore-exec"),
        (Shell::Fish, "completions/fdstore-exec.fish"),
    ]
    .into_iter()
    .map(|(shell, path)| {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command(), "fdstore-exec", &mut out);
        if shell == Shell::Bash {
            // clap_complete's bash generator spells the state of a
            // subcommand of a hyphenated binary two ways
            // (clap-rs/clap#6421, open): the dispatch loop sets
            // `fdstore__exec__subcmd__reload`, the case arms test
            // `fdstore__subcmd__exec__subcmd__reload`, so no subcommand
            // option would ever complete. Spell the arms like the loop
            // (a no-op once clap_complete is fixed).
            let text = String::from_utf8(out).expect("UTF-8 script");
            out = text
                .replace("fdstore__subcmd__exec", "fdstore__exec")
                .into_bytes();
        }
        (path.to_owned(), out)
    })
    .collect()
}

fn generated() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![("man/fdstore-exec.1".to_owned(), fdstore_exec_page())];
    files.extend(subcommand_pages());
    files.extend(completions());
    files
}

#[test]
fn checked_in_files_are_current() {
    let regenerate = std::env::var_os("FDSTORE_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (path, content) in generated() {
        let full = root().join(&path);
        if regenerate {
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, &content).unwrap();
        } else if std::fs::read(&full).ok().as_deref() != Some(&content[..]) {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files: {stale:?}; the command line changed. Regenerate with \
         `FDSTORE_REGENERATE=1 cargo test --test integration generated::` and commit them"
    );
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("man"))
        .expect("man/")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.to_str().is_some_and(|e| e.len() == 1))
        })
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 4,
        "expected the manual pages in man/, found {pages:?}"
    );
    pages
}

/// Runs `program ARGS PAGE` on every page; each run must succeed and print
/// nothing (no warning).
fn assert_every_page_quiet(program: &str, args: &[&str]) {
    for page in pages() {
        let out = Command::new(program)
            .args(args)
            .arg(&page)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {program} ({e}); install it: apt-get install mandoc groff-base (tests/run does)")
            });
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && report.trim().is_empty(),
            "{program} {} {}:\n{report}",
            args.join(" "),
            page.display()
        );
    }
}

#[test]
fn manual_pages_lint_clean_with_mandoc() {
    assert_every_page_quiet("mandoc", &["-T", "lint", "-W", "warning"]);
}

#[test]
fn manual_pages_render_with_groff_without_warnings() {
    assert_every_page_quiet("groff", &["-man", "-t", "-Tutf8", "-ww", "-z"]);
}

#[test]
fn fdstore_exec_page_documents_every_option_and_subcommand() {
    let page = String::from_utf8(fdstore_exec_page()).unwrap();
    for arg in command().get_arguments() {
        if let Some(long) = arg.get_long() {
            let escaped = format!("\\-\\-{}", long.replace('-', "\\-"));
            assert!(
                page.contains(&escaped),
                "--{long} missing from fdstore-exec.1"
            );
        }
    }
    for sub in [
        "fdstore\\-exec\\-reload(1)",
        "fdstore\\-exec\\-status(1)",
        "EXIT STATUS",
    ] {
        assert!(page.contains(sub), "{sub} missing from fdstore-exec.1");
    }
}

#[test]
fn fdstore_7_describes_the_protocol_the_code_speaks() {
    let page = std::fs::read_to_string(root().join("man/fdstore.7")).unwrap();
    let version = format!("\"fdstore {}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        page.lines()
            .any(|l| l.starts_with(".TH") && l.contains(&version)),
        "man/fdstore.7's .TH line should name {version}"
    );
    let socket = fdstore::protocol::control::control_name_prefix(1234).replace("1234/", "");
    let env = fdstore::protocol::handover::HANDOVER_ENV;
    for word in [
        // Control requests and refusal kinds.
        "RELOAD",
        "STATUS",
        "OK ",
        "ERR ",
        "busy",
        "denied",
        "failed",
        "stopping",
        "unsupported",
        "invalid",
        // Hand-over channel messages.
        "HELLO",
        "READY",
        "FAILED",
        "MAIN",
        "DONE",
    ] {
        assert!(
            page.contains(word),
            "man/fdstore.7 does not mention {word:?}"
        );
    }
    assert!(
        page.contains(&format!("@{socket}")),
        "control socket name {socket:?}"
    );
    assert!(page.contains(&format!("{env}=fd=")), "{env}");
}

/// Runs the bash completion function on `words` (the last one being
/// completed) and returns the candidates.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = root().join("completions/fdstore-exec.bash");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_fdstore__exec fdstore-exec '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &program])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_offers_subcommands_options_and_modes() {
    assert_eq!(bash_complete(&["fdstore-exec", "rel"]), ["reload"]);
    assert_eq!(
        bash_complete(&["fdstore-exec", "--drain-t"]),
        ["--drain-timeout"]
    );
    assert_eq!(
        bash_complete(&["fdstore-exec", "--mode", ""]),
        ["handover", "restart"]
    );
    assert_eq!(
        bash_complete(&["fdstore-exec", "status", "--u"]),
        ["--unit", "--user"]
    );
}

/// A library user compiles none of fdstore-exec's command line and logging:
/// `cargo tree` of a crate that depends on fdstore with its default
/// features lists no clap, tracing-subscriber or tracing-journald (they come
/// with the `cli` feature, which the fdstore-exec binary requires).
#[test]
fn a_library_user_compiles_no_command_line_parser_or_log_subscriber() {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("fdstore-library-user-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"library-user\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
             [dependencies]\nfdstore = {{ path = {manifest_dir:?} }}\n\n[workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), "pub use fdstore::Notifier;\n").unwrap();
    // The project's own lock file: the same versions, nothing to fetch.
    std::fs::copy(
        Path::new(manifest_dir).join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("fdstore v"), "{tree}");
    for cli_only in ["clap", "tracing-subscriber", "tracing-journald"] {
        assert!(
            !tree
                .lines()
                .any(|l| l.starts_with(&format!("{cli_only} v"))),
            "a library user compiles {cli_only}:\n{tree}"
        );
    }
}
