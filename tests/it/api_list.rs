//! `GET /v1/videos`: filtering and cursor pagination.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

async fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let reply = app.send("GET", &format!("/v1/videos?{query}"), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let ids = reply.json["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video_id"].as_str().unwrap().to_owned())
        .collect();
    (ids, reply.json["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn pagination_visits_every_row_once_while_rows_are_added() {
    let app = spawn_app().await;
    let batch = |from: usize, to: usize| json!({"videos": (from..to).map(|i| json!({"video_id": format!("p{i:04}")})).collect::<Vec<Value>>()});
    app.send("POST", "/v1/videos/batch", Some(&batch(0, 50)))
        .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 50;
    // 80 rows at 7 a page: 12 pages; a cursor that never ends fails here.
    for pages in 1.. {
        assert!(pages <= 100, "paging does not end");
        let query = match &cursor {
            Some(c) => format!("limit=7&cursor={c}"),
            None => "limit=7".to_owned(),
        };
        let (ids, next) = page(&app, &query).await;
        seen.extend(ids);
        // Rows arrive while the client is paging.
        if inserted < 80 {
            app.send(
                "POST",
                "/v1/videos/batch",
                Some(&batch(inserted, inserted + 5)),
            )
            .await;
            inserted += 5;
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    assert_eq!(
        seen.len(),
        inserted,
        "every row, including those added while paging"
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "insertion order");
    app.stop().await;
}

#[tokio::test]
async fn state_filter_and_parameter_errors() {
    let app = spawn_app().await;
    for id in ["a1", "a2", "a3"] {
        app.enqueue(json!({"video_id": id})).await;
    }
    app.send("DELETE", "/v1/videos/a2", None).await;
    assert_eq!(page(&app, "state=cancelled").await.0, ["a2"]);
    assert_eq!(page(&app, "state=active").await.0, ["a1", "a3"]);
    assert_eq!(page(&app, "state=completed").await, (vec![], None));

    for (query, code) in [
        ("state=done", "invalid_state"),
        ("limit=0", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("cursor=-4", "invalid_cursor"),
        ("cursor=zz", "invalid_cursor"),
        ("status=active", "invalid_query"),
    ] {
        let reply = app.send("GET", &format!("/v1/videos?{query}"), None).await;
        assert_eq!(reply.assert_json_error(400), code, "{query}");
    }
    app.stop().await;
}
