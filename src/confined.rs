//! File operations that cannot be redirected by a symlink or a hard link.
//!
//! obhostd runs as root, but the directories it works in (an observer's home, its
//! `run/` and `log/`, the agent's dir) belong to the observer's user. That user can
//! plant a symlink (`log/obhost_observer.out -> /etc/shadow`) or swap a directory
//! for a link between our check and our use, and every root `open`, `chown` or
//! `unlink` that follows it would act on a file the user may not touch. So:
//!
//! - A path is made [`canonical`] (symlinks resolved) before it is checked against
//!   `allowed_roots`; from then on it is only ever opened with `openat2(2)` and
//!   `RESOLVE_NO_SYMLINKS`, so what is used is exactly what was checked: if any
//!   component became a link since, the operation fails with ELOOP instead.
//! - Files are created with `O_EXCL` and chowned through the open descriptor
//!   (`fchown`), never by name. An existing file is only used when it is a regular
//!   file with one link that belongs to the expected user: a hard link to a root
//!   file (where `fs.protected_hardlinks` is off) is refused, not appended to,
//!   chowned or read.
//! - Removal is `unlinkat` on a directory descriptor: it removes the link itself,
//!   never what a link points to.
//!
//! Everything here is blocking (it is plain syscalls on local files).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// Who a created file or dir belongs to (uid, gid).
pub type Owner = (u32, u32);

/// Most links followed while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Resolves every symlink in `path`, which must be absolute and free of `..`.
/// The part that does not exist yet is appended as given: it contains no links,
/// because it does not exist (and if a link appears there later, the operations
/// below refuse to follow it).
///
/// Only links owned by root are followed. A link that another user made (in a
/// home it owns, say) would let that user point the orchestrator's request at
/// any dir on the host, even with `allowed_roots` empty; links an administrator
/// made (`/home/admin/oceanbase -> /data/ob`) keep working.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path without '..'",
        ));
    }
    let mut pending: std::collections::VecDeque<OsString> = normal_parts(path).collect();
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&part);
        if missing {
            resolved = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                if m.uid() != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "'{}' is a symbolic link owned by uid {}; obhostd follows only links owned by root. Give the real path",
                            next.display(),
                            m.uid()
                        ),
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from(Errno::ELOOP));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for p in target_parts(&target).into_iter().rev() {
                    pending.push_front(p);
                }
            }
            Ok(_) => resolved = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                resolved = next;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

fn normal_parts(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        _ => None,
    })
}

/// A link target's parts, keeping `..` (which may legitimately climb out of the
/// link's dir).
fn target_parts(target: &Path) -> Vec<OsString> {
    target
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn how(flags: OFlag, mode: u32) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens an absolute path with no symlink anywhere in it.
fn open(path: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    openat2(nix::fcntl::AT_FDCWD, path, how(flags, mode)).map_err(refusal)
}

/// Opens `name` (one component) inside the directory `dir`.
fn open_in(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = how(flags, mode).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    );
    openat2(dir, name, how).map_err(refusal)
}

/// ELOOP from RESOLVE_NO_SYMLINKS means a link was met: say so in words.
fn refusal(e: Errno) -> io::Error {
    match e {
        Errno::ELOOP | Errno::EXDEV => io::Error::other(
            "a symbolic link is in the way (obhostd never follows links inside observer and agent dirs); remove the link",
        ),
        other => io::Error::from(other),
    }
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent dir",
        )),
    }
}

/// The directory `path`, opened for `*at` calls, refusing links.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
}

/// `stat` without following links anywhere in the path.
pub fn metadata(path: &Path) -> io::Result<nix::sys::stat::FileStat> {
    let fd = open(path, OFlag::O_PATH, 0)?;
    fstat(&fd).map_err(io::Error::from)
}

pub fn is_dir(path: &Path) -> bool {
    metadata(path)
        .is_ok_and(|m| SFlag::from_bits_truncate(m.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

pub fn exists(path: &Path) -> bool {
    metadata(path).is_ok()
}

/// Whether the dir holds anything (false when it is missing or unreadable).
pub fn dir_has_entries(path: &Path) -> bool {
    let Ok(fd) = open_dir(path) else {
        return false;
    };
    nix::dir::Dir::from_fd(fd).is_ok_and(|mut d| {
        d.iter()
            .flatten()
            .any(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
    })
}

fn chown_fd(fd: &impl AsFd, owner: Option<Owner>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) if Uid::effective().is_root() => {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(io::Error::from)
        }
        _ => Ok(()),
    }
}

/// Creates `dir` and its missing parents, each new one owned by `owner`, and
/// returns the dirs it created. Existing components are never chowned.
///
/// A new dir is born its owner's: the one `mkdirat` runs with this thread's
/// filesystem uid and gid switched to the owner's ([`make_dir`]), so nothing is
/// chowned by name afterwards. A chown of "the dir we just made" would reach
/// whatever the owner renamed into its place in between (a root-owned dir of
/// theirs, say), and "owned by root" does not mean "made by us".
pub fn create_dirs(dir: &Path, owner: Option<Owner>, mode: u32) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = dir;
    let mut base = loop {
        match open_dir(cur) {
            Ok(fd) => break fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (parent, name) = split(cur)?;
                missing.push(name);
                cur = parent;
            }
            Err(e) => return Err(e),
        }
    };
    let mut made = Vec::new();
    let mut path = cur.to_path_buf();
    for name in missing.into_iter().rev() {
        let new = make_dir(&base, name, mode, owner)?;
        path.push(name);
        let fd = open_in(&base, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
        if new {
            made.push(path.clone());
        }
        base = fd;
    }
    Ok(made)
}

/// Makes `name` in `parent` owned by `owner`; false when it existed already
/// (then it is left as it is).
///
/// As root with an owner, the dir is made with the thread's filesystem ids
/// set to the owner's, so it is theirs from birth. When the owner may not
/// write `parent` (a root-owned parent such as /data), root makes it and
/// chowns it through its descriptor; that is safe only where no other user
/// can rename anything into `parent`, which is checked first.
fn make_dir(parent: &OwnedFd, name: &OsStr, mode: u32, owner: Option<Owner>) -> io::Result<bool> {
    let mode = Mode::from_bits_truncate(mode);
    let Some((uid, gid)) = owner.filter(|_| Uid::effective().is_root()) else {
        return created(mkdirat(parent, name, mode));
    };
    let as_owner = {
        let _ids = FsIds::switch(uid, gid);
        mkdirat(parent, name, mode)
    };
    match as_owner {
        Err(Errno::EACCES | Errno::EPERM) => {}
        other => return created(other),
    }
    let st = fstat(parent)?;
    let others_may_write = st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0;
    if st.st_uid != 0 || others_may_write {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot create {name:?} for uid {uid}: uid {uid} may not write its parent dir, and that dir is not root's alone (owner uid {}, mode {:o}); create it by hand, owned by that user",
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    if !created(mkdirat(parent, name, mode))? {
        return Ok(false);
    }
    let fd = open_in(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
    chown_fd(&fd, owner)?;
    Ok(true)
}

fn created(r: nix::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// This thread's filesystem uid and gid, switched to another user's until
/// dropped (Linux keeps them per thread, so nothing else in obhostd is
/// affected). The gid goes first and comes back last: switching it needs
/// the privileges the uid switch gives up.
struct FsIds;

impl FsIds {
    fn switch(uid: u32, gid: u32) -> FsIds {
        nix::unistd::setfsgid(Gid::from_raw(gid));
        nix::unistd::setfsuid(Uid::from_raw(uid));
        FsIds
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        nix::unistd::setfsuid(Uid::effective());
        nix::unistd::setfsgid(Gid::effective());
    }
}

/// Checks that an existing file may be used for the observer's user: a regular
/// file, one link, owned by `uid`.
fn check_owned(fd: &OwnedFd, path: &Path, uid: Option<u32>) -> io::Result<()> {
    let st = fstat(fd)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let problem = if kind != SFlag::S_IFREG {
        Some("is not a regular file".to_string())
    } else if st.st_nlink != 1 {
        Some(format!("has {} hard links", st.st_nlink))
    } else {
        uid.filter(|u| *u != st.st_uid)
            .map(|uid| format!("belongs to uid {}, not uid {uid}", st.st_uid))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to use '{}': it {p}; remove it and try again",
                path.display()
            ),
        )),
    }
}

/// Opens `path` for appending (stdout/stderr of a process we start): created
/// new and owned by `owner`, or an existing file that already belongs to it.
pub fn open_append(path: &Path, owner: Option<Owner>, mode: u32) -> io::Result<std::fs::File> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    // O_NONBLOCK: opening a FIFO planted in our place must not hang the step.
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NONBLOCK;
    let fd = match open_in(&dir, name, flags | OFlag::O_CREAT | OFlag::O_EXCL, mode) {
        Ok(fd) => {
            chown_fd(&fd, owner)?;
            fd
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let fd = open_in(&dir, name, flags, 0)?;
            check_owned(&fd, path, owner.map(|o| o.0))?;
            fd
        }
        Err(e) => return Err(e),
    };
    clear_nonblock(&fd)?;
    Ok(std::fs::File::from(fd))
}

fn clear_nonblock(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Opens an existing file for reading, if it is a regular file with one link
/// owned by `uid` (when given).
pub fn open_read(path: &Path, uid: Option<u32>) -> io::Result<std::fs::File> {
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0)?;
    check_owned(&fd, path, uid)?;
    Ok(std::fs::File::from(fd))
}

/// Reads at most `max` bytes of a small file (a pid file).
pub fn read_small(path: &Path, uid: Option<u32>, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_read(path, uid)?.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last `lines` lines of a log, reading at most its last 64 KiB.
pub fn tail(path: &Path, uid: Option<u32>, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = open_read(path, uid) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(WINDOW).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // probably cut in the middle
    }
    let from = all.len().saturating_sub(lines);
    all[from..].iter().map(|l| l.to_string()).collect()
}

/// Replaces `path` with `contents` so that readers see the old file or the new
/// one: a fresh temp file (O_EXCL, so a planted name is never reused) in the
/// same dir, fsync, `renameat` over the name (which replaces a link, never its
/// target).
pub fn write_atomic(path: &Path, contents: &[u8], owner: Option<Owner>) -> io::Result<()> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    let tmp = loop {
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{:016x}.tmp", random()));
        match open_in(
            &dir,
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o644,
        ) {
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                let written = f
                    .write_all(contents)
                    .and_then(|()| f.sync_all())
                    .and_then(|()| chown_fd(&f, owner));
                if let Err(e) = written {
                    let _ = unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                break tmp;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    if let Err(e) = nix::fcntl::renameat(&dir, tmp.as_os_str(), &dir, name) {
        let _ = unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e.into());
    }
    let _ = nix::unistd::fsync(&dir);
    Ok(())
}

/// Removes the file (or link) `path` itself; false when it was not there.
pub fn remove_file(path: &Path) -> io::Result<bool> {
    let (parent, name) = split(path)?;
    let dir = match open_dir(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Temp names need not be secret (O_EXCL makes them safe), only unlikely to
/// collide: the clock and our pid are enough.
fn random() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    t ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn canonical_resolves_links_and_keeps_the_missing_tail() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        symlink(&real, t.path().join("link")).unwrap();
        let c = canonical(&t.path().join("link/a/b")).unwrap();
        assert_eq!(c, std::fs::canonicalize(&real).unwrap().join("a/b"));
        assert!(canonical(Path::new("rel")).is_err());
        // Relative targets and '..' inside them resolve like the kernel does.
        symlink("../real/a", t.path().join("real/rel")).unwrap();
        assert_eq!(
            canonical(&t.path().join("real/rel")).unwrap(),
            std::fs::canonicalize(&real).unwrap().join("a")
        );
        // A link another user owns is not followed.
        symlink("/etc", t.path().join("users")).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &t.path().join("users"),
            Some(Uid::from_raw(65534)),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let e = canonical(&t.path().join("users/passwd")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(canonical(&t.path().join("x/../y")).is_err());
    }

    #[test]
    fn links_anywhere_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let secret = base.join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::create_dir(base.join("log")).unwrap();
        symlink(&secret, base.join("log/out")).unwrap();
        let e = open_append(&base.join("log/out"), None, 0o640).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_read(&base.join("log/out"), None).is_err());
        assert!(tail(&base.join("log/out"), None, 5).is_empty());
        // A link as a dir component, last or in the middle.
        symlink(base.join("log"), base.join("dirlink")).unwrap();
        assert!(open_append(&base.join("dirlink/new"), None, 0o640).is_err());
        assert!(!base.join("log/new").exists());
        std::fs::create_dir(base.join("log/sub")).unwrap();
        assert!(open_append(&base.join("dirlink/sub/new"), None, 0o640).is_err());
        assert!(!base.join("log/sub/new").exists());
        assert!(open_dir(&base.join("dirlink/sub")).is_err());
        assert!(metadata(&base.join("dirlink/sub")).is_err());
        // write_atomic replaces the link, not its target.
        write_atomic(&base.join("log/out"), b"42\n", None).unwrap();
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only\n");
        assert_eq!(
            std::fs::read_to_string(base.join("log/out")).unwrap(),
            "42\n"
        );
        // remove_file removes a link itself.
        symlink(&secret, base.join("log/pid")).unwrap();
        assert!(remove_file(&base.join("log/pid")).unwrap());
        assert!(secret.exists());
        assert!(!remove_file(&base.join("log/pid")).unwrap());
    }

    #[test]
    fn tail_reads_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, None, 2), vec!["line 9998", "line 9999"]);
        assert!(tail(&dir.path().join("missing"), None, 5).is_empty());
    }

    #[test]
    fn hard_links_and_strangers_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        std::fs::write(base.join("a"), "x").unwrap();
        std::fs::hard_link(base.join("a"), base.join("b")).unwrap();
        let e = open_read(&base.join("b"), None).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
        std::fs::write(base.join("c"), "x").unwrap();
        let me = Uid::effective().as_raw();
        assert!(open_read(&base.join("c"), Some(me)).is_ok());
        let e = open_read(&base.join("c"), Some(me + 1)).unwrap_err();
        assert!(e.to_string().contains("belongs to uid"), "{e}");
    }

    #[test]
    fn an_existing_file_of_someone_else_is_neither_used_nor_chowned() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let theirs = base.join("out");
        std::fs::write(&theirs, "root's\n").unwrap();
        let e = open_append(&theirs, Some((65534, 65534)), 0o640).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 0"), "{e}");
        assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 0);
        // A new file is made and given to the user.
        let f = open_append(&base.join("new"), Some((65534, 65534)), 0o640).unwrap();
        assert_eq!(f.metadata().unwrap().uid(), 65534);
        // And the user's own existing file is used.
        assert!(open_append(&base.join("new"), Some((65534, 65534)), 0o640).is_ok());
    }

    #[test]
    fn create_dirs_makes_each_missing_level() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let made = create_dirs(&base.join("a/b/c"), None, 0o750).unwrap();
        assert_eq!(made.len(), 3);
        assert!(base.join("a/b/c").is_dir());
        assert!(
            create_dirs(&base.join("a/b/c"), None, 0o750)
                .unwrap()
                .is_empty()
        );
        symlink(base.join("a"), base.join("l")).unwrap();
        assert!(create_dirs(&base.join("l/x"), None, 0o750).is_err());
        assert!(!base.join("a/x").exists());
    }
}
