//! obhostd's messages name the API: request fields (`create_dirs`,
//! `observer.mysql_port`), RPCs (`RetryStep`), step ids. That is right for the
//! orchestrators and scripts that call it, and obhostd keeps saying it so. An
//! operator at obhostctl never wrote a field, though: told to "set
//! create_dirs" they must guess that it is `--create-dirs`. So the CLI
//! rewrites those words into its own flags and commands, here and only here,
//! before it shows obhostd's text (an RPC's refusal, a failed step, a check's
//! fix).
//!
//! The table is matched by plain substrings of obhostd's messages. A phrase
//! that obhostd stops saying would silently never match again, so a test
//! checks that each still occurs in the daemon's source, and another that
//! every flag the table names is one obhostctl has.

use std::borrow::Cow;

/// Where the step's id goes in a rewritten phrase, when the message belongs
/// to a known step.
const STEP: &str = "{step}";

/// (obhostd's phrase, obhostctl's wording), applied in order: a longer phrase
/// comes before a shorter one it contains.
const TABLE: &[(&str, &str)] = &[
    // Steps: what to run, not which RPC to call.
    (
        "Give a longer meta.timeout, or fix what it waited for and RetryStep",
        "Fix what it waited for and run `obhostctl steps retry {step}`, or start again with \
         a new --dag-id (for Wait observer active, with a longer --wait-timeout)",
    ),
    (
        "repeat the original request to follow it, or use a new step_id",
        "run the original command again to follow it, or give new ids (a new --dag-id, or \
         new --step-ids / --step-id)",
    ),
    (
        "repeat this WaitObserverActive request (same step_id) to supply it",
        "run the same start-observer command again (same --dag-id and \
         --wait-password-file) to supply it",
    ),
    ("RetryStep '", "obhostctl steps retry '"),
    ("its output is in log_tail", "its output is in the log tail"),
    (
        "give a shorter grace or a longer meta.timeout",
        "give a shorter --grace",
    ),
    // Prepare.
    ("(or set create_dirs)", "(or run with --create-dirs)"),
    ("skip_checks names '", "--skip-check names '"),
    // The agent service.
    (
        "set systemd_unit or command in the request",
        "give --agent-unit or --agent-program (or --no-agent to start no agent)",
    ),
    (
        "command.pid_file is required for a daemonizing service (foreground=false)",
        "--agent-pid-file is required for an agent that daemonizes (without \
         --agent-foreground)",
    ),
    (
        "set command.pid_file (or foreground=true)",
        "give --agent-pid-file (or --agent-foreground)",
    ),
    ("command.pid_file", "--agent-pid-file"),
    ("command.argv[0]", "--agent-program"),
    ("command.argv", "--agent-program and --agent-arg"),
    ("command.cwd", "--agent-cwd"),
    ("health.http_url", "--agent-http-url"),
    ("health.tcp_port", "--agent-tcp-port"),
    ("systemd_unit '", "--agent-unit '"),
    // The observer's fields are start-observer's flags.
    ("observer.home_path", "--home"),
    ("observer.binary", "--binary"),
    ("observer.user", "--user"),
    ("observer.mysql_port", "--mysql-port"),
    ("observer.rpc_port", "--rpc-port"),
    ("observer.pid_file", "--pid-file"),
    ("observer.zone", "--zone"),
    ("observer.cluster_name", "--cluster-name"),
    ("observer.cluster_id", "--cluster-id"),
    ("observer.rootservice_list", "--rootservice-list"),
    ("observer.data_dir", "--data-dir"),
    ("observer.redo_dir", "--redo-dir"),
    ("observer.devname", "--devname"),
    ("observer.ip", "--ip"),
    ("observer.parameters", "--param"),
    ("parameters.memory_limit", "--param memory_limit"),
    ("parameters.system_memory", "--param system_memory"),
    ("observer.env", "--env"),
    ("meta.dag_id", "--dag-id"),
    ("meta.step_id", "the step id (from --dag-id or --step-ids)"),
];

/// `text` from obhostd in obhostctl's words; `step` is the id of the step it
/// belongs to, when there is one, for the commands it suggests.
pub(crate) fn in_cli_terms<'a>(text: &'a str, step: Option<&str>) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for (api, cli) in TABLE {
        if out.contains(api) {
            let cli = cli.replace(STEP, step.unwrap_or("STEP_ID"));
            out = Cow::Owned(out.replace(api, &cli));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every .rs file under `dir`, but for obhostctl's own.
    fn daemon_source(dir: &std::path::Path, into: &mut String) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("src/cli") {
                    daemon_source(&path, into);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                into.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }

    #[test]
    fn every_phrase_is_still_said_by_obhostd() {
        let mut source = String::new();
        daemon_source(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut source,
        );
        let stale: Vec<&str> = TABLE
            .iter()
            .map(|(api, _)| *api)
            .filter(|api| !source.contains(api))
            .collect();
        assert!(
            stale.is_empty(),
            "obhostd no longer says these (update the table in src/cli/phrasing.rs): {stale:?}"
        );
    }

    #[test]
    fn every_flag_named_is_one_obhostctl_has() {
        fn longs(cmd: &clap::Command, into: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(l) = arg.get_long() {
                    into.push(format!("--{l}"));
                }
            }
            for sub in cmd.get_subcommands() {
                longs(sub, into);
            }
        }
        let mut known = Vec::new();
        longs(
            &<super::super::Cli as clap::CommandFactory>::command(),
            &mut known,
        );
        for (_, cli) in TABLE {
            for word in cli.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                if word.starts_with("--") {
                    assert!(
                        known.iter().any(|k| k == word),
                        "{word} is not a flag of obhostctl"
                    );
                }
            }
        }
    }

    #[test]
    fn no_wording_says_the_api_again() {
        for (_, cli) in TABLE {
            for (api, _) in TABLE {
                assert!(!cli.contains(api), "'{cli}' contains '{api}'");
            }
        }
    }

    #[test]
    fn messages_come_out_in_flags_and_commands() {
        assert_eq!(
            in_cli_terms(
                "mkdir -p /h/log && chown -R a:a /h/log (or set create_dirs)",
                None
            ),
            "mkdir -p /h/log && chown -R a:a /h/log (or run with --create-dirs)"
        );
        assert_eq!(
            in_cli_terms(
                "step did not finish within its timeout of 2m; last: x. Give a longer \
                 meta.timeout, or fix what it waited for and RetryStep",
                Some("d-wait")
            ),
            "step did not finish within its timeout of 2m; last: x. Fix what it waited for \
             and run `obhostctl steps retry d-wait`, or start again with a new --dag-id (for \
             Wait observer active, with a longer --wait-timeout)"
        );
        assert_eq!(
            in_cli_terms(
                "observer.zone, observer.cluster_name, observer.cluster_id required on a first start",
                None
            ),
            "--zone, --cluster-name, --cluster-id required on a first start"
        );
        let plain = "observer started (pid 7)";
        assert!(matches!(in_cli_terms(plain, None), Cow::Borrowed(_)));
    }
}
