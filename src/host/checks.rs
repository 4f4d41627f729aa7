//! The pre-start checks of "Prepare start observer", with OceanBase's deployer
//! (OBD) thresholds (see PREPARE-CHECKS.md in the design). Each returns one
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
pub fn port(name: &str, port: u16) -> CheckResult {
    if !inspect::port_listening(port) {
        return pass(name, format!("port {port} free"), "free");
    }
    let (observed, hint) = match inspect::port_holder(port) {
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

/// Reads /proc/meminfo fields in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
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

/// `memory.available`: OBD wants 3 GiB available per observer.
pub fn memory_available() -> CheckResult {
    let name = "memory.available";
    let need = 3 * GIB;
    match meminfo("MemAvailable") {
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

/// `memory.limit`: what the observer is configured to take must fit.
pub fn memory_limit(params: &std::collections::BTreeMap<String, String>) -> CheckResult {
    let name = "memory.limit";
    let total = meminfo("MemTotal").unwrap_or(0);
    let free = meminfo("MemFree").unwrap_or(0);
    let reclaimable = free + meminfo("Buffers").unwrap_or(0) + meminfo("Cached").unwrap_or(0);
    let limit = match params
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
    };
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
    let avail = match nix::sys::statvfs::statvfs(probe) {
        Ok(s) => s.blocks_available() * s.fragment_size(),
        Err(e) => {
            return result(
                name,
                CheckStatus::Warn,
                format!("statvfs {}: {e}", probe.display()),
                String::new(),
                String::new(),
            );
        }
    };
    let Some(need) = need else {
        return pass(
            name,
            format!("{} free at {}", gib(avail), probe.display()),
            "size not configured: the observer takes a share of the disk",
        );
    };
    let expected = format!("at least {} free", gib(need));
    if avail >= need {
        pass(
            name,
            format!("{} free at {}", gib(avail), probe.display()),
            &expected,
        )
    } else {
        result(
            name,
            CheckStatus::Fail,
            format!("{} free at {}", gib(avail), probe.display()),
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
    let name = "aio";
    let (Some(max), Some(used)) = (
        read_num("/proc/sys/fs/aio-max-nr"),
        read_num("/proc/sys/fs/aio-nr"),
    ) else {
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

/// `sysctl.*`: kernel parameters OBD recommends (WARN only).
pub fn sysctls() -> Vec<CheckResult> {
    let one = |key: &str, ok: &dyn Fn(u64) -> bool, expected: &str, fix: &str| {
        let name = format!("sysctl.{key}");
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let hint = format!(
            "sysctl -w {key}={fix} and add '{key} = {fix}' to /etc/sysctl.d/99-oceanbase.conf"
        );
        match read_num(&path) {
            Some(v) if ok(v) => pass(&name, format!("{key} = {v}"), expected),
            Some(v) => result(
                &name,
                CheckStatus::Warn,
                format!("{key} = {v}"),
                expected.into(),
                hint,
            ),
            None => result(
                &name,
                CheckStatus::Warn,
                format!("cannot read {path}"),
                expected.into(),
                String::new(),
            ),
        }
    };
    vec![
        one(
            "vm.max_map_count",
            &|v| (327_600..=1_310_720).contains(&v),
            "327600..1310720 (655360 recommended)",
            "655360",
        ),
        one(
            "vm.min_free_kbytes",
            &|v| (32_768..=2_097_152).contains(&v),
            "32768..2097152",
            "2097152",
        ),
        one("vm.overcommit_memory", &|v| v == 0, "0", "0"),
        one("fs.file-max", &|v| v >= 6_573_688, ">= 6573688", "6573688"),
    ]
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
        let r = port("port.mysql", p);
        assert_eq!(r.status, CheckStatus::Fail);
        assert!(
            r.observed.contains(&format!("pid {}", std::process::id())),
            "{}",
            r.observed
        );
        drop(l);
        assert_eq!(port("port.mysql", p).status, CheckStatus::Pass);
    }
}
