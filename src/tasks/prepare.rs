//! "Prepare start observer" (PREPARE_START_OBSERVER): the pre-start checks.
//!
//! Every check is recorded as a CheckResult, in a fixed order. A FAIL fails the
//! step with the code of the first failure; a WARN does not, unless `strict`.
//! `skip_checks` names are recorded as SKIPPED. A stale pid file is removed, and
//! with `create_dirs` missing dirs are created, owned by the observer's user.
//! When the observer already runs, the port and dir checks are skipped (they
//! would only find the observer itself), as OBD does.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::deps::Deps;
use crate::host::checks;
use crate::observer::ObserverSpec;
use crate::observer::locate::{self, Found, Target};
use crate::policy::SpecError;
use crate::process::{RunAs, inspect};
use crate::steps::model::codes::Code;
use crate::steps::task::BoxFuture;
use crate::steps::{
    CheckResult, CheckStatus, OnRestart, StepContext, StepFailure, StepResult, StepSuccess,
    StepTask,
};

/// One Prepare check: the one place that says what it is called (in
/// `skip_checks` and in its `CheckResult`), which code its failure stands for,
/// and whether a running observer skips it (it would only find the observer
/// itself: its ports and dirs, as OBD does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub code: Code,
    pub skipped_when_running: bool,
}

impl Check {
    const fn new(name: &'static str, code: Code, skipped_when_running: bool) -> Check {
        Check {
            name,
            code,
            skipped_when_running,
        }
    }
}

/// Every check, in the order they run.
pub const CATALOG: &[Check] = &[
    Check::new("observer.running", Code::CheckFailed, false),
    Check::new("pidfile.stale", Code::CheckFailed, false),
    Check::new("port.mysql", Code::PortInUse, true),
    Check::new("port.rpc", Code::PortInUse, true),
    Check::new("binary", Code::BinaryNotFound, false),
    Check::new("dir.home", Code::DirNotWritable, true),
    Check::new("dir.run", Code::DirNotWritable, true),
    Check::new("dir.log", Code::DirNotWritable, true),
    Check::new("dir.etc", Code::DirNotWritable, true),
    Check::new("dir.data", Code::DirNotWritable, true),
    Check::new("dir.redo", Code::DirNotWritable, true),
    Check::new("dir.etc.owner", Code::DirWrongOwner, false),
    Check::new("memory.available", Code::InsufficientMemory, false),
    Check::new("memory.limit", Code::InsufficientMemory, false),
    Check::new("disk.data", Code::InsufficientDisk, false),
    Check::new("disk.redo", Code::InsufficientDisk, false),
    Check::new("aio", Code::AioInsufficient, false),
    Check::new("ulimit.nofile", Code::UlimitTooLow, false),
    Check::new("ulimit.nproc", Code::UlimitTooLow, false),
    Check::new("ulimit.core", Code::UlimitTooLow, false),
    Check::new("ulimit.stack", Code::UlimitTooLow, false),
    Check::new("sysctl.vm.max_map_count", Code::SysctlOutOfRange, false),
    Check::new("sysctl.vm.min_free_kbytes", Code::SysctlOutOfRange, false),
    Check::new("sysctl.vm.overcommit_memory", Code::SysctlOutOfRange, false),
    Check::new("sysctl.fs.file-max", Code::SysctlOutOfRange, false),
    Check::new("net.devname", Code::NetworkDeviceNotFound, false),
    Check::new("cpu.avx", Code::CpuUnsupported, false),
    Check::new("clock", Code::ClockNotSynchronised, false),
];

/// Every check's name, in the order they run: what `skip_checks` may name.
pub fn check_names() -> Vec<&'static str> {
    CATALOG.iter().map(|c| c.name).collect()
}

fn check(name: &str) -> Option<&'static Check> {
    CATALOG.iter().find(|c| c.name == name)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareParams {
    pub observer: ObserverSpec,
    pub create_dirs: bool,
    pub skip_checks: Vec<String>,
    pub strict: bool,
}

/// A Prepare request's parameters, checked before any step exists: the binary
/// and the dirs are checks of the step, not preconditions, but a first start's
/// cluster identity must be there and every `skip_checks` name must be a check.
pub fn resolve(
    observer: ObserverSpec,
    create_dirs: bool,
    skip_checks: Vec<String>,
    strict: bool,
) -> Result<PrepareParams, SpecError> {
    // What StartObserver will refuse is refused here, before Prepare creates
    // a single directory for a start that cannot happen.
    observer.check_first_start()?;
    if let Some(bad) = skip_checks.iter().find(|n| check(n).is_none()) {
        return Err(SpecError::Invalid(format!(
            "skip_checks names '{}', which is not a check; the checks are: {}",
            crate::bounds::quote(bad),
            check_names().join(", ")
        )));
    }
    Ok(PrepareParams {
        observer,
        create_dirs,
        skip_checks,
        strict,
    })
}

pub struct Prepare {
    pub params: PrepareParams,
    pub deps: Arc<Deps>,
}

/// The StepError code a failed check stands for (CHECK_FAILED for a name
/// outside the catalog, which only a bug could produce).
fn code_for(name: &str) -> Code {
    check(name).map_or(Code::CheckFailed, |c| c.code)
}

/// The results of one run, in order; a check named in `skip_checks` is
/// recorded as SKIPPED with what it would have expected.
struct Results<'a> {
    skip: &'a [String],
    out: Vec<CheckResult>,
}

impl Results<'_> {
    fn skipped(&self, name: &str) -> bool {
        self.skip.iter().any(|s| s == name)
    }

    fn add(&mut self, r: CheckResult) {
        if self.skipped(&r.name) {
            let why = "skipped as asked (skip_checks)".to_string();
            let r = checks::result(
                &r.name,
                CheckStatus::Skipped,
                why,
                r.expected,
                String::new(),
            );
            tracing::debug!(check = %r.name, "check skipped as asked");
            self.out.push(r);
        } else {
            tracing::debug!(
                check = %r.name,
                status = ?r.status,
                observed = %r.observed,
                expected = %r.expected,
                "check evaluated"
            );
            self.out.push(r);
        }
    }
}

fn info(name: &str, observed: String) -> CheckResult {
    checks::result(
        name,
        CheckStatus::Pass,
        observed,
        "info".into(),
        String::new(),
    )
}

fn not_applicable(name: &str, why: &str) -> CheckResult {
    checks::result(
        name,
        CheckStatus::Skipped,
        why.into(),
        String::new(),
        String::new(),
    )
}

impl Prepare {
    /// Every check, in the order of [`CATALOG`]. Blocking (reads /proc, statfs).
    fn run_checks(&self, user: &RunAs) -> Vec<CheckResult> {
        let mut results = Results {
            skip: &self.params.skip_checks,
            out: Vec::new(),
        };
        let running = self.identity_checks(user, &mut results);
        if running {
            for c in CATALOG.iter().filter(|c| c.skipped_when_running) {
                results.add(not_applicable(c.name, "observer already running"));
            }
        } else {
            self.port_checks(&mut results);
        }
        results.add(self.binary_check(user));
        if !running {
            self.dir_checks(user, &mut results);
        }
        self.host_checks(user, &mut results);
        results.out
    }

    /// `observer.running`, `pidfile.stale` (removing a stale pid file); true
    /// when the observer runs.
    fn identity_checks(&self, user: &RunAs, results: &mut Results) -> bool {
        let spec = &self.params.observer;
        let target = Target {
            home_path: spec.home_path.clone(),
            pid_file: spec.pid_file.clone(),
            binary: spec.binary.clone(),
            uid: Some(user.uid),
        };
        let found = locate::find(&target, &self.deps.registry);
        results.add(match &found {
            Found::Running(id) => info("observer.running", format!("running pid {}", id.pid)),
            _ => info("observer.running", "not running".into()),
        });
        let stale = match found {
            Found::Stale(pid) if !results.skipped("pidfile.stale") => self.remove_stale(pid),
            _ => checks::result(
                "pidfile.stale",
                CheckStatus::Pass,
                "no stale pid file".into(),
                "no stale pid file".into(),
                String::new(),
            ),
        };
        results.add(stale);
        matches!(found, Found::Running(_))
    }

    fn remove_stale(&self, pid: Option<i32>) -> CheckResult {
        let pid_file = &self.params.observer.pid_file;
        let what = pid
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "no pid".into());
        let (status, observed, hint) = match crate::confined::remove_file(pid_file) {
            Ok(_) => (
                CheckStatus::Pass,
                format!("removed stale {} ({what})", pid_file.display()),
                String::new(),
            ),
            Err(e) => (
                CheckStatus::Fail,
                format!("cannot remove stale {}: {e}", pid_file.display()),
                format!("rm -f {}", pid_file.display()),
            ),
        };
        checks::result(
            "pidfile.stale",
            status,
            observed,
            "no stale pid file".into(),
            hint,
        )
    }

    /// `port.mysql`, `port.rpc`, from one read of the socket table.
    fn port_checks(&self, results: &mut Results) {
        let spec = &self.params.observer;
        let listening = inspect::Listening::read();
        results.add(checks::port("port.mysql", spec.mysql_port, &listening));
        results.add(checks::port("port.rpc", spec.rpc_port, &listening));
    }

    fn binary_check(&self, user: &RunAs) -> CheckResult {
        let spec = &self.params.observer;
        let expected = "present and executable".to_string();
        match spec.check_binary(user) {
            Ok(()) => checks::result(
                "binary",
                CheckStatus::Pass,
                format!("{} executable by {}", spec.binary.display(), user.name),
                expected,
                String::new(),
            ),
            Err(m) => checks::result(
                "binary",
                CheckStatus::Fail,
                m,
                expected,
                format!(
                    "install the observer at {} (chmod 755)",
                    spec.binary.display()
                ),
            ),
        }
    }

    /// `dir.*`: home, run, log, etc, data and redo exist (created with
    /// `create_dirs`) and are writable by the user.
    fn dir_checks(&self, user: &RunAs, results: &mut Results) {
        let p = &self.params;
        let spec = &p.observer;
        let home = &spec.home_path;
        results.add(checks::dir("dir.home", home, user, p.create_dirs));
        for sub in ["run", "log", "etc"] {
            let name = format!("dir.{sub}");
            results.add(checks::dir(&name, &home.join(sub), user, p.create_dirs));
        }
        results.add(self.data_dir_check(user));
        results.add(match &spec.redo_dir {
            Some(redo) => checks::dir("dir.redo", redo, user, p.create_dirs),
            None => not_applicable("dir.redo", "redo_dir not set"),
        });
    }

    /// `dir.data`; a non-empty one on a first start warns: it may hold another
    /// observer's data.
    fn data_dir_check(&self, user: &RunAs) -> CheckResult {
        let spec = &self.params.observer;
        let data = checks::dir("dir.data", &spec.data_dir, user, self.params.create_dirs);
        let first_start_nonempty = !spec.is_restart()
            && data.status == CheckStatus::Pass
            && crate::confined::dir_has_entries(&spec.data_dir);
        if !first_start_nonempty {
            return data;
        }
        checks::result(
            "dir.data",
            CheckStatus::Warn,
            format!("{} is not empty on a first start", spec.data_dir.display()),
            "empty on a first start".into(),
            format!(
                "check that {} holds no other observer's data",
                spec.data_dir.display()
            ),
        )
    }

    /// What the host offers: etc/ ownership, memory, disk, aio, limits,
    /// sysctls, network device, CPU, clock.
    fn host_checks(&self, user: &RunAs, results: &mut Results) {
        let spec = &self.params.observer;
        results.add(checks::etc_owner(&spec.home_path.join("etc"), user));
        let mem = checks::Memory::read();
        results.add(checks::memory_available(&mem));
        results.add(checks::memory_limit(&spec.parameters, &mem));
        self.disk_checks(results);
        results.add(checks::aio());
        for r in checks::ulimits(&self.deps.policy.limits) {
            results.add(r);
        }
        for r in checks::sysctls() {
            results.add(r);
        }
        results.add(if spec.devname.is_empty() {
            not_applicable("net.devname", "devname not set")
        } else {
            checks::devname(&spec.devname)
        });
        results.add(checks::cpu_avx());
        results.add(checks::clock());
    }

    /// `disk.data`, `disk.redo`: a first start's files must fit.
    fn disk_checks(&self, results: &mut Results) {
        let spec = &self.params.observer;
        let size = |k: &str| {
            spec.parameters
                .get(k)
                .and_then(|v| checks::parse_capacity(v))
        };
        // The slog reserve OBD adds to the data disk.
        let data_need = size("datafile_size").map(|s| s + 4 * (1 << 30));
        let restart = spec.is_restart();
        results.add(checks::disk(
            "disk.data",
            &spec.data_dir,
            data_need,
            restart,
        ));
        let redo = spec.redo_dir.as_ref().unwrap_or(&spec.data_dir);
        results.add(checks::disk(
            "disk.redo",
            redo,
            size("log_disk_size"),
            restart,
        ));
    }

    async fn prepare(self, ctx: StepContext) -> StepResult {
        let user = RunAs::lookup_async(&self.params.observer.user)
            .await
            .map_err(|e| StepFailure::new(Code::UserNotFound, e.to_string()))?;
        ctx.progress(format!("running {} checks", CATALOG.len()))
            .await;
        let this = Arc::new(self);
        let worker = this.clone();
        // The checks read /proc and statfs: blocking work, off the runtime.
        let results = tokio::task::spawn_blocking(move || worker.run_checks(&user))
            .await
            .map_err(|e| StepFailure::new(Code::Internal, format!("the checks panicked: {e}")))?;
        let strict = this.params.strict;
        let failed = results
            .iter()
            .find(|r| r.status == CheckStatus::Fail || (strict && r.status == CheckStatus::Warn));
        let warns = results
            .iter()
            .filter(|r| r.status == CheckStatus::Warn)
            .count();
        match failed {
            Some(f) => {
                let mut failure = StepFailure::new(
                    code_for(&f.name),
                    format!(
                        "check {} failed: {} (expected {}); fix: {}",
                        f.name, f.observed, f.expected, f.hint
                    ),
                );
                failure.error.details.insert("check".into(), f.name.clone());
                failure.checks = results;
                Err(failure)
            }
            None => Ok(StepSuccess {
                message: format!("all checks passed ({warns} warnings)"),
                outputs: Default::default(),
                checks: results,
            }),
        }
    }
}

impl StepTask for Prepare {
    fn run(self: Box<Self>, ctx: StepContext) -> BoxFuture<StepResult> {
        Box::pin((*self).prepare(ctx))
    }

    fn lock_key(&self) -> Option<String> {
        Some(super::process_steps::observer_lock(
            &self.params.observer.home_path,
        ))
    }

    /// Checks only look (and create dirs idempotently): run them again.
    fn on_restart(&self) -> OnRestart {
        OnRestart::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_names_each_check_once() {
        let mut names = check_names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len());
    }

    #[test]
    fn every_check_has_its_code() {
        let cases = [
            ("port.mysql", Code::PortInUse),
            ("binary", Code::BinaryNotFound),
            ("dir.data", Code::DirNotWritable),
            ("dir.etc.owner", Code::DirWrongOwner),
            ("memory.limit", Code::InsufficientMemory),
            ("disk.redo", Code::InsufficientDisk),
            ("aio", Code::AioInsufficient),
            ("ulimit.stack", Code::UlimitTooLow),
            ("sysctl.fs.file-max", Code::SysctlOutOfRange),
            ("net.devname", Code::NetworkDeviceNotFound),
            ("cpu.avx", Code::CpuUnsupported),
            ("clock", Code::ClockNotSynchronised),
            ("observer.running", Code::CheckFailed),
        ];
        for (check, code) in cases {
            assert!(check_names().contains(&check), "{check}");
            assert_eq!(code_for(check), code, "{check}");
        }
    }

    #[test]
    fn a_running_observer_skips_its_ports_and_dirs_only() {
        let skipped: Vec<&str> = CATALOG
            .iter()
            .filter(|c| c.skipped_when_running)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            skipped,
            [
                "port.mysql",
                "port.rpc",
                "dir.home",
                "dir.run",
                "dir.log",
                "dir.etc",
                "dir.data",
                "dir.redo"
            ]
        );
    }
}
