//! Why an observer failed to start, in OceanBase's own terms (issue 16).
//!
//! When a start fails, the operator wants what the observer itself said, not
//! the last lines of a multi-megabyte log that are mostly INFO: a real start
//! writes megabytes of INFO lines (seekdb wrote 6 MB in the 1.5 s a start on a
//! taken port lasted) and puts the cause in a handful of ERROR lines among them.
//! So a start first takes a [`LogMark`] (where `log/observer.log`, its `.wf`
//! and the launcher's output stood), and a failure calls [`diagnose`], which
//! keeps only what was written after the mark:
//!
//! - the last WARN and ERROR lines (EDIAG, OceanBase 4.x's diagnostic error
//!   level, counts as ERROR; WDIAG as WARN) of `observer.log`, then those of
//!   `observer.log.wf` (OceanBase writes its WARN and ERROR lines there too; a
//!   line already shown from `observer.log` is not repeated). ERROR and WARN
//!   lines are bounded apart, so WARN noise never pushes an ERROR out;
//! - then the last lines of `log/obhost_observer.out`, the launcher's captured
//!   output (a start that fails before the observer logs anything says why there);
//! - the OceanBase error code of the first ERROR line since the mark that names
//!   one (`errcode=-N` or `ret=-N`), and a hint for it (see [`hints`]).
//!
//! Which "first" line: OceanBase 4.x logs its errors at two levels. ERROR lines
//! are the ones written for the operator (they also go to `alert.log`); EDIAG
//! lines are developer diagnostics, and a normal bootstrap already writes some
//! (seekdb logs `submit log fail(ret=-4109)` on every first start). So the code
//! is that of the first ERROR-level line that carries one, and only when no
//! ERROR line does, that of the first EDIAG line. On a taken port seekdb gives
//! `-4016` ("observer start fail"), not the bootstrap's `-4109`.
//!
//! A file whose device or inode changed since the mark (rotated, recreated) or
//! that shrank (truncated) is read from its start: all of it is since the mark.
//! Every read is bounded: at most [`SCAN_WINDOW`] bytes of a log (its end when
//! more was written), lines cut at [`MAX_LINE`] bytes, at most
//! [`MAX_ERROR_LINES`] lines per log. The scan streams through a fixed buffer, so
//! memory stays small whatever the log holds.
//!
//! Files are read as the home's owner would be allowed to: through
//! [`confined::canonical`] (symlinks followed only when root made them, as the
//! seekdb wrapper's `log/observer.log -> seekdb.log` is when obhostd runs it) and
//! [`confined::open_read`] (a regular file with one link, owned by the uid that
//! owns the home). The home's owner could otherwise point `log/observer.log` at a
//! root-only file and read it back in a step's `log_tail`.
//!
//! Everything here is blocking file I/O: callers run it on the blocking pool.

pub mod hints;

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::confined;
pub use hints::{ObErrorHint, hint};

/// The observer's log, relative to its home.
pub const LOG: &str = "log/observer.log";
/// Where OceanBase also writes its WARN and ERROR lines.
pub const WF: &str = "log/observer.log.wf";
/// The launcher's stdout and stderr, captured by obhostd.
pub const OUT: &str = "log/obhost_observer.out";

/// At most this many ERROR lines of each log.
pub const MAX_ERROR_LINES: usize = 20;
/// And at most this many WARN lines, besides.
pub const MAX_WARN_LINES: usize = 10;
/// At most this many lines of the launcher's output.
pub const MAX_OUT_LINES: usize = 10;
/// A line longer than this is cut (a step record carries every line).
pub const MAX_LINE: usize = 4096;
/// At most this much of a log is scanned: its last bytes since the mark.
/// Large enough for a start's worth of INFO lines, small enough to scan in tens
/// of milliseconds.
pub const SCAN_WINDOW: u64 = 32 << 20;
/// At most this much of the launcher's output is read.
const OUT_WINDOW: u64 = 64 << 10;
/// Lines of `observer.log` remembered so the `.wf` file does not repeat them.
const MAX_REMEMBERED: usize = 16_384;

/// Where one file stood: its identity and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

/// Where the observer's logs stood when a start began. Stored with the step, so
/// a diagnosis after a restart of obhostd still reads only what this start wrote.
/// A file that did not exist (a first start) has no mark: all of it is new.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogMark {
    #[serde(default)]
    pub log: Option<FileMark>,
    #[serde(default)]
    pub wf: Option<FileMark>,
    #[serde(default)]
    pub out: Option<FileMark>,
}

/// What the observer's logs say about a failed start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnosis {
    /// For `StepError.log_tail`: each file introduced by `==> path <==`.
    pub lines: Vec<String>,
    /// For `details.ob_errcode`: "-4016".
    pub ob_errcode: Option<String>,
    /// What the code means and what to do, when it is a common one.
    pub hint: Option<String>,
}

impl LogMark {
    /// Where the logs under `home` stand now. Never fails: a file that cannot be
    /// read (missing, refused) gets no mark, and is then read from its start.
    pub fn take(home: &Path) -> LogMark {
        let Some(owner) = home_owner(home) else {
            return LogMark::default();
        };
        let mark = |name| open_log(home, name, owner).ok().and_then(|f| file_mark(&f));
        LogMark {
            log: mark(LOG),
            wf: mark(WF),
            out: mark(OUT),
        }
    }
}

/// What the observer of `home` wrote since `since`: its WARN and ERROR lines, the
/// launcher's output, and the first OceanBase error code with a hint.
pub fn diagnose(home: &Path, since: &LogMark) -> Diagnosis {
    let mut d = Diagnosis::default();
    let Some(owner) = home_owner(home) else {
        return d;
    };
    let mut codes = FirstCodes::default();
    let mut shown: HashSet<u64> = HashSet::new();
    for (name, mark) in [(LOG, since.log), (WF, since.wf)] {
        let remember = name == LOG;
        let mut errors = Last::new(MAX_ERROR_LINES);
        let mut warnings = Last::new(MAX_WARN_LINES);
        let mut seq = 0u64;
        let read = read_since(home, name, owner, mark, SCAN_WINDOW, |line| {
            let Some(level) = level(line) else {
                return;
            };
            if level != Level::Warn {
                codes.see(level, line);
            }
            let h = hash(line);
            if remember {
                if shown.len() < MAX_REMEMBERED {
                    shown.insert(h);
                }
            } else if shown.contains(&h) {
                return;
            }
            seq += 1;
            let kept = if level == Level::Warn {
                &mut warnings
            } else {
                &mut errors
            };
            kept.push((seq, line.to_string()));
        });
        section(&mut d.lines, home, name, read, errors.merge(warnings));
    }
    let mut out = Last::new(MAX_OUT_LINES);
    let mut seq = 0u64;
    let read = read_since(home, OUT, owner, since.out, OUT_WINDOW, |line| {
        seq += 1;
        out.push((seq, line.to_string()))
    });
    section(&mut d.lines, home, OUT, read, out.merge(Last::new(0)));
    d.ob_errcode = codes.best();
    d.hint = d
        .ob_errcode
        .as_deref()
        .and_then(hint)
        .map(ObErrorHint::render);
    d
}

/// Appends one file's lines under its header; a file that was refused says so
/// (the operator should know a log was there but not read), a missing one is
/// left out.
fn section(
    out: &mut Vec<String>,
    home: &Path,
    name: &str,
    read: io::Result<()>,
    lines: Vec<String>,
) {
    let header = format!("==> {} <==", home.join(name).display());
    match read {
        Ok(()) if lines.is_empty() => {}
        Ok(()) => {
            out.push(header);
            out.extend(lines);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            out.push(header);
            out.push(cut(&format!("(obhostd did not read it: {e})")));
        }
    }
}

/// The uid that owns the home: the only owner a log under it may have.
fn home_owner(home: &Path) -> Option<u32> {
    confined::metadata(home).ok().map(|m| m.st_uid)
}

/// Opens `home/name` as its owner may see it: root's links followed, others
/// refused; a regular file with one link, owned by `owner`.
fn open_log(home: &Path, name: &str, owner: u32) -> io::Result<std::fs::File> {
    let path = confined::canonical(&home.join(name))?;
    confined::open_read(&path, Some(owner))
}

fn file_mark(f: &std::fs::File) -> Option<FileMark> {
    let m = f.metadata().ok()?;
    Some(FileMark {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
    })
}

/// Where to start reading a file that stands at `now`: after the mark when it
/// is the same file and has not shrunk; otherwise (new, rotated, recreated,
/// truncated) everything in it is since the mark.
fn start_offset(now: &FileMark, then: Option<FileMark>) -> u64 {
    match then {
        Some(t) if t.dev == now.dev && t.ino == now.ino && t.len <= now.len => t.len,
        _ => 0,
    }
}

/// Calls `each` with every line of `home/name` written since `mark`, reading
/// at most the last `window` bytes of it.
fn read_since(
    home: &Path,
    name: &str,
    owner: u32,
    mark: Option<FileMark>,
    window: u64,
    each: impl FnMut(&str),
) -> io::Result<()> {
    let mut f = open_log(home, name, owner)?;
    let now = file_mark(&f).ok_or_else(|| io::Error::other("cannot stat it"))?;
    let from = start_offset(&now, mark);
    let start = from.max(now.len.saturating_sub(window));
    f.seek(SeekFrom::Start(start))?;
    // Read up to the length seen now: what is appended meanwhile is the next
    // diagnosis's, and the bound holds however fast the file grows.
    scan_lines(f.take(now.len - start), start > from, each)
}

/// Splits `r` into lines through a fixed buffer, each cut at [`MAX_LINE`] bytes
/// (so one endless line cannot take memory); the first line is skipped when
/// `skip_first` (we started in the middle of it).
fn scan_lines(mut r: impl Read, skip_first: bool, mut each: impl FnMut(&str)) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut cut_line = false;
    let mut skipping = skip_first;
    let mut emit = |line: &mut Vec<u8>, was_cut: bool, skipping: bool| {
        if !skipping {
            let text = String::from_utf8_lossy(line);
            let text = text.trim_end_matches('\r');
            if was_cut {
                each(&format!("{text} …[line cut at {MAX_LINE} bytes]"));
            } else {
                each(text);
            }
        }
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for part in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match part.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (part, false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            if body.len() > room {
                cut_line = true;
            }
            line.extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                emit(&mut line, cut_line, skipping);
                cut_line = false;
                skipping = false;
            }
        }
    }
    if !line.is_empty() || cut_line {
        // The observer may have died in the middle of its last line.
        emit(&mut line, cut_line, skipping);
    }
    Ok(())
}

/// The level of an OceanBase log line when it is WARN or an error level: the
/// word after the `[timestamp] ` that opens every line (`[2026-12-06
/// 03:50:01.123456] ERROR [SERVER] ...`). Continuation lines (no timestamp)
/// have none.
fn level(line: &str) -> Option<Level> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find("] ")?;
    let stamp = rest.get(..close)?;
    let looks_like_time = stamp.len() >= 19
        && stamp.starts_with(|c: char| c.is_ascii_digit())
        && stamp
            .chars()
            .all(|c| c.is_ascii_digit() || "-: .".contains(c));
    if !looks_like_time {
        return None;
    }
    match rest.get(close + 2..)?.split_whitespace().next()? {
        "ERROR" | "FATAL" => Some(Level::Error),
        "EDIAG" => Some(Level::Diag),
        "WARN" | "WDIAG" => Some(Level::Warn),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// ERROR (and FATAL): written for the operator.
    Error,
    /// EDIAG: a 4.x developer diagnostic at error level.
    Diag,
    /// WARN (and 4.x's WDIAG): context around the errors, never their code,
    /// and kept apart so that a flood of them cannot push the errors out.
    Warn,
}

/// The OceanBase error code a line names: `errcode=-N` first, else `ret=-N`.
/// OceanBase's own codes have 4 or 5 digits (-4000 and beyond); a `ret=-1` from
/// a system call is not one.
pub fn errcode(line: &str) -> Option<String> {
    ["errcode=-", "ret=-"]
        .iter()
        .find_map(|key| code_after(line, key))
}

fn code_after(line: &str, key: &str) -> Option<String> {
    let mut from = 0;
    while let Some(i) = line.get(from..)?.find(key) {
        let at = from + i;
        let starts_word = line
            .get(..at)?
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = line.get(at + key.len()..)?;
        let digits = after.split(|c: char| !c.is_ascii_digit()).next()?;
        if starts_word && (4..=6).contains(&digits.len()) {
            return Some(format!("-{digits}"));
        }
        from = at + key.len();
    }
    None
}

/// The first code seen at each level; ERROR wins over EDIAG.
#[derive(Default)]
struct FirstCodes {
    error: Option<String>,
    diag: Option<String>,
}

impl FirstCodes {
    fn see(&mut self, level: Level, line: &str) {
        let slot = match level {
            Level::Error => &mut self.error,
            Level::Diag => &mut self.diag,
            Level::Warn => return,
        };
        if slot.is_none() {
            *slot = errcode(line);
        }
    }

    fn best(self) -> Option<String> {
        self.error.or(self.diag)
    }
}

/// The last `n` lines pushed, each with its place in the file.
struct Last(VecDeque<(u64, String)>, usize);

impl Last {
    fn new(n: usize) -> Last {
        Last(VecDeque::with_capacity(n), n)
    }

    fn push(&mut self, line: (u64, String)) {
        if self.1 == 0 {
            return;
        }
        if self.0.len() == self.1 {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    /// Both sets of lines, in the order the file has them.
    fn merge(self, other: Last) -> Vec<String> {
        let mut all: Vec<(u64, String)> = self.0.into_iter().chain(other.0).collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, line)| line).collect()
    }
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_LINE) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests;
