//! obhost: the on-host executor of OceanBase's "Start OB server" task.
//!
//! Layers, each calling only the next (see README "Code map"):
//! `api` (gRPC: validate, convert) → `steps` (engine, store) → `tasks` (one file
//! per step kind) → `host` (the only code that touches the OS).

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
pub mod probe;
pub mod process;
pub mod proto;
pub mod report;
pub mod steps;
pub mod tasks;
pub mod trusted;
