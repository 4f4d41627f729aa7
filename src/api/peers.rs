//! What a peer may hold open. Health and reflection answer any TCP peer, and a
//! TLS handshake or an HTTP/2 connection costs memory before anyone knows who
//! is calling; a peer without the token once grew obhostd by 500 MB with Watch
//! streams it never read. So every accepted connection is registered here, and
//! what a connection that has not proved itself ("untrusted") may hold is
//! bounded: how many such connections, from one peer and in all; how many
//! calls they may have open; how long they may sit idle. A connection becomes
//! trusted when it proves who it is (a Unix peer obhostd admits, a client
//! certificate that needs no token, or a call carrying the token); from then on
//! only the total TCP cap applies, so an attacker can never close the
//! orchestrator's connections or take its calls' places.
//!
//! Where a new connection finds the untrusted places full, an untrusted one is
//! closed to make room (one of its own peer's when that peer is over its
//! share), rather than refusing the newcomer: a new connection from the
//! orchestrator is untrusted until its first call a millisecond later, and
//! must get in. So the order is: connections of peers that have never
//! authenticated (in the last hour) before those of peers that have (the
//! orchestrator's address, once it has called with the token); then those
//! that have already called without the token (they have shown what they
//! are); then the peer holding the most; then the oldest. A flood can thus
//! only displace itself, and a burst of new connections cannot close the one
//! the orchestrator opened just before. A peer is an IP address (TCP) or a
//! uid (the Unix socket). Loopback users can pick any 127.0.0.0/8 address, so
//! for a local attacker the totals, not the per-peer shares, are the bound.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};

/// The bounds, with the daemon's values in [`Limits::default`]. A struct so
/// the unit tests can use small ones.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// TCP connections at once, trusted or not. Far above what an orchestrator
    /// and operators open, far below obhostd's file descriptor limit; past it
    /// an untrusted connection is closed for a newcomer, else it is refused.
    pub tcp_connections: usize,
    /// Untrusted connections at once (TCP, TLS handshakes in flight, Unix
    /// peers not admitted). Each costs an HTTP/2 or TLS state of tens of KiB.
    pub untrusted_connections: usize,
    /// Untrusted connections one peer may hold: a load balancer or grpcurl
    /// needs one or two, a client with a pool of connections opens them at
    /// once (before any has called). A peer that has authenticated before is
    /// held to the total only.
    pub untrusted_connections_per_peer: usize,
    /// Calls open at once on untrusted connections (health, reflection: the
    /// only ones that get past the checks). A reflection stream whose client
    /// reads nothing can hold ~400 KiB of replies (HTTP/2's send buffer); 32
    /// of them stay within what obhostd itself uses.
    pub untrusted_calls: usize,
    /// Calls one untrusted peer may have open.
    pub untrusted_calls_per_peer: usize,
    /// An untrusted connection with no call open for this long is closed (a
    /// health checker reconnects; its connect costs less than what an idle
    /// connection holds).
    pub untrusted_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tcp_connections: 1024,
            untrusted_connections: 64,
            untrusted_connections_per_peer: 16,
            untrusted_calls: 32,
            untrusted_calls_per_peer: 8,
            untrusted_idle: Duration::from_secs(10),
        }
    }
}

/// Who a connection's limits are counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    Ip(IpAddr),
    Uid(u32),
}

impl PeerKey {
    /// An IPv4 peer that reached a dual-stack socket counts as its IPv4
    /// address, so it has one share, not two.
    pub fn ip(ip: IpAddr) -> PeerKey {
        PeerKey::Ip(ip.to_canonical())
    }
}

/// A connection turned away: every TCP place is held by a trusted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFull;

/// Why a call was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The peer already has its share of untrusted calls open.
    PeerCalls,
    /// Untrusted connections have every untrusted call place.
    AllCalls,
    /// The limits closed the call's connection while the call was on its way.
    Closed,
}

struct Entry {
    key: PeerKey,
    trusted: bool,
    /// Has made a call without proving itself.
    called: bool,
    calls: usize,
    idle_since: Instant,
    close: CancellationToken,
}

#[derive(Default)]
struct Use {
    conns: usize,
    calls: usize,
}

/// Peers remembered as having authenticated: an orchestrator reconnecting
/// after a network blip an hour later is still recognised, and the memory
/// this takes is bounded whatever the callers do.
const PROVEN_FOR: Duration = Duration::from_secs(3600);
const PROVEN_PEERS: usize = 1024;

#[derive(Default)]
struct State {
    next_id: u64,
    /// By id, which grows: the first untrusted entry is the oldest.
    conns: BTreeMap<u64, Entry>,
    /// Untrusted connections and calls per peer; no entry at zero.
    untrusted: HashMap<PeerKey, Use>,
    tcp: usize,
    untrusted_conns: usize,
    untrusted_calls: usize,
    /// When each peer last called with proof (see [`PROVEN_FOR`]).
    proven: HashMap<PeerKey, Instant>,
    /// Connections closed or refused for the limits since the last WARN.
    displaced: u64,
    warned: Option<Instant>,
}

impl State {
    fn untrusted_use(&mut self, key: PeerKey) -> &mut Use {
        self.untrusted.entry(key).or_default()
    }

    fn is_proven(&self, key: PeerKey, now: Instant) -> bool {
        self.proven.get(&key).is_some_and(|t| now - *t < PROVEN_FOR)
    }

    /// Remembers that `key` authenticated; when the list is full, the peer
    /// heard from least recently makes room.
    fn prove(&mut self, key: PeerKey, now: Instant) {
        if self.proven.len() >= PROVEN_PEERS && !self.proven.contains_key(&key) {
            self.proven.retain(|_, t| now - *t < PROVEN_FOR);
            if self.proven.len() >= PROVEN_PEERS
                && let Some(oldest) = self.proven.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
            {
                self.proven.remove(&oldest);
            }
        }
        self.proven.insert(key, now);
    }

    /// Takes an entry out of every count.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if matches!(entry.key, PeerKey::Ip(_)) {
            self.tcp -= 1;
        }
        if !entry.trusted {
            self.forget_untrusted(entry.key, 1, entry.calls);
        }
        Some(entry)
    }

    fn forget_untrusted(&mut self, key: PeerKey, conns: usize, calls: usize) {
        self.untrusted_conns -= conns;
        self.untrusted_calls -= calls;
        if let Some(u) = self.untrusted.get_mut(&key) {
            u.conns -= conns;
            u.calls -= calls;
            if u.conns == 0 && u.calls == 0 {
                self.untrusted.remove(&key);
            }
        }
    }

    /// Closes an untrusted connection to make room: one of `key`'s, or with no
    /// key anyone's, in the order the module doc gives. False when there is
    /// none.
    fn evict(&mut self, key: Option<PeerKey>) -> bool {
        let now = Instant::now();
        let victim = self
            .conns
            .iter()
            .filter(|(_, e)| !e.trusted && key.is_none_or(|k| e.key == k))
            .max_by_key(|(id, e)| {
                let held = self.untrusted.get(&e.key).map_or(0, |u| u.conns);
                (
                    !self.is_proven(e.key, now),
                    e.called,
                    held,
                    std::cmp::Reverse(**id),
                )
            })
            .map(|(id, _)| *id);
        let Some(gone) = victim.and_then(|id| self.remove(id)) else {
            return false;
        };
        debug!(peer = ?gone.key, "closed an untrusted connection for a newcomer");
        gone.close.cancel();
        self.displaced += 1;
        true
    }

    /// One WARN a minute at most while the limits turn connections away, so a
    /// flood cannot flood the journal too.
    fn warn_displaced(&mut self, limits: &Limits) {
        let now = Instant::now();
        if self.displaced == 0
            || self
                .warned
                .is_some_and(|w| now - w < Duration::from_secs(60))
        {
            return;
        }
        warn!(
            closed_or_refused = self.displaced,
            untrusted = self.untrusted_conns,
            tcp = self.tcp,
            "connections that have not authenticated are past obhostd's limits ({} in all, {} per \
             peer, {} TCP connections in all); the oldest are being closed. Someone may be \
             flooding the port; clients that send the token are not affected",
            limits.untrusted_connections,
            limits.untrusted_connections_per_peer,
            limits.tcp_connections,
        );
        self.displaced = 0;
        self.warned = Some(now);
    }
}

/// The registry of open connections; one per daemon, shared by the listeners
/// and the call layer.
pub struct Peers {
    state: Mutex<State>,
    limits: Limits,
}

impl Peers {
    pub fn new(limits: Limits) -> Arc<Peers> {
        Arc::new(Peers {
            state: Mutex::new(State::default()),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock can panic halfway through a count.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an accepted connection; `trusted` when its peer is proven
    /// already (an admitted Unix uid, a client certificate that needs no
    /// token). Makes room by closing untrusted connections (see the module
    /// doc); refuses only when every TCP place is trusted.
    pub fn admit(self: &Arc<Self>, key: PeerKey, trusted: bool) -> Result<ConnSlot, TcpFull> {
        let l = &self.limits;
        let mut s = self.lock();
        if !trusted {
            let mine = s.untrusted.get(&key).map_or(0, |u| u.conns);
            // A proven peer (the orchestrator's pool of connections, opened
            // at once) is held to the total only.
            if mine >= l.untrusted_connections_per_peer && !s.is_proven(key, Instant::now()) {
                s.evict(Some(key));
            } else if s.untrusted_conns >= l.untrusted_connections {
                s.evict(None);
            }
        }
        if matches!(key, PeerKey::Ip(_)) && s.tcp >= l.tcp_connections && !s.evict(None) {
            s.displaced += 1;
            s.warn_displaced(l);
            return Err(TcpFull);
        }
        s.warn_displaced(l);
        let id = s.next_id;
        s.next_id += 1;
        let close = CancellationToken::new();
        s.conns.insert(
            id,
            Entry {
                key,
                trusted,
                called: false,
                calls: 0,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        if matches!(key, PeerKey::Ip(_)) {
            s.tcp += 1;
        }
        if !trusted {
            s.untrusted_conns += 1;
            s.untrusted_use(key).conns += 1;
        }
        Ok(ConnSlot {
            conn: ConnRef {
                peers: self.clone(),
                id,
            },
            close,
        })
    }

    /// Closes untrusted connections idle (no call open) for longer than the
    /// limit; every second until `shutdown`.
    pub fn spawn_idle_sweep(self: &Arc<Self>, shutdown: CancellationToken) {
        let peers = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                peers.close_idle(Instant::now());
            }
        });
    }

    fn close_idle(&self, now: Instant) {
        let idle = self.limits.untrusted_idle;
        let mut s = self.lock();
        let stale: Vec<u64> = s
            .conns
            .iter()
            .filter(|(_, e)| !e.trusted && e.calls == 0 && now - e.idle_since >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(e) = s.remove(id) {
                debug!(peer = ?e.key, "closed an untrusted connection idle for {idle:?}");
                e.close.cancel();
            }
        }
    }
}

/// A registered connection's place; held by the connection, given back when
/// it is dropped. [`ConnSlot::closed`] fires when the limits close it.
pub struct ConnSlot {
    conn: ConnRef,
    close: CancellationToken,
}

impl ConnSlot {
    pub fn conn(&self) -> ConnRef {
        self.conn.clone()
    }

    pub fn closed(&self) -> WaitForCancellationFutureOwned {
        self.close.clone().cancelled_owned()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.conn.peers.lock().remove(self.conn.id);
    }
}

/// A connection as its calls see it (in each request's extensions).
#[derive(Clone)]
pub struct ConnRef {
    peers: Arc<Peers>,
    id: u64,
}

impl std::fmt::Debug for ConnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnRef({})", self.id)
    }
}

impl ConnRef {
    pub fn is_trusted(&self) -> bool {
        self.peers
            .lock()
            .conns
            .get(&self.id)
            .is_some_and(|e| e.trusted)
    }

    /// The connection proved itself: it leaves the untrusted counts (with its
    /// open calls) and is never closed for a newcomer or for idling.
    pub fn trust(&self) {
        let mut s = self.peers.lock();
        let Some(e) = s.conns.get_mut(&self.id) else {
            return;
        };
        if e.trusted {
            return;
        }
        e.trusted = true;
        let (key, calls) = (e.key, e.calls);
        s.forget_untrusted(key, 1, calls);
        s.prove(key, Instant::now());
    }

    /// A call begins: counted against the untrusted limits unless the
    /// connection is trusted.
    pub fn begin_call(&self) -> Result<CallSlot, Refused> {
        let l = &self.peers.limits;
        let mut s = self.peers.lock();
        let Some(e) = s.conns.get_mut(&self.id) else {
            return Err(Refused::Closed);
        };
        e.called |= !e.trusted;
        let (trusted, key) = (e.trusted, e.key);
        if !trusted {
            if s.untrusted.get(&key).map_or(0, |u| u.calls) >= l.untrusted_calls_per_peer {
                return Err(Refused::PeerCalls);
            }
            if s.untrusted_calls >= l.untrusted_calls {
                return Err(Refused::AllCalls);
            }
            s.untrusted_calls += 1;
            s.untrusted_use(key).calls += 1;
        } else {
            // A long-lived orchestrator connection keeps its address proven.
            s.prove(key, Instant::now());
        }
        if let Some(e) = s.conns.get_mut(&self.id) {
            e.calls += 1;
        }
        Ok(CallSlot { conn: self.clone() })
    }
}

/// An open call's place; given back when the call's response ends or is
/// dropped.
pub struct CallSlot {
    conn: ConnRef,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let mut s = self.conn.peers.lock();
        let Some(e) = s.conns.get_mut(&self.conn.id) else {
            return; // the connection is gone, and its counts with it
        };
        e.calls -= 1;
        if e.calls == 0 {
            e.idle_since = Instant::now();
        }
        let (trusted, key) = (e.trusted, e.key);
        if !trusted {
            s.forget_untrusted(key, 0, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Arc<Peers> {
        Peers::new(Limits {
            tcp_connections: 6,
            untrusted_connections: 4,
            untrusted_connections_per_peer: 2,
            untrusted_calls: 3,
            untrusted_calls_per_peer: 2,
            untrusted_idle: Duration::from_secs(10),
        })
    }

    fn ip(n: u8) -> PeerKey {
        PeerKey::ip(IpAddr::from([10, 0, 0, n]))
    }

    fn is_closed(slot: &ConnSlot) -> bool {
        slot.close.is_cancelled()
    }

    #[test]
    fn a_peer_over_its_share_displaces_its_own_oldest() {
        let p = small();
        let other = p.admit(ip(9), false).unwrap();
        let a = p.admit(ip(1), false).unwrap();
        let b = p.admit(ip(1), false).unwrap();
        let c = p.admit(ip(1), false).unwrap();
        assert!(is_closed(&a) && !is_closed(&b) && !is_closed(&c));
        assert!(!is_closed(&other));
        // A peer that authenticated before may open more at once (a pool).
        let proven = p.admit(ip(5), false).unwrap();
        proven.conn().trust();
        let pool: Vec<_> = (0..3).map(|_| p.admit(ip(5), false).unwrap()).collect();
        assert!(!pool.iter().any(is_closed));
    }

    #[test]
    fn when_all_untrusted_places_are_taken_the_biggest_peer_gives_way() {
        let p = small();
        let a1 = p.admit(ip(1), false).unwrap();
        let b1 = p.admit(ip(2), false).unwrap();
        let a2 = p.admit(ip(1), false).unwrap();
        let c1 = p.admit(ip(3), false).unwrap();
        // Full (4): the newcomer displaces peer 1's oldest, not b1 (older
        // than a2, but its peer holds less).
        let d1 = p.admit(ip(4), false).unwrap();
        assert!(is_closed(&a1));
        assert!(![&b1, &a2, &c1, &d1].iter().any(|s| is_closed(s)));
    }

    #[test]
    fn connections_that_called_without_the_token_give_way_before_silent_ones() {
        let p = small();
        let silent = p.admit(ip(1), false).unwrap();
        let callers: Vec<_> = (2..5).map(|i| p.admit(ip(i), false).unwrap()).collect();
        for c in &callers {
            drop(c.conn().begin_call());
        }
        // Full: the newcomers displace the callers, oldest first, before the
        // older silent one.
        let _n1 = p.admit(ip(5), false).unwrap();
        assert!(is_closed(&callers[0]) && !is_closed(&silent));
        let _n2 = p.admit(ip(6), false).unwrap();
        let _n3 = p.admit(ip(7), false).unwrap();
        assert!(callers.iter().all(is_closed) && !is_closed(&silent));
        let _n4 = p.admit(ip(8), false).unwrap();
        assert!(is_closed(&silent));
    }

    #[test]
    fn a_burst_of_newcomers_does_not_close_a_new_connection_of_a_proven_peer() {
        let p = small();
        let earlier = p.admit(ip(1), false).unwrap();
        earlier.conn().trust();
        drop(earlier);
        // The orchestrator's address opens a new connection; a burst from
        // many other addresses follows before its first call.
        let fresh = p.admit(ip(1), false).unwrap();
        let burst: Vec<_> = (10..50).map(|i| p.admit(ip(i), false).unwrap()).collect();
        assert!(!is_closed(&fresh));
        assert_eq!(burst.iter().filter(|s| !is_closed(s)).count(), 3);
    }

    #[test]
    fn the_proven_list_is_bounded() {
        let p = Peers::new(Limits::default());
        for i in 0..(PROVEN_PEERS as u32 + 10) {
            let slot = p
                .admit(PeerKey::ip(IpAddr::from(i.to_be_bytes())), false)
                .unwrap();
            slot.conn().trust();
        }
        assert_eq!(p.lock().proven.len(), PROVEN_PEERS);
    }

    #[test]
    fn trusted_connections_are_never_displaced_and_the_tcp_cap_refuses_past_them() {
        let p = small();
        let trusted: Vec<_> = (0..6)
            .map(|i| {
                let s = p.admit(ip(i), false).unwrap();
                s.conn().trust();
                s
            })
            .collect();
        assert_eq!(p.admit(ip(7), false).err(), Some(TcpFull));
        assert_eq!(p.admit(ip(7), true).err(), Some(TcpFull));
        assert!(!trusted.iter().any(is_closed));
        drop(trusted);
        assert!(p.admit(ip(7), false).is_ok());
    }

    #[test]
    fn unix_peers_do_not_count_against_the_tcp_cap() {
        let p = small();
        let _tcp: Vec<_> = (0..6).map(|i| p.admit(ip(i), true).unwrap()).collect();
        assert!(p.admit(PeerKey::Uid(0), true).is_ok());
    }

    #[test]
    fn untrusted_calls_are_capped_per_peer_and_in_all_and_trust_lifts_the_cap() {
        let p = small();
        let a = p.admit(ip(1), false).unwrap();
        let b = p.admit(ip(2), false).unwrap();
        let a_calls = [
            a.conn().begin_call().unwrap(),
            a.conn().begin_call().unwrap(),
        ];
        assert_eq!(a.conn().begin_call().err(), Some(Refused::PeerCalls));
        let b_call = b.conn().begin_call().unwrap();
        assert_eq!(b.conn().begin_call().err(), Some(Refused::AllCalls));
        drop(b_call);
        let _b_call = b.conn().begin_call().unwrap();
        // Trusted, a's calls leave the counts and a may open any number.
        a.conn().trust();
        let more: Vec<_> = (0..10).map(|_| a.conn().begin_call().unwrap()).collect();
        let c = p.admit(ip(3), false).unwrap();
        let _c_call = c.conn().begin_call().unwrap();
        drop((a_calls, more));
        let s = p.lock();
        assert_eq!((s.untrusted_calls, s.untrusted_conns), (2, 2));
    }

    #[test]
    fn idle_untrusted_connections_are_closed_busy_and_trusted_ones_are_not() {
        let p = small();
        let idle = p.admit(ip(1), false).unwrap();
        let busy = p.admit(ip(2), false).unwrap();
        let call = busy.conn().begin_call().unwrap();
        let trusted = p.admit(ip(3), false).unwrap();
        trusted.conn().trust();
        p.close_idle(Instant::now() + Duration::from_secs(11));
        assert!(is_closed(&idle) && !is_closed(&busy) && !is_closed(&trusted));
        // The busy one's idle time starts when its last call ends.
        drop(call);
        p.close_idle(Instant::now() + Duration::from_secs(5));
        assert!(!is_closed(&busy));
        p.close_idle(Instant::now() + Duration::from_secs(11));
        assert!(is_closed(&busy));
        let s = p.lock();
        assert_eq!((s.untrusted_conns, s.tcp), (0, 1));
    }

    #[test]
    fn counts_return_to_zero_when_everything_is_dropped() {
        let p = small();
        let slots: Vec<_> = (0..9).map(|i| p.admit(ip(i % 3), false)).collect();
        let calls: Vec<_> = slots
            .iter()
            .flatten()
            .filter_map(|s| s.conn().begin_call().ok())
            .collect();
        drop(slots);
        drop(calls);
        let s = p.lock();
        assert!(s.conns.is_empty() && s.untrusted.is_empty());
        assert_eq!((s.tcp, s.untrusted_conns, s.untrusted_calls), (0, 0, 0));
    }
}
