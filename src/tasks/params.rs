//! A step's parameters, typed: what a request resolves to, what its record
//! stores, and what a retry or a restart reads back.
//!
//! A request becomes a [`StepParams`] once, through its kind's `resolve`
//! (which judges it by the host's policy), and the new step's task is built
//! from those values: no text round trip between the request and the task.
//! The engine stores them as JSON beside the step's kind, which is the serde
//! tag here: the same `kind` + `params` a store has always held, so renaming a
//! field or a variant is a storage migration. Only a retry and a restart
//! decode them back ([`StepParams::from_stored`]), with a typed error when a
//! store written by another version no longer fits.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::deps::Deps;
use super::rechecked::Rechecked;
#[cfg(feature = "test-kinds")]
use super::test_step;
use super::{
    prepare, start_agent_service, start_observer, stop_observer, wait_observer_active as wait,
};
use crate::observer::ObserverSpec;
use crate::policy::SpecError;
use crate::steps::{StepKind, StepTask};

/// One variant per step kind, named as [`StepKind`] is (the serde tag is the
/// kind's stored name, and a test holds the two together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "params", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepParams {
    PrepareStartObserver(prepare::PrepareParams),
    StartObserverProcess(ObserverSpec),
    WaitObserverActive(wait::WaitParams),
    StartAgentService(start_agent_service::AgentParams),
    StopObserverProcess(stop_observer::StopParams),
    #[cfg(feature = "test-kinds")]
    Test(test_step::TestStep),
}

/// Stored parameters that no longer make a step of their kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "the stored parameters of this {kind:?} step do not fit this obhostd ({source}); they were written by another version: make the request again under a new step_id"
    )]
    Malformed {
        kind: StepKind,
        source: serde_json::Error,
    },
    #[error("test steps exist only in builds with the test-kinds feature")]
    TestKind,
}

impl StepParams {
    pub fn kind(&self) -> StepKind {
        match self {
            StepParams::PrepareStartObserver(_) => StepKind::PrepareStartObserver,
            StepParams::StartObserverProcess(_) => StepKind::StartObserverProcess,
            StepParams::WaitObserverActive(_) => StepKind::WaitObserverActive,
            StepParams::StartAgentService(_) => StepKind::StartAgentService,
            StepParams::StopObserverProcess(_) => StepKind::StopObserverProcess,
            #[cfg(feature = "test-kinds")]
            StepParams::Test(_) => StepKind::Test,
        }
    }

    /// The kind's parameters as the engine stores them (the tag's content).
    pub fn to_stored(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut tagged = serde_json::to_value(self)?;
        Ok(tagged
            .get_mut("params")
            .map(serde_json::Value::take)
            .unwrap_or_default())
    }

    /// Reads back what [`to_stored`](Self::to_stored) wrote for `kind`.
    pub fn from_stored(kind: StepKind, stored: &serde_json::Value) -> Result<Self, DecodeError> {
        if kind == StepKind::Test && cfg!(not(feature = "test-kinds")) {
            return Err(DecodeError::TestKind);
        }
        let tagged = serde_json::json!({ "kind": kind, "params": stored });
        serde_json::from_value(tagged).map_err(|source| DecodeError::Malformed { kind, source })
    }

    /// The home and the user the step acts on, for the audit trail.
    pub fn subject(&self) -> (Option<&Path>, &str) {
        match self {
            StepParams::PrepareStartObserver(p) => (Some(&p.observer.home_path), &p.observer.user),
            StepParams::StartObserverProcess(s) => (Some(&s.home_path), &s.user),
            StepParams::WaitObserverActive(p) => (Some(&p.home_path), ""),
            StepParams::StopObserverProcess(p) => (Some(&p.home_path), ""),
            StepParams::StartAgentService(p) => match &p.service {
                start_agent_service::Service::Command(c) => (Some(&c.cwd), &c.user),
                start_agent_service::Service::SystemdUnit(_) => (None, ""),
            },
            #[cfg(feature = "test-kinds")]
            StepParams::Test(_) => (None, ""),
        }
    }

    /// The task of a new step. Its request was judged by the host's policy
    /// a moment ago, so it runs as it is.
    pub fn task(self, deps: &Arc<Deps>) -> Box<dyn StepTask> {
        let deps = deps.clone();
        match self {
            StepParams::PrepareStartObserver(params) => Box::new(prepare::Prepare { params, deps }),
            StepParams::StartObserverProcess(spec) => {
                Box::new(start_observer::StartObserver { spec, deps })
            }
            StepParams::WaitObserverActive(params) => {
                Box::new(wait::WaitObserverActive { params, deps })
            }
            StepParams::StartAgentService(params) => {
                Box::new(start_agent_service::StartAgentService { params, deps })
            }
            StepParams::StopObserverProcess(params) => {
                Box::new(stop_observer::StopObserver { params, deps })
            }
            #[cfg(feature = "test-kinds")]
            StepParams::Test(t) => Box::new(t),
        }
    }

    /// The task of a stored step run again (a retry, a resume after a
    /// restart): first judged by the host's policy as it is then (see
    /// [`Rechecked`]).
    pub fn stored_task(self, deps: &Arc<Deps>) -> Box<dyn StepTask> {
        #[cfg(feature = "test-kinds")]
        if let StepParams::Test(t) = self {
            return Box::new(t);
        }
        let (judged, policy) = (self.clone(), deps.clone());
        Box::new(Rechecked {
            inner: self.task(deps),
            check: Box::new(move || judged.recheck(&policy)),
        })
    }

    /// Judges stored parameters by today's policy. Blocking (it resolves
    /// paths and looks users up).
    fn recheck(&self, deps: &Deps) -> Result<(), SpecError> {
        let policy = &deps.policy;
        match self {
            StepParams::PrepareStartObserver(p) => p.observer.recheck(policy),
            StepParams::StartObserverProcess(s) => s.recheck(policy),
            StepParams::WaitObserverActive(p) => p.recheck(policy),
            StepParams::StartAgentService(p) => p.recheck(&deps.agent, policy),
            StepParams::StopObserverProcess(p) => p.recheck(policy),
            #[cfg(feature = "test-kinds")]
            StepParams::Test(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn every_kind() -> Vec<StepParams> {
        let home = std::path::PathBuf::from("/home/admin/oceanbase");
        let observer = ObserverSpec {
            zone: "zone1".into(),
            cluster_name: "c".into(),
            cluster_id: 1,
            ..ObserverSpec::for_test(&home, "admin")
        };
        vec![
            StepParams::PrepareStartObserver(prepare::PrepareParams {
                observer: observer.clone(),
                create_dirs: true,
                skip_checks: vec!["ulimit.nofile".into()],
                strict: false,
            }),
            StepParams::StartObserverProcess(observer),
            StepParams::WaitObserverActive(wait::WaitParams {
                home_path: home.clone(),
                mysql_port: 2881,
                user: "root".into(),
                with_password: true,
                sql: "SELECT 1".into(),
            }),
            StepParams::StartAgentService(start_agent_service::AgentParams {
                service: start_agent_service::Service::SystemdUnit("ocp_agent.service".into()),
                health: None,
            }),
            StepParams::StopObserverProcess(stop_observer::StopParams {
                home_path: home,
                grace: Duration::from_secs(10),
                force: false,
            }),
        ]
    }

    #[test]
    fn the_tag_is_the_kind_and_the_store_round_trips() {
        for params in every_kind() {
            let tagged = serde_json::to_value(&params).unwrap();
            let tag: StepKind = serde_json::from_value(tagged["kind"].clone()).unwrap();
            assert_eq!(tag, params.kind(), "{params:?}");
            let stored = params.to_stored().unwrap();
            assert_eq!(stored, tagged["params"], "{params:?}");
            let back = StepParams::from_stored(params.kind(), &stored).unwrap();
            assert_eq!(back, params);
        }
    }

    /// What older stores hold: a kind's struct as JSON, with no tag inside.
    #[test]
    fn a_stored_record_of_before_still_decodes() {
        let stored = serde_json::json!({
            "home_path": "/home/admin/oceanbase", "grace": "10s", "force": true
        });
        let p = StepParams::from_stored(StepKind::StopObserverProcess, &stored).unwrap();
        let StepParams::StopObserverProcess(stop) = p else {
            panic!("{p:?}")
        };
        assert!(stop.force);
        assert_eq!(stop.grace, Duration::from_secs(10));
    }

    #[test]
    fn parameters_of_another_kind_are_a_typed_error_naming_the_kind() {
        let stop = serde_json::json!({"home_path": "/h", "grace": "1s", "force": false});
        let e = StepParams::from_stored(StepKind::WaitObserverActive, &stop).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::Malformed {
                kind: StepKind::WaitObserverActive,
                ..
            }
        ));
        let m = e.to_string();
        assert!(
            m.contains("WaitObserverActive") && m.contains("new step_id"),
            "{m}"
        );
    }
}
