//! jogg-relay: tracks JoggAI avatar video renders and relays their outcome as
//! signed callbacks.
//!
//! The crate is organised one module per concern (ARCHITECTURE.md draws the map):
//!
//! - [`config`]: layered configuration (defaults, TOML file, environment) and validation.
//! - [`domain`]: the vocabulary shared by every module (video ids, states, timestamps).
//! - [`store`]: every SQL statement (SQLite and PostgreSQL behind one seam), the migrations and the group-commit writer.
//! - [`peers`]: what relays sharing a PostgreSQL database keep in step (wake-ups, the learned model).
//! - [`jogg`]: the upstream protocol (client, answer classification).
//! - [`adaptive`]: the learned render-time distribution and the adaptive schedule.
//! - [`export`]: the `export-renders` CSV of finished renders.
//! - [`backup`]: the `backup` and `restore` commands (SQLite file copies).
//! - [`poller`]: claiming due videos, the schedule policy, the rate limiter.
//! - [`delivery`]: the outbox worker (signing, retries, the target guard).
//! - [`api`]: the HTTP API (axum routes, authentication, JSON errors).
//! - [`console`]: the operator console under `/ui/` (HTML pages).
//! - [`simulate`]: the `simulate` command (poll strategies replayed in virtual time).
//! - [`sim`]: a JoggAI simulator for tests, `demo` and benchmarks.
//! - [`scratch_postgres`]: a throwaway PostgreSQL cluster for tests and benchmarks.
//! - [`outbound`]: outbound HTTP client set-up.
//! - [`app`]: wires the pieces together and owns graceful shutdown.
//! - [`telemetry`]: logging set-up.
//! - [`bench`](mod@bench): the benchmark command.
//! - [`demo`]: the end-to-end demonstration against the simulators.
//! - [`worker`]: leases and bounded shutdown shared by the workers.
//! - [`workload`]: render workloads (reference distribution, CSV) and delay reports.
//! - [`cli`]: the command line, used by the thin `main.rs`.

pub mod adaptive;
pub mod api;
pub mod app;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod export;
pub mod jogg;
pub mod outbound;
pub mod peers;
pub mod poller;
#[cfg(unix)]
pub mod scratch_postgres;
pub mod sim;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workload;
