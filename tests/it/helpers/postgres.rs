//! The throwaway PostgreSQL cluster shared by the tests that need
//! PostgreSQL: started on first use, and a loud skip (or, in CI, a failure)
//! when the server binaries are missing.

use std::io::Write as _;
use std::sync::OnceLock;

use jogg_relay::scratch_postgres::{ScratchCluster, ScratchError};

/// What a test that needs PostgreSQL prints when the server binaries are
/// missing (and what it panics with under `JOGG_RELAY_REQUIRE_POSTGRES=1`).
const SKIPPED: &str = "SKIPPED: PostgreSQL tests need initdb/postgres \
                           (install the distribution's postgresql package)";

/// The environment variable that turns a skip into a failure (CI sets it).
const REQUIRE: &str = "JOGG_RELAY_REQUIRE_POSTGRES";

/// The cluster shared by the whole test binary, started on first use; each
/// test takes databases of its own from it
/// ([`ScratchCluster::create_database`]). `None` when the server binaries
/// are missing: the test should return at once (it has said so on stderr).
pub fn scratch_postgres() -> Option<&'static ScratchCluster> {
    static CLUSTER: OnceLock<Result<ScratchCluster, ScratchError>> = OnceLock::new();
    match CLUSTER.get_or_init(ScratchCluster::start) {
        Ok(cluster) => Some(cluster),
        Err(ScratchError::NotInstalled) => {
            skip_without_postgres();
            None
        }
        Err(error) => panic!("the scratch PostgreSQL cluster did not start: {error}"),
    }
}

/// Reports a test skipped for want of the server binaries: loudly, past the
/// test harness's output capture, once per calling test; or panics when
/// [`REQUIRE`] is `1`.
pub fn skip_without_postgres() {
    if std::env::var_os(REQUIRE).is_some_and(|value| value == "1") {
        panic!("{SKIPPED} ({REQUIRE}=1 forbids skipping)");
    }
    // Written to the standard error itself, not through eprintln!, which
    // the harness captures and shows only for failed tests.
    let _ = writeln!(std::io::stderr(), "{SKIPPED}");
}
