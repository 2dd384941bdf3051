//! Logging in and out, and finding the session of a request.
//!
//! With `server.token` set, `POST /ui/login` exchanges the token for a
//! session cookie; without one (the relay then binds only loopback) there
//! is no login, and a session is opened for every browser on its first
//! page so that its forms still carry a CSRF token.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use secrecy::ExposeSecret as _;
use tracing::{info, warn};

use super::session::{SESSION_LIFETIME, Session};
use super::{ConsoleState, csrf, html_response, pages};

/// The session cookie's name.
pub const COOKIE: &str = "jogg_relay_session";

/// The session cookie's value in `headers`, if sent.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// Whether the request reached the proxy in front of the relay over TLS:
/// `X-Forwarded-Proto: https` (README, "Console": the proxy must set or
/// overwrite it). The cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that stores session `id` (or, with `None`,
/// deletes the cookie).
fn set_cookie(id: Option<&str>, headers: &HeaderMap) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    let (value, max_age) = match id {
        Some(id) => (id, SESSION_LIFETIME.as_secs()),
        None => ("", 0),
    };
    HeaderValue::try_from(format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of hex digits is a valid header")
}

/// Whether the `Host` the browser asked for names the loopback interface.
///
/// Without a token, anyone who can make a browser on this machine load a
/// page of theirs could rebind their own host name to 127.0.0.1 and read
/// the console as if it were their site; the browser still sends their
/// host name, which this refuses.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A page request's session: the browser's live one, or (without a token)
/// a new one, whose cookie is then the second value. `Err` is the answer
/// instead of the page: the login form's address, or a refusal.
pub fn page_session(
    state: &ConsoleState,
    headers: &HeaderMap,
) -> Result<(Session, Option<HeaderValue>), Box<Response>> {
    let now = Instant::now();
    let console = &state.console;
    if console.token.is_none() && !loopback_host(headers) {
        return Err(Box::new(html_response(
            StatusCode::FORBIDDEN,
            pages::message(
                "Forbidden",
                "Without server.token the console answers only requests for a loopback \
                 host name (localhost, 127.0.0.1, [::1]).",
            ),
        )));
    }
    if let Some(session) = cookie(headers).and_then(|id| console.sessions.get(id, now)) {
        return Ok((session, None));
    }
    if console.token.is_some() {
        return Err(Box::new(Redirect::to("/ui/login").into_response()));
    }
    let (id, session) = console.sessions.create(now);
    Ok((session, Some(set_cookie(Some(&id), headers))))
}

/// The CSRF token for the page's logout button: only with a token (without
/// one there is nothing to log out of).
pub fn logout_csrf<'a>(state: &ConsoleState, session: &'a Session) -> Option<&'a str> {
    state
        .console
        .token
        .is_some()
        .then_some(session.csrf.as_str())
}

/// `GET /ui/login`: the form (or the overview, when there is no login or
/// the browser is logged in already).
pub async fn form(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let logged_in = cookie(&headers)
        .and_then(|id| state.console.sessions.get(id, Instant::now()))
        .is_some();
    if state.console.token.is_none() || logged_in {
        return Redirect::to("/ui/").into_response();
    }
    html_response(StatusCode::OK, pages::login(None))
}

/// `POST /ui/login`: a right token (compared in constant time) opens a
/// session; a wrong one gets the form again with 401 and nothing more.
/// Attempts are limited (see `limiter`).
pub async fn login(State(state): State<ConsoleState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(expected) = &state.console.token else {
        return Redirect::to("/ui/").into_response();
    };
    if let Err(wait) = state.console.limiter.take(Instant::now()) {
        warn!("console login refused: too many failed attempts");
        let seconds = wait.as_secs().max(1);
        let mut response = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(&format!(
                "Too many failed attempts. Try again in {seconds} s."
            ))),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let presented = csrf::form_field(&body, "token").unwrap_or_default();
    if !crate::api::tokens_match(presented.as_bytes(), expected.expose_secret().as_bytes()) {
        // Neither the presented token nor anything about it is logged.
        warn!("console login refused: wrong token");
        return html_response(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Login failed.")),
        );
    }
    state.console.limiter.refund();
    let (id, _) = state.console.sessions.create(Instant::now());
    info!("console login");
    let mut response = Redirect::to("/ui/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(Some(&id), &headers));
    response
}

/// `POST /ui/logout`: ends the session (CSRF-protected) and deletes the
/// cookie.
pub async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let Some((id, session)) =
        cookie(&headers).and_then(|id| Some((id, state.console.sessions.get(id, now)?)))
    else {
        return Redirect::to("/ui/login").into_response();
    };
    if !csrf::verify(
        &session.csrf,
        csrf::form_field(&body, csrf::FIELD).as_deref(),
    ) {
        return csrf_refused();
    }
    state.console.sessions.remove(id);
    info!("console logout");
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(None, &headers));
    response
}

/// `403` for a form without its session's CSRF token.
pub fn csrf_refused() -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        pages::message(
            "Forbidden",
            "This form was not sent from this session's page (missing or wrong CSRF token). \
             Reload the page and try again.",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; jogg_relay_session=abc; b=2")]);
        assert_eq!(cookie(&h), Some("abc"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "jogg_relay_session=def")]);
        assert_eq!(cookie(&h), Some("def"));
        assert_eq!(
            cookie(&headers(&[("cookie", "xjogg_relay_session=1")])),
            None
        );
    }

    /// The cookie's attributes, and `Secure` exactly when the proxy says
    /// the browser used TLS.
    #[test]
    fn cookie_attributes() {
        let plain = set_cookie(Some("abc"), &HeaderMap::new());
        assert_eq!(
            plain,
            "jogg_relay_session=abc; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        let tls = set_cookie(Some("abc"), &headers(&[("x-forwarded-proto", "HTTPS")]));
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
        let http = set_cookie(Some("abc"), &headers(&[("x-forwarded-proto", "http")]));
        assert!(!http.to_str().unwrap().contains("Secure"));
        let gone = set_cookie(None, &HeaderMap::new());
        assert!(gone.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn only_loopback_host_names_pass_without_a_token() {
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.1.2.3",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }
}
