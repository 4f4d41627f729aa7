//! obhost: the on-host executor of OceanBase's "Start OB server" task.
//!
//! Layers, each importing only the ones below it (see README "Code map"):
//! `daemon` (wires it all) → `cli`, `report` → `api` (gRPC: validate, convert)
//! → `metrics` → `tasks` (one file per step kind) → `observer`, `probe`,
//! `host`, `config` → `policy` (what a request may name), `steps` (model,
//! store, engine: knows no step kind) and `process` (all process handling) →
//! `confined`, `trusted`, `bounds`.

pub mod api;
pub mod bounds;
pub mod cli;
pub mod config;
pub mod confined;
pub mod daemon;
pub mod daemon_cli;
pub mod host;
pub mod metrics;
pub mod observer;
pub mod policy;
pub mod probe;
pub mod process;
pub mod proto;
pub mod report;
pub mod steps;
pub mod tasks;
pub mod trusted;
