//! `obhostctl completions SHELL` and `obhostctl man --out DIR`: shell
//! completion scripts and man pages rendered from the very clap definitions the
//! binaries parse (obhostctl's `Cli`, obhostd's `DaemonArgs`), so neither can
//! drift from the flags. `scripts/build-deb.sh` runs both for the package.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;

use super::CliError;
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
pub fn completions(args: &CompletionsArgs) -> Result<ExitCode, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(
        args.shell,
        &mut super::command(|c| c),
        "obhostctl",
        &mut script,
    );
    write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes obhostctl.1, obhostctl-<subcommand>[-<subcommand>].1 for every
/// visible subcommand (as `man obhostctl-steps-watch` expects), and obhostd.8
/// (a daemon: section 8), then lists the files written.
pub fn man(args: &ManArgs) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(&args.out).map_err(|e| {
        CliError::Usage(format!(
            "cannot create --out '{}': {e}; give a directory you may write to",
            crate::bounds::quote(&args.out.display().to_string())
        ))
    })?;
    // As clap_mangen::generate_to: no `help` pseudo-subcommand pages, and a
    // built tree, so each subcommand's page is titled "obhostctl-steps-list".
    let mut cli = super::command(|c| c.disable_help_subcommand(true));
    cli.build();
    let mut written = Vec::new();
    render_tree(cli, "1", &args.out, &mut written, OBHOSTCTL_EXTRA)?;
    render_tree(
        DaemonArgs::command(),
        "8",
        &args.out,
        &mut written,
        OBHOSTD_EXTRA,
    )?;
    let list: String = written
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    write_stdout(list.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// What clap cannot say: where the files are and where to read on (roff,
/// appended to the top page of each binary).
const OBHOSTD_EXTRA: &str = r#".nh
.SH FILES
.TP
/etc/obhost/obhostd.toml
The configuration (\fB\-\-config\fR); every key with its default is in
/usr/share/doc/obhost/examples/obhostd.toml.
Check it with \fBobhostd \-\-config FILE \-\-check\-config\fR.
.TP
/var/lib/obhostd/obhostd.redb
The step store (state_dir).
.TP
/run/obhost/obhostd.sock
The default socket.
.SH SEE ALSO
\fBobhostctl\fR(1), \fBsystemctl\fR(1), /usr/share/doc/obhost/README.md
"#;
const OBHOSTCTL_EXTRA: &str = r#".SH SEE ALSO
\fBobhostd\fR(8), /usr/share/doc/obhost/README.md
"#;

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
