//! Following one step to its end through obhostd's WatchSteps, across
//! restarts of obhostd: the steps run in the daemon, so a lost connection
//! is worth a new watch from the last revision seen, not an error.

use std::time::{Duration, Instant};

use super::super::output::{self, Format, live};
use crate::cli::connect::Client;
use crate::cli::error::CliError;
use crate::proto::v1 as pb;

/// Follows one step until it ends, printing each change (state or message) with
/// the time since the flow began.
pub async fn follow(
    client: &mut Client,
    id: &str,
    began: Instant,
    format: Format,
) -> Result<pb::Step, CliError> {
    let mut live = (format == Format::Text).then(|| live::Live::new(id, began));
    let mut after = 0;
    let mut lost = 0;
    loop {
        let ended = match watch_once(client, id, after, &mut live).await {
            Ok(Watched::Done(step)) => return Ok(*step),
            Ok(Watched::Ended(rev)) => {
                after = after.max(rev);
                "the daemon ended the watch".to_string()
            }
            Err((rev, status)) if resumable(&status) => {
                after = after.max(rev);
                format!(
                    "{}: {}",
                    crate::cli::error::code_name(status.code()),
                    status.message()
                )
            }
            Err((_, status)) => return Err(status.into()),
        };
        // obhostd restarting, or the connection dropped: the steps go on in
        // the daemon, so pick up where we were rather than give up.
        lost += 1;
        if lost > RECONNECTS {
            return Err(CliError::Other(anyhow::anyhow!(
                "lost obhostd {RECONNECTS} times while following step {id} ({ended}); the step goes on \
                 in the daemon: follow it with `obhostctl steps watch --step {id} --until-done`"
            )));
        }
        if format == Format::Text {
            output::note(&format!(
                "  lost obhostd while following {id} ({ended}); reconnecting ({lost} of {RECONNECTS})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Times the follow of one step reconnects before it gives up (~0.5 s apart,
/// plus each attempt's connect timeout: long enough for a restart).
pub(crate) const RECONNECTS: u32 = 60;

enum Watched {
    Done(Box<pb::Step>),
    /// The stream ended cleanly before the step did; the last revision seen.
    Ended(u64),
}

/// A daemon going away (restart, shutdown) or a watcher cut off for lagging:
/// worth a new watch from the last revision seen.
pub(crate) fn resumable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable
            | tonic::Code::Aborted
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

/// One watch of `id` after revision `after`, showing changes on `live` (text
/// output); the last revision seen comes back with an error, to resume from.
async fn watch_once(
    client: &mut Client,
    id: &str,
    after: u64,
    live: &mut Option<live::Live>,
) -> Result<Watched, (u64, tonic::Status)> {
    let mut seen = after;
    let mut stream = client
        .watch_steps(pb::WatchStepsRequest {
            step_ids: vec![id.to_string()],
            after_revision: after,
            ..Default::default()
        })
        .await
        .map_err(|s| (seen, s))?
        .into_inner();
    while let Some(item) = stream.message().await.map_err(|s| (seen, s))? {
        let Some(step) = item.step else { continue };
        seen = seen.max(step.revision);
        if let Some(live) = live.as_mut() {
            live.update(&step);
        }
        if output::is_terminal(&step) {
            return Ok(Watched::Done(Box::new(step)));
        }
    }
    Ok(Watched::Ended(seen))
}
