//! The pre-start checks of "Prepare start observer", with OceanBase's deployer
//! (OBD) thresholds (the README's "Pre-start checks (Prepare)" lists each
//! check and its rule). Each returns one
//! [`CheckResult`] with what the host has, what the observer needs, and the exact
//! command that fixes it. They read /proc, sysinfo and nix; nothing shells out.

use std::path::Path;

use crate::process::{Limits, RunAs, inspect};
use crate::steps::{CheckResult, CheckStatus};

const GIB: u64 = 1 << 30;

pub fn result(
    name: &str,
    status: CheckStatus,
    observed: String,
    expected: String,
    hint: String,
) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        status,
        observed,
        expected,
        hint,
    }
}

fn pass(name: &str, observed: String, expected: &str) -> CheckResult {
    result(
        name,
        CheckStatus::Pass,
        observed,
        expected.to_string(),
        String::new(),
    )
}

/// `port.mysql` / `port.rpc`: nothing may listen on the observer's ports.
/// `listening` is the socket table, read once for all the port checks.
pub fn port(name: &str, port: u16, listening: &inspect::Listening) -> CheckResult {
    if !listening.has(port) {
        return pass(name, format!("port {port} free"), "free");
    }
    let (observed, hint) = match listening.holder(port) {
        Some((pid, comm)) => (
            format!("port {port} held by pid {pid} ({comm})"),
            format!("stop pid {pid} ({comm}), or give the observer another port"),
        ),
        None => (
            format!("port {port} held by a process obhostd cannot see"),
            format!("find it with `ss -ltnp 'sport = :{port}'` and stop it, or use another port"),
        ),
    };
    result(
        name,
        CheckStatus::Fail,
        observed,
        format!("port {port} free"),
        hint,
    )
}

/// Whether `user` may write into (and enter) `dir`, from its mode bits.
pub fn writable_by(dir: &Path, user: &RunAs) -> Result<bool, std::io::Error> {
    let m = crate::confined::metadata(dir)?;
    if m.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Ok(false);
    }
    if user.uid == 0 {
        return Ok(true);
    }
    let mode = m.st_mode;
    Ok(if m.st_uid == user.uid {
        mode & 0o300 == 0o300
    } else if m.st_gid == user.gid || user.groups.contains(&m.st_gid) {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    })
}

/// `dir.*`: the dir exists (or is created, owned by the user) and the user can write it.
pub fn dir(name: &str, dir: &Path, user: &RunAs, create: bool) -> CheckResult {
    let expected = format!("{} exists and is writable by {}", dir.display(), user.name);
    let fix = format!(
        "mkdir -p {0} && chown -R {1}:{1} {0}",
        dir.display(),
        user.name
    );
    if !crate::confined::exists(dir) {
        if !create {
            return result(
                name,
                CheckStatus::Fail,
                format!("{} does not exist", dir.display()),
                expected,
                format!("{fix} (or set create_dirs)"),
            );
        }
        if let Err(e) = create_owned(dir, user) {
            return result(
                name,
                CheckStatus::Fail,
                format!("cannot create {}: {e}", dir.display()),
                expected,
                fix,
            );
        }
        return pass(
            name,
            format!("created {} owned by {}", dir.display(), user.name),
            &expected,
        );
    }
    match writable_by(dir, user) {
        Ok(true) => pass(
            name,
            format!("{} writable by {}", dir.display(), user.name),
            &expected,
        ),
        Ok(false) => result(
            name,
            CheckStatus::Fail,
            format!("{} is not writable by {}", dir.display(), user.name),
            expected,
            fix,
        ),
        Err(e) => result(
            name,
            CheckStatus::Fail,
            format!("{}: {e}", dir.display()),
            expected,
            fix,
        ),
    }
}

/// Each missing level is made owned by the user, without following links (a
/// home reached through a link would otherwise put root-made dirs elsewhere).
fn create_owned(dir: &Path, user: &RunAs) -> std::io::Result<()> {
    crate::confined::create_dirs(dir, Some((user.uid, user.gid)), 0o750).map(drop)
}

/// `dir.etc.owner`: the observer refuses to start if etc/ belongs to another uid.
pub fn etc_owner(etc: &Path, user: &RunAs) -> CheckResult {
    let name = "dir.etc.owner";
    let expected = format!("{} owned by {}", etc.display(), user.name);
    match crate::confined::metadata(etc) {
        Err(_) => pass(
            name,
            format!(
                "{} does not exist yet (the observer creates it)",
                etc.display()
            ),
            &expected,
        ),
        Ok(m) if m.st_uid == user.uid => pass(
            name,
            format!("{} owned by {}", etc.display(), user.name),
            &expected,
        ),
        Ok(m) => result(
            name,
            CheckStatus::Fail,
            format!("{} owned by uid {}", etc.display(), m.st_uid),
            expected,
            format!("chown -R {0}:{0} {1}", user.name, etc.display()),
        ),
    }
}

/// Reads a /proc/meminfo field in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

/// A field of /proc/meminfo's text, in bytes.
fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Parses OceanBase capacity values: "8G", "512M", "1T", plain bytes.
pub fn parse_capacity(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit.to_ascii_uppercase().trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / GIB as f64)
}

/// The /proc/meminfo figures the memory checks judge, in bytes, read once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub total: Option<u64>,
    pub free: Option<u64>,
    pub available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
}

impl Memory {
    pub fn read() -> Memory {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |f: &str| meminfo_field(&text, f);
        Memory {
            total: field("MemTotal"),
            free: field("MemFree"),
            available: field("MemAvailable"),
            buffers: field("Buffers"),
            cached: field("Cached"),
        }
    }
}

/// `memory.available`: OBD wants 3 GiB available per observer.
pub fn memory_available(mem: &Memory) -> CheckResult {
    let name = "memory.available";
    let need = 3 * GIB;
    match mem.available {
        Some(avail) if avail >= need => pass(
            name,
            format!("{} available", gib(avail)),
            "at least 3.0 GiB available",
        ),
        Some(avail) => result(
            name,
            CheckStatus::Fail,
            format!("{} available", gib(avail)),
            "at least 3.0 GiB available".into(),
            "free memory on this host (stop other services) before starting the observer".into(),
        ),
        None => result(
            name,
            CheckStatus::Warn,
            "cannot read /proc/meminfo".into(),
            "at least 3.0 GiB available".into(),
            String::new(),
        ),
    }
}

/// The memory the observer will take: `memory_limit`, else
/// `memory_limit_percentage` (default 80) of MemTotal.
fn configured_limit(params: &std::collections::BTreeMap<String, String>, total: u64) -> u64 {
    match params
        .get("memory_limit")
        .and_then(|v| parse_capacity(v))
        .filter(|v| *v > 0)
    {
        Some(l) => l,
        None => {
            let pct: u64 = params
                .get("memory_limit_percentage")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(80);
            total / 100 * pct
        }
    }
}

/// `memory.limit`: what the observer is configured to take must fit.
pub fn memory_limit(
    params: &std::collections::BTreeMap<String, String>,
    mem: &Memory,
) -> CheckResult {
    let name = "memory.limit";
    let free = mem.free.unwrap_or(0);
    let reclaimable = free + mem.buffers.unwrap_or(0) + mem.cached.unwrap_or(0);
    let limit = configured_limit(params, mem.total.unwrap_or(0));
    if let Some(sys) = params.get("system_memory").and_then(|v| parse_capacity(v))
        && sys >= limit
    {
        return result(
            name,
            CheckStatus::Fail,
            format!("system_memory {} >= memory_limit {}", gib(sys), gib(limit)),
            "system_memory below memory_limit".into(),
            "lower parameters.system_memory or raise parameters.memory_limit".into(),
        );
    }
    let expected = format!("memory_limit {} fits in free memory", gib(limit));
    if limit > reclaimable {
        result(
            name,
            CheckStatus::Fail,
            format!(
                "memory_limit {} > free+buffers+cached {}",
                gib(limit),
                gib(reclaimable)
            ),
            expected,
            "lower parameters.memory_limit (e.g. memory_limit=8G) or free memory on this host"
                .into(),
        )
    } else if limit > free {
        result(
            name,
            CheckStatus::Warn,
            format!("memory_limit {} > MemFree {} (page cache must be reclaimed)", gib(limit), gib(free)),
            expected,
            "drop caches (sync; echo 3 > /proc/sys/vm/drop_caches) or lower parameters.memory_limit".into(),
        )
    } else {
        pass(
            name,
            format!("memory_limit {} of {} free", gib(limit), gib(free)),
            &expected,
        )
    }
}

/// `disk.data` / `disk.redo`: a first start must fit the files it will create.
pub fn disk(name: &str, dir: &Path, need: Option<u64>, restart: bool) -> CheckResult {
    if restart {
        return result(
            name,
            CheckStatus::Skipped,
            "restart".into(),
            "first start only".into(),
            String::new(),
        );
    }
    let probe = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    let avail = nix::sys::statvfs::statvfs(probe)
        .map(|s| s.blocks_available() * s.fragment_size())
        .map_err(|e| e.to_string());
    disk_rule(name, probe, avail, need)
}

/// The rule of [`disk`], given what statvfs said about `at`.
pub fn disk_rule(
    name: &str,
    at: &Path,
    avail: Result<u64, String>,
    need: Option<u64>,
) -> CheckResult {
    let avail = match avail {
        Ok(a) => a,
        Err(e) => {
            return result(
                name,
                CheckStatus::Warn,
                format!("statvfs {}: {e}", at.display()),
                String::new(),
                String::new(),
            );
        }
    };
    let observed = format!("{} free at {}", gib(avail), at.display());
    let Some(need) = need else {
        return pass(
            name,
            observed,
            "size not configured: the observer takes a share of the disk",
        );
    };
    let expected = format!("at least {} free", gib(need));
    if avail >= need {
        pass(name, observed, &expected)
    } else {
        result(
            name,
            CheckStatus::Fail,
            observed,
            expected,
            "free disk space there, or lower datafile_size / log_disk_size".into(),
        )
    }
}

fn read_num(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `aio`: room for the observer's AIO contexts.
pub fn aio() -> CheckResult {
    aio_rule(
        read_num("/proc/sys/fs/aio-max-nr"),
        read_num("/proc/sys/fs/aio-nr"),
    )
}

/// The rule of [`aio`], given aio-max-nr and aio-nr.
pub fn aio_rule(max: Option<u64>, used: Option<u64>) -> CheckResult {
    let name = "aio";
    let (Some(max), Some(used)) = (max, used) else {
        return result(
            name,
            CheckStatus::Warn,
            "cannot read /proc/sys/fs/aio-*".into(),
            String::new(),
            String::new(),
        );
    };
    let hint = "sysctl -w fs.aio-max-nr=1048576 and add 'fs.aio-max-nr = 1048576' to /etc/sysctl.d/99-oceanbase.conf".to_string();
    let observed = format!("aio-max-nr {max}, aio-nr {used}");
    if max.saturating_sub(used) < 20_000 {
        result(
            name,
            CheckStatus::Fail,
            observed,
            "aio-max-nr - aio-nr >= 20000".into(),
            hint,
        )
    } else if max < 1_048_576 {
        result(
            name,
            CheckStatus::Warn,
            observed,
            "aio-max-nr >= 1048576".into(),
            hint,
        )
    } else {
        pass(name, observed, "aio-max-nr >= 1048576")
    }
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// `ulimit.*`: the limits the observer will really run with (what obhostd grants).
pub fn ulimits(limits: &Limits) -> Vec<CheckResult> {
    let eff = limits.effective();
    let current = |r| {
        nix::sys::resource::getrlimit(r)
            .map(|(s, _)| s)
            .unwrap_or(0)
    };
    let nofile = eff
        .nofile
        .unwrap_or_else(|| current(nix::sys::resource::Resource::RLIMIT_NOFILE));
    let nproc = eff
        .nproc
        .unwrap_or_else(|| current(nix::sys::resource::Resource::RLIMIT_NPROC));
    let core = eff
        .core
        .unwrap_or_else(|| current(nix::sys::resource::Resource::RLIMIT_CORE));
    let stack = eff
        .stack
        .unwrap_or_else(|| current(nix::sys::resource::Resource::RLIMIT_STACK));
    ulimit_rules(nofile, nproc, core, stack)
}

/// The rules of [`ulimits`], given the limits the observer will get
/// (`u64::MAX` is unlimited).
pub fn ulimit_rules(nofile: u64, nproc: u64, core: u64, stack: u64) -> Vec<CheckResult> {
    let hint = |item: &str, v: &str| {
        format!(
            "raise obhostd's limit (LimitNOFILE/LimitNPROC/LimitCORE/LimitSTACK in obhostd.service) and [limits] {item} = {v} in obhostd.toml"
        )
    };
    let grade = |name: &str,
                 v: u64,
                 fail_below: u64,
                 warn_below: u64,
                 expected: &str,
                 item: &str,
                 want: &str| {
        let status = if v < fail_below {
            CheckStatus::Fail
        } else if v < warn_below {
            CheckStatus::Warn
        } else {
            CheckStatus::Pass
        };
        let hint = if status == CheckStatus::Pass {
            String::new()
        } else {
            hint(item, want)
        };
        result(
            name,
            status,
            format!("{} will be {}", item, show(v)),
            expected.into(),
            hint,
        )
    };
    vec![
        grade(
            "ulimit.nofile",
            nofile,
            20_000,
            655_350,
            ">= 655350 (at least 20000)",
            "nofile",
            "655350",
        ),
        grade(
            "ulimit.nproc",
            nproc,
            4096,
            4096,
            ">= 4096",
            "nproc",
            "655360",
        ),
        grade(
            "ulimit.core",
            core,
            0,
            u64::MAX,
            "unlimited",
            "core",
            "\"unlimited\"",
        ),
        grade(
            "ulimit.stack",
            stack,
            1 << 20,
            u64::MAX,
            "unlimited (at least 1 MiB)",
            "stack",
            "\"unlimited\"",
        ),
    ]
}

/// One kernel parameter OBD recommends: its key, the accepted range (both
/// ends included), what to say is expected, and the value to set.
pub struct Sysctl {
    pub key: &'static str,
    pub range: (u64, u64),
    pub expected: &'static str,
    pub fix: &'static str,
}

/// OBD's ranges.
pub const SYSCTLS: &[Sysctl] = &[
    Sysctl {
        key: "vm.max_map_count",
        range: (327_600, 1_310_720),
        expected: "327600..1310720 (655360 recommended)",
        fix: "655360",
    },
    Sysctl {
        key: "vm.min_free_kbytes",
        range: (32_768, 2_097_152),
        expected: "32768..2097152",
        fix: "2097152",
    },
    Sysctl {
        key: "vm.overcommit_memory",
        range: (0, 0),
        expected: "0",
        fix: "0",
    },
    Sysctl {
        key: "fs.file-max",
        range: (6_573_688, u64::MAX),
        expected: ">= 6573688",
        fix: "6573688",
    },
];

/// `sysctl.*`: kernel parameters OBD recommends (WARN only).
pub fn sysctls() -> Vec<CheckResult> {
    SYSCTLS
        .iter()
        .map(|s| {
            let path = format!("/proc/sys/{}", s.key.replace('.', "/"));
            sysctl_rule(s, read_num(&path).ok_or(path))
        })
        .collect()
}

/// The rule of one sysctl, given its value (or the file that could not be read).
pub fn sysctl_rule(s: &Sysctl, value: Result<u64, String>) -> CheckResult {
    let (key, fix, expected) = (s.key, s.fix, s.expected);
    let name = format!("sysctl.{key}");
    let hint =
        format!("sysctl -w {key}={fix} and add '{key} = {fix}' to /etc/sysctl.d/99-oceanbase.conf");
    match value {
        Ok(v) if (s.range.0..=s.range.1).contains(&v) => {
            pass(&name, format!("{key} = {v}"), expected)
        }
        Ok(v) => result(
            &name,
            CheckStatus::Warn,
            format!("{key} = {v}"),
            expected.into(),
            hint,
        ),
        Err(path) => result(
            &name,
            CheckStatus::Warn,
            format!("cannot read {path}"),
            expected.into(),
            String::new(),
        ),
    }
}

/// `net.devname`: the interface the observer binds to exists.
pub fn devname(dev: &str) -> CheckResult {
    let name = "net.devname";
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let found = text
        .lines()
        .skip(2)
        .any(|l| l.split(':').next().map(str::trim) == Some(dev));
    if found {
        pass(name, format!("{dev} present"), "present in /proc/net/dev")
    } else {
        result(
            name,
            CheckStatus::Fail,
            format!("no device {dev}"),
            "present in /proc/net/dev".into(),
            "give observer.devname an interface from `ip link`".into(),
        )
    }
}

/// `cpu.avx`: x86 observer builds need AVX (a few newer builds do not).
pub fn cpu_avx() -> CheckResult {
    let name = "cpu.avx";
    if std::env::consts::ARCH != "x86_64" {
        return result(
            name,
            CheckStatus::Skipped,
            format!("{} (not x86)", std::env::consts::ARCH),
            "x86 only".into(),
            String::new(),
        );
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "avx"));
    if has {
        pass(name, "avx present".into(), "avx")
    } else {
        result(
            name,
            CheckStatus::Warn,
            "no avx flag".into(),
            "avx".into(),
            "use an observer build without the AVX requirement or a CPU with AVX".into(),
        )
    }
}

/// `clock`: whether the kernel considers the clock synchronised (adjtimex).
/// Comparing hosts is the orchestrator's job; one host can only say this.
pub fn clock() -> CheckResult {
    let name = "clock";
    // SAFETY: ntp_adjtime with modes 0 only reads into the struct we own.
    let state = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        libc::ntp_adjtime(&mut tx)
    };
    if state == libc::TIME_ERROR {
        result(
            name,
            CheckStatus::Warn,
            "clock not synchronised (adjtimex TIME_ERROR)".into(),
            "synchronised by NTP/chrony".into(),
            "enable time sync: systemctl enable --now chronyd (or ntpd)".into(),
        )
    } else {
        pass(name, format!("adjtimex state {state}"), "synchronised")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities() {
        assert_eq!(parse_capacity("8G"), Some(8 << 30));
        assert_eq!(parse_capacity("512M"), Some(512 << 20));
        assert_eq!(parse_capacity("\"2T\""), Some(2 << 40));
        assert_eq!(parse_capacity("1024"), Some(1024));
        assert_eq!(parse_capacity("lots"), None);
    }

    #[test]
    fn an_occupied_port_names_its_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let r = port("port.mysql", p, &inspect::Listening::read());
        assert_eq!(r.status, CheckStatus::Fail);
        assert!(
            r.observed.contains(&format!("pid {}", std::process::id())),
            "{}",
            r.observed
        );
        drop(l);
        let r = port("port.mysql", p, &inspect::Listening::read());
        assert_eq!(r.status, CheckStatus::Pass);
    }

    use CheckStatus::{Fail, Pass, Warn};

    fn params(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn memory_available_rule_table() {
        let cases = [
            (Some(3 * GIB), Pass),
            (Some(3 * GIB - 1), Fail),
            (Some(64 * GIB), Pass),
            (None, Warn),
        ];
        for (available, want) in cases {
            let mem = Memory {
                available,
                ..Memory::default()
            };
            assert_eq!(memory_available(&mem).status, want, "{available:?}");
        }
    }

    #[test]
    fn memory_limit_rule_table() {
        let mem = Memory {
            total: Some(100 * GIB),
            free: Some(10 * GIB),
            available: Some(30 * GIB),
            buffers: Some(5 * GIB),
            cached: Some(15 * GIB),
        };
        let cases: &[(&[(&str, &str)], CheckStatus)] = &[
            // Fits in MemFree.
            (&[("memory_limit", "8G")], Pass),
            (&[("memory_limit", "10G")], Pass),
            // Needs the page cache: free+buffers+cached = 30G.
            (&[("memory_limit", "11G")], Warn),
            (&[("memory_limit", "30G")], Warn),
            (&[("memory_limit", "31G")], Fail),
            // Default: 80 % of MemTotal.
            (&[], Fail),
            (&[("memory_limit_percentage", "5")], Pass),
            (&[("memory_limit_percentage", "20")], Warn),
            // system_memory must stay below the limit.
            (&[("memory_limit", "8G"), ("system_memory", "8G")], Fail),
            (&[("memory_limit", "8G"), ("system_memory", "2G")], Pass),
        ];
        for (kv, want) in cases {
            let r = memory_limit(&params(kv), &mem);
            assert_eq!(r.status, *want, "{kv:?}: {}", r.observed);
        }
    }

    #[test]
    fn disk_rule_table() {
        let at = Path::new("/data");
        let cases = [
            (Ok(10 * GIB), Some(10 * GIB), Pass),
            (Ok(10 * GIB), Some(10 * GIB + 1), Fail),
            (Ok(1), None, Pass),
            (Err("EIO".to_string()), Some(1), Warn),
        ];
        for (avail, need, want) in cases {
            let r = disk_rule("disk.data", at, avail.clone(), need);
            assert_eq!(r.status, want, "{avail:?} {need:?}");
            assert_eq!(r.name, "disk.data");
        }
    }

    #[test]
    fn aio_rule_table() {
        let cases = [
            (Some(1_048_576), Some(0), Pass),
            (Some(1_048_576), Some(1_048_576 - 19_999), Fail),
            (Some(1_048_576), Some(1_048_576 - 20_000), Pass),
            (Some(65_536), Some(0), Warn),
            (Some(65_536), Some(50_000), Fail),
            (None, Some(0), Warn),
            (Some(1_048_576), None, Warn),
        ];
        for (max, used, want) in cases {
            assert_eq!(aio_rule(max, used).status, want, "{max:?} {used:?}");
        }
    }

    #[test]
    fn ulimit_rule_table() {
        let status = |nofile, nproc, core, stack| -> Vec<CheckStatus> {
            ulimit_rules(nofile, nproc, core, stack)
                .into_iter()
                .map(|r| r.status)
                .collect()
        };
        let max = u64::MAX;
        assert_eq!(status(655_350, 4096, max, max), [Pass, Pass, Pass, Pass]);
        assert_eq!(status(20_000, 4096, max, max)[0], Warn);
        assert_eq!(status(19_999, 4096, max, max)[0], Fail);
        assert_eq!(status(655_350, 4095, max, max)[1], Fail);
        assert_eq!(status(655_350, 4096, 0, max)[2], Warn);
        assert_eq!(status(655_350, 4096, max, 1 << 20)[3], Warn);
        assert_eq!(status(655_350, 4096, max, (1 << 20) - 1)[3], Fail);
        let names: Vec<String> = ulimit_rules(0, 0, 0, 0)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "ulimit.nofile",
                "ulimit.nproc",
                "ulimit.core",
                "ulimit.stack"
            ]
        );
    }

    #[test]
    fn sysctl_rule_table() {
        let by_key = |k: &str| SYSCTLS.iter().find(|s| s.key == k).unwrap();
        let cases = [
            ("vm.max_map_count", Ok(655_360), Pass),
            ("vm.max_map_count", Ok(327_599), Warn),
            ("vm.max_map_count", Ok(1_310_721), Warn),
            ("vm.min_free_kbytes", Ok(32_768), Pass),
            ("vm.min_free_kbytes", Ok(2_097_153), Warn),
            ("vm.overcommit_memory", Ok(0), Pass),
            ("vm.overcommit_memory", Ok(1), Warn),
            ("fs.file-max", Ok(6_573_688), Pass),
            ("fs.file-max", Ok(6_573_687), Warn),
            (
                "fs.file-max",
                Err("/proc/sys/fs/file-max".to_string()),
                Warn,
            ),
        ];
        for (key, value, want) in cases {
            let r = sysctl_rule(by_key(key), value.clone());
            assert_eq!(r.status, want, "{key} {value:?}");
            assert_eq!(r.name, format!("sysctl.{key}"));
        }
    }

    #[test]
    fn meminfo_fields_are_bytes() {
        let text = "MemTotal:       16318412 kB\nMemFree:          123 kB\nMemAvailable:  7 kB\n";
        assert_eq!(meminfo_field(text, "MemTotal"), Some(16_318_412 * 1024));
        assert_eq!(meminfo_field(text, "MemFree"), Some(123 * 1024));
        assert_eq!(meminfo_field(text, "Cached"), None);
    }
}
