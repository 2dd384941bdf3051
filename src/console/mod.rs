//! The operator console under `/ui/` (README, "Console"): server-rendered
//! HTML pages on the API's listener, usable without JavaScript.
//!
//! - [`session`]: the in-memory sessions (absolute expiry, CSRF token each);
//! - [`csrf`]: the token every state-changing form carries;
//! - [`limiter`]: the limit on login attempts;
//! - [`auth`]: login, logout, and the session of a request;
//! - [`pages`]: the HTML (maud; every value escaped);
//! - [`overview`]: the overview page's figures;
//! - [`plots`]: the overview's plots, drawn as inline SVG;
//! - [`videos`]: the videos list, one video's page and its buttons;
//! - [`polls`]: the video page's account of its polling;
//! - [`deliveries`]: the dead deliveries page and its redeliver buttons,
//!   drawn by [`dead_page`];
//! - [`assets`]: the one stylesheet, embedded.
//!
//! Every response under `/ui` carries a strict Content-Security-Policy
//! (nothing but this origin's stylesheet and images; no script at all),
//! `nosniff`, no referrer and no caching.

pub mod assets;
pub mod auth;
pub mod csrf;
pub mod dead_page;
pub mod deliveries;
pub mod limiter;
pub mod overview;
pub mod pages;
pub mod plots;
pub mod polls;
pub mod session;
pub mod videos;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use maud::Markup;
use secrecy::SecretString;

use crate::api::ApiState;
use crate::config::Config;
use crate::store::StoreError;
use limiter::LoginLimiter;
use session::SessionStore;

/// The Content-Security-Policy of every console response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form body accepted (a login or a button's CSRF token).
const FORM_BODY_LIMIT: usize = 4 * 1024;

/// The console's own state, shared by every request.
#[derive(Debug)]
pub struct Console {
    /// `server.token`: with it, pages need a session from logging in.
    token: Option<Arc<SecretString>>,
    /// The open sessions.
    sessions: SessionStore,
    /// The limit on login attempts.
    limiter: LoginLimiter,
    /// `jogg.requests_per_second`, shown as the poll budget.
    rate: f64,
    /// `jogg.burst`.
    burst: u32,
}

impl Console {
    /// The console for `config`, or `None` when `server.console` is off.
    pub fn new(config: &Config) -> Option<Arc<Self>> {
        config.server.console.then(|| {
            Arc::new(Self {
                token: config.server.token.clone().map(Arc::new),
                sessions: SessionStore::new(),
                limiter: LoginLimiter::new(Instant::now()),
                rate: config.jogg.requests_per_second,
                burst: config.jogg.burst,
            })
        })
    }
}

/// What the console's handlers get: the API's state (the store, the gate)
/// and the console's own.
#[derive(Clone)]
pub struct ConsoleState {
    /// The API's state.
    pub api: ApiState,
    /// The console's.
    pub console: Arc<Console>,
}

/// The console's routes, every one under `/ui` (`/ui` itself leads to
/// `/ui/`; any other path under it is an HTML 404). Its errors are HTML
/// pages, so it is merged outside the API's JSON error layer.
pub fn router(api: ApiState, console: Arc<Console>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview::show))
        .route("/ui/videos", get(videos::list))
        .route("/ui/videos/{video_id}", get(videos::show))
        .route("/ui/videos/{video_id}/cancel", post(videos::cancel))
        .route("/ui/videos/{video_id}/redeliver", post(videos::redeliver))
        .route(deliveries::PATH, get(deliveries::list))
        .route(deliveries::REDELIVER_PATH, post(deliveries::redeliver))
        .route("/ui/login", get(auth::form).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route(assets::CSS_PATH, get(assets::css))
        .route("/ui/{*rest}", any(not_found))
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
        .layer(middleware::from_fn(security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(ConsoleState { api, console })
}

/// An HTML answer.
pub fn html_response(status: StatusCode, page: Markup) -> Response {
    (status, Html(page.into_string())).into_response()
}

/// The headers of every console response (see the module's doc).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ),
    ] {
        headers.insert(name, value);
    }
    response
}

/// `404` for any other path under `/ui`.
async fn not_found() -> Response {
    html_response(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page."),
    )
}

/// `503` when the database cannot be read (the cause is logged, as the
/// API logs it).
fn store_failed(err: StoreError) -> Response {
    let error = crate::api::ApiError::from(err);
    html_response(error.status, pages::message("Unavailable", &error.message))
}

/// A handler panic is a bug; answer it with a page rather than dropping
/// the connection.
fn panicked(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("console request handler panicked");
    let mut response = html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message("Internal error", "The relay failed to answer this page."),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}
