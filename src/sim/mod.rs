//! Simulators for hermetic runs: a JoggAI upstream and a callback receiver
//! (used by tests, `demo` and benchmarks). Both bind to loopback on a port
//! of the caller's choosing (port 0 in tests).

pub mod receiver;
pub mod upstream;

pub use receiver::{Received, ReceiverState, Reply, SimReceiver};
pub use upstream::{
    AuthFailure, Ending, Fault, LoggedRequest, SIM_API_KEY, SimState, SimUpstream, Spelling,
    Timeline,
};
