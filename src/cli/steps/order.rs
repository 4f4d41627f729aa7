//! The order obhostctl shows steps in: as they ran, DAG by DAG, which is
//! neither the store's (by id) nor alphabetical. It lives beside the commands
//! that list steps, not under `output/`, because choosing which steps and in
//! what sequence is a decision about steps, not about printing: `steps list`
//! keeps the newest DAGs, `steps watch --until-done` names the first step that
//! did not succeed in the order they ran, and the demo lists its DAG; each
//! orders first, and `output` prints what it is given, in the order given.

use crate::proto::v1 as pb;

/// Where a step kind stands in "Start OB server": what decides the order of
/// two steps of a DAG created at the same instant.
fn kind_rank(k: pb::StepKind) -> u8 {
    match k {
        pb::StepKind::PrepareStartObserver => 1,
        pb::StepKind::StartObserverProcess => 2,
        pb::StepKind::WaitObserverActive => 3,
        pb::StepKind::StartAgentService => 4,
        pb::StepKind::StopObserverProcess => 5,
        _ => 6,
    }
}

fn created(s: &pb::Step) -> (i64, i32) {
    s.created_at
        .as_ref()
        .map_or((i64::MAX, 0), |t| (t.seconds, t.nanos))
}

/// Orders steps as they ran: the DAGs by when their first step was created,
/// and within a DAG by creation (a flow creates a step only once the one
/// before it succeeded, which is the DAG's dependency order: prepare, start,
/// wait, agent, and not the ids' alphabetical agent, prepare, start, wait).
/// Steps created at the same instant go by their place in "Start OB server",
/// then by id. A step without a DAG is a DAG of its own.
pub(in crate::cli) fn dag_order(steps: &mut [pb::Step]) {
    let mut first: std::collections::HashMap<&str, (i64, i32)> = Default::default();
    for s in steps.iter() {
        if !s.dag_id.is_empty() {
            let e = first.entry(s.dag_id.as_str()).or_insert((i64::MAX, 0));
            *e = (*e).min(created(s));
        }
    }
    let key = |s: &pb::Step| {
        let group = if s.dag_id.is_empty() {
            (created(s), s.id.clone())
        } else {
            (first[s.dag_id.as_str()], s.dag_id.clone())
        };
        (group, created(s), kind_rank(s.kind()), s.id.clone())
    };
    let mut keyed: Vec<_> = steps.iter().map(|s| (key(s), s.clone())).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    for (slot, (_, s)) in steps.iter_mut().zip(keyed) {
        *slot = s;
    }
}

/// Keeps the `limit` steps created last and orders them as `steps list`
/// shows them: the DAGs newest first (by their first step's creation), each
/// DAG's steps in the order they ran, as [`dag_order`] has them. Returns how
/// many older steps were left out.
pub(in crate::cli) fn newest_first(steps: &mut Vec<pb::Step>, limit: Option<usize>) -> usize {
    let mut older = 0;
    if let Some(limit) = limit.filter(|l| *l < steps.len()) {
        steps.sort_by(|a, b| {
            (created(b), kind_rank(b.kind()), &b.id).cmp(&(created(a), kind_rank(a.kind()), &a.id))
        });
        older = steps.len() - limit;
        steps.truncate(limit);
    }
    dag_order(steps);
    // dag_order has the DAGs oldest first: turn the DAGs around, not the
    // steps within each.
    let mut dags: Vec<Vec<pb::Step>> = Vec::new();
    for s in steps.drain(..) {
        match dags.last_mut() {
            Some(dag) if !s.dag_id.is_empty() && dag[0].dag_id == s.dag_id => dag.push(s),
            _ => dags.push(vec![s]),
        }
    }
    steps.extend(dags.into_iter().rev().flatten());
    older
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<pbjson_types::Timestamp> {
        Some(pbjson_types::Timestamp { seconds, nanos })
    }

    #[test]
    fn steps_go_in_dag_order_then_dags_by_creation() {
        let step = |id: &str, dag: &str, secs: i64, kind: pb::StepKind| {
            let mut s = pb::Step {
                id: id.into(),
                dag_id: dag.into(),
                created_at: ts(secs, 0),
                ..Default::default()
            };
            s.set_kind(kind);
            s
        };
        use pb::StepKind as K;
        let mut steps = vec![
            step("d-agent", "d", 13, K::StartAgentService),
            step("d-prepare", "d", 10, K::PrepareStartObserver),
            step("a-prepare", "a", 20, K::PrepareStartObserver),
            step("d-start", "d", 11, K::StartObserverProcess),
            step("d-wait", "d", 11, K::WaitObserverActive),
            step("loose", "", 15, K::StopObserverProcess),
        ];
        dag_order(&mut steps);
        let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "d-prepare",
                "d-start",
                "d-wait",
                "d-agent",
                "loose",
                "a-prepare"
            ]
        );
    }
}
