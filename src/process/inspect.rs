//! Looking at processes: resource use, command line, listening ports, who holds a
//! port, and the tail of a log. Read from /proc and sysinfo; nothing here changes
//! anything.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System, UpdateKind};

use super::identity::Identity;

#[derive(Debug, Clone, Default)]
pub struct ProcessInfo {
    pub rss_bytes: u64,
    pub cpu_percent: f64,
    pub threads: u32,
    pub command: Vec<String>,
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
}

/// Resource use of a live process. Blocking: it samples CPU over sysinfo's
/// minimum interval (~200 ms), so call it from a blocking thread.
pub fn process_info(id: &Identity) -> Option<ProcessInfo> {
    let pid = sysinfo::Pid::from_u32(u32::try_from(id.pid).ok()?);
    let kind = ProcessRefreshKind::nothing()
        .with_memory()
        .with_cpu()
        .with_cmd(UpdateKind::Always)
        .with_exe(UpdateKind::Always)
        .with_cwd(UpdateKind::Always)
        .with_tasks();
    let mut sys = System::new_with_specifics(RefreshKind::nothing()).ok()?;
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(100)));
    sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), true, kind);
    let p = sys.process(pid)?;
    if !id.is_alive() {
        return None;
    }
    Some(ProcessInfo {
        rss_bytes: p.memory(),
        cpu_percent: f64::from(p.cpu_usage()),
        threads: p
            .tasks()
            .map(|t| u32::try_from(t.len()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        command: p
            .cmd()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        exe: p.exe().map(Path::to_path_buf),
        cwd: p.cwd().map(Path::to_path_buf),
    })
}

/// Socket inode -> port, for TCP sockets in LISTEN, from /proc/net/tcp{,6}.
fn listening_inodes() -> HashMap<u64, u16> {
    let mut map = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if *state != "0A" {
                continue;
            }
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, inode.parse::<u64>()) {
                map.insert(inode, port);
            }
        }
    }
    map
}

fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// TCP ports the process listens on.
pub fn listening_ports(pid: i32) -> Vec<u16> {
    let listening = listening_inodes();
    let ports: BTreeSet<u16> = socket_inodes(pid)
        .into_iter()
        .filter_map(|i| listening.get(&i).copied())
        .collect();
    ports.into_iter().collect()
}

/// Whether anything on this host listens on `port` (any address).
pub fn port_listening(port: u16) -> bool {
    listening_inodes().values().any(|p| *p == port)
}

/// Who listens on `port`: (pid, command name), when /proc lets us see it. None
/// with a listener present means the holder is hidden from us (another user's
/// process without root, another pid namespace).
pub fn port_holder(port: u16) -> Option<(i32, String)> {
    let inodes: Vec<u64> = listening_inodes()
        .into_iter()
        .filter(|(_, p)| *p == port)
        .map(|(i, _)| i)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if socket_inodes(pid).iter().any(|i| inodes.contains(i)) {
            let comm = super::identity::stat(pid)
                .map(|s| s.comm)
                .unwrap_or_default();
            return Some((pid, comm));
        }
    }
    None
}

/// The last `lines` lines of a file, reading at most the last 64 KiB of it: a
/// log can be gigabytes and we only want its end.
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.take(WINDOW).read_to_end(&mut buf).is_err() {
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

/// Live processes whose executable is `exe` and whose working directory is
/// `cwd`: how an observer is found when no pid file names it (another tool
/// started it, or its pid file was deleted).
pub fn find_by_exe_and_cwd(exe: &Path, cwd: &Path) -> Vec<Identity> {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe)
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|p| p == cwd)
        })
        .filter_map(Identity::of)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_our_own_listener_and_its_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert!(listening_ports(me).contains(&port));
        assert!(port_listening(port));
        assert_eq!(port_holder(port).map(|(pid, _)| pid), Some(me));
        drop(l);
        assert!(!port_listening(port));
    }

    #[test]
    fn tail_reads_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 2), vec!["line 9998", "line 9999"]);
        assert!(tail(&dir.path().join("missing"), 5).is_empty());
    }
}
