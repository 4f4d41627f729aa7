//! TailObserverLog's reader: the last lines of `<home>/log/observer.log`, then
//! (with follow) every line written after them, across rotation.
//!
//! Why it is built this way:
//!
//! - obhostd reads as root in a dir the observer's user owns, so every open goes
//!   through [`crate::confined`]: no symlink anywhere in the path, and the file
//!   must be a regular file with one link that belongs to the home's owner. The
//!   rule holds for every file a rotation later puts at the path, too: a link
//!   planted there ends the stream with a refusal, it is never read through.
//! - Memory per stream is bounded whatever the file holds. The start of the last
//!   N lines is found by reading backwards in 64 KiB chunks and counting line
//!   starts (nothing is kept but one chunk), then lines are read forwards from
//!   there and handed out in batches ([`BATCH_LINES`], [`BATCH_BYTES`]). A line
//!   is cut at [`MAX_LINE_BYTES`]: the rest is counted, never kept, the partial
//!   last line held until its newline included.
//! - Rotation: OceanBase renames `observer.log` to `observer.log.<time>` and
//!   creates a new one (logrotate's `create` mode does the same). The open fd
//!   keeps reading the renamed file; only at its end is the path looked at again.
//!   When the path names another file (device, inode), the old fd is read to its
//!   end once more (what was written between our last read and the rename), its
//!   unterminated last line, if any, is sent as a line, and then the new file is
//!   read from its start: no line lost, none sent twice. A file that shrinks under
//!   us (`copytruncate`) is read again from 0. Writes the observer makes to the
//!   renamed file after we switched are not seen; OceanBase reopens its log right
//!   after the rename, under the same lock, so there are none. A file renamed
//!   away before it was ever opened (two rotations within one poll) is not
//!   read: the path is all a follow knows. At OceanBase's 256 MiB per file that
//!   takes more than a gigabyte of log a second.
//! - Everything here is blocking file work. The RPC runs each [`Tail::read`] on
//!   the blocking pool and sleeps between polls on the runtime, so an idle
//!   follow holds a file descriptor and a few buffers, never a thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;

use crate::bounds::quote;
use crate::confined;

/// Lines sent first when the request names no number.
pub const DEFAULT_LINES: usize = 100;
/// The most lines a request may ask for first; more is taken as this.
pub const MAX_LINES: usize = 10_000;
/// A longer line is cut to this many bytes, its mark included.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// A batch (one response message) is closed once it holds this many lines...
pub const BATCH_LINES: usize = 1000;
/// ...or this many bytes of text. It is checked after each chunk read, so a
/// message stays under BATCH_BYTES + CHUNK + MAX_LINE_BYTES plus per-line
/// framing: far below the 4 MiB a gRPC client accepts by default.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Bytes read per system call, backwards and forwards.
const CHUNK: usize = 64 * 1024;
/// The initial tail looks back at most this far from the end of the file
/// (OceanBase rotates observer.log at 256 MiB by default): a file of one
/// endless line, or errors_only over a log with no error, costs a bounded scan.
const MAX_SCAN: u64 = 256 << 20;
/// Bytes of a line's start the level is looked for in: `[` + a 26-byte
/// timestamp + `] ` + the level.
const HEAD: usize = 80;

/// Why a tail could not start or go on. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "home_path '{0}' does not exist; give the observer's home dir, e.g. /home/admin/oceanbase"
    )]
    NoHome(String),
    #[error(
        "home_path '{0}' is not a directory; give the observer's home dir, e.g. /home/admin/oceanbase"
    )]
    NotADir(String),
    #[error(
        "'{0}' does not exist: no observer has logged in this home yet; check home_path, or follow to wait for the log to appear"
    )]
    NoLog(String),
    #[error("cannot read '{path}': {reason}")]
    Refused { path: String, reason: String },
    #[error("reading '{path}' failed: {source}; see obhostd's log")]
    Io { path: String, source: io::Error },
}

/// What one [`Tail::read`] found.
#[derive(Debug, Default)]
pub struct Batch {
    /// In file order, without their newline.
    pub lines: Vec<String>,
    /// Everything there is was read: with follow, poll again later; without,
    /// the tail is over.
    pub caught_up: bool,
}

/// One tail of one observer's log: the file open now and how far it was read.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// The home's owner: the only uid whose files are read.
    owner: u32,
    errors_only: bool,
    follow: bool,
    /// None with follow while no log exists (yet, or between a rename and the
    /// new file's creation when the old one was already done).
    source: Option<Source>,
    /// The line being read, up to MAX_LINE_BYTES, and how much of it was left out.
    partial: Vec<u8>,
    dropped: usize,
    /// Without follow: where the file ended when the tail began.
    stop_at: Option<u64>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Source {
    file: File,
    /// (device, inode): how a rotation is recognised.
    id: (u64, u64),
    pos: u64,
    /// The path names another file now: read this one to its end, then switch.
    retiring: bool,
}

impl Tail {
    /// Opens the log of `home` (already checked against allowed_roots) and
    /// places the read position at the start of its last `lines` lines (those
    /// kept by `errors_only`). With `follow`, a log that does not exist yet is
    /// waited for rather than refused.
    pub fn open(
        home: &Path,
        lines: usize,
        errors_only: bool,
        follow: bool,
    ) -> Result<Tail, LogError> {
        let shown = || quote(&home.display().to_string());
        let st = confined::metadata(home).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LogError::NoHome(shown()),
            _ => refused(home, e),
        })?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            return Err(LogError::NotADir(shown()));
        }
        let mut tail = Tail {
            path: home.join("log/observer.log"),
            owner: st.st_uid,
            errors_only,
            follow,
            source: None,
            partial: Vec::new(),
            dropped: 0,
            stop_at: None,
            buf: vec![0; CHUNK],
        };
        match tail.open_source() {
            Ok(Some(mut src)) => {
                let len = src.len(&tail.path)?;
                src.pos = tail_start(&src.file, len, lines.max(1), |head| tail.keeps(head))
                    .map_err(|e| io_error(&tail.path, e))?;
                if !follow {
                    tail.stop_at = Some(len);
                }
                tail.source = Some(src);
            }
            Ok(None) if follow => {}
            Ok(None) => return Err(LogError::NoLog(tail.path.display().to_string())),
            Err(e) => return Err(e),
        }
        Ok(tail)
    }

    /// Reads what is there now, up to about one batch.
    pub fn read(&mut self) -> Result<Batch, LogError> {
        let mut out = Batch::default();
        let mut bytes = 0;
        loop {
            if out.lines.len() >= BATCH_LINES || bytes >= BATCH_BYTES {
                return Ok(out);
            }
            let Some(src) = self.source.as_mut() else {
                match self.open_source()? {
                    // A new file after a rotation, or the first one: from its start.
                    Some(src) => {
                        self.source = Some(src);
                        continue;
                    }
                    None => {
                        out.caught_up = true;
                        return Ok(out);
                    }
                }
            };
            let want = match self.stop_at {
                Some(stop) => usize::try_from(stop.saturating_sub(src.pos))
                    .unwrap_or(CHUNK)
                    .min(CHUNK),
                None => CHUNK,
            };
            let n = if want == 0 {
                0
            } else {
                read_at(&src.file, &mut self.buf[..want], src.pos)
                    .map_err(|e| io_error(&self.path, e))?
            };
            if n > 0 {
                src.pos += n as u64;
                let chunk = std::mem::take(&mut self.buf);
                bytes += self.take(&chunk[..n], &mut out.lines);
                self.buf = chunk;
                continue;
            }
            // At the end of what this file holds now.
            if !self.follow {
                self.flush(&mut out.lines);
                out.caught_up = true;
                return Ok(out);
            }
            if src.retiring {
                // The renamed file is read to its end: its last line is
                // complete as far as it will ever be.
                self.flush(&mut out.lines);
                self.source = None;
                continue;
            }
            match confined::metadata(&self.path) {
                Ok(st) if (st.st_dev, st.st_ino) == src.id => {
                    if src.len(&self.path)? < src.pos {
                        // Truncated in place: what we held of a line is gone.
                        src.pos = 0;
                        self.partial.clear();
                        self.dropped = 0;
                        continue;
                    }
                    out.caught_up = true;
                    return Ok(out);
                }
                // Renamed, the new one not created yet: nothing to switch to.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    out.caught_up = true;
                    return Ok(out);
                }
                // Another file, or something that cannot be opened (a link):
                // finish this one first; opening the next says what is wrong.
                Ok(_) | Err(_) => src.retiring = true,
            }
        }
    }

    /// Opens the file at the path under the confined rules; None if there is
    /// none.
    fn open_source(&self) -> Result<Option<Source>, LogError> {
        let file = match confined::open_read(&self.path, Some(self.owner)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused(&self.path, e)),
        };
        let st = nix::sys::stat::fstat(&file).map_err(|e| io_error(&self.path, e.into()))?;
        Ok(Some(Source {
            file,
            id: (st.st_dev, st.st_ino),
            pos: 0,
            retiring: false,
        }))
    }

    fn keeps(&self, line: &[u8]) -> bool {
        !self.errors_only || is_error(line)
    }

    /// Splits `bytes` into lines, the first continuing the held partial line;
    /// the last, unterminated, piece is held. Returns the bytes added to `out`.
    fn take(&mut self, mut bytes: &[u8], out: &mut Vec<String>) -> usize {
        let mut added = 0;
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.hold(&bytes[..i]);
            added += self.flush(out);
            bytes = &bytes[i + 1..];
        }
        self.hold(bytes);
        added
    }

    /// Adds to the partial line what fits under MAX_LINE_BYTES; counts the rest.
    fn hold(&mut self, piece: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        let kept = piece.len().min(room);
        self.partial.extend_from_slice(&piece[..kept]);
        self.dropped += piece.len() - kept;
    }

    /// Ends the partial line (if there is one) and sends it if it is kept.
    fn flush(&mut self, out: &mut Vec<String>) -> usize {
        if self.partial.is_empty() && self.dropped == 0 {
            return 0;
        }
        let raw = std::mem::take(&mut self.partial);
        let dropped = std::mem::take(&mut self.dropped);
        if !self.keeps(&raw) {
            return 0;
        }
        let line = finish(&raw, dropped);
        let n = line.len();
        out.push(line);
        n
    }
}

impl Source {
    fn len(&self, path: &Path) -> Result<u64, LogError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io_error(path, e))
    }
}

fn refused(path: &Path, e: io::Error) -> LogError {
    LogError::Refused {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `pread` that retries on EINTR; 0 at the end of the file.
fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, pos) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The offset where the last `n` lines of `file[..end]` that `keep` accepts
/// begin, found by reading backwards a chunk at a time; `keep` sees each line's
/// first [`HEAD`] bytes. An unterminated last line counts as a line. Fewer
/// lines in the file: 0. Past [`MAX_SCAN`] bytes: the first line that starts
/// within them.
fn tail_start(file: &File, end: u64, n: usize, keep: impl Fn(&[u8]) -> bool) -> io::Result<u64> {
    let floor = end.saturating_sub(MAX_SCAN);
    let mut found = 0;
    // The first HEAD bytes after the chunk being scanned: the heads of lines
    // that start at its last byte's end.
    let mut carry: Vec<u8> = Vec::new();
    let mut chunk_end = end;
    let mut earliest = end;
    let mut buf = Vec::with_capacity(CHUNK + HEAD);
    while chunk_end > floor {
        let chunk_start = chunk_end.saturating_sub(CHUNK as u64).max(floor);
        let len = usize::try_from(chunk_end - chunk_start).unwrap_or(CHUNK);
        buf.clear();
        buf.resize(len, 0);
        let mut got = 0;
        while got < len {
            let r = read_at(file, &mut buf[got..len], chunk_start + got as u64)?;
            if r == 0 {
                // The file shrank meanwhile: what is gone is not tailed.
                buf.truncate(got);
                break;
            }
            got += r;
        }
        let body = buf.len();
        buf.extend_from_slice(&carry);
        for i in (0..body).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            let start = chunk_start + i as u64 + 1;
            if start >= end {
                continue; // the newline ending the last line starts nothing
            }
            earliest = start;
            let head = &buf[i + 1..(i + 1 + HEAD).min(buf.len())];
            if keep(head) {
                found += 1;
                if found == n {
                    return Ok(start);
                }
            }
        }
        buf.truncate(HEAD);
        std::mem::swap(&mut carry, &mut buf);
        chunk_end = chunk_start;
    }
    // The file's first line is the last candidate; either way the tail
    // begins there. Past the scan bound, at the first whole line seen.
    Ok(if floor == 0 { 0 } else { earliest })
}

/// A line as sent: UTF-8 (invalid bytes replaced), cut to MAX_LINE_BYTES with
/// a mark saying how much was left out.
fn finish(raw: &[u8], dropped: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let full = text.len() + dropped;
    if full <= MAX_LINE_BYTES {
        return text.into_owned();
    }
    let mark_len = "…[truncated  bytes]".len() + full.to_string().len();
    let mut keep = MAX_LINE_BYTES.saturating_sub(mark_len).min(text.len());
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}…[truncated {} bytes]", &text[..keep], full - keep)
}

/// The level of an OceanBase log line: the word after the `]` that closes its
/// leading `[timestamp]`, e.g. `ERROR` in
/// `[2026-12-06 03:50:01.123456] ERROR [SERVER] start (ob_server.cpp:123) ...`.
/// None for a line without one (a continuation, a stack frame, a banner).
pub fn level(line: &[u8]) -> Option<&[u8]> {
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let rest = line.strip_prefix(b"[")?;
    let close = rest.iter().take(HEAD).position(|&b| b == b']')?;
    let rest = &rest[close + 1..];
    let rest = &rest[rest.iter().position(|&b| b != b' ')?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_uppercase())
        .unwrap_or(rest.len());
    let ends_word = rest.get(end).is_none_or(|&b| b == b' ' || b == b'\r');
    (end > 0 && ends_word).then_some(&rest[..end])
}

/// What `errors_only` keeps: WARN and ERROR, FATAL (older releases), and
/// EDIAG, OceanBase 4.x's error diagnostic (where a failing error code was
/// first raised, often the cause an ERROR line only reports). WDIAG, its
/// warning diagnostic, is left out: with 4.x's default syslog_level it is
/// most of the log (internal retries), and would bury the errors.
pub fn is_error(line: &[u8]) -> bool {
    matches!(level(line), Some(b"WARN" | b"ERROR" | b"FATAL" | b"EDIAG"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ERR: &str = "[2026-12-06 03:50:01.123456] ERROR [SERVER] start (ob_server.cpp:123) [12345][T1][Y0-0000000000000000-0-0] [lt=5] [errcode=-4016] observer start fail";

    fn line(level: &str, i: usize) -> String {
        format!(
            "[2026-12-06 03:50:01.{i:06}] {level} [SERVER] line {i} (ob_server.cpp:1) [1][T1][Y0-0-0-0] [lt=1]\n"
        )
    }

    /// A home owned by us with log/observer.log holding `text`.
    fn home(text: &str) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir(home.join("log")).unwrap();
        std::fs::write(home.join("log/observer.log"), text).unwrap();
        (t, home)
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// Reads until caught up; a reader that never catches up fails the test
    /// instead of hanging it.
    fn all(t: &mut Tail) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..100_000 {
            let b = t.read().unwrap();
            lines.extend(b.lines);
            if b.caught_up {
                return lines;
            }
        }
        panic!("the reader never caught up");
    }

    #[test]
    fn the_level_is_the_word_after_the_timestamp() {
        assert_eq!(level(ERR.as_bytes()), Some(&b"ERROR"[..]));
        assert_eq!(
            level(b"[2026-12-06 03:50:01.123456] INFO  [CLOG] x"),
            Some(&b"INFO"[..])
        );
        assert_eq!(
            level(b"[2026-12-06 03:50:01.123456] WDIAG [SQL] x"),
            Some(&b"WDIAG"[..])
        );
        assert_eq!(
            level(b"[2026-12-06 03:50:01.123456] ERROR"),
            Some(&b"ERROR"[..])
        );
        assert_eq!(
            level(b"[2026-12-06 03:50:01.123456] ERROR\nnext"),
            Some(&b"ERROR"[..])
        );
        for none in [
            &b"ERROR at the start"[..],
            b"  continuation ERROR [x]",
            b"[2026-12-06 03:50:01.123456]",
            b"[2026-12-06 03:50:01.123456] ERROR: x",
            b"[2026-12-06 03:50:01.123456] error x",
            b"[no close bracket ERROR x",
            b"",
        ] {
            assert_eq!(level(none), None, "{}", String::from_utf8_lossy(none));
        }
        assert!(is_error(ERR.as_bytes()));
        assert!(!is_error(b"[2026-12-06 03:50:01.123456] ERRORS x"));
        for kept in ["WARN", "ERROR", "EDIAG", "FATAL"] {
            assert!(is_error(line(kept, 1).as_bytes()), "{kept}");
        }
        for left in ["INFO", "WDIAG", "TRACE", "DEBUG"] {
            assert!(!is_error(line(left, 1).as_bytes()), "{left}");
        }
    }

    #[test]
    fn the_last_n_lines_and_only_them() {
        let text: String = (0..10_000).map(|i| line("INFO", i)).collect();
        let (_t, home) = home(&text);
        let mut t = Tail::open(&home, 3, false, false).unwrap();
        let got = all(&mut t);
        assert_eq!(got.len(), 3);
        assert!(got[0].contains("line 9997 "), "{got:?}");
        assert!(got[2].contains("line 9999 "), "{got:?}");
        // More than there are: all of them, from the first.
        let (_t, home) = self::home("a\nb\n");
        assert_eq!(
            all(&mut Tail::open(&home, 100, false, false).unwrap()),
            ["a", "b"]
        );
        // An unterminated last line counts (without follow it is sent as is).
        let (_t, home) = self::home("a\nb\nc");
        assert_eq!(
            all(&mut Tail::open(&home, 2, false, false).unwrap()),
            ["b", "c"]
        );
        let (_t, home) = self::home("");
        assert!(all(&mut Tail::open(&home, 2, false, false).unwrap()).is_empty());
    }

    #[test]
    fn errors_only_counts_the_kept_lines_across_chunks() {
        // Errors far apart: the backward scan crosses many chunks between them.
        let mut text = String::new();
        for i in 0..20_000 {
            let lvl = if i % 5000 == 7 {
                "ERROR"
            } else if i % 3 == 0 {
                "WDIAG"
            } else {
                "INFO"
            };
            text.push_str(&line(lvl, i));
        }
        let (_t, home) = home(&text);
        let got = all(&mut Tail::open(&home, 3, true, false).unwrap());
        let want: Vec<String> = [5007, 10007, 15007]
            .iter()
            .map(|&i| line("ERROR", i).trim_end().to_string())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_level_split_across_a_chunk_boundary_is_still_seen() {
        // Chunks are counted back from the end: put the error line's start
        // `shift` bytes before the last chunk, so its head spans both.
        for shift in [1usize, 5, 20, 40, HEAD - 1] {
            let error = line("ERROR", 1);
            let pad = CHUNK + shift - error.len();
            let text = format!("x\n{error}{}\n", "y".repeat(pad - 1));
            let (_t, home) = home(&text);
            let got = all(&mut Tail::open(&home, 1, true, false).unwrap());
            assert_eq!(got, [error.trim_end()], "shift {shift}");
        }
    }

    #[test]
    fn long_lines_are_cut_with_a_mark() {
        let long = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        let (_t, home) = home(&format!("short\n{long}\nafter\n"));
        let got = all(&mut Tail::open(&home, 3, false, false).unwrap());
        assert_eq!(got[0], "short");
        assert!(got[1].len() <= MAX_LINE_BYTES, "{}", got[1].len());
        assert!(
            got[1].ends_with(" bytes]"),
            "{}",
            &got[1][got[1].len() - 40..]
        );
        let shown = got[1].split('…').next().unwrap().len();
        assert!(got[1].contains(&format!("[truncated {} bytes]", 2 * MAX_LINE_BYTES - shown)));
        assert_eq!(got[2], "after");
    }

    #[test]
    fn follow_holds_a_partial_line_until_its_newline() {
        let (_t, home) = home("one\ntw");
        let log = home.join("log/observer.log");
        let mut t = Tail::open(&home, 10, false, true).unwrap();
        assert_eq!(all(&mut t), ["one"]);
        append(&log, "o\nthr");
        assert_eq!(all(&mut t), ["two"]);
        append(&log, "ee\n");
        assert_eq!(all(&mut t), ["three"]);
        assert!(all(&mut t).is_empty());
    }

    #[test]
    fn rotation_loses_and_repeats_nothing() {
        let (_t, home) = home("a1\na2\n");
        let log = home.join("log/observer.log");
        let mut t = Tail::open(&home, 10, false, true).unwrap();
        assert_eq!(all(&mut t), ["a1", "a2"]);
        // Written to the old file after our last read, then renamed, then a
        // new file: the old one's rest comes first, its unterminated line as a
        // line of its own, then the new file from its start.
        let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        old.write_all(b"a3\n").unwrap();
        std::fs::rename(&log, home.join("log/observer.log.20261206035001")).unwrap();
        old.write_all(b"a4\na5-partial").unwrap();
        assert_eq!(
            all(&mut t),
            ["a3", "a4"],
            "no new file yet: keep reading the old"
        );
        std::fs::write(&log, "b1\nb2\n").unwrap();
        assert_eq!(all(&mut t), ["a5-partial", "b1", "b2"]);
        append(&log, "b3\n");
        assert_eq!(all(&mut t), ["b3"]);
    }

    #[test]
    fn a_truncated_log_is_read_again_from_its_start() {
        let (_t, home) = home("a1\na2\n");
        let log = home.join("log/observer.log");
        let mut t = Tail::open(&home, 10, false, true).unwrap();
        assert_eq!(all(&mut t), ["a1", "a2"]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, "c\n");
        assert_eq!(all(&mut t), ["c"]);
    }

    #[test]
    fn follow_waits_for_a_log_that_does_not_exist_yet() {
        let t = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(t.path()).unwrap();
        let e = Tail::open(&home, 10, false, false).unwrap_err();
        assert!(matches!(e, LogError::NoLog(_)), "{e}");
        let mut tail = Tail::open(&home, 10, false, true).unwrap();
        assert!(all(&mut tail).is_empty());
        std::fs::create_dir(home.join("log")).unwrap();
        std::fs::write(home.join("log/observer.log"), "first\n").unwrap();
        assert_eq!(all(&mut tail), ["first"]);
        let e = Tail::open(&home.join("missing"), 10, false, true).unwrap_err();
        assert!(matches!(e, LogError::NoHome(_)), "{e}");
    }

    #[test]
    fn a_link_at_the_path_is_refused_then_and_after_a_rotation() {
        let (_t, home) = home("mine\n");
        let secret = home.join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        let log = home.join("log/observer.log");
        let mut t = Tail::open(&home, 10, false, true).unwrap();
        assert_eq!(all(&mut t), ["mine"]);
        std::fs::rename(&log, home.join("log/observer.log.1")).unwrap();
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        let e = t.read().unwrap_err();
        assert!(matches!(e, LogError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = Tail::open(&home, 10, false, false).unwrap_err();
        assert!(matches!(e, LogError::Refused { .. }), "{e}");
    }

    #[test]
    fn batches_are_bounded() {
        let text: String = (0..5000).map(|i| format!("{i}\n")).collect();
        let (_t, home) = home(&text);
        let mut t = Tail::open(&home, MAX_LINES, false, false).unwrap();
        let first = t.read().unwrap();
        assert!(!first.caught_up);
        assert!(first.lines.len() >= BATCH_LINES && first.lines.len() < BATCH_LINES + CHUNK);
        let mut lines = first.lines;
        lines.extend(all(&mut t));
        assert_eq!(lines.len(), 5000);
        assert!(lines.iter().enumerate().all(|(i, l)| *l == i.to_string()));
    }
}
