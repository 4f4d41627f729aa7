//! What a launch has alive: the process tree decides, not the pid file alone.
//!
//! A daemonizing program (the observer, an agent command) forks its server and
//! exits; the server writes a pid file when it gets round to it. If the server
//! dies first, or never writes the file, or writes one obhostd will not follow,
//! waiting for the pid file waits for the step's deadline with nothing left to
//! wait for. So a launch keeps a census of its processes and the step fails the
//! moment the census is empty.
//!
//! Who belongs to a launch, each rule by identity (pid + start time + boot id),
//! never by a pid number alone (pids are reused within seconds where `pid_max`
//! is 32768):
//!
//! - **the launcher** obhostd spawned;
//! - **its descendants**: a process whose parent is a live member. Each one
//!   seen is remembered by identity, so its death is noticed even when its
//!   parent reaps it (a shell launcher waits for its background jobs);
//! - **what was handed to obhostd**: a process re-parented to obhostd (the
//!   subreaper) that runs as the launch's user, started no earlier than the
//!   launcher, and is not claimed by another launch in progress. This catches a
//!   server forked and orphaned between two looks, before it was ever seen
//!   under its parent: the usual daemon (fork, parent exits at once).
//!
//! The last rule is a presumption: two launches of one user in progress at once
//! may both count such an orphan as possibly theirs, which only ever makes a
//! launch wait longer (to its deadline at worst), never fail early. It is never
//! enough to kill a process: [`Census::doomed`] names only the processes this
//! launch certainly made.
//!
//! Everything here reads /proc and blocks: callers run it on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;

use super::identity;
use super::identity::Identity;

/// One process as /proc showed it in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub id: Identity,
    pub ppid: i32,
    /// The owner of /proc/<pid>: the process's effective uid (root for a
    /// process that made itself undumpable, which then belongs to nobody's
    /// launch but root's).
    pub uid: u32,
    /// A zombie: dead, its exit status not collected yet by its parent.
    pub zombie: Option<i32>,
}

/// Every process on the host, by pid, at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    procs: HashMap<i32, Proc>,
    me: i32,
}

impl Snapshot {
    /// Walks /proc once. A process that ends mid-walk is simply absent.
    pub fn take() -> Snapshot {
        let me = std::process::id() as i32;
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Some(p) = read(pid) {
                    procs.insert(pid, p);
                }
            }
        }
        tracing::trace!(processes = procs.len(), "walked /proc");
        Snapshot { procs, me }
    }

    #[cfg(test)]
    fn of(me: i32, procs: &[Proc]) -> Snapshot {
        Snapshot {
            procs: procs.iter().map(|p| (p.id.pid, *p)).collect(),
            me,
        }
    }

    fn get(&self, pid: i32) -> Option<&Proc> {
        self.procs.get(&pid)
    }

    /// True when `id` is this very process, alive (not a zombie).
    fn alive(&self, id: &Identity) -> bool {
        self.get(id.pid)
            .is_some_and(|p| p.id == *id && p.zombie.is_none())
    }
}

fn read(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let s = identity::parse_stat(&text)?;
    let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let zombie = matches!(s.state, 'Z' | 'X' | 'x').then(|| s.exit_code.unwrap_or(0));
    Some(Proc {
        id: Identity {
            pid,
            start_ticks: s.start_ticks,
            boot: identity::current_boot(),
        },
        ppid: s.ppid,
        uid,
        zombie,
    })
}

/// A member's end, as far as /proc showed it: a zombie's status word, read
/// before its parent collected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub id: Identity,
    /// The raw wait status of a zombie (as waitpid would return it).
    pub status: Option<i32>,
}

/// The processes one launch is known to have made.
#[derive(Debug, Clone)]
pub struct Launch {
    launcher: Identity,
    uid: u32,
    /// Every certain member ever seen (the launcher and its descendants).
    members: BTreeMap<i32, Seen>,
    /// Orphans once presumed to be this launch's (at most [`PRESUMED_KEPT`]):
    /// when the launch ends without a server, their exits may say why.
    presumed: BTreeMap<i32, Identity>,
}

const PRESUMED_KEPT: usize = 256;

/// Who of a launch is alive at one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Certain members, alive.
    pub certain: Vec<Identity>,
    /// Orphans handed to obhostd that may be this launch's (see the module doc).
    pub presumed: Vec<Identity>,
}

impl Census {
    pub fn is_empty(&self) -> bool {
        self.certain.is_empty() && self.presumed.is_empty()
    }
}

impl Launch {
    pub fn new(launcher: Identity, uid: u32) -> Launch {
        let mut members = BTreeMap::new();
        members.insert(
            launcher.pid,
            Seen {
                id: launcher,
                status: None,
            },
        );
        Launch {
            launcher,
            uid,
            members,
            presumed: BTreeMap::new(),
        }
    }

    pub fn launcher(&self) -> Identity {
        self.launcher
    }

    /// Whether `id` is a certain member (ever seen in this launch's tree).
    pub fn made(&self, id: &Identity) -> bool {
        self.members.get(&id.pid).is_some_and(|m| m.id == *id)
    }

    /// What /proc showed of member `id`'s end, if it was seen as a zombie.
    pub fn seen_status(&self, id: &Identity) -> Option<i32> {
        self.members
            .get(&id.pid)
            .filter(|m| m.id == *id)
            .and_then(|m| m.status)
    }

    /// Every certain member, dead or alive (for the cleanup of a failed start:
    /// each is signalled only if its identity still matches).
    pub fn members(&self) -> impl Iterator<Item = Identity> + '_ {
        self.members.values().map(|m| m.id)
    }

    /// The process of pid `pid` this launch made or presumed, if any.
    pub fn known(&self, pid: i32) -> Option<Identity> {
        self.members
            .get(&pid)
            .map(|m| m.id)
            .or_else(|| self.presumed.get(&pid).copied())
    }

    /// Orphans this launch once presumed were its own, dead or alive.
    pub fn presumed(&self) -> impl Iterator<Item = Identity> + '_ {
        self.presumed.values().copied()
    }

    /// Looks at `snap`: adds the members it shows and says who is alive.
    /// `claimed` tells whether another launch in progress (or a server one
    /// kept) owns an orphan.
    pub fn census(&mut self, snap: &Snapshot, claimed: impl Fn(&Identity) -> bool) -> Census {
        self.note_zombie_members(snap);
        let mut certain: Vec<Identity> = self
            .members
            .values()
            .map(|m| m.id)
            .filter(|id| snap.alive(id))
            .collect();
        let mut presumed = self.handed_orphans(snap, claimed);
        self.add_descendants(snap, &mut certain, &mut presumed);
        self.add_zombie_children(snap, &certain);
        if certain.is_empty() && presumed.is_empty() {
            self.trace_empty(snap);
        }
        for p in &presumed {
            if self.presumed.len() < PRESUMED_KEPT {
                self.presumed.insert(p.pid, *p);
            }
        }
        certain.sort_by_key(|i| i.pid);
        presumed.sort_by_key(|i| i.pid);
        Census { certain, presumed }
    }

    /// Keeps the status of every member `snap` shows as a zombie. Done first:
    /// the status is what the exit report needs, and a parent may collect it
    /// before the next look.
    fn note_zombie_members(&mut self, snap: &Snapshot) {
        for m in self.members.values_mut() {
            if let Some(p) = snap.get(m.id.pid)
                && p.id == m.id
                && p.zombie.is_some()
            {
                m.status = p.zombie;
            }
        }
    }

    /// Live orphans re-parented to obhostd that may be this launch's (the
    /// presumption of the module doc): the launch's user, started no earlier
    /// than the launcher, on this boot, neither made here nor claimed.
    fn handed_orphans(
        &self,
        snap: &Snapshot,
        claimed: impl Fn(&Identity) -> bool,
    ) -> Vec<Identity> {
        snap.procs
            .values()
            .filter(|p| {
                p.ppid == snap.me
                    && p.zombie.is_none()
                    && p.uid == self.uid
                    && p.id.boot == self.launcher.boot
                    && p.id.start_ticks >= self.launcher.start_ticks
                    && !self.made(&p.id)
                    && !claimed(&p.id)
            })
            .map(|p| p.id)
            .collect()
    }

    /// Descendants of the living, to a fixed point: a child is certain when
    /// its parent is (and is remembered as a member), presumed when its parent
    /// is presumed.
    fn add_descendants(
        &mut self,
        snap: &Snapshot,
        certain: &mut Vec<Identity>,
        presumed: &mut Vec<Identity>,
    ) {
        loop {
            let mut grew = false;
            for p in snap.procs.values() {
                let known = |v: &Vec<Identity>| v.iter().any(|m| m.pid == p.ppid);
                if p.zombie.is_some() || certain.contains(&p.id) || presumed.contains(&p.id) {
                    continue;
                }
                if known(certain) {
                    certain.push(p.id);
                    self.members.insert(
                        p.id.pid,
                        Seen {
                            id: p.id,
                            status: None,
                        },
                    );
                    grew = true;
                } else if known(presumed) {
                    presumed.push(p.id);
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
    }

    /// A zombie child of a member is a member too: it lived, and its status
    /// may be the only word of how the server ended.
    fn add_zombie_children(&mut self, snap: &Snapshot, certain: &[Identity]) {
        for p in snap.procs.values() {
            if let Some(status) = p.zombie
                && certain.iter().any(|m| m.pid == p.ppid)
            {
                self.members.entry(p.id.pid).or_insert(Seen {
                    id: p.id,
                    status: Some(status),
                });
            }
        }
    }

    /// What obhostd's children looked like when nothing of the launch was
    /// found: the trace to read when a start fails as "nothing left alive".
    fn trace_empty(&self, snap: &Snapshot) {
        let orphans: Vec<String> = snap
            .procs
            .values()
            .filter(|p| p.ppid == snap.me)
            .map(|p| format!("{}:{}:{}:{:?}", p.id.pid, p.id.start_ticks, p.uid, p.zombie))
            .collect();
        tracing::trace!(launcher = ?self.launcher, uid = self.uid, ?orphans, "empty census");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: i32 = 100;
    const UID: u32 = 1000;

    fn id(pid: i32, start: u64) -> Identity {
        Identity {
            pid,
            start_ticks: start,
            boot: 7,
        }
    }

    fn p(pid: i32, start: u64, ppid: i32, uid: u32) -> Proc {
        Proc {
            id: id(pid, start),
            ppid,
            uid,
            zombie: None,
        }
    }

    fn launch() -> Launch {
        Launch::new(id(200, 50), UID)
    }

    #[test]
    fn the_launcher_and_its_descendants_are_certain() {
        let mut l = launch();
        let snap = Snapshot::of(
            ME,
            &[
                p(200, 50, ME, UID),
                p(201, 51, 200, UID),
                p(202, 52, 201, UID),
            ],
        );
        let c = l.census(&snap, |_| false);
        assert_eq!(c.certain, vec![id(200, 50), id(201, 51), id(202, 52)]);
        assert!(c.presumed.is_empty());
        // Remembered: once the launcher is gone the grandchild is still known.
        let snap = Snapshot::of(ME, &[p(202, 52, ME, UID)]);
        let c = l.census(&snap, |_| false);
        assert_eq!(c.certain, vec![id(202, 52)]);
    }

    #[test]
    fn an_orphan_handed_to_obhostd_is_presumed_only_when_it_could_be_ours() {
        let mut l = launch();
        let snap = Snapshot::of(
            ME,
            &[
                p(300, 60, ME, UID),  // forked and orphaned between looks
                p(301, 40, ME, UID),  // started before the launcher
                p(302, 60, ME, 0),    // another user's
                p(303, 60, 1, UID),   // not handed to obhostd
                p(304, 60, ME, UID),  // claimed by another launch
                p(305, 61, 300, UID), // a child of the presumed orphan
            ],
        );
        let c = l.census(&snap, |i| i.pid == 304);
        assert!(c.certain.is_empty());
        assert_eq!(c.presumed, vec![id(300, 60), id(305, 61)]);
        assert!(
            !l.made(&id(300, 60)),
            "a presumption never becomes certainty"
        );
    }

    #[test]
    fn a_reused_pid_is_not_the_member_that_had_it() {
        let mut l = launch();
        l.census(
            &Snapshot::of(ME, &[p(200, 50, ME, UID), p(201, 51, 200, UID)]),
            |_| false,
        );
        // 201 died; its number now belongs to another user's process.
        let snap = Snapshot::of(ME, &[p(201, 90, 1, UID)]);
        let c = l.census(&snap, |_| false);
        assert!(c.is_empty(), "{c:?}");
        assert!(!l.made(&id(201, 90)));
        assert!(l.made(&id(201, 51)));
    }

    #[test]
    fn a_zombie_is_dead_but_its_status_is_kept() {
        let mut l = launch();
        l.census(
            &Snapshot::of(ME, &[p(200, 50, ME, UID), p(201, 51, 200, UID)]),
            |_| false,
        );
        let mut z = p(201, 51, 200, UID);
        z.zombie = Some(1 << 8);
        let c = l.census(&Snapshot::of(ME, &[p(200, 50, ME, UID), z]), |_| false);
        assert_eq!(c.certain, vec![id(200, 50)]);
        assert_eq!(l.seen_status(&id(201, 51)), Some(256));
        // A zombie child never seen alive is still recorded as made here.
        let mut z = p(202, 52, 200, UID);
        z.zombie = Some(9);
        l.census(&Snapshot::of(ME, &[p(200, 50, ME, UID), z]), |_| false);
        assert!(l.made(&id(202, 52)));
        assert_eq!(l.seen_status(&id(202, 52)), Some(9));
    }

    /// The real /proc: this test process sees itself and its parent.
    #[test]
    fn a_real_snapshot_shows_this_process() {
        let snap = Snapshot::take();
        let me = std::process::id() as i32;
        let p = snap.get(me).expect("this process is in /proc");
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert!(p.zombie.is_none());
        assert!(snap.alive(&Identity::of(me).unwrap()));
    }
}
