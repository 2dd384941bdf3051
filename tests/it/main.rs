//! Integration tests: one binary (so it links once), one module per area.

mod adaptive;
mod api_enqueue;
mod api_errors;
mod api_list;
mod backup;
mod cli;
#[cfg(unix)]
mod console;
mod console_dead;
mod delivery;
mod helpers;
mod hostile;
#[cfg(unix)]
mod instances;
mod jogg_client;
mod learning;
mod openapi;
mod operations;
mod oracle;
mod poller;
#[cfg(unix)]
mod postgres_cluster;
mod process;
mod pushes;
mod reliability;
mod serve;
mod sim_renders;
mod storage;
mod store_contract;
mod upstream_faults;
