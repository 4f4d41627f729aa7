//! `obhostctl completions SHELL` and `obhostctl man --out DIR`: shell
//! completion scripts and man pages rendered from the very clap definitions the
//! binaries parse (obhostctl's `Cli`, obhostd's `DaemonArgs`), so neither can
//! drift from the flags. `scripts/build-deb.sh` runs both for the package.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::error::CliError;
use crate::daemon_cli::DaemonArgs;

#[derive(clap::Args, Clone)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(clap::Args, Clone)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Prints the completion script. It is rendered into memory first: clap_complete
/// panics on a failed write, and `obhostctl completions bash | head` must not.
/// `cli` is obhostctl's command line, as the dispatcher builds it.
pub fn completions(args: &CompletionsArgs, mut cli: clap::Command) -> Result<ExitCode, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "obhostctl", &mut script);
    write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes obhostctl.1, obhostctl-<subcommand>[-<subcommand>].1 for every
/// visible subcommand (as `man obhostctl-steps-watch` expects), and obhostd.8
/// (a daemon: section 8), then lists the files written.
/// `cli` is obhostctl's command line as the dispatcher builds it, with no
/// `help` pseudo-subcommand (no pages for it).
pub fn man(args: &ManArgs, mut cli: clap::Command) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(&args.out).map_err(|e| {
        CliError::Usage(format!(
            "cannot create --out '{}': {e}; give a directory you may write to",
            crate::bounds::quote(&args.out.display().to_string())
        ))
    })?;
    // As clap_mangen::generate_to: a built tree, so each subcommand's page is
    // titled "obhostctl-steps-list".
    cli.build();
    let mut written = Vec::new();
    render_tree(cli, "1", &args.out, &mut written, &obhostctl_extra())?;
    render_tree(
        DaemonArgs::command(),
        "8",
        &args.out,
        &mut written,
        &obhostd_extra(),
    )?;
    let list: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_stdout(list.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A flag or path as roff prints it: `\-` is a hyphen that stays one
/// (a bare `-` may be typeset as a dash, which a copied command then lacks).
fn roff(text: &str) -> String {
    text.replace('-', "\\-")
}

/// What clap cannot say about obhostd (roff, after its flags): how it exits,
/// what it reads from the environment, where its files are.
fn obhostd_extra() -> String {
    let socket = roff(crate::config::DEFAULT_SOCKET);
    let store = crate::steps::store::STATE_FILE;
    format!(
        r#".nh
.SH "EXIT STATUS"
.TP
0
Stopped on SIGTERM or SIGINT after draining, or \fB\-\-check\-config\fR found
nothing wrong.
.TP
1
Could not start or stopped on an error (a port or socket it cannot bind, a
store it refuses to read, ...); the last line on stderr says what to do.
.TP
2
Bad usage: a flag that does not parse, a config file that cannot be read or
is invalid, or \fB\-\-check\-config\fR found a problem.
.SH ENVIRONMENT
.TP
RUST_LOG
What to log, e.g. \fBobhost=debug\fR (default \fBinfo\fR).
.TP
JOURNAL_STREAM
Set by systemd when stderr is the journal: each line opens with its syslog
priority and carries no timestamp of its own.
.TP
NOTIFY_SOCKET, WATCHDOG_USEC
Set by systemd for a \fBType=notify\fR unit: obhostd reports READY,
STOPPING and a one\-line STATUS, and pets the watchdog. Never passed on to an
observer or agent it starts.
.TP
XDG_RUNTIME_DIR
Not root: the default socket is \fI$XDG_RUNTIME_DIR\fR/obhost/obhostd.sock.
.TP
XDG_STATE_HOME, HOME
Not root and no \fB\-\-state\-dir\fR: the state dir is
\fI$XDG_STATE_HOME\fR/obhostd, else ~/.local/state/obhostd.
.SH FILES
.TP
/etc/obhost/obhostd.toml
The configuration (\fB\-\-config\fR; without it, built\-in defaults); every
key with its default is in /usr/share/doc/obhost/examples/obhostd.toml.
Check it with \fBobhostd \-\-config FILE \-\-check\-config\fR.
.TP
/var/lib/obhostd/{store}
The step store, in state_dir (as root; see XDG_STATE_HOME above otherwise).
Back it up while obhostd is stopped.
.TP
/var/lib/obhostd/observers.json
The observers obhostd started, in state_dir.
.TP
{socket}
The default socket (as root; see XDG_RUNTIME_DIR above otherwise).
.TP
/usr/lib/systemd/system/obhostd.service
The unit the package installs (neither enabled nor started).
.SH SEE ALSO
\fBobhostctl\fR(1), \fBsystemctl\fR(1), /usr/share/doc/obhost/README.md
"#
    )
}

/// What clap cannot say about obhostctl (roff, after its commands): how it
/// exits, what it reads from the environment, where its files are. The
/// variables come from the same table the command line reads them with.
fn obhostctl_extra() -> String {
    let socket = roff(crate::config::DEFAULT_SOCKET);
    let variables: String = crate::cli::connect::TARGET_FLAGS
        .iter()
        .map(|(_, flag, var)| {
            format!(
                ".TP\n{var}\nStands for \\fB{}\\fR when it is not given (empty is unset).\n",
                roff(flag)
            )
        })
        .collect();
    format!(
        r#".SH "EXIT STATUS"
.TP
0
Success.
.TP
1
obhostd answered with an error, or a step obhostctl waited for did not
succeed, or nothing was changed: \fBsteps cancel\fR of a step that had
already ended, \fBstop\-observer\fR where no observer was running (without
\fB\-\-missing\-ok\fR). With \fB\-o json\fR, stdout holds the error.
.TP
2
Bad usage: a command line that does not parse, a flag's value refused, or a
file a flag names that cannot be read.
.TP
3
obhostd could not be reached, or answered UNAVAILABLE (it is shutting down).
.TP
130
Interrupted (Ctrl\-C) while following; the steps go on in obhostd.
.TP
141
Whoever read stdout went away (\fB| head\fR), as SIGPIPE would say.
.SH ENVIRONMENT
{variables}.TP
XDG_RUNTIME_DIR
Not root and no \fB\-\-addr\fR: the default address is
unix:\fI$XDG_RUNTIME_DIR\fR/obhost/obhostd.sock.
.TP
NO_COLOR
Set and not empty: no colours (spinners and tables stay).
.TP
TERM
\fBdumb\fR: plain lines, as when stdout is not a terminal.
.SH FILES
.TP
{socket}
The default address as root (\fB\-\-addr unix:{socket}\fR).
.TP
$XDG_RUNTIME_DIR/obhost/obhostd.sock
The default address for any other user.
.PP
obhostctl reads no configuration file; a token or TLS file only when a flag
or variable above names it.
.SH SEE ALSO
\fBobhostd\fR(8), /usr/share/doc/obhost/README.md
"#
    )
}

fn render_tree(
    cmd: clap::Command,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
    extra: &str,
) -> Result<(), CliError> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_tree(sub.clone(), section, dir, written, "")?;
    }
    let man = clap_mangen::Man::new(cmd)
        .section(section)
        .source(format!("obhost {}", env!("CARGO_PKG_VERSION")))
        .date(env!("OBHOST_BUILD_DATE"))
        .manual(if section == "8" {
            "System Administration"
        } else {
            "User Commands"
        });
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .and_then(|()| {
            page.extend_from_slice(extra.as_bytes());
            std::fs::write(&path, page)
        })
        .map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "cannot write man page '{}': {e}; check that --out is a writable directory",
                crate::bounds::quote(&path.display().to_string())
            ))
        })?;
    written.push(path);
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Other(anyhow::anyhow!("cannot write to stdout: {e}")))
}
