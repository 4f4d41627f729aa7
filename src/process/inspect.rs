//! Looking at processes: resource use, command line, listening ports, who holds a
//! port, and the tail of a log. Read from /proc and sysinfo; nothing here changes
//! anything.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System, UpdateKind};

use super::identity::Identity;
use super::sockdiag;

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

/// One TCP socket. Addresses are in /proc/net/tcp's hex form, whichever source
/// listed it: they are only ever compared with each other and with a few
/// constants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpSocket {
    local_addr: String,
    local_port: u16,
    remote_addr: String,
    remote_port: u16,
    /// The kernel's TCP state number (10 is LISTEN, 1 ESTABLISHED).
    state: u8,
    inode: u64,
}

impl TcpSocket {
    fn listening(&self) -> bool {
        self.state == 10
    }
}

/// The TCP sockets in one of `states` (a mask of [`sockdiag`]'s bits), in this
/// network namespace: from netlink, which lists only those, else from
/// /proc/net/tcp{,6}, which lists every socket.
fn tcp_sockets(states: u32) -> Vec<TcpSocket> {
    if let Some(found) = sockdiag::tcp(states) {
        return found
            .into_iter()
            .map(|s| TcpSocket {
                local_addr: sockdiag::proc_hex(s.family, &s.src),
                local_port: s.sport,
                remote_addr: sockdiag::proc_hex(s.family, &s.dst),
                remote_port: s.dport,
                state: s.state,
                inode: s.inode,
            })
            .collect();
    }
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        all.extend(text.lines().skip(1).filter_map(parse_tcp_line));
    }
    all.retain(|s| states & (1 << s.state) != 0);
    all
}

fn parse_tcp_line(line: &str) -> Option<TcpSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
    let (local_addr, local_port) = f.get(1)?.rsplit_once(':')?;
    let (remote_addr, remote_port) = f.get(2)?.rsplit_once(':')?;
    Some(TcpSocket {
        local_addr: local_addr.to_string(),
        local_port: u16::from_str_radix(local_port, 16).ok()?,
        remote_addr: remote_addr.to_string(),
        remote_port: u16::from_str_radix(remote_port, 16).ok()?,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// Socket inode -> port, for TCP sockets in LISTEN.
fn listening_inodes() -> HashMap<u64, u16> {
    tcp_sockets(sockdiag::LISTEN)
        .into_iter()
        .filter(TcpSocket::listening)
        .map(|s| (s.inode, s.local_port))
        .collect()
}

/// Addresses (kernel hex form) whose listening sockets take a connection to
/// 127.0.0.1: 127.0.0.1 itself, 0.0.0.0, and IPv6 `::` and `::ffff:127.0.0.1`.
const LOOPBACK_LISTEN: &[&str] = &[
    "0100007F",
    "00000000",
    "00000000000000000000000000000000",
    "0000000000000000FFFF00000100007F",
];

/// Who else holds what a connection to 127.0.0.1:`port` would reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOwner {
    /// Nothing listens there.
    Nobody,
    /// Every such listening socket is `pid`'s.
    Only,
    /// Some socket there is not `pid`'s (its holder, when visible).
    Other(Option<(i32, String)>),
}

/// Whether every socket listening where a connection to 127.0.0.1:`port` would
/// land belongs to `pid`: the check before obhostd hands a password to what
/// answers there.
pub fn loopback_port_owner(port: u16, pid: i32) -> PortOwner {
    loopback_port_owner_among(port, &[pid])
}

/// [`loopback_port_owner`] for a group of processes (a systemd unit's):
/// `Only` when every socket listening there is one of theirs.
pub fn loopback_port_owner_among(port: u16, pids: &[i32]) -> PortOwner {
    let inodes: Vec<u64> = tcp_sockets(sockdiag::LISTEN)
        .into_iter()
        .filter(|s| {
            s.listening()
                && s.local_port == port
                && LOOPBACK_LISTEN.contains(&s.local_addr.as_str())
        })
        .map(|s| s.inode)
        .collect();
    if inodes.is_empty() {
        return PortOwner::Nobody;
    }
    let own: Vec<u64> = pids.iter().flat_map(|p| socket_inodes(*p)).collect();
    if inodes.iter().all(|i| own.contains(i)) {
        PortOwner::Only
    } else {
        let foreign: Vec<u64> = inodes.into_iter().filter(|i| !own.contains(i)).collect();
        PortOwner::Other(holder_of(&foreign))
    }
}

/// Whether the server end of our connection `ours` (local address of our
/// socket) to 127.0.0.1:`port` is held by `pid`: proof that the process on the
/// other end of this very connection is that one, not a listener that took the
/// port a moment after we looked.
pub fn connection_served_by(port: u16, ours: std::net::SocketAddr, pid: i32) -> bool {
    let own = socket_inodes(pid);
    tcp_sockets(sockdiag::ESTABLISHED).into_iter().any(|s| {
        !s.listening()
            && s.local_port == port
            && s.remote_port == ours.port()
            && s.inode != 0
            && own.contains(&s.inode)
    })
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

/// The host's listening TCP sockets, read once. Reading /proc/net/tcp{,6}
/// costs milliseconds on a host with many sockets, so a check run that looks at
/// several ports reads the table once and asks this snapshot.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    /// Socket inode -> port.
    inodes: HashMap<u64, u16>,
}

impl Listening {
    pub fn read() -> Listening {
        Listening {
            inodes: listening_inodes(),
        }
    }

    /// Whether anything listens on `port` (any address).
    pub fn has(&self, port: u16) -> bool {
        self.inodes.values().any(|p| *p == port)
    }

    /// Who listens on `port`: (pid, command name), when /proc lets us see it.
    /// None with a listener present means the holder is hidden from us
    /// (another user's process without root, another pid namespace).
    pub fn holder(&self, port: u16) -> Option<(i32, String)> {
        let inodes: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, p)| **p == port)
            .map(|(i, _)| *i)
            .collect();
        holder_of(&inodes)
    }
}

/// Whether anything on this host listens on `port` (any address).
pub fn port_listening(port: u16) -> bool {
    Listening::read().has(port)
}

/// Who listens on `port` (see [`Listening::holder`]).
pub fn port_holder(port: u16) -> Option<(i32, String)> {
    Listening::read().holder(port)
}

fn holder_of(inodes: &[u64]) -> Option<(i32, String)> {
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
    fn netlink_and_proc_agree_on_listeners() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let from_netlink: Vec<TcpSocket> = tcp_sockets(sockdiag::LISTEN)
            .into_iter()
            .filter(|s| s.local_port == port)
            .collect();
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let from_proc: Vec<TcpSocket> = text
            .lines()
            .skip(1)
            .filter_map(parse_tcp_line)
            .filter(|s| s.local_port == port && s.listening())
            .collect();
        assert_eq!(from_netlink, from_proc);
        assert_eq!(from_netlink.len(), 1);
    }
}
