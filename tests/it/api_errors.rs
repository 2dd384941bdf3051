//! Bad input: every error is a JSON body with the right 4xx status, and
//! nothing is stored.

use serde_json::{Value, json};

use crate::helpers::{TOKEN, raw_request, reply, spawn_app};

#[tokio::test]
async fn invalid_ids_are_400_and_store_nothing() {
    let app = spawn_app().await;
    let bad_ids: Vec<Value> = vec![
        json!(""),
        json!("a".repeat(129)),
        json!("../x"),
        json!("a/b"),
        json!("a b"),
        json!("%2e%2e"),
        json!("vidéo"),
        json!(null),
        json!(42),
    ];
    for id in &bad_ids {
        let reply = app.enqueue(json!({"video_id": id})).await;
        assert_eq!(reply.assert_json_error(400), "invalid_video_id", "{id}");
    }
    let missing = app
        .enqueue(json!({"callback_url": "https://x.example"}))
        .await;
    assert_eq!(missing.assert_json_error(400), "invalid_video_id");
    assert_eq!(app.count("videos").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn invalid_ids_in_the_path_are_400() {
    let app = spawn_app().await;
    for path in [
        "/v1/videos/%2e%2e",
        "/v1/videos/a%20b",
        "/v1/videos/vid%C3%A9o",
        "/v1/videos/a%2Fb",
        "/v1/videos/%FF",
    ] {
        let reply = raw_request(&app.base, "GET", path).await;
        assert_eq!(reply.assert_json_error(400), "invalid_video_id", "{path}");
        let reply = raw_request(&app.base, "DELETE", path).await;
        assert_eq!(reply.assert_json_error(400), "invalid_video_id", "{path}");
    }
    let too_long = format!("/v1/videos/{}", "a".repeat(129));
    assert_eq!(
        app.send("GET", &too_long, None)
            .await
            .assert_json_error(400),
        "invalid_video_id"
    );
    app.stop().await;
}

#[tokio::test]
async fn other_invalid_fields_are_400() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"video_id": "v", "callback_url": "not a url"}),
            "invalid_callback_url",
        ),
        (
            json!({"video_id": "v", "callback_url": "file:///etc/passwd"}),
            "invalid_callback_url",
        ),
        (
            json!({"video_id": "v", "callback_url": "https://user:pw@x.example/"}),
            "invalid_callback_url",
        ),
        (
            json!({"video_id": "v", "callback_url": 5}),
            "invalid_callback_url",
        ),
        (
            json!({"video_id": "v", "metadata": [1, 2]}),
            "invalid_metadata",
        ),
        (
            json!({"video_id": "v", "metadata": {"big": "x".repeat(5000)}}),
            "invalid_metadata",
        ),
        (
            json!({"video_id": "v", "callbackUrl": "https://x.example"}),
            "unknown_field",
        ),
        (json!(["v"]), "invalid_request"),
    ];
    for (body, code) in cases {
        assert_eq!(
            app.enqueue(body.clone()).await.assert_json_error(400),
            code,
            "{body}"
        );
    }
    assert_eq!(app.count("videos").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type() {
    let app = spawn_app().await;
    let reply = app
        .send_raw(
            "POST",
            "/v1/videos",
            "application/json",
            b"{\"video_id\": ".to_vec(),
        )
        .await;
    assert_eq!(reply.assert_json_error(400), "invalid_json");
    let reply = app
        .send_raw("POST", "/v1/videos", "application/json", vec![0xff, 0xfe])
        .await;
    assert_eq!(reply.assert_json_error(400), "invalid_json");
    let nested = "[".repeat(10_000);
    let reply = app
        .send_raw(
            "POST",
            "/v1/videos/batch",
            "application/json",
            nested.into_bytes(),
        )
        .await;
    assert_eq!(reply.assert_json_error(400), "invalid_json");
    let reply = app
        .send_raw(
            "POST",
            "/v1/videos",
            "text/plain",
            b"{\"video_id\":\"v\"}".to_vec(),
        )
        .await;
    assert_eq!(reply.assert_json_error(415), "unsupported_media_type");
    let reply = app
        .send_raw(
            "POST",
            "/v1/videos/batch",
            "application/json",
            b"{\"videos\": 5}".to_vec(),
        )
        .await;
    assert_eq!(reply.assert_json_error(400), "invalid_request");
    assert_eq!(app.count("videos").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app().await;
    let big_single = json!({"video_id": "v", "metadata": {"pad": "x".repeat(70 * 1024)}});
    assert_eq!(
        app.enqueue(big_single).await.assert_json_error(413),
        "payload_too_large"
    );

    // Over 1 MiB in the batch endpoint (while each item would be fine).
    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"video_id": format!("v{i}"), "metadata": {"pad": "x".repeat(1100)}}))
        .collect();
    let reply = app
        .send("POST", "/v1/videos/batch", Some(&json!({"videos": items})))
        .await;
    assert_eq!(reply.assert_json_error(413), "payload_too_large");

    // A batch between the two limits is accepted: the batch limit applies.
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"video_id": format!("ok{i}"), "metadata": {"pad": "x".repeat(1000)}}))
        .collect();
    assert_eq!(
        app.send("POST", "/v1/videos/batch", Some(&json!({"videos": items})))
            .await
            .status,
        200
    );

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"video_id": format!("n{i}")}))
        .collect();
    let reply = app
        .send(
            "POST",
            "/v1/videos/batch",
            Some(&json!({"videos": too_many})),
        )
        .await;
    assert_eq!(reply.assert_json_error(400), "too_many_items");
    assert_eq!(app.count("videos").await, 100);
    app.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_token_is_401() {
    let app = spawn_app().await;
    let url = format!("{}/v1/videos", app.base);
    let body = json!({"video_id": "v"});
    let no_token = reply(app.client.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!(no_token.assert_json_error(401), "unauthorized");
    let wrong = reply(
        app.client
            .post(&url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.assert_json_error(401), "unauthorized");
    let prefix = reply(
        app.client
            .post(&url)
            .bearer_auth(&TOKEN[..5])
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(prefix.assert_json_error(401), "unauthorized");
    let basic = reply(
        app.client
            .get(&url)
            .basic_auth("u", Some(TOKEN))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(basic.assert_json_error(401), "unauthorized");
    assert_eq!(app.count("videos").await, 0);
    // Health checks need no token.
    let health = reply(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, 200);
    app.stop().await;
}

/// The token check compares the whole token (a wrong token of the right
/// length is refused, whichever byte differs) and reads the scheme as RFC
/// 9110 says: case-insensitive, one or more spaces before the token.
#[tokio::test]
async fn the_whole_token_must_match_and_the_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let url = format!("{}/v1/videos", app.base);
    let with_authorization = |value: String| {
        let request = app
            .client
            .post(&url)
            .header("authorization", value)
            .json(&json!({"video_id": "auth-probe"}));
        async move { reply(request.send().await.unwrap()).await }
    };
    // Same length as the real token, one byte different: first, middle, last.
    for position in [0, TOKEN.len() / 2, TOKEN.len() - 1] {
        let mut wrong = TOKEN.as_bytes().to_vec();
        wrong[position] = if wrong[position] == b'x' { b'y' } else { b'x' };
        let wrong = String::from_utf8(wrong).unwrap();
        assert_eq!(wrong.len(), TOKEN.len());
        let refused = with_authorization(format!("Bearer {wrong}")).await;
        assert_eq!(refused.assert_json_error(401), "unauthorized", "{wrong}");
    }
    for refused in [
        TOKEN.to_owned(),
        format!("Token {TOKEN}"),
        format!("Bearer{TOKEN}"),
        format!("Bearer {TOKEN}x"),
        format!("Bearer {}", &TOKEN[1..]),
        "Bearer ".to_owned(),
    ] {
        let answer = with_authorization(refused.clone()).await;
        assert_eq!(answer.assert_json_error(401), "unauthorized", "{refused:?}");
    }
    assert_eq!(app.count("videos").await, 0, "nothing refused was stored");

    for accepted in [
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("Bearer   {TOKEN}"),
    ] {
        let answer = with_authorization(accepted.clone()).await;
        assert!(
            matches!(answer.status, 200 | 201),
            "{accepted:?}: {answer:?}"
        );
    }
    assert_eq!(app.count("videos").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_are_json_errors() {
    let app = spawn_app().await;
    assert_eq!(
        app.video("never-enqueued").await.assert_json_error(404),
        "not_found"
    );
    assert_eq!(
        app.send("GET", "/nope", None).await.assert_json_error(404),
        "not_found"
    );
    assert_eq!(
        app.send("GET", "/v1/nope/deeper", None)
            .await
            .assert_json_error(404),
        "not_found"
    );
    assert_eq!(
        app.send("PUT", "/v1/videos", None)
            .await
            .assert_json_error(405),
        "method_not_allowed"
    );
    assert_eq!(
        app.send("PATCH", "/v1/videos/x", None)
            .await
            .assert_json_error(405),
        "method_not_allowed"
    );
    assert_eq!(
        app.send("POST", "/healthz", None)
            .await
            .assert_json_error(405),
        "method_not_allowed"
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.send("GET", "/healthz", None).await;
    assert_eq!(
        (health.status, health.json["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = app.send("GET", "/readyz", None).await;
    assert_eq!(
        (ready.status, ready.json["status"].as_str()),
        (200, Some("ready"))
    );
    app.stop().await;
}
