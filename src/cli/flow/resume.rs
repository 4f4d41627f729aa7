//! What Ctrl-C during start-observer says: what goes on in obhostd, what
//! was never started, and the command that resumes the DAG (the operator's
//! own, quoted for a shell, with the --dag-id it needs).

use super::args::StartArgs;
use super::ran::{At, Ran, STEPS};

/// What Ctrl-C leaves behind, and the command that goes on from there.
pub(super) fn interrupted_text(ran: &Ran, at: At, rerun: &[String]) -> String {
    let (at, state) = match at {
        At::Following(i) => (i, "goes on in obhostd"),
        At::Sending(i) => (i, "was being started (it may be running in obhostd)"),
    };
    let later: Vec<&str> = STEPS[at + 1..ran.ids.len()]
        .iter()
        .map(|(_, name, _)| *name)
        .collect();
    let later = if later.is_empty() {
        String::new()
    } else {
        format!("; {} not started", later.join(", "))
    };
    let command: Vec<_> = rerun.iter().map(|a| shell_quote(a)).collect();
    format!(
        "interrupted: obhostctl stopped following; '{}' ({}) {state}{later}. To \
         resume, run the same command again with --dag-id {}: steps that succeeded are kept, a \
         running one is followed, the missing ones are started (one that failed or was \
         cancelled is shown, not run again):\n  {}",
        STEPS[at].1,
        ran.ids[at],
        ran.dag,
        command.join(" ")
    )
}

/// The operator's command line, with the --dag-id this run made up when none
/// was given: without it a re-run would make up another and start over.
pub(super) fn rerun_command(args: &StartArgs, dag: &str) -> Vec<String> {
    let mut argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.dag_id.is_none() {
        argv.extend(["--dag-id".to_string(), dag.to_string()]);
    }
    argv
}

/// `arg` as a POSIX shell reads it back: as it is when it holds only
/// characters no shell treats specially, else in single quotes.
fn shell_quote(arg: &str) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.into()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''")).into()
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoted_arguments_read_back_the_same() {
        assert_eq!(shell_quote("--dag-id"), "--dag-id");
        assert_eq!(shell_quote("/home/admin/ob"), "/home/admin/ob");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;rm"), "'$HOME;rm'");
    }
}
