use super::*;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::PathBuf;

/// seekdb 1.4 started on a taken port: real lines (tests/fixtures).
const SEEKDB: &str = include_str!("../../../tests/fixtures/seekdb-port-taken.log");

fn line(level: &str, msg: &str) -> String {
    format!(
        "[2026-12-06 03:50:01.123456] {level} [SERVER] start (ob_server.cpp:123) [12345][T1][Y0-0000000000000000-0-0] [lt=5] {msg}\n"
    )
}

struct Home {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let path = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir(path.join("log")).unwrap();
    Home { _dir: dir, path }
}

impl Home {
    fn append(&self, name: &str, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

#[test]
fn real_seekdb_lines_are_parsed() {
    let lines: Vec<&str> = SEEKDB.lines().filter(|l| !l.starts_with('#')).collect();
    let levels: Vec<Option<Level>> = lines.iter().map(|l| level(l)).collect();
    // INFO, EDIAG (bootstrap's -4109), a continuation line, ...
    assert_eq!(levels[0], None);
    assert_eq!(levels[2], Some(Level::Diag));
    assert!(lines[3].starts_with("[10442][seekdb]"), "{}", lines[3]);
    assert_eq!(levels[3], None, "a continuation line has no level");
    let errors: Vec<&&str> = lines
        .iter()
        .filter(|l| level(l) == Some(Level::Error))
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("observer start fail"));
    assert_eq!(errcode(errors[0]).as_deref(), Some("-4016"));
    assert_eq!(errcode(lines[2]).as_deref(), Some("-4109"));
}

#[test]
fn error_codes_come_from_errcode_or_ret() {
    assert_eq!(
        errcode("x [errcode=-4013] y(ret=-4016)").as_deref(),
        Some("-4013")
    );
    assert_eq!(
        errcode("observer start fail(ret=-4264, x=1)").as_deref(),
        Some("-4264")
    );
    // Not OceanBase codes: a system call's -1, a field that ends in ret.
    assert_eq!(errcode("open failed(ret=-1, errno=13)"), None);
    assert_eq!(errcode("(last_ret=-4016)"), None);
    assert_eq!(errcode("ret=-4016a").as_deref(), Some("-4016"));
    assert_eq!(errcode("ret=-"), None);
    assert_eq!(errcode("ret=-1234567"), None);
    assert_eq!(errcode("é ret=-4016 é").as_deref(), Some("-4016"));
}

#[test]
fn only_error_lines_since_a_first_start_and_the_operators_code() {
    let h = home();
    h.append(LOG, SEEKDB);
    h.append(OUT, "observer: exec /x/seekdb --base-dir /h --port 2881\n");
    let d = diagnose(&h.path, &LogMark::default());
    let log = format!("==> {} <==", h.path.join(LOG).display());
    assert_eq!(d.lines[0], log);
    // 5 error lines (EDIAG + ERROR), no INFO, no continuation line.
    let errors = &d.lines[1..6];
    assert!(errors.iter().all(|l| level(l).is_some()), "{errors:#?}");
    assert!(d.lines[6].starts_with("==> ") && d.lines[6].ends_with("obhost_observer.out <=="));
    assert_eq!(
        d.lines[7],
        "observer: exec /x/seekdb --base-dir /h --port 2881"
    );
    assert_eq!(d.lines.len(), 8);
    // The ERROR line's code, not the bootstrap's EDIAG -4109 before it.
    assert_eq!(d.ob_errcode.as_deref(), Some("-4016"));
    let hint = d.hint.unwrap_or_default();
    assert!(hint.starts_with("OB_ERR_UNEXPECTED (-4016): "), "{hint}");
}

#[test]
fn without_an_error_line_the_first_ediag_code_is_taken() {
    let h = home();
    h.append(LOG, &line("INFO", "ok(ret=-4012)"));
    h.append(LOG, &line("EDIAG", "[errcode=-4013] alloc failed"));
    h.append(LOG, &line("EDIAG", "[errcode=-4016] start fail"));
    let d = diagnose(&h.path, &LogMark::default());
    assert_eq!(d.ob_errcode.as_deref(), Some("-4013"));
    assert!(
        d.hint
            .is_some_and(|h| h.contains("OB_ALLOCATE_MEMORY_FAILED"))
    );
}

#[test]
fn what_was_written_before_the_mark_is_not_this_starts() {
    let h = home();
    h.append(LOG, &line("ERROR", "[errcode=-4184] old failure"));
    h.append(WF, &line("ERROR", "[errcode=-4184] old failure"));
    h.append(OUT, "old launcher output\n");
    let mark = LogMark::take(&h.path);
    assert!(mark.log.is_some() && mark.wf.is_some() && mark.out.is_some());
    h.append(LOG, &line("ERROR", "[errcode=-4004] new failure"));
    h.append(OUT, "new launcher output\n");
    let d = diagnose(&h.path, &mark);
    let all = d.lines.join("\n");
    assert!(!all.contains("old"), "{all}");
    assert!(all.contains("new failure") && all.contains("new launcher output"));
    assert_eq!(d.ob_errcode.as_deref(), Some("-4004"));
    // Nothing new in the .wf: no section for it.
    assert!(!all.contains(".wf <=="), "{all}");
    // Nothing new at all: nothing to say.
    let d = diagnose(&h.path, &LogMark::take(&h.path));
    assert_eq!(d, Diagnosis::default());
}

#[test]
fn a_rotated_or_truncated_log_is_read_from_its_start() {
    let h = home();
    h.append(LOG, &line("ERROR", "[errcode=-4184] before rotation"));
    let mark = LogMark::take(&h.path);
    // OceanBase renames observer.log aside and opens a new one.
    std::fs::rename(
        h.path.join(LOG),
        h.path.join("log/observer.log.20261206035001"),
    )
    .unwrap();
    h.append(LOG, &line("ERROR", "[errcode=-4264] after rotation"));
    let d = diagnose(&h.path, &mark);
    assert!(d.lines.iter().any(|l| l.contains("after rotation")));
    assert!(!d.lines.iter().any(|l| l.contains("before rotation")));
    assert_eq!(d.ob_errcode.as_deref(), Some("-4264"));

    // Truncated in place below the mark: same inode, all of it is new.
    let mark = LogMark::take(&h.path);
    std::fs::write(h.path.join(LOG), line("ERROR", "[errcode=-4013] x")).unwrap();
    assert_eq!(
        LogMark::take(&h.path).log.map(|m| m.ino),
        mark.log.map(|m| m.ino)
    );
    assert_eq!(
        diagnose(&h.path, &mark).ob_errcode.as_deref(),
        Some("-4013")
    );
}

#[test]
fn the_wf_file_adds_only_what_observer_log_did_not_show() {
    let h = home();
    let shared = line("ERROR", "[errcode=-4016] in both");
    h.append(LOG, &shared);
    h.append(WF, &line("WDIAG", "a warning"));
    h.append(WF, &shared);
    h.append(WF, &line("ERROR", "[errcode=-4009] only in wf"));
    let d = diagnose(&h.path, &LogMark::default());
    let wf = format!("==> {} <==", h.path.join(WF).display());
    let at = d.lines.iter().position(|l| *l == wf).unwrap();
    assert_eq!(d.lines[at + 1..].len(), 2, "{:#?}", d.lines);
    assert!(d.lines[at + 1].contains("a warning"));
    assert!(d.lines[at + 2].contains("only in wf"));
    assert_eq!(d.ob_errcode.as_deref(), Some("-4016"));
}

/// WARN lines come with the errors, in the file's order, bounded apart: a
/// flood of them never pushes an ERROR line out, and their codes are never
/// taken for the failure's.
#[test]
fn warn_lines_are_shown_but_never_crowd_out_errors() {
    let h = home();
    h.append(LOG, &line("INFO", "starting"));
    h.append(LOG, &line("WARN", "[errcode=-4012] slow disk"));
    h.append(LOG, &line("ERROR", "[errcode=-4016] observer start fail"));
    for i in 0..100 {
        h.append(LOG, &line("WARN", &format!("retrying {i}")));
    }
    let d = diagnose(&h.path, &LogMark::default());
    let body = &d.lines[1..];
    assert_eq!(body.len(), 1 + MAX_WARN_LINES, "{body:#?}");
    assert!(body[0].contains("observer start fail"), "{body:#?}");
    assert!(body[1].contains("retrying 90"), "{body:#?}");
    assert!(body[MAX_WARN_LINES].contains("retrying 99"), "{body:#?}");
    assert!(!d.lines.iter().any(|l| l.contains("starting")));
    assert_eq!(d.ob_errcode.as_deref(), Some("-4016"));
    // A WARN line's code alone is not the failure's.
    let h = home();
    h.append(LOG, &line("WARN", "[errcode=-4012] slow disk"));
    let d = diagnose(&h.path, &LogMark::default());
    assert_eq!(d.lines.len(), 2, "{:#?}", d.lines);
    assert_eq!(d.ob_errcode, None);
}

#[test]
fn reads_lines_and_counts_are_bounded() {
    let h = home();
    for i in 0..50 {
        h.append(LOG, &line("ERROR", &format!("[errcode=-4016] error {i}")));
    }
    h.append(LOG, &line("ERROR", &"x".repeat(3 * MAX_LINE)));
    for i in 0..30 {
        h.append(OUT, &format!("out {i}\n"));
    }
    let d = diagnose(&h.path, &LogMark::default());
    let log: Vec<&String> = d.lines.iter().skip(1).take(MAX_ERROR_LINES).collect();
    assert!(log[0].contains("error 31"), "{}", log[0]);
    let long = log[MAX_ERROR_LINES - 1];
    assert!(long.ends_with(&format!("…[line cut at {MAX_LINE} bytes]")));
    assert!(long.len() < MAX_LINE + 64);
    assert_eq!(d.lines.last().map(String::as_str), Some("out 29"));
    assert_eq!(d.lines.len(), 1 + MAX_ERROR_LINES + 1 + MAX_OUT_LINES);
    // The first error since the mark, not the first in the window.
    assert_eq!(d.ob_errcode.as_deref(), Some("-4016"));
}

#[test]
fn only_the_last_window_of_a_long_log_is_read() {
    let h = home();
    h.append(LOG, &line("ERROR", "[errcode=-4013] far back"));
    let filler = line("INFO", &"y".repeat(200));
    h.append(LOG, &filler.repeat(100));
    h.append(LOG, &line("ERROR", "[errcode=-4004] recent"));
    let mut seen = Vec::new();
    let owner = home_owner(&h.path).unwrap();
    read_since(&h.path, LOG, owner, None, 4096, |l| {
        seen.push(l.to_string())
    })
    .unwrap();
    assert!(seen.last().unwrap().contains("recent"));
    assert!(seen.iter().all(|l| !l.contains("far back")));
    // Every line whole: the one cut by the window's start is dropped.
    assert!(seen.iter().all(|l| l.starts_with("[2026-")), "{seen:#?}");
    assert!(seen.len() < 4096 / filler.len() + 1);
}

#[test]
fn a_last_line_without_newline_is_kept() {
    let mut seen = Vec::new();
    scan_lines(&b"a\nb\r\nc"[..], false, |l| seen.push(l.to_string())).unwrap();
    assert_eq!(seen, ["a", "b", "c"]);
    seen.clear();
    scan_lines(&b"partial\nwhole\n"[..], true, |l| seen.push(l.to_string())).unwrap();
    assert_eq!(seen, ["whole"]);
}

#[test]
fn a_root_link_is_followed_like_the_seekdb_wrappers() {
    let h = home();
    h.append("log/seekdb.log", &line("ERROR", "[errcode=-4004] via link"));
    symlink("seekdb.log", h.path.join(LOG)).unwrap();
    let d = diagnose(&h.path, &LogMark::default());
    assert!(
        d.lines.iter().any(|l| l.contains("via link")),
        "{:#?}",
        d.lines
    );
    // The mark is the target's.
    let target = std::fs::metadata(h.path.join("log/seekdb.log")).unwrap();
    assert_eq!(
        LogMark::take(&h.path).log.map(|m| m.ino),
        Some(target.ino())
    );
}

#[test]
fn a_link_the_homes_user_made_is_not_followed() {
    let h = home();
    // Something the user may not read, which a followed link would expose.
    let secret = h.path.join("root-only");
    std::fs::write(&secret, line("ERROR", "[errcode=-4016] root's secret")).unwrap();
    symlink(&secret, h.path.join(LOG)).unwrap();
    std::os::unix::fs::lchown(h.path.join(LOG), Some(65534), Some(65534)).unwrap();
    let d = diagnose(&h.path, &LogMark::default());
    let all = d.lines.join("\n");
    assert!(!all.contains("secret"), "{all}");
    assert!(all.contains("(obhostd did not read it: "), "{all}");
    assert!(all.contains("owned by uid 65534"), "{all}");
    assert_eq!(d.ob_errcode, None);
    assert_eq!(LogMark::take(&h.path).log, None);
}

#[test]
fn a_log_that_belongs_to_another_user_is_not_read() {
    let h = home();
    h.append(LOG, &line("ERROR", "[errcode=-4016] someone else's"));
    std::os::unix::fs::lchown(h.path.join(LOG), Some(65534), Some(65534)).unwrap();
    let d = diagnose(&h.path, &LogMark::default());
    let all = d.lines.join("\n");
    assert!(!all.contains("someone else's"), "{all}");
    assert!(all.contains("belongs to uid 65534"), "{all}");
}

#[test]
fn a_missing_home_or_log_says_nothing() {
    let h = home();
    assert_eq!(diagnose(&h.path, &LogMark::default()), Diagnosis::default());
    let gone = h.path.join("nope");
    assert_eq!(LogMark::take(&gone), LogMark::default());
    assert_eq!(diagnose(&gone, &LogMark::default()), Diagnosis::default());
}

#[test]
fn a_mark_is_stored_and_read_back() {
    let h = home();
    h.append(LOG, "x\n");
    let mark = LogMark::take(&h.path);
    let json = serde_json::to_string(&mark).unwrap();
    assert_eq!(serde_json::from_str::<LogMark>(&json).unwrap(), mark);
    assert_eq!(
        serde_json::from_str::<LogMark>("{}").unwrap(),
        LogMark::default()
    );
}
