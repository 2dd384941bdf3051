//! `/openapi.json`: the served description is the committed `openapi.json`,
//! and it matches what the relay really does.
//!
//! The oracle is the running relay, never utoipa: real requests to a
//! spawned relay must get a status the document lists for their operation,
//! with a body that satisfies the document's schema for it (checked by the
//! small JSON Schema checker below, written for this test), and an error
//! code the response's description names. The document's routes must be
//! exactly the README's table and the router's own `.route(…)` paths, and
//! every method the document leaves out of a path must get `405`.

use std::collections::{BTreeMap, BTreeSet};

use jogg_relay::config::{SecretSetting, Settings};
use jogg_relay::domain::Millis;
use jogg_relay::sim::{SimReceiver, Timeline};
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestApp, spawn_app, spawn_manual_app};
use crate::oracle::hmac_hex;

/// The committed copy of the description.
const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

/// The secret of the relay that takes pushes in these tests.
const PUSH_SECRET: &str = "openapi-push-secret-0123456789";

/// `GET /openapi.json` with no token: (status, content type, body).
async fn fetch_description(app: &TestApp) -> (u16, String, String) {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .expect("GET /openapi.json");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

/// The document the relay serves, parsed.
async fn served_document(app: &TestApp) -> Value {
    let (status, _, text) = fetch_description(app).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("the description is JSON")
}

/// The served description is byte for byte the committed `openapi.json`.
/// `JOGG_RELAY_BLESS=1` rewrites the file from what is served instead.
#[tokio::test]
async fn the_served_description_is_the_committed_openapi_json() {
    let app = spawn_app().await;
    let (status, content_type, served) = fetch_description(&app).await;
    assert_eq!(status, 200, "no token needed: {served}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let document: Value = serde_json::from_str(&served).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    if std::env::var_os("JOGG_RELAY_BLESS").is_some_and(|value| value == "1") {
        std::fs::write(COMMITTED, &served).expect("rewrite openapi.json");
        println!("rewrote {COMMITTED}");
    } else {
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == served,
            "openapi.json differs from what the relay serves at /openapi.json; \
             rewrite it with `JOGG_RELAY_BLESS=1 cargo test --test it openapi::the_served` \
             and commit it"
        );
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The document against real requests
// ---------------------------------------------------------------------------

/// One request and the status it is meant to get (`None`: whatever the
/// relay answers, as long as the document lists it).
struct Case {
    method: &'static str,
    target: String,
    token: bool,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    signature: Option<String>,
    expect: Option<u16>,
}

impl Case {
    fn new(method: &'static str, target: impl Into<String>, expect: u16) -> Self {
        Self {
            method,
            target: target.into(),
            token: true,
            content_type: None,
            body: None,
            signature: None,
            expect: Some(expect),
        }
    }

    fn json(mut self, body: Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(serde_json::to_vec(&body).unwrap());
        self
    }

    fn raw(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        self.content_type = Some(content_type);
        self.body = Some(body);
        self
    }

    fn no_token(mut self) -> Self {
        self.token = false;
        self
    }

    fn signed(mut self, secret: &str) -> Self {
        let body = self.body.as_deref().unwrap_or_default();
        self.signature = Some(hmac_hex(secret.as_bytes(), body));
        self
    }

    fn any_status(mut self) -> Self {
        self.expect = None;
        self
    }
}

/// What the document and the relay agreed on: (method, path template,
/// status) for every case sent.
type Covered = BTreeSet<(String, String, u16)>;

/// Sends every case to `app` and checks each answer against `document`.
async fn check_cases(app: &TestApp, document: &Value, cases: Vec<Case>, covered: &mut Covered) {
    for case in cases {
        let label = format!("{} {}", case.method, case.target);
        let mut request = app
            .client
            .request(
                case.method.parse().unwrap(),
                format!("{}{}", app.base, case.target),
            )
            .header("content-length", "0");
        if case.token {
            request = request.bearer_auth(TOKEN);
        }
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(signature) = &case.signature {
            request = request.header("x-webhook-signature", signature);
        }
        if let Some(body) = case.body.clone() {
            request = request.header("content-length", body.len()).body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        if let Some(expect) = case.expect {
            assert_eq!(status, expect, "{label}: {text}");
        }

        let path = case.target.split('?').next().unwrap();
        let (template, operation) = find_operation(document, case.method, path)
            .unwrap_or_else(|| panic!("{label}: the document has no such operation"));
        let documented = &operation["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{label}: the relay answered {status}, which the document does not list: {text}"
        );
        let documented = resolve(document, documented);
        match documented.get("content").and_then(Value::as_object) {
            None => assert!(body.is_empty(), "{label}: {status} has no documented body"),
            Some(content) => {
                let mime = content_type.split(';').next().unwrap().trim();
                let media = content
                    .iter()
                    .find(|(documented, _)| documented.split(';').next().unwrap().trim() == mime)
                    .map(|(_, media)| media)
                    .unwrap_or_else(|| {
                        panic!("{label}: {status} answered {content_type}, documented: {content:?}")
                    });
                if mime == "application/json" {
                    let value: Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|err| panic!("{label}: not JSON ({err}): {text}"));
                    let mut errors = Vec::new();
                    check_schema(document, &media["schema"], &value, "$", &mut errors);
                    assert!(
                        errors.is_empty(),
                        "{label}: the {status} body does not fit the documented schema: \
                         {errors:#?}\n{value:#}"
                    );
                    if let Some(code) = value["error"]["code"].as_str() {
                        let description = documented["description"].as_str().unwrap_or("");
                        assert!(
                            description.contains(&format!("`{code}`")),
                            "{label}: error code {code} is not named in the {status} \
                             description: {description:?}"
                        );
                    }
                }
            }
        }
        covered.insert((case.method.to_owned(), template, status));
    }
}

/// The operation of `document` that serves `method` on the concrete
/// `path`, with its path template.
fn find_operation<'a>(
    document: &'a Value,
    method: &str,
    path: &str,
) -> Option<(String, &'a Value)> {
    let paths = document["paths"].as_object()?;
    paths.iter().find_map(|(template, item)| {
        let operation = item.get(method.to_ascii_lowercase())?;
        template_matches(template, path).then(|| (template.clone(), operation))
    })
}

/// Whether `path` fits `template` (`{name}` matches one non-empty segment).
fn template_matches(template: &str, path: &str) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references: {reference}"));
            let target = document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {reference}"));
            resolve(document, target)
        }
        None => value,
    }
}

/// A JSON Schema (2020-12) checker for the keywords the document uses.
/// Keywords that only annotate (descriptions, formats, examples, patterns)
/// are not checked; any other keyword fails the test, so a document that
/// starts using one cannot pass unchecked.
fn check_schema(
    document: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    errors: &mut Vec<String>,
) {
    let schema = resolve(document, schema);
    let Some(keywords) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            errors.push(format!("{at}: nothing is allowed here"));
        }
        return;
    };
    for (keyword, rule) in keywords {
        match keyword.as_str() {
            "description" | "format" | "examples" | "example" | "title" | "default" | "pattern"
            | "deprecated" | "contentMediaType" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(one) => vec![one.as_str()],
                    Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                    other => panic!("{at}: type {other}"),
                };
                if !types.iter().any(|name| has_type(value, name)) {
                    errors.push(format!("{at}: {value} is not of type {types:?}"));
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(value) {
                    errors.push(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    errors.push(format!("{at}: {value} is not {rule}"));
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for name in rule.as_array().unwrap().iter().filter_map(Value::as_str) {
                        if !object.contains_key(name) {
                            errors.push(format!("{at}: required property {name} is missing"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    for (name, property) in rule.as_object().unwrap() {
                        if let Some(field) = object.get(name) {
                            check_schema(
                                document,
                                property,
                                field,
                                &format!("{at}.{name}"),
                                errors,
                            );
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let declared = keywords.get("properties").and_then(Value::as_object);
                    for (name, field) in object {
                        if declared.is_some_and(|declared| declared.contains_key(name)) {
                            continue;
                        }
                        check_schema(document, rule, field, &format!("{at}.{name}"), errors);
                    }
                }
            }
            "propertyNames" => {
                if let Some(object) = value.as_object() {
                    for name in object.keys() {
                        let key = Value::String(name.clone());
                        check_schema(document, rule, &key, &format!("{at}.{name} (name)"), errors);
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (index, item) in items.iter().enumerate() {
                        check_schema(document, rule, item, &format!("{at}[{index}]"), errors);
                    }
                }
            }
            "maxItems" | "minItems" => {
                if let Some(items) = value.as_array() {
                    let bound = rule.as_u64().unwrap() as usize;
                    let fits = if keyword == "maxItems" {
                        items.len() <= bound
                    } else {
                        items.len() >= bound
                    };
                    if !fits {
                        errors.push(format!(
                            "{at}: {} items break {keyword} {bound}",
                            items.len()
                        ));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let Some(number) = value.as_f64() {
                    let bound = rule.as_f64().unwrap();
                    if (keyword == "minimum" && number < bound)
                        || (keyword == "maximum" && number > bound)
                    {
                        errors.push(format!("{at}: {number} breaks {keyword} {bound}"));
                    }
                }
            }
            "allOf" | "anyOf" | "oneOf" => {
                let fits = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|branch| {
                        let mut branch_errors = Vec::new();
                        check_schema(document, branch, value, at, &mut branch_errors);
                        branch_errors.is_empty()
                    })
                    .count();
                let total = rule.as_array().unwrap().len();
                let ok = match keyword.as_str() {
                    "allOf" => fits == total,
                    "anyOf" => fits >= 1,
                    _ => fits == 1,
                };
                if !ok {
                    errors.push(format!(
                        "{at}: {value} fits {fits} of the {total} {keyword} branches"
                    ));
                }
            }
            other => panic!("{at}: the checker does not know the keyword {other:?}; teach it"),
        }
    }
}

/// Whether `value` is of JSON Schema type `name`.
fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown type {other}"),
    }
}

/// A push as JoggAI sends it.
fn push(event: &str, video_id: &str) -> Value {
    json!({
        "event_id": format!("evt_{video_id}"),
        "event": event,
        "timestamp": 1_732_806_631,
        "data": {"video_id": video_id, "status": "completed"},
    })
}

/// Every documented operation, sent its ordinary requests and its usual
/// mistakes, answers a status the document lists, with a body that fits
/// the documented schema and an error code the description names.
#[tokio::test]
async fn real_answers_fit_the_description() {
    let receiver = SimReceiver::start(None).await.unwrap();
    let target = receiver.url("ops");
    let app = spawn_manual_app(|settings: &mut Settings| {
        settings.callbacks.urls = vec![target.clone()];
        settings.jogg.webhook_secret = SecretSetting(Some(PUSH_SECRET.into()));
    })
    .await;
    let document = served_document(&app).await;
    // A terminal video, for redelivery and the refused cancel.
    app.sim.state.script("oa-done", Timeline::completes(0, 0));
    assert_eq!(
        app.enqueue(json!({"video_id": "oa-done"})).await.status,
        201
    );
    app.step(Millis::now()).await;
    assert_eq!(app.video("oa-done").await.json["state"], "completed");

    let big = |limit: usize| {
        let mut body = br#"{"video_id":"x","metadata":{"k":""#.to_vec();
        body.resize(limit + 16, b'a');
        body.extend_from_slice(br#""}}"#);
        body
    };
    let push_body = |event: &str, id: &str| serde_json::to_vec(&push(event, id)).unwrap();
    let cases = vec![
        Case::new("GET", "/openapi.json", 200).no_token(),
        Case::new("GET", "/healthz", 200).no_token(),
        Case::new("GET", "/readyz", 200).no_token(),
        Case::new("GET", "/metrics", 200).no_token(),
        // Track one.
        Case::new("POST", "/v1/videos", 201)
            .json(json!({"video_id": "oa-1", "callback_url": "https://app.example.com/h", "metadata": {"k": 1}})),
        Case::new("POST", "/v1/videos", 200)
            .json(json!({"video_id": "oa-1", "callback_url": "https://app.example.com/h", "metadata": {"k": 1}})),
        Case::new("POST", "/v1/videos", 409).json(json!({"video_id": "oa-1", "metadata": {"k": 2}})),
        Case::new("POST", "/v1/videos", 400).json(json!({"video_id": "../x"})),
        Case::new("POST", "/v1/videos", 400).json(json!({"video_id": "v", "extra": 1})),
        Case::new("POST", "/v1/videos", 400).raw("application/json", b"{".to_vec()),
        Case::new("POST", "/v1/videos", 401).json(json!({"video_id": "v"})).no_token(),
        Case::new("POST", "/v1/videos", 415).raw("text/plain", b"{}".to_vec()),
        Case::new("POST", "/v1/videos", 413).raw("application/json", big(64 * 1024)),
        // Track many.
        Case::new("POST", "/v1/videos/batch", 200).json(json!({"videos": [
            {"video_id": "oa-2"},
            {"video_id": "oa-2"},
            {"video_id": "oa-2", "metadata": {"k": 1}},
            {"video_id": 5},
            {"metadata": {}},
        ]})),
        Case::new("POST", "/v1/videos/batch", 400).json(json!({"items": []})),
        Case::new("POST", "/v1/videos/batch", 401).json(json!({"videos": []})).no_token(),
        Case::new("POST", "/v1/videos/batch", 415).raw("text/plain", b"{}".to_vec()),
        Case::new("POST", "/v1/videos/batch", 413).raw("application/json", big(1024 * 1024)),
        // List.
        Case::new("GET", "/v1/videos?limit=1", 200),
        Case::new("GET", "/v1/videos?state=completed", 200),
        Case::new("GET", "/v1/videos?state=bogus", 400),
        Case::new("GET", "/v1/videos?limit=0", 400),
        Case::new("GET", "/v1/videos?colour=red", 400),
        Case::new("GET", "/v1/videos", 401).no_token(),
        // Read one.
        Case::new("GET", "/v1/videos/oa-1", 200),
        Case::new("GET", "/v1/videos/oa-done", 200),
        Case::new("GET", "/v1/videos/ghost", 404),
        Case::new("GET", "/v1/videos/a%20b", 400),
        Case::new("GET", "/v1/videos/oa-1", 401).no_token(),
        // Send the callback again.
        Case::new("POST", "/v1/videos/oa-done/redeliver", 202),
        Case::new("POST", "/v1/videos/oa-1/redeliver", 409),
        Case::new("POST", "/v1/videos/ghost/redeliver", 404),
        Case::new("POST", "/v1/videos/a%20b/redeliver", 400),
        Case::new("POST", "/v1/videos/oa-done/redeliver", 401).no_token(),
        // Stop tracking.
        Case::new("DELETE", "/v1/videos/oa-2", 204),
        Case::new("DELETE", "/v1/videos/oa-2", 204),
        Case::new("DELETE", "/v1/videos/oa-done", 409),
        Case::new("DELETE", "/v1/videos/ghost", 404),
        Case::new("DELETE", "/v1/videos/a%20b", 400),
        Case::new("DELETE", "/v1/videos/oa-1", 401).no_token(),
        // Learned render times.
        Case::new("GET", "/v1/stats", 200),
        Case::new("GET", "/v1/stats", 401).no_token(),
        // JoggAI's pushes: no bearer token, a signature instead.
        Case::new("POST", "/webhooks/jogg", 200)
            .raw("application/json", push_body("generated_avatar_video_success", "oa-1"))
            .no_token()
            .signed(PUSH_SECRET),
        Case::new("POST", "/webhooks/jogg", 200)
            .raw("application/json", push_body("something_else", "oa-1"))
            .no_token()
            .signed(PUSH_SECRET),
        Case::new("POST", "/webhooks/jogg", 401)
            .raw("application/json", push_body("generated_avatar_video_success", "oa-1"))
            .no_token()
            .signed("another-secret-0123456789"),
        Case::new("POST", "/webhooks/jogg", 400)
            .raw("application/json", b"not json".to_vec())
            .no_token()
            .signed(PUSH_SECRET),
        Case::new("POST", "/webhooks/jogg", 413)
            .raw("application/json", big(64 * 1024))
            .no_token()
            .signed(PUSH_SECRET),
    ];
    let mut covered = Covered::new();
    check_cases(&app, &document, cases, &mut covered).await;
    app.stop().await;

    // A relay without a push secret, whose database file then disappears.
    let app = spawn_app().await;
    let cases = vec![
        Case::new("POST", "/webhooks/jogg", 404)
            .raw(
                "application/json",
                push_body("generated_avatar_video_success", "x"),
            )
            .no_token()
            .signed(PUSH_SECRET),
    ];
    check_cases(&app, &document, cases, &mut covered).await;
    let database = app.config.database.sqlite_path().unwrap().to_owned();
    std::fs::remove_file(&database).expect("remove the database file");
    let cases = vec![
        Case::new("GET", "/readyz", 503).no_token(),
        Case::new("GET", "/v1/videos/oa-1", 503),
        Case::new("GET", "/v1/videos", 503),
        Case::new("POST", "/v1/videos", 503).json(json!({"video_id": "oa-late"})),
        Case::new("GET", "/metrics", 0).no_token().any_status(),
    ];
    check_cases(&app, &document, cases, &mut covered).await;
    app.shutdown.cancel();

    // Every documented operation was tried.
    let tried: BTreeSet<(String, String)> = covered
        .iter()
        .map(|(method, path, _)| (method.clone(), path.clone()))
        .collect();
    assert_eq!(
        tried,
        documented_operations(&document).keys().cloned().collect()
    );
}

/// (METHOD, path) → the statuses the document lists.
fn documented_operations(document: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut operations = BTreeMap::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|status| status.parse().unwrap())
                .collect();
            operations.insert((method.to_ascii_uppercase(), path.clone()), statuses);
        }
    }
    operations
}

/// The README's endpoint table: (METHOD, path) → statuses.
fn readme_operations() -> BTreeMap<(String, String), BTreeSet<u16>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut operations = BTreeMap::new();
    for line in readme.lines() {
        // | `GET` | `/v1/videos` | 200, 400, 401, 503 | … |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') || !cells[2].starts_with("`/") {
            continue;
        }
        let method = cells[1].trim_matches('`');
        if !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) {
            continue;
        }
        let statuses = cells[3]
            .split(',')
            .map(|status| {
                status
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("README: {line}"))
            })
            .collect();
        let key = (method.to_owned(), cells[2].trim_matches('`').to_owned());
        assert!(
            operations.insert(key, statuses).is_none(),
            "README lists twice: {line}"
        );
    }
    operations
}

/// The paths of the router's `.route(…)` calls in `src/api/mod.rs`, those
/// of the `v1` router under `/v1`: what the relay serves, read from its
/// source rather than from the document.
fn router_paths() -> BTreeSet<String> {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let (_, router) = source
        .split_once("pub fn router(")
        .expect("the router function");
    let (router, _) = router.split_once("\n}\n").unwrap();
    let (v1, rest) = router
        .split_once(".nest(\"/v1\", v1)")
        .expect("the /v1 nest");
    let literals = |text: &str, prefix: &str| -> Vec<String> {
        text.split(".route(")
            .skip(1)
            .map(|call| {
                let start = call.find('"').unwrap() + 1;
                let end = start + call[start..].find('"').unwrap();
                format!("{prefix}{}", &call[start..end])
            })
            .collect()
    };
    let mut paths: BTreeSet<String> = literals(v1, "/v1").into_iter().collect();
    paths.extend(literals(rest, ""));
    // `push_routes`, merged into the main router.
    let (_, pushes) = source.split_once("fn push_routes(").unwrap();
    let (pushes, _) = pushes.split_once("\n}\n").unwrap();
    paths.extend(literals(pushes, ""));
    paths
}

/// The document lists exactly the README's endpoint table (paths, methods
/// and statuses) and the router's paths; on each documented path, every
/// method the document leaves out gets `405`, and none it lists does.
#[tokio::test]
async fn the_description_covers_every_route_and_agrees_with_the_readme() {
    let app = spawn_app().await;
    let document = served_document(&app).await;
    let documented = documented_operations(&document);
    assert_eq!(
        readme_operations(),
        documented,
        "README's endpoint table vs /openapi.json"
    );
    let paths: BTreeSet<String> = documented.keys().map(|(_, path)| path.clone()).collect();
    assert_eq!(
        router_paths(),
        paths,
        "the router's routes vs /openapi.json"
    );

    for path in &paths {
        let concrete = path.replace("{video_id}", "probe-id");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let reply = crate::helpers::raw_request(&app.base, method, &concrete).await;
            let listed = documented.contains_key(&(method.to_owned(), path.clone()));
            if listed {
                assert_ne!(reply.status, 405, "{method} {path}: {reply:?}");
                assert_ne!(
                    reply.json["error"]["message"], "no such route",
                    "{method} {path}"
                );
            } else {
                assert_eq!(
                    reply.status, 405,
                    "{method} {path} is not documented: {reply:?}"
                );
            }
        }
    }
    app.stop().await;
}
