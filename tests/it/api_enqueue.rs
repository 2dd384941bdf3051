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
async fn enqueueing_again_is_a_200_that_changes_nothing() {
    let app = spawn_app().await;
    assert_eq!(app.enqueue(json!({"video_id": "same"})).await.status, 201);
    let before = app.video("same").await.json;

    let again = app
        .enqueue(
            json!({"video_id": "same", "callback_url": "https://other.example/x",
                        "metadata": {"changed": true}}),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json, before, "the answer is the unchanged video");
    assert_eq!(app.video("same").await.json, before);
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
    assert_eq!(outcomes, ["created", "existing"]);
    assert_eq!(app.count("videos").await, 1);
    // The one reported created is the one stored.
    assert_eq!(
        app.video("dup").await.json["metadata"],
        json!({"copy": "first"})
    );
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
