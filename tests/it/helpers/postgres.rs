//! The throwaway PostgreSQL cluster shared by the tests that need
//! PostgreSQL: started on first use, and a loud skip (or, in CI, a failure)
//! when the server binaries are missing.

use jogg_relay::scratch_postgres::ScratchCluster;

/// The cluster shared by the whole test binary, started on first use; each
/// test takes databases of its own from it
/// ([`ScratchCluster::create_database`]). `None` when the server binaries
/// are missing: the test should return at once (it has said so on stderr,
/// or panicked under `JOGG_RELAY_REQUIRE_POSTGRES=1`).
pub fn scratch_postgres() -> Option<&'static ScratchCluster> {
    jogg_relay::scratch_postgres::shared_for_tests()
}

/// Reports a test skipped for want of the server binaries (see
/// [`jogg_relay::scratch_postgres::skip_without_postgres`]).
pub fn skip_without_postgres() {
    jogg_relay::scratch_postgres::skip_without_postgres();
}
