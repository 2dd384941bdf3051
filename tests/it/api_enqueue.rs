//! Enqueue, read and cancel through the HTTP API.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn new_video_is_created_and_stored() {
    let app = spawn_app().await;
    let reply = app
        .enqueue(json!({
            "video_id": "vid-1",
            "callback_url": "https://hooks.example.com/jogg",
            "metadata": {"order": 42}
        }))
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.json["video_id"], "vid-1");
    assert_eq!(reply.json["state"], "active");
    assert_eq!(reply.json["metadata"], json!({"order": 42}));
    assert_eq!(reply.json["polls"], 0);
    assert!(reply.json["next_poll_at"].is_string());

    let stored = app.video("vid-1").await;
    assert_eq!(stored.status, 200);
    assert_eq!(
        stored.json["callback_url"],
        "https://hooks.example.com/jogg"
    );
    assert_eq!(stored.json["transitions"], json!([]));
    assert_eq!(stored.json["deliveries"], json!([]));
    // The 201 answer is built without reading the row back; it must be
    // exactly what the row reads as.
    assert_eq!(reply.json, stored.json);
    assert_eq!(app.count("videos").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_created_answer_is_the_stored_row_for_every_kind_of_video() {
    let app = spawn_app().await;
    for body in [
        json!({"video_id": "bare"}),
        json!({"video_id": "with-url", "callback_url": "https://hooks.example.com/x?y=1"}),
        json!({"video_id": "with-meta", "metadata": {"nested": {"list": [1, 2.5, "three", null]}}}),
        json!({"video_id": "unicode_meta", "metadata": {"name": "ñandú ✓ \"quoted\""}}),
    ] {
        let id = body["video_id"].as_str().unwrap().to_owned();
        let created = app.enqueue(body).await;
        assert_eq!(created.status, 201, "{created:?}");
        let stored = app.video(&id).await;
        assert_eq!(created.json, stored.json, "{id}");
    }
    app.stop().await;
}

#[tokio::test]
async fn enqueueing_the_same_request_again_is_a_200_that_changes_nothing() {
    let app = spawn_app().await;
    let first = app
        .send_raw(
            "POST",
            "/v1/videos",
            "application/json",
            br#"{"video_id":"same","callback_url":"https://hooks.example.com/jogg",
                 "metadata":{"order":42,"tags":["a","b"],"nested":{"x":1,"y":null}}}"#
                .to_vec(),
        )
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    let before = app.video("same").await.json;

    // The same request: byte for byte, with the metadata's keys in another
    // order and other spacing, and with the URL spelled as it is stored
    // after normalization (the host's case does not count).
    let repeats: [&[u8]; 3] = [
        br#"{"video_id":"same","callback_url":"https://hooks.example.com/jogg",
             "metadata":{"order":42,"tags":["a","b"],"nested":{"x":1,"y":null}}}"#,
        br#"{"metadata":{ "nested":{"y":null, "x":1}, "tags":["a","b"], "order":42 },
             "callback_url":"https://hooks.example.com/jogg","video_id":"same"}"#,
        br#"{"video_id":"same","callback_url":"https://HOOKS.example.com/jogg",
             "metadata":{"tags":["a","b"],"order":42,"nested":{"x":1,"y":null}}}"#,
    ];
    for body in repeats {
        let again = app
            .send_raw("POST", "/v1/videos", "application/json", body.to_vec())
            .await;
        assert_eq!(
            again.status,
            200,
            "{}: {again:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(again.json, before, "the answer is the unchanged video");
    }
    assert_eq!(app.video("same").await.json, before);
    assert_eq!(app.count("videos").await, 1);

    // A video enqueued with neither field: repeating it bare is the same.
    assert_eq!(app.enqueue(json!({"video_id": "bare"})).await.status, 201);
    let bare = app.video("bare").await.json;
    let again = app
        .enqueue(json!({"video_id": "bare", "callback_url": null, "metadata": null}))
        .await;
    assert_eq!(again.status, 200, "null is the same as absent: {again:?}");
    assert_eq!(app.video("bare").await.json, bare);
    app.stop().await;
}

/// The same id with a different `callback_url` or `metadata` is another
/// request: `409 conflict` naming what differs, and the tracked video keeps
/// what it was enqueued with. Leaving a field out when the video has one
/// (or adding one it has not) differs too.
#[tokio::test]
async fn the_same_id_with_a_different_callback_url_or_metadata_is_a_409_naming_it() {
    let app = spawn_app().await;
    let url = "https://hooks.example.com/jogg";
    let other_url = "https://other.example.com/jogg";
    let metadata = json!({"order": 42});
    let other_metadata = json!({"order": 43});
    let created = app
        .enqueue(json!({"video_id": "taken", "callback_url": url, "metadata": metadata}))
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let before = app.video("taken").await.json;

    let cases = [
        (
            json!({"callback_url": other_url, "metadata": metadata}),
            &["callback_url"][..],
        ),
        (json!({"metadata": metadata}), &["callback_url"][..]),
        (
            json!({"callback_url": url, "metadata": other_metadata}),
            &["metadata"][..],
        ),
        (json!({"callback_url": url}), &["metadata"][..]),
        (
            json!({"callback_url": url, "metadata": {}}),
            &["metadata"][..],
        ),
        (
            json!({"callback_url": url, "metadata": {"order": 42, "extra": 1}}),
            &["metadata"][..],
        ),
        (json!({}), &["callback_url", "metadata"][..]),
        (
            json!({"callback_url": other_url, "metadata": other_metadata}),
            &["callback_url", "metadata"][..],
        ),
    ];
    for (mut body, differing) in cases {
        body["video_id"] = json!("taken");
        let refused = app.enqueue(body.clone()).await;
        assert_eq!(refused.assert_json_error(409), "conflict", "{body}");
        let message = refused.json["error"]["message"].as_str().unwrap();
        for field in ["callback_url", "metadata"] {
            assert_eq!(
                message.contains(field),
                differing.contains(&field),
                "{body}: {message}"
            );
        }
    }
    assert_eq!(app.video("taken").await.json, before, "nothing changed");

    // And the other way round: a video enqueued without a callback URL.
    assert_eq!(app.enqueue(json!({"video_id": "plain"})).await.status, 201);
    let refused = app
        .enqueue(json!({"video_id": "plain", "callback_url": url}))
        .await;
    assert_eq!(refused.assert_json_error(409), "conflict");
    assert!(
        refused.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("callback_url")
    );
    assert_eq!(app.video("plain").await.json["callback_url"], json!(null));
    assert_eq!(app.count("videos").await, 2);
    app.stop().await;
}

/// Many requests for one id at once, half of them with another callback
/// URL: one is created, and every other is decided against what that one
/// stored, whichever group commit it lands in.
#[tokio::test]
async fn concurrent_requests_for_one_id_are_decided_against_the_stored_one() {
    let app = spawn_app().await;
    let urls = ["https://a.example.com/hook", "https://b.example.com/hook"];
    let requests = (0..40).map(|i| {
        let app = &app;
        let url = urls[i % 2];
        async move {
            let reply = app
                .enqueue(json!({"video_id": "raced", "callback_url": url}))
                .await;
            (url, reply.status, reply.error_code().to_owned())
        }
    });
    let replies = futures_util::future::join_all(requests).await;
    let stored = app.video("raced").await.json;
    let stored_url = stored["callback_url"].as_str().unwrap();
    assert_eq!(
        replies
            .iter()
            .filter(|(_, status, _)| *status == 201)
            .count(),
        1,
        "{replies:?}"
    );
    for (url, status, code) in &replies {
        if *url == stored_url {
            assert!(matches!(status, 200 | 201), "{url} {status} {code}");
        } else {
            assert_eq!((*status, code.as_str()), (409, "conflict"), "{url}");
        }
    }
    assert_eq!(app.count("videos").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn batch_reports_each_item_and_stores_the_valid_ones() {
    let app = spawn_app().await;
    app.enqueue(json!({"video_id": "known"})).await;

    let reply = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": [
                {"video_id": "fresh-1"},
                {"video_id": "known"},
                {"video_id": "../x"},
                {"video_id": "fresh-2", "metadata": {"k": "v"}},
                {"video_id": 7},
                "not-an-object",
                {"video_id": "fresh-3", "callback_url": "ftp://nope.example"},
            ]})),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let outcomes: Vec<(&str, &str)> = reply.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["video_id"].as_str().unwrap_or("?"),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("fresh-1", "created"),
            ("known", "existing"),
            ("../x", "invalid"),
            ("fresh-2", "created"),
            ("?", "invalid"),
            ("?", "invalid"),
            ("fresh-3", "invalid"),
        ]
    );
    assert_eq!(
        reply.json["results"][2]["error"]["code"],
        "invalid_video_id"
    );
    assert_eq!(
        reply.json["results"][6]["error"]["code"],
        "invalid_callback_url"
    );
    assert_eq!(app.count("videos").await, 3);
    assert_eq!(
        app.video("fresh-2").await.json["metadata"],
        json!({"k": "v"})
    );
    app.stop().await;
}

#[tokio::test]
async fn batch_duplicates_within_one_request_are_created_once() {
    let app = spawn_app().await;
    let reply = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": [
                {"video_id": "dup", "metadata": {"copy": "first"}},
                {"video_id": "dup", "metadata": {"copy": "first"}},
                {"video_id": "dup", "metadata": {"copy": "second"}}
            ]})),
        )
        .await;
    let outcomes: Vec<&str> = reply.json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["created", "existing", "conflict"], "{reply:?}");
    assert_eq!(reply.json["results"][2]["error"]["code"], "conflict");
    assert_eq!(app.count("videos").await, 1);
    // The one reported created is the one stored.
    assert_eq!(
        app.video("dup").await.json["metadata"],
        json!({"copy": "first"})
    );
    app.stop().await;
}

/// In a batch, an item that repeats how its id is tracked is `existing`;
/// one that differs is `conflict`, with an error naming the field, and the
/// other items are stored regardless.
#[tokio::test]
async fn batch_items_that_differ_from_the_tracked_video_are_conflicts() {
    let app = spawn_app().await;
    let url = "https://hooks.example.com/jogg";
    app.enqueue(json!({"video_id": "known", "callback_url": url, "metadata": {"k": 1}}))
        .await;
    let before = app.video("known").await.json;
    let reply = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": [
                {"video_id": "known", "callback_url": url, "metadata": {"k": 1}},
                {"video_id": "known", "callback_url": "https://other.example.com/x", "metadata": {"k": 1}},
                {"video_id": "known", "metadata": {"k": 1}},
                {"video_id": "known", "callback_url": url, "metadata": {"k": 2}},
                {"video_id": "fresh"},
            ]})),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let results = reply.json["results"].as_array().unwrap();
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["existing", "conflict", "conflict", "conflict", "created"]
    );
    for (index, field, not) in [
        (1, "callback_url", "metadata"),
        (2, "callback_url", "metadata"),
        (3, "metadata", "callback_url"),
    ] {
        let error = &results[index]["error"];
        assert_eq!(error["code"], "conflict", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(field) && !message.contains(not),
            "{message}"
        );
        assert_eq!(results[index]["video_id"], "known");
    }
    assert!(results[0].get("error").is_none());
    assert_eq!(app.video("known").await.json, before, "nothing changed");
    assert_eq!(app.count("videos").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_enqueues_are_all_committed() {
    let app = spawn_app().await;
    let requests = (0..300).map(|i| {
        let app = &app;
        async move {
            app.enqueue(json!({"video_id": format!("c-{i}")}))
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(app.count("videos").await, 300);
    app.stop().await;
}

#[tokio::test]
async fn delete_cancels_with_a_transition_and_is_idempotent() {
    let app = spawn_app().await;
    app.enqueue(json!({"video_id": "stop-me"})).await;

    let reply = app.send("DELETE", "/v1/videos/stop-me", None).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let video = app.video("stop-me").await.json;
    assert_eq!(video["state"], "cancelled");
    assert_eq!(video["next_poll_at"], json!(null));
    let transitions = video["transitions"].as_array().unwrap();
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0]["kind"], "state");
    assert_eq!(transitions[0]["from"], "active");
    assert_eq!(transitions[0]["to"], "cancelled");
    assert!(transitions[0]["at"].is_string());

    assert_eq!(
        app.send("DELETE", "/v1/videos/stop-me", None).await.status,
        204
    );
    assert_eq!(app.count("transitions").await, 1, "no second transition");
    // Enqueueing a cancelled id again does not revive it.
    assert_eq!(
        app.enqueue(json!({"video_id": "stop-me"})).await.status,
        200
    );
    assert_eq!(app.video("stop-me").await.json["state"], "cancelled");

    let missing = app.send("DELETE", "/v1/videos/never-seen", None).await;
    assert_eq!(missing.assert_json_error(404), "not_found");
    app.stop().await;
}
