//! `--ready`: the checks that decide when a generation is ready, as written
//! on the command line (`notify+accept`, `http:/health,204`, ...).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How fdstore-exec decides that the program is ready: one check or several
/// joined by `+`, all of which must pass.
///
/// Whatever the checks, a generation is ready only once a process of it
/// accepted a probe on each of its stream listeners (the proof of
/// `accept`), except those `unproven:` names:
/// `notify`, `exec`, `delay:` and `command:` alone would trust the program,
/// the clock or the command, and could hand over to a generation that never
/// accepts. Datagram listeners cannot be proven this way.
///
/// ```
/// use fdstore::exec::ReadyMode;
/// let mode: ReadyMode = "notify+http:/health".parse().unwrap();
/// assert_eq!(mode.to_string(), "notify+http:/health");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyMode {
    checks: Vec<ReadyCheck>,
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadyCheck {
    /// The program sends `READY=1` to its `NOTIFY_SOCKET`.
    Notify,
    /// Ready as soon as it has started.
    Exec,
    /// Ready after it has run for this long.
    Delay(Duration),
    /// A probe connection to each of these stream listeners (all of them
    /// but the unproven ones when empty) is accepted by a process of this
    /// generation's program. Every mode includes it for the stream
    /// listeners no other check names; given alone it is the whole check.
    Accept(Vec<String>),
    /// As [`ReadyCheck::Accept`], and the accepting process answers an HTTP
    /// `GET` of the path with the expected status.
    Http(HttpCheck),
    /// This shell command exits 0 (tried every 100 ms, each run at most
    /// [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT)).
    Command(String),
    /// The opt-out of the accept proof every mode includes: these stream
    /// listeners (all of them when empty) are not probed, so the program
    /// is trusted to serve on them. Not a check by itself: it goes with
    /// another (`notify+unproven:metrics`).
    Unproven(Vec<String>),
}

/// What `http:[NAME]/PATH[,STATUS]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpCheck {
    /// The listener to ask (every stream listener when `None`).
    pub(crate) listener: Option<String>,
    /// The path of the `GET` request, starting with `/`.
    pub(crate) path: String,
    /// The status the answer must have (any 2xx when `None`).
    pub(crate) status: Option<u16>,
}

impl ReadyMode {
    /// The checks, in the order given.
    pub(crate) fn checks(&self) -> &[ReadyCheck] {
        &self.checks
    }

    /// Whether a `READY=1` from the program is one of the checks.
    pub(crate) fn wants_notify(&self) -> bool {
        self.checks.contains(&ReadyCheck::Notify)
    }
}

impl Default for ReadyMode {
    fn default() -> ReadyMode {
        ReadyMode {
            checks: vec![ReadyCheck::Notify],
        }
    }
}

const KEYWORDS: &str = "notify, exec, delay:DURATION, accept[:NAME,...], http:[NAME]/PATH[,STATUS], unproven[:NAME,...] or command:SHELL-COMMAND";

/// Where the next check starts: a `+` followed by a check's keyword. A `+`
/// elsewhere (in an HTTP path) belongs to the check before it.
fn next_join(s: &str) -> Option<usize> {
    s.match_indices('+').map(|(i, _)| i).find(|&i| {
        let rest = &s[i + 1..];
        let word = rest.split('+').next().unwrap_or("");
        starts_a_check(word)
    })
}

impl FromStr for ReadyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut checks: Vec<ReadyCheck> = Vec::new();
        let mut rest = s;
        loop {
            // A command takes the rest of the text, `+` included.
            let (part, more) = if rest.starts_with("command:") {
                (rest, None)
            } else {
                match next_join(rest) {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                }
            };
            let check = parse_check(part)?;
            if let Some(same) = checks
                .iter()
                .find(|c| std::mem::discriminant(*c) == std::mem::discriminant(&check))
            {
                return Err(format!(
                    "{same} is given twice; give each kind of check once"
                ));
            }
            checks.push(check);
            match more {
                Some(m) => rest = m,
                None => break,
            }
        }
        let is_unproven = |c: &ReadyCheck| matches!(c, ReadyCheck::Unproven(_));
        let real = checks.iter().filter(|c| !is_unproven(c)).count();
        if real == 0 {
            return Err(
                "unproven only says which listeners go without the accept proof; join it to the check it goes with, for example notify+unproven or exec+unproven:metrics"
                    .into(),
            );
        }
        if real > 1 && checks.contains(&ReadyCheck::Exec) {
            return Err(
                "exec means ready at once and cannot be combined with other checks (but unproven); leave it out"
                    .into(),
            );
        }
        if checks.contains(&ReadyCheck::Unproven(Vec::new())) {
            if let Some(proof) = checks
                .iter()
                .find(|c| matches!(c, ReadyCheck::Accept(_) | ReadyCheck::Http(_)))
            {
                return Err(format!(
                    "unproven (every listener) leaves nothing for {proof} to prove; name the listeners that go unproven: unproven:NAME,..."
                ));
            }
        }
        Ok(ReadyMode { checks })
    }
}

fn parse_check(part: &str) -> Result<ReadyCheck, String> {
    // The messages quote only the part: clap quotes the whole value.
    match part {
        "notify" => return Ok(ReadyCheck::Notify),
        "exec" => return Ok(ReadyCheck::Exec),
        "accept" => return Ok(ReadyCheck::Accept(Vec::new())),
        "unproven" => return Ok(ReadyCheck::Unproven(Vec::new())),
        "" => {
            return Err(format!(
                "an empty check; use {KEYWORDS}, joined by + (for example notify+accept)"
            ))
        }
        _ => {}
    }
    if let Some(d) = part.strip_prefix("delay:") {
        return crate::parse_duration(d)
            .map(ReadyCheck::Delay)
            .map_err(|e| format!("delay: {e}"));
    }
    if let Some(c) = part.strip_prefix("command:") {
        if c.trim().is_empty() {
            return Err(
                "command: needs a shell command, for example command:test -e /run/app/ready.$FDSTORE_READY_PID".into(),
            );
        }
        return Ok(ReadyCheck::Command(c.to_owned()));
    }
    for (keyword, check) in [
        (
            "accept",
            ReadyCheck::Accept as fn(Vec<String>) -> ReadyCheck,
        ),
        ("unproven", ReadyCheck::Unproven),
    ] {
        if let Some(names) = part.strip_prefix(keyword).and_then(|p| p.strip_prefix(':')) {
            return parse_names(keyword, names).map(check);
        }
    }
    if let Some(target) = part.strip_prefix("http:") {
        return parse_http(target).map(ReadyCheck::Http).map_err(|why| {
            format!(
                "{part:?}: {why}; write http:/PATH, http:/PATH,STATUS or http:NAME/PATH,STATUS (for example http:/health or http:web/health,204)"
            )
        });
    }
    // "notify+acept": name the piece that is not a check.
    let unknown = part
        .split('+')
        .find(|p| !starts_a_check(p))
        .filter(|p| !p.is_empty())
        .unwrap_or(part);
    Err(format!(
        "{unknown:?} is not a readiness check; use {KEYWORDS}, joined by + (for example notify+accept)"
    ))
}

/// The listener names of `accept:NAME,...` or `unproven:NAME,...`.
fn parse_names(keyword: &str, names: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = names.split(',').map(str::to_owned).collect();
    for name in &names {
        if let Err(why) = crate::check_fd_name(name) {
            return Err(format!(
                "{keyword}:{}: {name:?} is not a listener name ({why}); write {keyword}:NAME,NAME or {keyword} for every stream listener",
                names.join(",")
            ));
        }
    }
    Ok(names)
}

fn starts_a_check(s: &str) -> bool {
    matches!(s, "notify" | "exec" | "accept" | "unproven")
        || ["delay:", "http:", "command:", "accept:", "unproven:"]
            .iter()
            .any(|k| s.starts_with(k))
}

fn parse_http(target: &str) -> Result<HttpCheck, String> {
    let Some(slash) = target.find('/') else {
        return Err("the path must start with /".into());
    };
    let (name, rest) = target.split_at(slash);
    let listener = if name.is_empty() {
        None
    } else {
        crate::check_fd_name(name).map_err(|why| format!("{name:?}: {why}"))?;
        Some(name.to_owned())
    };
    let (path, status) = match rest.rsplit_once(',') {
        Some((path, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
            match tail.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => (path, Some(code)),
                _ => return Err(format!("{tail:?} is not an HTTP status (100 to 599)")),
            }
        }
        _ => (rest, None),
    };
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the path holds {c:?}; percent-encode spaces and other characters that are not printable ASCII"
        ));
    }
    Ok(HttpCheck {
        listener,
        path: path.to_owned(),
        status,
    })
}

impl fmt::Display for ReadyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyCheck::Notify => f.write_str("notify"),
            ReadyCheck::Exec => f.write_str("exec"),
            ReadyCheck::Delay(d) => write!(f, "delay:{d:?}"),
            ReadyCheck::Accept(names) if names.is_empty() => f.write_str("accept"),
            ReadyCheck::Accept(names) => write!(f, "accept:{}", names.join(",")),
            ReadyCheck::Http(h) => {
                write!(f, "http:{}{}", h.listener.as_deref().unwrap_or(""), h.path)?;
                match h.status {
                    Some(code) => write!(f, ",{code}"),
                    None => Ok(()),
                }
            }
            ReadyCheck::Command(c) => write!(f, "command:{c}"),
            ReadyCheck::Unproven(names) if names.is_empty() => f.write_str("unproven"),
            ReadyCheck::Unproven(names) => write!(f, "unproven:{}", names.join(",")),
        }
    }
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, check) in self.checks.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{check}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<ReadyCheck> {
        s.parse::<ReadyMode>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .checks
    }

    fn error(s: &str) -> String {
        s.parse::<ReadyMode>().unwrap_err()
    }

    #[test]
    fn single_checks() {
        assert_eq!(parse("notify"), [ReadyCheck::Notify]);
        assert_eq!(parse("exec"), [ReadyCheck::Exec]);
        assert_eq!(
            parse("delay:500ms"),
            [ReadyCheck::Delay(Duration::from_millis(500))]
        );
        assert_eq!(parse("accept"), [ReadyCheck::Accept(vec![])]);
        assert_eq!(
            parse("exec+unproven"),
            [ReadyCheck::Exec, ReadyCheck::Unproven(vec![])]
        );
        assert_eq!(
            parse("notify+unproven:metrics"),
            [
                ReadyCheck::Notify,
                ReadyCheck::Unproven(vec!["metrics".into()])
            ]
        );
        assert_eq!(
            parse("accept:web,admin"),
            [ReadyCheck::Accept(vec!["web".into(), "admin".into()])]
        );
        assert_eq!(
            parse("command:test -e /tmp/x"),
            [ReadyCheck::Command("test -e /tmp/x".into())]
        );
    }

    #[test]
    fn http_forms() {
        let http = |listener: Option<&str>, path: &str, status| {
            ReadyCheck::Http(HttpCheck {
                listener: listener.map(str::to_owned),
                path: path.into(),
                status,
            })
        };
        assert_eq!(parse("http:/"), [http(None, "/", None)]);
        assert_eq!(parse("http:/health"), [http(None, "/health", None)]);
        assert_eq!(
            parse("http:/health,204"),
            [http(None, "/health", Some(204))]
        );
        assert_eq!(
            parse("http:web/ready?full=1"),
            [http(Some("web"), "/ready?full=1", None)]
        );
        // A comma that is not followed by a status belongs to the path.
        assert_eq!(parse("http:/a,b"), [http(None, "/a,b", None)]);
        // A plus that does not start a check belongs to the path.
        assert_eq!(
            parse("http:/a+b+notify"),
            [http(None, "/a+b", None), ReadyCheck::Notify]
        );
    }

    #[test]
    fn combinations() {
        assert_eq!(
            parse("notify+accept"),
            [ReadyCheck::Notify, ReadyCheck::Accept(vec![])]
        );
        assert_eq!(
            parse("notify+http:/health,200"),
            [
                ReadyCheck::Notify,
                ReadyCheck::Http(HttpCheck {
                    listener: None,
                    path: "/health".into(),
                    status: Some(200)
                })
            ]
        );
        // A command takes the rest, + included.
        assert_eq!(
            parse("notify+command:test 1+1 -eq 2 || true+accept"),
            [
                ReadyCheck::Notify,
                ReadyCheck::Command("test 1+1 -eq 2 || true+accept".into())
            ]
        );
        assert_eq!(
            parse("delay:1s+accept:web"),
            [
                ReadyCheck::Delay(Duration::from_secs(1)),
                ReadyCheck::Accept(vec!["web".into()])
            ]
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "notify",
            "exec",
            "accept",
            "accept:web,admin",
            "notify+accept",
            "notify+http:/health,204",
            "http:web/x",
            "accept+command:true",
            "notify+unproven",
            "exec+unproven:metrics,admin",
            "accept+unproven:metrics",
        ] {
            assert_eq!(s.parse::<ReadyMode>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_modes_quote_the_bad_part() {
        let e = error("eventually");
        assert!(e.contains("\"eventually\" is not a readiness check"), "{e}");
        assert!(e.contains("notify, exec, delay:DURATION"), "{e}");
        let e = error("notify+acept");
        assert!(e.contains("\"acept\" is not a readiness check"), "{e}");
        let e = error("notify+");
        assert!(e.contains("not a readiness check"), "{e}");
        let e = error("notify+notify");
        assert!(e.contains("notify is given twice"), "{e}");
        let e = error("exec+accept");
        assert!(e.contains("exec means ready at once"), "{e}");
        let e = error("http:health");
        assert!(
            e.contains("\"http:health\": the path must start with /"),
            "{e}"
        );
        let e = error("http:/health,999");
        assert!(e.contains("\"999\" is not an HTTP status"), "{e}");
        let e = error("http:/a b");
        assert!(e.contains("percent-encode"), "{e}");
        let e = error("accept:web,");
        assert!(e.contains("\"\" is not a listener name"), "{e}");
        let e = error("delay:soon");
        assert!(e.contains("\"soon\" is not a duration"), "{e}");
        let e = error("unproven");
        assert!(e.contains("join it to the check it goes with"), "{e}");
        let e = error("unproven:a+unproven:b");
        assert!(
            e.contains("unproven:b is given twice") || e.contains("given twice"),
            "{e}"
        );
        let e = error("accept+unproven");
        assert!(e.contains("leaves nothing for accept to prove"), "{e}");
        let e = error("http:/x+unproven");
        assert!(e.contains("leaves nothing for http:/x to prove"), "{e}");
        let e = error("exec+delay:1s+unproven");
        assert!(e.contains("exec means ready at once"), "{e}");
        let e = error("notify+unproven:");
        assert!(e.contains("unproven:: \"\" is not a listener name"), "{e}");
        let e = error("command: ");
        assert!(e.contains("needs a shell command"), "{e}");
    }
}
