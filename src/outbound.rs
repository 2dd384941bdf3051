//! Outbound HTTP clients (upstream JoggAI, callbacks, tests): the one place
//! that configures TLS.
//!
//! reqwest is built without its default crypto provider so that the build
//! does not compile a second TLS crypto library; rustls' `ring` provider is
//! installed process-wide here before any client is built.
//!
//! Proxies: [`client_builder`] keeps reqwest's default of honouring
//! `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`, which the upstream
//! JoggAI client relies on (an operator may only reach JoggAI through an
//! egress proxy; its URL and key are the operator's own configuration).
//! Callback clients use [`direct_client_builder`] instead: through a proxy
//! the relay would never resolve a per-video target itself, so the SSRF
//! guard (`delivery::guard`) could not see where the callback goes.

use std::sync::Once;

/// A client builder with TLS ready to use; it honours proxies from the
/// environment (see the module docs).
pub fn client_builder() -> reqwest::ClientBuilder {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when another provider is already installed, which is
        // just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .user_agent(concat!("jogg-relay/", env!("CARGO_PKG_VERSION")))
        // Redirects are never followed: neither JoggAI nor a callback
        // receiver has a reason to redirect, and following one could send a
        // signed callback or the API key somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        // No hidden transport-level retries either: the poller and the
        // delivery worker retry on their own schedules, and every delivery
        // attempt is recorded. (It also spares cloning each request in case
        // of a retry.)
        .retry(reqwest::retry::never().max_retries_per_request(0))
}

/// [`client_builder`] that ignores every proxy setting of the environment
/// and always connects to the target itself: for callbacks.
pub fn direct_client_builder() -> reqwest::ClientBuilder {
    client_builder().no_proxy()
}
