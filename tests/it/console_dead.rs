//! The console's dead deliveries page and the video page's polls (README,
//! "Console"), in headless Chromium where a browser matters (skipped,
//! loudly, without one; see `helpers::browser`) and over plain HTTP where
//! it does not. The oracles are the JSON API, the callback receiver's own
//! record and the upstream simulator's script.

use jogg_relay::console::deliveries::PAGE_SIZE;
use jogg_relay::domain::Millis;
use jogg_relay::sim::{Ending, Fault, Received, SimReceiver, Timeline};
use serde_json::{Value, json};

use crate::console::{csrf_of, fetch, href_of, logged_in, logged_in_at, session_cookie};
use crate::helpers::browser::Browser;
use crate::helpers::{TestApp, api_millis, spawn_manual_app};

/// The state of the one delivery of video `id`, as the API shows it.
async fn delivery_state(app: &TestApp, id: &str) -> String {
    let video = app.video(id).await.json;
    let deliveries = video["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{video}");
    deliveries[0]["state"].as_str().unwrap().to_owned()
}

/// The ids of `ids` whose delivery the API shows `dead`.
async fn dead_per_api(app: &TestApp, ids: &[String]) -> Vec<String> {
    let mut dead = Vec::new();
    for id in ids {
        if delivery_state(app, id).await == "dead" {
            dead.push(id.clone());
        }
    }
    dead
}

/// The video ids of the rows the dead page shows, in order.
async fn listed(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for link in browser
        .client
        .find_all(fantoccini::Locator::Css("#dead a.video"))
        .await
        .expect("a search")
    {
        ids.push(link.text().await.expect("its text"));
    }
    ids
}

/// The callbacks the receiver got for video `id`.
fn callbacks_of<'a>(received: &'a [Received], id: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.body["video_id"] == id || r.body["data"]["video_id"] == id)
        .collect()
}

/// `count` completed videos `dead-NN` whose one callback the receiver
/// refused with `410 Gone` (dead at once), with the receiver; every
/// delivery is dead per the API.
async fn dead_videos(count: usize) -> (SimReceiver, TestApp, Vec<String>) {
    let receiver = SimReceiver::start(None).await.unwrap();
    let hook = receiver.url("hook");
    let app = spawn_manual_app(|s| s.callbacks.urls = vec![hook.clone()]).await;
    let ids: Vec<String> = (0..count).map(|i| format!("dead-{i:02}")).collect();
    for id in &ids {
        app.sim.state.script(id, Timeline::completes(0, 0));
    }
    let batch: Vec<Value> = ids.iter().map(|id| json!({"video_id": id})).collect();
    assert_eq!(
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": batch})))
            .await
            .status,
        200
    );
    app.step_until_idle().await;
    receiver.state.fail("hook", count, 410);
    app.deliver(Millis::now()).await;
    assert_eq!(receiver.state.received().len(), count);
    assert_eq!(dead_per_api(&app, &ids).await, ids, "all dead");
    (receiver, app, ids)
}

/// The dead page lists every dead delivery once over its pages; one
/// row's button queues that video's callback again (the API shows it
/// pending, and the receiver then gets it with the same event id); "redeliver
/// all shown" on the last page redelivers exactly that page's videos, and
/// the others stay dead.
#[tokio::test]
async fn dead_deliveries_are_listed_and_redelivered() {
    let total = PAGE_SIZE as usize + 3;
    let (receiver, app, ids) = dead_videos(total).await;
    let Some(browser) = logged_in(&app).await else {
        app.stop().await;
        return;
    };
    browser.click("#nav-dead").await;
    browser.wait_for("#dead").await;
    assert_eq!(browser.path().await, "/ui/deliveries/dead");
    let first = listed(&browser).await;
    assert_eq!(first.len(), PAGE_SIZE as usize);
    assert_eq!(
        browser.count("#redeliver-all input[name=video]").await,
        PAGE_SIZE as usize,
        "the shown videos, each once"
    );
    browser.screenshot("console-dead").await;
    let next = href_of(&browser, "#next").await.expect("a next page");
    browser.goto(&format!("{}{next}", app.base)).await;
    let mut all = first.clone();
    all.extend(listed(&browser).await);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "each dead row once over the pages");

    // One row's button: that video only, queued again.
    let one = first[3].clone();
    browser
        .goto(&format!("{}/ui/deliveries/dead", app.base))
        .await;
    browser
        .click(&format!("#dead tr[data-video=\"{one}\"] button"))
        .await;
    browser.wait_for("#flash").await;
    assert_eq!(browser.path().await, "/ui/deliveries/dead");
    assert!(
        browser
            .text("#flash")
            .await
            .contains("Queued again: 1 video")
    );
    assert_eq!(delivery_state(&app, &one).await, "pending");
    let others: Vec<String> = ids.iter().filter(|id| **id != one).cloned().collect();
    assert_eq!(dead_per_api(&app, &others).await, others);
    assert!(!listed(&browser).await.contains(&one));
    browser.screenshot("console-dead-redelivered").await;
    let event_id = app.video(&one).await.json["event_id"].clone();
    app.deliver(Millis::now()).await;
    let received = receiver.state.received();
    let sent = callbacks_of(&received, &one);
    assert_eq!(sent.len(), 2, "refused once, then sent again");
    assert_eq!(sent[1].event_id.as_deref(), event_id.as_str());
    assert_eq!(sent[0].event_id, sent[1].event_id, "the same event id");
    assert_eq!(delivery_state(&app, &one).await, "delivered");

    // "Redeliver all shown" on the last page: exactly its rows.
    let next = href_of(&browser, "#next").await.expect("a next page");
    browser.goto(&format!("{}{next}", app.base)).await;
    let shown = listed(&browser).await;
    // The first row of the old second page moved up to fill the first.
    assert_eq!(shown, all[PAGE_SIZE as usize + 1..]);
    browser.click("#redeliver-all button").await;
    browser.wait_for("#flash").await;
    for id in &shown {
        assert_eq!(delivery_state(&app, id).await, "pending", "{id}");
    }
    let still_dead: Vec<String> = others
        .iter()
        .filter(|id| !shown.contains(id))
        .cloned()
        .collect();
    assert_eq!(still_dead.len(), PAGE_SIZE as usize);
    assert_eq!(dead_per_api(&app, &still_dead).await, still_dead);
    assert!(
        browser
            .text("#flash")
            .await
            .contains(&format!("Queued again: {} video", shown.len()))
    );
    let mut first_now = first_without(&first, &one);
    first_now.push(all[PAGE_SIZE as usize].clone());
    assert_eq!(listed(&browser).await, first_now);
    browser.finish().await;
    app.stop().await;
}

/// `first` without `one`: what stays of the first page once `one` left
/// it.
fn first_without(first: &[String], one: &str) -> Vec<String> {
    first.iter().filter(|id| *id != one).cloned().collect()
}

/// The dead page's button needs the session's CSRF token: without it, or
/// with another session's, it is refused (403) and nothing is queued;
/// without a session it leads to the login form. A bad video id or none is
/// a 400, and so is a cursor that no "next" link made.
#[tokio::test]
async fn dead_page_buttons_need_the_csrf_token() {
    let (_receiver, app, ids) = dead_videos(2).await;
    let cookie = session_cookie(&app).await;
    let other = session_cookie(&app).await;
    let (status, _, page) = fetch(&app, "GET", "/ui/deliveries/dead", Some(&cookie), None).await;
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    let (_, _, other_page) = fetch(&app, "GET", "/ui/deliveries/dead", Some(&other), None).await;
    let other_csrf = csrf_of(&other_page);
    let path = "/ui/deliveries/dead/redeliver";
    let videos = format!("video={}&video={}", ids[0], ids[1]);
    for form in [
        videos.clone(),
        format!("csrf=&{videos}"),
        format!("csrf={other_csrf}&{videos}"),
        format!("csrf={csrf}x&{videos}"),
    ] {
        let (status, _, body) = fetch(&app, "POST", path, Some(&cookie), Some(&form)).await;
        assert_eq!(status, 403, "{form}");
        assert!(body.contains("CSRF"), "{body}");
    }
    let (status, headers, _) = fetch(
        &app,
        "POST",
        path,
        None,
        Some(&format!("csrf={csrf}&{videos}")),
    )
    .await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/ui/login".parse().unwrap())
    );
    for form in [
        format!("csrf={csrf}"),
        format!("csrf={csrf}&video=%3Cscript%3E"),
        format!("csrf={csrf}&video="),
    ] {
        let (status, _, _) = fetch(&app, "POST", path, Some(&cookie), Some(&form)).await;
        assert_eq!(status, 400, "{form}");
    }
    for cursor in ["x", "1", "1.x", "%3Cb%3E.1"] {
        let (status, _, _) = fetch(
            &app,
            "GET",
            &format!("/ui/deliveries/dead?before={cursor}"),
            Some(&cookie),
            None,
        )
        .await;
        assert_eq!(status, 400, "{cursor}");
    }
    // More than a page at once is refused; a page's worth is not (these
    // ids are not tracked: each is skipped).
    let page_of = |count: usize| -> String {
        (0..count).fold(format!("csrf={csrf}"), |form, i| {
            form + &format!("&video=not-tracked-{i}")
        })
    };
    let (status, _, body) = fetch(
        &app,
        "POST",
        path,
        Some(&cookie),
        Some(&page_of(PAGE_SIZE as usize + 1)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("At most one page"), "{body}");
    let (status, headers, _) = fetch(
        &app,
        "POST",
        path,
        Some(&cookie),
        Some(&page_of(PAGE_SIZE as usize)),
    )
    .await;
    let skipped = format!("/ui/deliveries/dead?redelivered=0&skipped={PAGE_SIZE}");
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (303, skipped.as_str())
    );
    assert_eq!(dead_per_api(&app, &ids).await, ids, "nothing was queued");

    // With the token: both queued, an unknown video skipped.
    let form = format!("csrf={csrf}&{videos}&video=never-tracked");
    let (status, headers, _) = fetch(&app, "POST", path, Some(&cookie), Some(&form)).await;
    let back = "/ui/deliveries/dead?redelivered=2&skipped=1";
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, back));
    assert!(dead_per_api(&app, &ids).await.is_empty());
    let (_, _, page) = fetch(&app, "GET", back, Some(&cookie), None).await;
    assert!(page.contains("Queued again: 2 video(s)"), "{page}");
    assert!(page.contains("Skipped 1"), "{page}");
    app.stop().await;
}

/// A dead delivery's URL and error text that break out of an element or
/// an attribute, or are `javascript:` URLs, render as text on the dead
/// page: no element injected, no script run, no link made.
#[tokio::test]
async fn hostile_delivery_text_renders_inert_on_the_dead_page() {
    let (receiver, app, ids) = dead_videos(1).await;
    let url =
        "javascript:alert(1)//\"><script>alert(2)</script><img src=x onerror=alert(3) id=injected>";
    let error = "</td><script>alert(4)</script><a id=injected href=\"javascript:alert(5)\">x</a>' onmouseover='alert(6)";
    let store = app.store().await;
    store
        .set_delivery_url(&receiver.url("hook"), url)
        .await
        .unwrap();
    store.set_delivery_error(url, error).await.unwrap();
    // The oracle: the API shows the stored text as it is.
    let video = app.video(&ids[0]).await.json;
    assert_eq!(video["deliveries"][0]["url"], url);
    assert_eq!(video["deliveries"][0]["last_error"], error);

    let Some(browser) = logged_in_at(&app, "/ui/deliveries/dead").await else {
        app.stop().await;
        return;
    };
    browser.wait_for("#dead").await;
    assert_eq!(
        browser
            .count("#injected, main script, main img, main td.url a, main td.answer a")
            .await,
        0
    );
    assert!(browser.client.get_alert_text().await.is_err(), "no alert");
    assert_eq!(browser.text("#dead td.url").await, url);
    assert_eq!(
        browser.text("#dead td.answer").await,
        format!("HTTP 410 {error} (gone)")
    );
    browser.screenshot("console-dead-hostile").await;
    browser.finish().await;
    app.stop().await;
}

/// The video page's polls are what the API and the simulator's script
/// say: the count of polls made, the status last answered, the next poll
/// due; after a poll that the simulator failed on purpose, that the last
/// poll failed, once, and the status stays the last one answered.
#[tokio::test]
async fn the_video_page_shows_its_polls() {
    let app = spawn_manual_app(|_| {}).await;
    app.sim.state.script(
        "polled-1",
        Timeline {
            ending: Ending::Stuck("processing".into()),
            ..Timeline::completes(0, 0)
        },
    );
    assert_eq!(
        app.enqueue(json!({"video_id": "polled-1"})).await.status,
        201
    );
    app.step(Millis::now()).await;
    let api = app.video("polled-1").await.json;
    assert_eq!(api["upstream_status"], "processing");
    let Some(browser) = logged_in(&app).await else {
        app.stop().await;
        return;
    };
    let page = format!("{}/ui/videos/polled-1", app.base);
    browser.goto(&page).await;
    browser.wait_for("#polls").await;
    assert_eq!(browser.text("#poll-count").await, api["polls"].to_string());
    assert_eq!(browser.text("#poll-saw").await, "status processing");
    assert_eq!(
        browser.text("#poll-next").await,
        api["next_poll_at"].as_str().unwrap()
    );
    assert_ne!(browser.text("#poll-last").await, "—");
    assert_eq!(browser.text("#poll-lease").await, "No");
    browser.screenshot("console-video-polls").await;

    // The next poll fails upstream (the simulator answers 500 once).
    app.sim.state.inject_for("polled-1", [Fault::Http(500)]);
    app.step(api_millis(&api["next_poll_at"])).await;
    let after = app.video("polled-1").await.json;
    assert_eq!(after["upstream_status"], "processing");
    browser.goto(&page).await;
    browser.wait_for("#polls").await;
    assert_eq!(
        browser.text("#poll-count").await,
        after["polls"].to_string()
    );
    assert_eq!(
        browser.text("#poll-saw").await,
        "failed (1 failed poll(s) in a row; last status answered: processing)"
    );
    assert_eq!(
        browser.text("#poll-next").await,
        after["next_poll_at"].as_str().unwrap()
    );
    browser.screenshot("console-video-polls-failed").await;
    browser.finish().await;
    app.stop().await;
}
