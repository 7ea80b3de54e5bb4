//! The status text fdstore-exec shows in `systemctl status` and answers to
//! `fdstore-exec status`.

/// What the status text says.
#[derive(Debug, Clone, Copy)]
pub(super) struct StatusFacts<'a> {
    pub(super) generation: u64,
    pub(super) pid: u32,
    pub(super) draining: bool,
    /// The program's own `STATUS=`.
    pub(super) program_status: Option<&'a str>,
    pub(super) ready: bool,
    /// The generation a reload in progress is starting.
    pub(super) reloading: Option<u64>,
    /// The last reload's outcome.
    pub(super) last_reload: Option<&'a str>,
    /// The older generations still draining (see
    /// [`crate::protocol::generations::OlderGenerations::status_suffix`]).
    pub(super) older: &'a str,
}

/// `generation 3, pid 1234: serving; last reload took 41 ms`.
pub(super) fn status_text(facts: &StatusFacts<'_>) -> String {
    let mut text = format!("generation {}, pid {}", facts.generation, facts.pid);
    match (facts.draining, facts.program_status) {
        (true, _) => text.push_str(": draining"),
        (false, Some(s)) => text.push_str(&format!(": {s}")),
        (false, None) if facts.ready => text.push_str(": serving"),
        (false, None) => text.push_str(": starting"),
    }
    if let Some(next) = facts.reloading {
        text.push_str(&format!("; reloading (generation {next} starting)"));
    } else if let Some(outcome) = facts.last_reload {
        text.push_str("; ");
        text.push_str(outcome);
    }
    // Last, so that the text starts as it always did.
    text.push_str(facts.older);
    text
}
