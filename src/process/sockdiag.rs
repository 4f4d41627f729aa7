//! TCP sockets from the kernel through netlink `sock_diag` (inet_diag), asked
//! by state: a dump of LISTEN sockets is a handful of entries however many
//! connections the host has, where /proc/net/tcp lists every socket (thousands
//! of TIME_WAIT ones on a busy host, milliseconds to read and parse). The
//! readiness probe and the Prepare port checks read this on every attempt.
//!
//! Raw netlink with libc: the request and reply layouts are the kernel's stable
//! ABI (linux/inet_diag.h). Any failure returns None and the caller falls back
//! to /proc/net/tcp, which says the same, slower.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TCP_LISTEN`'s bit in `inet_diag_req_v2.states`.
pub const LISTEN: u32 = 1 << 10;
/// `TCP_ESTABLISHED`'s bit.
pub const ESTABLISHED: u32 = 1 << 1;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
/// inet_diag_msg: family, state, timer, retrans, the 48-byte sockid, then
/// expires, rqueue, wqueue, uid, inode.
const DIAG_MSG: usize = 72;

/// One socket as the kernel reports it. Addresses are the raw 16 bytes (IPv4
/// in the first 4); ports in host order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub family: u8,
    pub state: u8,
    pub src: [u8; 16],
    pub sport: u16,
    pub dst: [u8; 16],
    pub dport: u16,
    pub inode: u64,
}

/// Every TCP socket (IPv4 and IPv6) in one of `states` (a mask of the bits
/// above), or None when netlink cannot be used here.
pub fn tcp(states: u32) -> Option<Vec<Socket>> {
    let mut all = dump(libc::AF_INET as u8, states)?;
    all.extend(dump(libc::AF_INET6 as u8, states)?);
    Some(all)
}

fn request(family: u8, states: u32) -> Vec<u8> {
    let len = NLMSG_HDR + 56;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid.
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(len, 0);
    b
}

fn dump(family: u8, states: u32) -> Option<Vec<Socket>> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = request(family, states);
    // SAFETY: send(2) reads req.len() bytes from a live buffer.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent != req.len() as isize {
        return None;
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) writes at most buf.len() bytes into the buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        if parse(&buf[..n as usize], &mut out)? {
            return Some(out);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses one datagram of replies into `out`; Some(true) at the end of the
/// dump, None on an error reply or a malformed message.
fn parse(mut b: &[u8], out: &mut Vec<Socket>) -> Option<bool> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0)? as usize;
        let kind = u16_at(b, 4)?;
        if len < NLMSG_HDR || len > b.len() {
            return None;
        }
        match kind {
            NLMSG_DONE => return Some(true),
            NLMSG_ERROR => return None,
            SOCK_DIAG_BY_FAMILY => out.push(socket(b.get(NLMSG_HDR..len)?)?),
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = b.get(next.min(b.len())..)?;
    }
    Some(false)
}

fn socket(m: &[u8]) -> Option<Socket> {
    if m.len() < DIAG_MSG {
        return None;
    }
    let addr = |at: usize| -> Option<[u8; 16]> { m.get(at..at + 16)?.try_into().ok() };
    Some(Socket {
        family: m[0],
        state: m[1],
        sport: u16::from_be_bytes([m[4], m[5]]),
        dport: u16::from_be_bytes([m[6], m[7]]),
        src: addr(8)?,
        dst: addr(24)?,
        inode: u64::from(u32_at(m, 68)?),
    })
}

/// An address in /proc/net/tcp's hex form (each 32-bit word as the kernel
/// stores it, printed `%08X`), so both sources compare alike.
pub fn proc_hex(family: u8, addr: &[u8; 16]) -> String {
    let words = if family == libc::AF_INET as u8 { 1 } else { 4 };
    addr.chunks(4)
        .take(words)
        .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listener_and_an_established_pair() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let listening = tcp(LISTEN).expect("sock_diag works here");
        let ours = listening
            .iter()
            .find(|s| s.sport == port)
            .expect("our listener is listed");
        assert_eq!(ours.state, 10);
        assert_eq!(proc_hex(ours.family, &ours.src), "0100007F");
        assert_ne!(ours.inode, 0);
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = l.accept().unwrap();
        let client_port = c.local_addr().unwrap().port();
        let est = tcp(ESTABLISHED).unwrap();
        assert!(
            est.iter()
                .any(|s| s.sport == port && s.dport == client_port),
            "the server end of our connection is listed"
        );
        assert!(!est.iter().any(|s| s.state == 10), "only the asked states");
    }
}
