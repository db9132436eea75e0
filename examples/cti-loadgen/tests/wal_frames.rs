//! `scripts/wal_frames.py` against a small SQLite database written by Python's `sqlite3` (the
//! script needs Python 3 with SQLite's `dbstat` table, as Debian's and python.org's builds have).

use std::path::Path;
use std::process::Command;

/// Writes 200 inbox-like rows in four transactions with the WAL kept (no checkpoint, the
/// connection stays open), then runs the script on the live database and prints its output.
const DRIVER: &str = r#"
import sqlite3, subprocess, sys
db, script = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("CREATE TABLE webhook_events (seq INTEGER PRIMARY KEY, dedupe_key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL)")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
for t in range(4):
    c.execute("BEGIN")
    for i in range(50):
        n = t * 50 + i
        c.execute("INSERT INTO webhook_events (dedupe_key, payload) VALUES (?, ?)", ("%064x" % (n * 2654435761 % 2**64), "x" * 1500))
    c.execute("COMMIT")
out = subprocess.run([sys.executable, script, db], capture_output=True, text=True)
sys.stdout.write(out.stdout)
sys.stderr.write(out.stderr)
sys.exit(out.returncode)
"#;

#[test]
fn attributes_the_frames_of_a_live_wal_to_their_b_trees() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("cti.db");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/wal_frames.py");
    let out = Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(&db)
        .arg(&script)
        .output()
        .expect("python3 runs (the CI machine has Python 3.11)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "script failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four commits of 50 rows; the events are counted from the logged rows' `seq` (1..=200).
    assert!(
        stdout.contains("in 4 commits, ~200 events (50.0 per commit)"),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout.lines().skip(3).collect();
    let row = |name: &str| rows.iter().find(|l| l.starts_with(name)).copied();
    // ~1.5 kB rows: about half a table leaf per event; the random keys hit the unique index.
    let table = row("webhook_events ").unwrap_or_else(|| panic!("no table row: {stdout}"));
    let frames: f64 = table.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((0.3..=1.5).contains(&frames), "{table}");
    assert!(
        row("sqlite_autoindex_webhook_events_1").is_some(),
        "{stdout}"
    );
}
