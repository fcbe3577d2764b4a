//! Crash injection for tests: `PGSHIFT_CRASH_AT=<phase>:<n>` exits the
//! process with SIGKILL right after step (or backfill batch) `n` of `<phase>` commits;
//! `PGSHIFT_CRASH_AT=<phase>:<n>:before-commit` exits with the step's
//! transaction still open (Postgres rolls it back), or, for a backfill batch
//! shared by several workers, with the shares committed and the mark not yet
//! moved. The exit is immediate, like SIGKILL: no cleanup, no Terminate
//! message.

use std::sync::OnceLock;

fn target() -> &'static Option<(String, usize, bool)> {
    static T: OnceLock<Option<(String, usize, bool)>> = OnceLock::new();
    T.get_or_init(|| {
        let v = std::env::var("PGSHIFT_CRASH_AT").ok()?;
        let mut parts = v.split(':');
        let phase = parts.next()?.to_string();
        let n = parts.next()?.parse().ok()?;
        let before = parts.next() == Some("before-commit");
        Some((phase, n, before))
    })
}

/// Is the crash target this point?
pub fn armed(phase: &str, n: usize, before_commit: bool) -> bool {
    matches!(target(), Some((p, t, b)) if p == phase && *t == n && *b == before_commit)
}

/// Exit now if the crash target is this point.
pub fn hit(phase: &str, n: usize, before_commit: bool) {
    if armed(phase, n, before_commit) {
        eprintln!("pgshift: PGSHIFT_CRASH_AT={phase}:{n} reached, killing this process (SIGKILL)");
        // A real SIGKILL, like an operator's `kill -9`; exit is the fallback.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::exit(137);
    }
}
