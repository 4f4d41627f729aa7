//! Whether a path can be changed by anyone but root (and obhostd's own user).
//!
//! obhostd runs as root, and some of what it uses decides what root will do:
//! its state dir (a stored step is run again after a restart), and, when an
//! observer runs as root, the binary, its library dir and its working dir. If
//! another user can write any of them, or any directory on the way to them,
//! that user can swap in their own store or their own code and have root run
//! it. Owning the file is not enough: whoever can write a parent directory can
//! rename the file away and put another in its place.
//!
//! So every component of the path, as given and as resolved (a link is
//! checked as well as what it points to), must belong to a trusted uid, and
//! every directory on the way must be writable only by trusted users: not by
//! others, not by a group other than root's, unless it is sticky (`/tmp`: then
//! nobody can rename or remove what they do not own, and the entry is checked
//! to be trusted-owned). The last component itself must not be writable by
//! others or a non-root group.
//!
//! This is a check at a moment: it guards against paths that are unsafe by
//! configuration or by an attacker's setup, which is what makes root run
//! foreign code. Races on a safe path are impossible by construction (nobody
//! untrusted can write anything on it).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Opens a secret (token, TLS key), refusing one another user could read or
/// replace: it must be owned by the daemon's user and have no group/other
/// bits. `what` names the config key.
pub fn secret_file(path: &Path, what: &str) -> anyhow::Result<std::fs::File> {
    let file = std::fs::File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {what} '{}': {e}; create it, owned by obhostd's user, with `chmod 600`",
            path.display()
        )
    })?;
    let meta = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        anyhow::bail!(
            "{what} '{}' is owned by uid {}, not by obhostd's user (uid {me}); run `chown {me} {}`",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{what} '{}' is readable by group/others (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(file)
}

/// What makes a path changeable by an untrusted user, and which component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{}' {why}", path.display())]
pub struct Untrusted {
    pub path: PathBuf,
    pub why: String,
}

/// Checks `path` (absolute) as given and as resolved: Ok when only `trusted`
/// uids (root is always trusted) can change it or anything on the way to it.
/// A path that does not exist yet is judged by its deepest existing dir.
pub fn check(path: &Path, trusted: &[u32]) -> Result<(), Untrusted> {
    let ok = |uid: u32| uid == 0 || trusted.contains(&uid);
    let untrusted = |path: &Path, why: String| Untrusted {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() {
        return Err(untrusted(path, "is not an absolute path".into()));
    }
    // What does not exist yet is judged by the dir it would be made in:
    // only whoever can write there could make it.
    let mut path = path;
    while std::fs::symlink_metadata(path).is_err() {
        match path.parent() {
            Some(parent) => path = parent,
            None => break,
        }
    }
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| untrusted(path, format!("cannot be resolved: {e}")))?;
    for walk in [path, resolved.as_path()] {
        let mut prefix = PathBuf::from("/");
        let mut parent = std::fs::symlink_metadata(&prefix)
            .map_err(|e| untrusted(&prefix, format!("cannot be read: {e}")))?;
        for part in walk.components().skip(1) {
            prefix.push(part);
            let meta = std::fs::symlink_metadata(&prefix)
                .map_err(|e| untrusted(&prefix, format!("cannot be read: {e}")))?;
            if !ok(meta.uid()) {
                return Err(untrusted(
                    &prefix,
                    format!(
                        "belongs to uid {}, who could replace what it holds",
                        meta.uid()
                    ),
                ));
            }
            let pmode = parent.permissions().mode();
            if let Some(who) = other_writers(&parent)
                && pmode & 0o1000 == 0
            {
                let dir = prefix.parent().unwrap_or(Path::new("/"));
                return Err(untrusted(
                    dir,
                    format!(
                        "can be written by {who} (mode {:04o}, not sticky): they could rename '{}' away and put their own in its place",
                        pmode & 0o7777,
                        prefix.display()
                    ),
                ));
            }
            if meta.file_type().is_symlink() {
                // What it points to is checked in the resolved walk.
                break;
            }
            parent = meta;
        }
    }
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| untrusted(&resolved, format!("cannot be read: {e}")))?;
    if let Some(who) = other_writers(&meta) {
        return Err(untrusted(
            &resolved,
            format!(
                "can be written by {who} (mode {:04o})",
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Who besides the owner may write this file or dir: every user, or a
/// group other than root's; None when nobody else may.
fn other_writers(meta: &std::fs::Metadata) -> Option<String> {
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        Some("every user".into())
    } else if mode & 0o020 != 0 && meta.gid() != 0 {
        Some(format!("group {}", meta.gid()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn set_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_root_only_path_is_trusted() {
        assert_eq!(check(Path::new("/usr/bin/env"), &[]), Ok(()));
        assert_eq!(check(Path::new("/usr/bin/no-such-program"), &[]), Ok(()));
        // Not yet there, in a dir every user can write: anyone could make it.
        if is_root() {
            let open = tempfile::tempdir().unwrap();
            set_mode(open.path(), 0o777);
            let e = check(&open.path().join("later/bin"), &[]).unwrap_err();
            assert!(e.why.contains("every user"), "{e}");
        }
        assert!(check(Path::new("usr/bin"), &[]).is_err());
    }

    #[test]
    fn a_path_others_can_write_on_the_way_is_not() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to own the test dirs as root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(base.path()).unwrap();
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        set_mode(&open, 0o777);
        let dir = open.join("dir");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        let e = check(&dir, &[]).unwrap_err();
        assert_eq!(e.path, open, "{e}");
        assert!(e.to_string().contains("every user"), "{e}");
        // Sticky, like /tmp: what is in it stays its owner's.
        set_mode(&open, 0o1777);
        assert_eq!(check(&dir, &[]), Ok(()));
        // The dir itself open to others.
        set_mode(&dir, 0o757);
        assert!(check(&dir, &[]).unwrap_err().why.contains("mode 0757"));
        set_mode(&dir, 0o755);
        // Another user's entry, even in a sticky dir.
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let e = check(&dir, &[]).unwrap_err();
        assert!(e.why.contains("uid 65534"), "{e}");
        // ... unless that uid is trusted (obhostd's own user).
        assert_eq!(check(&dir, &[65534]), Ok(()));
        // A group other than root's that may write.
        std::os::unix::fs::chown(&dir, Some(0), Some(65534)).unwrap();
        set_mode(&dir, 0o775);
        assert!(check(&dir, &[]).unwrap_err().why.contains("group 65534"));
    }

    #[test]
    fn a_link_is_checked_and_so_is_its_target() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to own the test dirs as root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(base.path()).unwrap();
        let open = base.join("open");
        std::fs::create_dir(&open).unwrap();
        set_mode(&open, 0o777);
        let target = open.join("target");
        std::fs::create_dir(&target).unwrap();
        let link = base.join("link");
        symlink(&target, &link).unwrap();
        // The link is root's in a root dir, but it leads through an open dir.
        let e = check(&link, &[]).unwrap_err();
        assert_eq!(e.path, open, "{e}");
        // A safe target behind another user's link.
        set_mode(&open, 0o755);
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &link,
            Some(nix::unistd::Uid::from_raw(65534)),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let e = check(&link, &[]).unwrap_err();
        assert_eq!(e.path, link, "{e}");
    }
}
