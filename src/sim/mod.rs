//! Simulators for hermetic runs: a JoggAI upstream (used by tests, `demo`
//! and benchmarks). Everything binds to loopback on a port of the caller's
//! choosing (port 0 in tests).

pub mod upstream;

pub use upstream::{
    AuthFailure, Ending, Fault, LoggedRequest, SIM_API_KEY, SimState, SimUpstream, Spelling,
    Timeline,
};
