//! The operator console under `/ui/` (README, "Console"), in headless
//! Chromium where a browser matters (see `helpers::browser`: skipped,
//! loudly, without one) and over plain HTTP where it does not.

use std::time::Duration;

use jogg_relay::console::CONTENT_SECURITY_POLICY;
use jogg_relay::domain::Millis;
use jogg_relay::sim::{Ending, Fault, SimReceiver, Timeline};
use serde_json::{Value, json};

use crate::helpers::browser::{Browser, browser};
use crate::helpers::{TOKEN, TestApp, api_millis, spawn_app, spawn_app_with, spawn_manual_app};

/// Logs in through the browser's form.
pub(crate) async fn log_in(browser: &Browser, app: &TestApp, token: &str) {
    browser.goto(&format!("{}/ui/login", app.base)).await;
    browser.fill("#token", token).await;
    browser.click("#login").await;
}

/// A browser logged in to `app`'s console with the right token, on the
/// overview; `None` where no browser is installed (`browser` has said so,
/// loudly), and the test then ends.
pub(crate) async fn logged_in(app: &TestApp) -> Option<Browser> {
    let browser = browser().await?;
    log_in(&browser, app, TOKEN).await;
    browser.wait_for("#videos-active").await;
    Some(browser)
}

/// [`logged_in`], then on the console page `path`.
pub(crate) async fn logged_in_at(app: &TestApp, path: &str) -> Option<Browser> {
    let browser = logged_in(app).await?;
    browser.goto(&format!("{}{path}", app.base)).await;
    Some(browser)
}

/// A response's status and headers, and its body as text.
pub(crate) async fn fetch(
    app: &TestApp,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = app
        .client
        .request(method.parse().unwrap(), format!("{}{path}", app.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if let Some(form) = form {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

/// Logs in over HTTP; the `name=value` of the session cookie.
pub(crate) async fn session_cookie(app: &TestApp) -> String {
    let (status, headers, _) = fetch(
        app,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={TOKEN}")),
    )
    .await;
    assert_eq!(status, 303);
    let set_cookie = headers["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's logout form.
pub(crate) fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[start..].split('"').next().unwrap().to_owned()
}

/// A wrong token gets the form again (401, nothing said but that it
/// failed); the right one opens the overview; pages without a session lead
/// to the form. The cookie is HttpOnly, SameSite=Strict, Path=/ui, and
/// Secure only when the proxy says the browser used TLS.
#[tokio::test]
async fn login_refuses_a_wrong_token_and_accepts_the_right_one() {
    let app = spawn_app().await;
    let (status, _, page) = fetch(&app, "POST", "/ui/login", None, Some("token=wrong")).await;
    assert_eq!(status, 401);
    assert!(page.contains("Login failed."), "{page}");
    assert!(!page.contains(TOKEN));
    let (status, headers, _) = fetch(&app, "GET", "/ui/", None, None).await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ui/login".parse().unwrap())
    );

    let (_, headers, _) = fetch(
        &app,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={TOKEN}")),
    )
    .await;
    let cookie = headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let behind_tls = app
        .client
        .post(format!("{}/ui/login", app.base))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(
        behind_tls.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );

    let Some(browser) = browser().await else {
        app.stop().await;
        return;
    };
    browser.goto(&format!("{}/ui/", app.base)).await;
    assert_eq!(browser.path().await, "/ui/login");
    browser.screenshot("console-login").await;
    log_in(&browser, &app, "not-the-token").await;
    browser.wait_for("#login-error").await;
    assert_eq!(browser.path().await, "/ui/login");
    assert_eq!(browser.text("#login-error").await, "Login failed.");
    browser.screenshot("console-login-refused").await;
    log_in(&browser, &app, TOKEN).await;
    browser.wait_for("#videos-active").await;
    assert_eq!(browser.path().await, "/ui/");
    assert_eq!(browser.count("#videos-active").await, 1);
    browser.finish().await;
    app.stop().await;
}

/// The overview's figures are the API's: videos per state as
/// `GET /v1/videos?state=` lists them, deliveries per state as the videos'
/// resources show them, both equal to what the simulators were made to do;
/// the budget is the configured one.
#[tokio::test]
async fn overview_counts_equal_the_api() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let hook = receiver.url("hook");
    let app = spawn_manual_app(|s| {
        s.callbacks.urls = vec![hook.clone()];
        s.jogg.requests_per_second = 7.0;
        s.jogg.burst = 3;
    })
    .await;
    let sim = &app.sim.state;
    for id in ["ok-1", "ok-2", "ok-3"] {
        sim.script(id, Timeline::completes(0, 0));
    }
    sim.script("bad-1", Timeline::fails(0, 0));
    sim.script(
        "slow-1",
        Timeline {
            ending: Ending::Stuck("processing".into()),
            ..Timeline::completes(0, 0)
        },
    );
    for id in ["ok-1", "ok-2", "ok-3", "bad-1", "slow-1", "gone-1"] {
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    assert_eq!(
        app.send("DELETE", "/v1/videos/gone-1", None).await.status,
        204
    );
    app.step_until_idle().await;
    // One target per finished video: the first callback the receiver
    // answers 410 (dead), the second 503 (retried later), the rest 200.
    receiver.state.script(
        "hook",
        [
            jogg_relay::sim::Reply::Status(410),
            jogg_relay::sim::Reply::Status(503),
        ],
    );
    app.deliver(Millis::now()).await;
    assert_eq!(
        receiver.state.received().len(),
        4,
        "one callback per finished video"
    );

    // The oracle: the JSON API.
    let mut api_states = Vec::new();
    for state in ["active", "completed", "failed", "abandoned", "cancelled"] {
        let listed = app
            .send("GET", &format!("/v1/videos?state={state}&limit=100"), None)
            .await;
        api_states.push((state, listed.json["videos"].as_array().unwrap().len()));
    }
    assert_eq!(
        api_states,
        [
            ("active", 1),
            ("completed", 3),
            ("failed", 1),
            ("abandoned", 0),
            ("cancelled", 1)
        ]
    );
    let mut api_deliveries = std::collections::BTreeMap::new();
    for id in ["ok-1", "ok-2", "ok-3", "bad-1"] {
        for delivery in app.video(id).await.json["deliveries"].as_array().unwrap() {
            *api_deliveries
                .entry(delivery["state"].as_str().unwrap().to_owned())
                .or_insert(0usize) += 1;
        }
    }
    let expected: std::collections::BTreeMap<String, usize> =
        [("dead", 1), ("delivered", 2), ("pending", 1)]
            .map(|(s, n)| (s.to_owned(), n))
            .into();
    assert_eq!(api_deliveries, expected);

    let Some(browser) = logged_in(&app).await else {
        app.stop().await;
        return;
    };
    assert_eq!(browser.path().await, "/ui/");
    for (state, count) in &api_states {
        assert_eq!(
            browser.text(&format!("#videos-{state} .n")).await,
            count.to_string(),
            "{state}"
        );
    }
    for (state, count) in &api_deliveries {
        assert_eq!(
            browser.text(&format!("#deliveries-{state} .n")).await,
            count.to_string(),
            "{state}"
        );
    }
    assert_eq!(browser.text("#budget-rate .n").await, "7");
    assert_eq!(browser.text("#budget-burst .n").await, "3");
    assert_eq!(browser.count("#no-pause").await, 1);
    // Transitions: ok-1..3 and bad-1 each a status and a state change,
    // slow-1 a status change, gone-1 its cancellation: ten, all listed.
    assert_eq!(browser.count("#recent tbody tr").await, 10);
    browser.screenshot("console-overview").await;
    browser.finish().await;
    app.stop().await;
}

/// Logging out ends the session: the overview then leads to the login
/// form, even with the old cookie.
#[tokio::test]
async fn logout_ends_the_session() {
    let app = spawn_app().await;
    let Some(browser) = browser().await else {
        // Without a browser, the same over HTTP.
        let cookie = session_cookie(&app).await;
        let (_, _, page) = fetch(&app, "GET", "/ui/", Some(&cookie), None).await;
        let form = format!("csrf={}", csrf_of(&page));
        let (status, _, _) = fetch(&app, "POST", "/ui/logout", Some(&cookie), Some(&form)).await;
        assert_eq!(status, 303);
        let (status, headers, _) = fetch(&app, "GET", "/ui/", Some(&cookie), None).await;
        assert_eq!(
            (status, headers["location"].to_str().unwrap()),
            (303, "/ui/login")
        );
        app.stop().await;
        return;
    };
    log_in(&browser, &app, TOKEN).await;
    browser.wait_for("#videos-active").await;
    assert_eq!(browser.path().await, "/ui/");
    browser.click("#logout").await;
    browser.wait_for("#token").await;
    assert_eq!(browser.path().await, "/ui/login");
    browser.goto(&format!("{}/ui/", app.base)).await;
    assert_eq!(browser.path().await, "/ui/login");
    browser.screenshot("console-logged-out").await;
    browser.finish().await;
    app.stop().await;
}

/// A state-changing form without its session's CSRF token, or with
/// another's, is refused with 403 and changes nothing.
#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused() {
    let app = spawn_app().await;
    let cookie = session_cookie(&app).await;
    let other = session_cookie(&app).await;
    let (status, _, page) = fetch(&app, "GET", "/ui/", Some(&cookie), None).await;
    assert_eq!(status, 200);
    let (_, _, other_page) = fetch(&app, "GET", "/ui/", Some(&other), None).await;
    let other_csrf = csrf_of(&other_page);
    assert_ne!(other_csrf, csrf_of(&page));
    for form in [
        String::new(),
        "csrf=".to_owned(),
        format!("csrf={other_csrf}"),
    ] {
        let (status, _, _) = fetch(&app, "POST", "/ui/logout", Some(&cookie), Some(&form)).await;
        assert_eq!(status, 403, "{form:?}");
        let (status, _, _) = fetch(&app, "GET", "/ui/", Some(&cookie), None).await;
        assert_eq!(status, 200, "the session survives a refused form");
    }
    let form = format!("csrf={}", csrf_of(&page));
    let (status, _, _) = fetch(&app, "POST", "/ui/logout", Some(&cookie), Some(&form)).await;
    assert_eq!(status, 303);
    app.stop().await;
}

/// `server.console = false`: nothing under `/ui/`. On, every page carries
/// the strict headers.
#[tokio::test]
async fn the_console_can_be_turned_off_and_its_pages_carry_strict_headers() {
    let off = spawn_app_with(|s| s.server.console = false).await;
    for path in ["/ui/", "/ui/login", "/ui/assets/console.css"] {
        let (status, _, _) = fetch(&off, "GET", path, None, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = fetch(
        &off,
        "POST",
        "/ui/login",
        None,
        Some(&format!("token={TOKEN}")),
    )
    .await;
    assert_eq!(status, 404);
    off.stop().await;

    let on = spawn_app().await;
    for (path, status) in [
        ("/ui/login", 200),
        ("/ui/assets/console.css", 200),
        ("/ui/", 303),
        ("/ui/nowhere", 404),
    ] {
        let (got, headers, _) = fetch(&on, "GET", path, None, None).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(
            headers["content-security-policy"], CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
    }
    assert_eq!(
        CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    on.stop().await;
}

/// Without a token there is no login: the overview opens directly (for a
/// loopback host name only).
#[tokio::test]
async fn without_a_token_there_is_no_login() {
    let app = spawn_app_with(|s| s.server.token = jogg_relay::config::SecretSetting(None)).await;
    let (status, headers, page) = fetch(&app, "GET", "/ui/", None, None).await;
    assert_eq!(status, 200);
    assert!(headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    assert!(!page.contains("id=\"logout\""));
    let (status, headers, _) = fetch(&app, "GET", "/ui/login", None, None).await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (303, "/ui/")
    );
    let rebound = app
        .client
        .get(format!("{}/ui/", app.base))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    app.stop().await;
}

/// Hostile text from upstream (a status and an error message, which the
/// relay records as they are) shows on the overview's recent transitions
/// as text: no element is injected, no script runs, no attribute is broken.
#[tokio::test]
async fn hostile_upstream_text_renders_inert() {
    let app = spawn_manual_app(|_| {}).await;
    let status = "\"><img src=x onerror=alert(1) id=injected>";
    let code = "javascript:alert(2)";
    let message = "</td><script>alert(3)</script><a href=\"javascript:alert(4)\" id=injected>x</a>' onmouseover='alert(5)";
    let answer = |status: &str, error: Option<Value>| {
        let mut data = json!({"video_id": "xss-1", "status": status, "created_at": 1_700_000_000});
        if let Some(error) = error {
            data["error"] = error;
        }
        Fault::Body(json!({"code": 0, "msg": "Success", "data": data, "rid": "r"}).to_string())
    };
    app.sim.state.inject_for(
        "xss-1",
        [
            answer(status, None),
            answer("failed", Some(json!({"code": code, "message": message}))),
        ],
    );
    assert_eq!(app.enqueue(json!({"video_id": "xss-1"})).await.status, 201);
    app.step(Millis::now()).await;
    // The unknown status keeps the video polled; its next poll is due
    // within the configured interval.
    app.step(Millis::now().plus(Duration::from_secs(3600)))
        .await;
    assert_eq!(app.video("xss-1").await.json["state"], "failed");

    let Some(browser) = logged_in(&app).await else {
        app.stop().await;
        return;
    };
    assert_eq!(browser.path().await, "/ui/");
    assert_eq!(browser.count("#recent tbody tr").await, 3);
    assert_eq!(
        browser
            .count("#injected, #recent img, #recent script, #recent a")
            .await,
        0
    );
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no alert is open"
    );
    // The text is shown as it came, in the cell and in its title.
    let first_status = browser
        .client
        .find(fantoccini::Locator::Css(
            "#recent tbody tr:last-child td.to",
        ))
        .await
        .unwrap();
    assert_eq!(first_status.text().await.unwrap(), status);
    assert_eq!(
        first_status.attr("title").await.unwrap().as_deref(),
        Some(status)
    );
    let detail = browser.text("#recent tbody tr:first-child td.detail").await;
    assert_eq!(detail, format!("{code} {message}"));
    browser.screenshot("console-hostile-text").await;
    browser.finish().await;
    app.stop().await;
}

/// The `href` of the element `css`.
pub(crate) async fn href_of(browser: &Browser, css: &str) -> Option<String> {
    let element = browser
        .client
        .find(fantoccini::Locator::Css(css))
        .await
        .ok()?;
    element.attr("href").await.expect("its href")
}

/// The video ids listed on the videos page open in the browser, in order.
async fn listed_ids(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for link in browser
        .client
        .find_all(fantoccini::Locator::Css("#videos a.video"))
        .await
        .expect("a search")
    {
        ids.push(link.text().await.expect("its text"));
    }
    ids
}

/// Every video id the API lists (`GET /v1/videos`, all pages), in
/// insertion order.
async fn api_ids(app: &TestApp, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .send(
                "GET",
                &format!("/v1/videos?limit=7&cursor={cursor}{query}"),
                None,
            )
            .await;
        assert_eq!(page.status, 200);
        for video in page.json["videos"].as_array().unwrap() {
            ids.push(video["video_id"].as_str().unwrap().to_owned());
        }
        match page.json["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return ids,
        }
        assert!(ids.len() < 10_000, "paging ends");
    }
}

/// The videos page finds videos by the beginning of their id, newest
/// first, as the API lists them; a state filter keeps only that state;
/// each id leads to its page, which shows the video as the API does.
#[tokio::test]
async fn videos_are_found_by_id_prefix_and_open() {
    let app = spawn_manual_app(|_| {}).await;
    for id in [
        "find-alpha-1",
        "other-1",
        "find-alpha-2",
        "find-beta",
        "find-alpha-3",
    ] {
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    assert_eq!(
        app.send("DELETE", "/v1/videos/find-alpha-2", None)
            .await
            .status,
        204
    );
    // The oracle: the API's list, filtered and reversed here.
    let mut expected: Vec<String> = api_ids(&app, "")
        .await
        .into_iter()
        .filter(|id| id.starts_with("find-alpha"))
        .collect();
    expected.reverse();
    assert_eq!(expected, ["find-alpha-3", "find-alpha-2", "find-alpha-1"]);
    let mut active: Vec<String> = api_ids(&app, "&state=active")
        .await
        .into_iter()
        .filter(|id| id.starts_with("find-alpha"))
        .collect();
    active.reverse();

    let Some(browser) = logged_in(&app).await else {
        app.stop().await;
        return;
    };
    browser.click("#nav-videos").await;
    browser.wait_for("#filter").await;
    assert_eq!(browser.path().await, "/ui/videos");
    assert_eq!(listed_ids(&browser).await.len(), 5);
    browser.fill("#q", "find-alpha").await;
    browser.click("#search").await;
    browser.wait_for("#q[value=\"find-alpha\"]").await;
    assert_eq!(listed_ids(&browser).await, expected);
    browser.screenshot("console-videos").await;

    browser
        .goto(&format!("{}/ui/videos?state=active&q=find-alpha", app.base))
        .await;
    assert_eq!(listed_ids(&browser).await, active);
    assert_eq!(active, ["find-alpha-3", "find-alpha-1"]);

    browser.click("#videos a.video").await;
    browser.wait_for("#video-id").await;
    assert_eq!(browser.path().await, "/ui/videos/find-alpha-3");
    let api = app.video("find-alpha-3").await.json;
    assert_eq!(browser.text("#video-id").await, "find-alpha-3");
    assert_eq!(browser.text("#field-state").await, api["state"]);
    assert_eq!(browser.count("#cancel").await, 1, "an active video");
    assert_eq!(browser.count("#redeliver").await, 0);
    browser.screenshot("console-video").await;
    browser.finish().await;
    app.stop().await;
}

/// The cancel button stops tracking an active video: the API then reports
/// it cancelled, and the page says so and offers no button any more.
#[tokio::test]
async fn the_cancel_button_cancels_an_active_video() {
    let app = spawn_manual_app(|_| {}).await;
    assert_eq!(
        app.enqueue(json!({"video_id": "cancel-me"})).await.status,
        201
    );
    assert_eq!(app.video("cancel-me").await.json["state"], "active");
    let Some(browser) = logged_in_at(&app, "/ui/videos/cancel-me").await else {
        app.stop().await;
        return;
    };
    browser.click("#cancel").await;
    browser.wait_for("#flash").await;
    assert_eq!(app.video("cancel-me").await.json["state"], "cancelled");
    assert_eq!(browser.path().await, "/ui/videos/cancel-me");
    assert!(browser.text("#flash").await.contains("cancelled"));
    assert_eq!(browser.text("#field-state").await, "cancelled");
    assert_eq!(browser.count("#cancel, #redeliver").await, 0);
    // The cancellation is on the timeline.
    assert!(
        browser
            .text("#timeline li:last-child")
            .await
            .ends_with("state: active → cancelled"),
    );
    browser.screenshot("console-video-cancelled").await;
    browser.finish().await;
    app.stop().await;
}

/// The redeliver button sends a finished video's callback again: the
/// receiver gets it a second time with the same `event_id`, and the page
/// then lists both attempts with their HTTP status.
#[tokio::test]
async fn the_redeliver_button_sends_the_callback_again() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let hook = receiver.url("hook");
    let app = spawn_manual_app(|s| s.callbacks.urls = vec![hook.clone()]).await;
    app.sim.state.script("again-1", Timeline::completes(0, 0));
    assert_eq!(
        app.enqueue(json!({"video_id": "again-1"})).await.status,
        201
    );
    app.step_until_idle().await;
    app.deliver(Millis::now()).await;
    let first = receiver.state.received();
    assert_eq!(first.len(), 1);
    let event_id = first[0].event_id.clone().expect("an event id");

    let Some(browser) = logged_in_at(&app, "/ui/videos/again-1").await else {
        app.stop().await;
        return;
    };
    assert_eq!(browser.count("#cancel").await, 0, "a completed video");
    assert_eq!(browser.count(".attempts tbody tr").await, 1);
    browser.click("#redeliver").await;
    browser.wait_for("#flash").await;
    assert!(browser.text("#flash").await.contains("queued again"));
    assert_eq!(
        app.video("again-1").await.json["deliveries"][0]["state"],
        "pending"
    );
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    assert_eq!(received.len(), 2, "the callback came again");
    assert_eq!(received[1].event_id.as_deref(), Some(event_id.as_str()));

    browser
        .goto(&format!("{}/ui/videos/again-1", app.base))
        .await;
    assert_eq!(browser.count(".attempts tbody tr").await, 2);
    assert_eq!(
        browser
            .text(".attempts tbody tr:last-child td.answer")
            .await,
        "HTTP 200"
    );
    assert_eq!(browser.text(".delivery-state").await, "delivered");
    browser.screenshot("console-video-redelivered").await;
    browser.finish().await;
    app.stop().await;
}

/// The video page's buttons need the session's CSRF token: without it, or
/// with another session's, they are refused (403) and change nothing. With
/// it, a refusal of the operation itself (cancelling a finished video,
/// redelivering an active one) is a message on the page, not an error.
#[tokio::test]
async fn video_buttons_need_the_csrf_token_and_refusals_are_messages() {
    let app = spawn_manual_app(|_| {}).await;
    app.sim.state.script("done-1", Timeline::completes(0, 0));
    for id in ["live-1", "done-1"] {
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    app.step_until_idle().await;
    assert_eq!(app.video("done-1").await.json["state"], "completed");
    app.send("DELETE", "/v1/videos/live-1", None).await;
    assert_eq!(app.enqueue(json!({"video_id": "live-2"})).await.status, 201);

    let cookie = session_cookie(&app).await;
    let other = session_cookie(&app).await;
    let (status, _, page) = fetch(&app, "GET", "/ui/videos/live-2", Some(&cookie), None).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    let (_, _, other_page) = fetch(&app, "GET", "/ui/videos/live-2", Some(&other), None).await;
    let other_csrf = csrf_of(&other_page);
    for form in [
        String::new(),
        "csrf=".to_owned(),
        format!("csrf={other_csrf}"),
    ] {
        for action in ["cancel", "redeliver"] {
            let path = format!("/ui/videos/live-2/{action}");
            let (status, _, _) = fetch(&app, "POST", &path, Some(&cookie), Some(&form)).await;
            assert_eq!(status, 403, "{action} {form:?}");
        }
    }
    // Without a session at all: to the login form.
    let (status, headers, _) = fetch(
        &app,
        "POST",
        "/ui/videos/live-2/cancel",
        None,
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ui/login".parse().unwrap())
    );
    assert_eq!(app.video("live-2").await.json["state"], "active");

    let form = format!("csrf={csrf}");
    for (path, flash, said) in [
        (
            "/ui/videos/done-1/cancel",
            "already_terminal",
            "terminal states never change",
        ),
        (
            "/ui/videos/live-2/redeliver",
            "no_event",
            "only completed, failed and abandoned",
        ),
        (
            "/ui/videos/live-1/cancel",
            "already_cancelled",
            "already cancelled",
        ),
    ] {
        let (status, headers, _) = fetch(&app, "POST", path, Some(&cookie), Some(&form)).await;
        let video = path.rsplit('/').nth(1).unwrap();
        let back = format!("/ui/videos/{video}?flash={flash}");
        assert_eq!(
            (status, headers["location"].to_str().unwrap()),
            (303, back.as_str())
        );
        let (status, _, page) = fetch(&app, "GET", &back, Some(&cookie), None).await;
        assert_eq!(status, 200);
        assert!(page.contains(said), "{page}");
    }
    assert_eq!(app.video("done-1").await.json["state"], "completed");
    assert_eq!(app.video("live-2").await.json["state"], "active");
    let (status, _, _) = fetch(
        &app,
        "POST",
        "/ui/videos/nope/cancel",
        Some(&cookie),
        Some(&form),
    )
    .await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// Following the list's "next" links visits every video once, newest
/// first, even when a video is added during the walk (it lands before the
/// first page): the same set of ids as the API's list.
#[tokio::test]
async fn video_pages_visit_each_row_once() {
    let app = spawn_manual_app(|_| {}).await;
    let total = jogg_relay::console::videos::PAGE_SIZE as usize * 2 + 7;
    let batch: Vec<Value> = (0..total)
        .map(|i| json!({"video_id": format!("page-{i:03}")}))
        .collect();
    assert_eq!(
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": batch})))
            .await
            .status,
        200
    );
    let mut expected = api_ids(&app, "").await;
    assert_eq!(expected.len(), total);
    expected.reverse();

    let Some(browser) = logged_in_at(&app, "/ui/videos").await else {
        app.stop().await;
        return;
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let ids = listed_ids(&browser).await;
        seen.extend(ids);
        pages += 1;
        if pages == 1 {
            browser.screenshot("console-videos-first-page").await;
            assert_eq!(
                app.enqueue(json!({"video_id": "page-late"})).await.status,
                201
            );
        }
        let Some(next) = href_of(&browser, "#next").await else {
            break;
        };
        assert!(pages < 10, "paging ends");
        browser.goto(&format!("{}{next}", app.base)).await;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "each row once, newest first");
    browser.screenshot("console-videos-last-page").await;
    // The first page now starts with the video added during the walk.
    browser.click("#first").await;
    browser
        .wait_for("#videos a.video[href=\"/ui/videos/page-late\"]")
        .await;
    browser.finish().await;
    app.stop().await;
}

/// Hostile metadata and upstream text shown on a video's page render
/// inert: no element injected, no script run, no link made; the metadata
/// comes out as the JSON that was sent.
#[tokio::test]
async fn hostile_metadata_renders_inert_on_the_video_page() {
    let app = spawn_manual_app(|_| {}).await;
    let metadata = json!({
        "note": "</pre><script>alert(1)</script><img src=x onerror=alert(2) id=injected>",
        "x\"><a id=injected href='javascript:alert(3)'>": "javascript:alert(4)",
        "quote": "' onmouseover='alert(5)"
    });
    // Absolute https URLs (the relay keeps no other kind) that break out
    // of an element and of an attribute.
    let video_url = "https://cdn.example/v.mp4?a=\"><script>alert(7)</script>";
    let answer = json!({"code": 0, "msg": "Success", "rid": "r", "data": {
        "video_id": "xss-page", "status": "failed", "created_at": 1_700_000_000,
        "video_url": video_url,
        "error": {"code": "<b id=injected>", "message": "</td><script>alert(8)</script>"}
    }});
    app.sim
        .state
        .inject_for("xss-page", [Fault::Body(answer.to_string())]);
    // A completed video whose upstream URLs are hostile: shown as text,
    // never as links.
    let cover_url = "https://cdn.example/c.jpg?'onerror='alert(9)'<img/id=injected>";
    let done = json!({"code": 0, "msg": "Success", "rid": "r", "data": {
        "video_id": "xss-urls", "status": "completed", "created_at": 1_700_000_000,
        "video_url": video_url, "cover_url": cover_url
    }});
    app.sim
        .state
        .inject_for("xss-urls", [Fault::Body(done.to_string())]);
    assert_eq!(
        app.enqueue(json!({"video_id": "xss-urls"})).await.status,
        201
    );
    assert_eq!(
        app.enqueue(json!({"video_id": "xss-page", "metadata": metadata}))
            .await
            .status,
        201
    );
    app.step(Millis::now()).await;
    assert_eq!(app.video("xss-page").await.json["state"], "failed");
    let urls = app.video("xss-urls").await.json;
    assert_eq!(
        (urls["state"].as_str(), urls["video_url"].as_str()),
        (Some("completed"), Some(video_url))
    );

    let Some(browser) = logged_in_at(&app, "/ui/videos/xss-page").await else {
        app.stop().await;
        return;
    };
    browser.wait_for("#metadata").await;
    assert_eq!(
        browser
            .count("#injected, main script, main img, main b, main a")
            .await,
        0
    );
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no alert is open"
    );
    let shown: Value =
        serde_json::from_str(&browser.text("#metadata").await).expect("the metadata shown is JSON");
    assert_eq!(shown, metadata);
    assert_eq!(
        browser.text("#field-error").await,
        "<b id=injected> </td><script>alert(8)</script>"
    );
    browser.screenshot("console-video-hostile").await;
    browser
        .goto(&format!("{}/ui/videos/xss-urls", app.base))
        .await;
    browser.wait_for("#field-video-url").await;
    assert_eq!(
        browser
            .count("#injected, main script, main img, main a")
            .await,
        0
    );
    assert_eq!(browser.text("#field-video-url").await, video_url);
    assert_eq!(browser.text("#field-cover-url").await, cover_url);
    assert!(browser.client.get_alert_text().await.is_err());
    browser.finish().await;
    app.stop().await;
}

/// Runs every active video to its end on the poller's clock from `at`:
/// each step at the next due time, so that their transitions are
/// recorded then (hours ago, for these plots), not at the wall clock.
async fn run_from(app: &TestApp, at: Millis) {
    let store = app.store().await;
    for _ in 0..1_000 {
        let Some(due) = store.next_poll_due().await.expect("next due time") else {
            return;
        };
        app.step(due.max(at)).await;
    }
    panic!("videos still active after 1 000 steps");
}

/// The overview's plots show what the API and the simulator record:
/// completions and failures per hour equal the terminal transitions that
/// `GET /v1/videos/{id}` reports, counted per UTC hour (videos finished
/// five and two hours ago and now); the render-time quantiles marked are
/// those of `GET /v1/stats`; the requests drawn per minute add up to the
/// requests the JoggAI simulator received, under the configured budget.
#[tokio::test]
async fn overview_plots_agree_with_the_api_and_the_simulator() {
    let app = spawn_manual_app(|s| {
        s.jogg.requests_per_second = 5.0;
        s.jogg.burst = 5;
    })
    .await;
    let sim = &app.sim.state;
    let store = app.store().await;
    let now = Millis::now();
    const HOUR: i64 = 3_600_000;
    // (ids, how long ago they ran): these answer `pending` (and some
    // `processing`) before their end, so the learned render times spread.
    let groups: [(&[&str], i64); 2] = [
        (&["h5-ok-1", "h5-ok-2", "h5-bad-1"], 5 * HOUR),
        (&["h2-ok-1", "h2-bad-1", "h2-bad-2", "h2-ok-2"], 2 * HOUR),
    ];
    for (ids, ago) in groups {
        for (i, id) in ids.iter().enumerate() {
            let processing = i as u32 % 3;
            sim.script(
                id,
                if id.contains("bad") {
                    Timeline::fails(1, processing)
                } else {
                    Timeline::completes(1, processing)
                },
            );
            assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
        }
        let at = Millis(now.0 - ago);
        store
            .set_enqueue_times(ids, Millis(at.0 - 90_000), at)
            .await
            .expect("move the enqueue back");
        run_from(&app, at).await;
    }
    for id in ["now-ok-1", "now-ok-2", "now-bad-1"] {
        let timeline = if id.contains("bad") {
            Timeline::fails(0, 0)
        } else {
            Timeline::completes(0, 0)
        };
        sim.script(id, timeline);
        assert_eq!(app.enqueue(json!({"video_id": id})).await.status, 201);
    }
    app.step_until_idle().await;

    // The oracle: each video's terminal transition as the API reports it,
    // counted per UTC hour.
    let mut per_hour = std::collections::BTreeMap::<i64, (u64, u64)>::new();
    let ids = groups
        .iter()
        .flat_map(|(ids, _)| ids.iter().copied())
        .chain(["now-ok-1", "now-ok-2", "now-bad-1"]);
    for id in ids {
        let video = app.video(id).await.json;
        let ends: Vec<&Value> = video["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "state" && (t["to"] == "completed" || t["to"] == "failed"))
            .collect();
        assert_eq!(ends.len(), 1, "{id} ended once: {video}");
        let hour = api_millis(&ends[0]["at"]).0.div_euclid(HOUR) * HOUR;
        let counts = per_hour.entry(hour).or_default();
        if ends[0]["to"] == "completed" {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let (completed, failed) = per_hour
        .values()
        .fold((0, 0), |(c, f), (dc, df)| (c + dc, f + df));
    assert_eq!((completed, failed), (6, 4), "as the simulator was scripted");
    assert!(per_hour.len() >= 3, "three hours at least: {per_hour:?}");
    let stats = app.send("GET", "/v1/stats", None).await.json;
    let requests = sim.request_count();

    let Some(browser) = browser().await else {
        app.stop().await;
        return;
    };
    let hour_before = Millis::now().0.div_euclid(HOUR) * HOUR;
    log_in(&browser, &app, TOKEN).await;
    browser.wait_for("#plot-outcomes").await;
    let hour_after = Millis::now().0.div_euclid(HOUR) * HOUR;
    let drawn = browser
        .attributes(
            "svg#plot-outcomes > g.hour",
            &["data-hour", "data-completed", "data-failed"],
        )
        .await;
    assert_eq!(drawn.len(), 24, "the last 24 hours");
    let last = api_millis(&json!(drawn[23][0])).0;
    assert!(
        last == hour_before || last == hour_after,
        "the current hour last: {last}"
    );
    let drawn: std::collections::BTreeMap<i64, (u64, u64)> = drawn
        .iter()
        .map(|row| {
            (
                api_millis(&json!(row[0])).0,
                (row[1].parse().unwrap(), row[2].parse().unwrap()),
            )
        })
        .filter(|(_, counts)| *counts != (0, 0))
        .collect();
    assert_eq!(drawn, per_hour);
    // One bar per non-zero count, each where the markup put it in the
    // tree the browser parsed (a shape left open would nest the rest).
    let bars = per_hour
        .values()
        .map(|(c, f)| usize::from(*c > 0) + usize::from(*f > 0))
        .sum::<usize>();
    assert_eq!(
        browser
            .count("svg#plot-outcomes > g.hour > rect[data-count]")
            .await,
        bars
    );
    assert_eq!(
        browser
            .count("svg#plot-outcomes > g.axis > text.tick")
            .await,
        browser
            .count("svg#plot-outcomes > g.axis > line.grid")
            .await
    );

    // The render-time quantiles: those of `/v1/stats`, model by model.
    for model in stats["render_times"]["models"].as_array().unwrap() {
        let name = model["model"].as_str().unwrap();
        let marked = browser
            .attributes(
                &format!("svg#plot-render-{name} > g.quantile"),
                &["data-p", "data-seconds"],
            )
            .await;
        let expected: Vec<(String, f64)> = model["quantiles_seconds"]
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(p, s)| Some((p.clone(), s.as_f64()?)))
            .collect();
        assert!(!expected.is_empty(), "{name} learned: {stats}");
        let mut marked: Vec<(String, f64)> = marked
            .iter()
            .map(|row| {
                let p: f64 = row[0].parse().unwrap();
                (
                    format!("p{}", (p * 100.0).round() as u32),
                    row[1].parse().unwrap(),
                )
            })
            .collect();
        marked.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(marked.len(), expected.len(), "{name}: {marked:?}");
        for ((p, drawn), (q, api)) in marked.iter().zip(&expected) {
            assert_eq!(p, q);
            assert!(
                // The API rounds to the millisecond.
                (drawn - api).abs() <= 0.000_51,
                "{name} {p}: {drawn} vs {api}"
            );
        }
        assert_eq!(
            browser
                .count(&format!("svg#plot-render-{name} polyline.cdf"))
                .await,
            1
        );
    }

    // The requests drawn are those the simulator received (all within
    // this minute or the few before), under a budget of 5/s.
    let minutes = browser
        .attributes("svg#plot-budget > g.minute", &["data-requests"])
        .await;
    assert_eq!(minutes.len(), 60);
    let drawn: usize = minutes.iter().map(|m| m[0].parse::<usize>().unwrap()).sum();
    assert_eq!(drawn, requests);
    assert!(requests >= 3 * 2 + 4 * 2 + 3, "{requests}");
    assert_eq!(
        browser
            .attributes("svg#plot-budget > line.budget", &["data-per-minute"])
            .await,
        [vec!["300".to_owned()]]
    );
    assert!(
        !browser.text("#budget-scope").await.contains("PostgreSQL"),
        "one relay on SQLite: its requests are all the requests"
    );
    // The whole overview: what README shows as docs/console-overview.png.
    browser
        .screenshot_tall("console-overview-plots", 2300)
        .await;
    browser.finish().await;
    app.stop().await;
}
