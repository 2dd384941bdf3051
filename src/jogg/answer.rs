//! What an upstream answer means: lenient parsing of the JoggAI envelope and
//! the mapping of both error layers (HTTP status, business `code`) to a
//! [`PollAnswer`].
//!
//! Everything here is pure (bytes and status in, answer out), so it is unit
//! tested exhaustively and is the natural fuzz target for hostile bodies.

use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Business codes JoggAI documents.
pub mod code {
    /// Success.
    pub const OK: i64 = 0;
    /// The video does not exist (yet).
    pub const NOT_FOUND: i64 = 10104;
    /// The API key is invalid.
    pub const INVALID_API_KEY: i64 = 10105;
    /// The account has run out of credit.
    pub const INSUFFICIENT_CREDIT: i64 = 18020;
    /// The key has no permission for this call.
    pub const NO_PERMISSION: i64 = 18025;
    /// The request was malformed (for us: the id is not a JoggAI id).
    pub const PARAMETER_ERROR: i64 = 40000;
    /// Rate limited.
    pub const RATE_LIMITED: i64 = 429;
    /// Upstream internal error.
    pub const SYSTEM_ERROR: i64 = 50000;
}

/// How the relay reads an upstream status string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// `pending`, `processing`: keep polling.
    InProgress,
    /// `completed`, `success`, `succeeded`.
    Completed,
    /// `failed`, `fail`, `error`.
    Failed,
    /// Anything else: recorded as-is, polling goes on (never guess "failed").
    Unknown,
}

impl StatusClass {
    /// Classifies an upstream status string (case-insensitively).
    pub fn of(status: &str) -> Self {
        match status.trim().to_ascii_lowercase().as_str() {
            "pending" | "processing" => StatusClass::InProgress,
            "completed" | "success" | "succeeded" => StatusClass::Completed,
            "failed" | "fail" | "error" => StatusClass::Failed,
            _ => StatusClass::Unknown,
        }
    }
}

/// A successful answer: the video's status and whatever else upstream said.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoStatus {
    /// The video the answer says it is about (`data.video_id`), when given.
    pub video_id: Option<String>,
    /// The status string exactly as upstream sent it.
    pub status: String,
    /// How the relay reads it.
    pub class: StatusClass,
    /// Rendered video URL: only an absolute `http`/`https` URL.
    pub video_url: Option<String>,
    /// Cover image URL: only an absolute `http`/`https` URL.
    pub cover_url: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: Option<i64>,
    /// Length in seconds.
    pub duration: Option<f64>,
    /// Error code of a failed render.
    pub error_code: Option<String>,
    /// Error message of a failed render.
    pub error_message: Option<String>,
    /// URL fields that were present but not usable, and so dropped.
    pub rejected_urls: Vec<RejectedUrl>,
}

/// A `video_url` or `cover_url` that is not an absolute `http`/`https` URL
/// (`javascript:`, `data:`, relative, garbage): it is neither stored nor
/// sent, only logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedUrl {
    /// `video_url` or `cover_url`.
    pub field: &'static str,
    /// The start of the value, for the log ([`MAX_LOGGED_CHARS`] characters).
    pub value: String,
}

/// How much of an upstream value is kept for a log line.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Why polling as a whole is paused until a probe succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseReason {
    /// Business code 10105 or HTTP 401.
    InvalidApiKey,
    /// Business code 18025 or HTTP 403.
    NoPermission,
    /// Business code 18020.
    InsufficientCredit,
}

impl PauseReason {
    /// Stable snake_case name, shown by `/readyz` and in logs.
    /// The reason named `name` (as [`PauseReason::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            PauseReason::InvalidApiKey,
            PauseReason::NoPermission,
            PauseReason::InsufficientCredit,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::InvalidApiKey => "invalid_api_key",
            PauseReason::NoPermission => "no_permission",
            PauseReason::InsufficientCredit => "insufficient_credit",
        }
    }
}

/// Everything one poll can tell the relay, after both error layers.
#[derive(Debug, Clone, PartialEq)]
pub enum PollAnswer {
    /// Code 0 with a status.
    Status(VideoStatus),
    /// Code 10104: not found (yet).
    NotFound,
    /// Code 40000: upstream rejects the id.
    InvalidId,
    /// The key or account cannot poll at all: pause everything.
    Paused(PauseReason),
    /// HTTP or business 429: pause everything, for `retry_after` when given.
    RateLimited {
        /// Upstream's `Retry-After`, when it sent a usable one.
        retry_after: Option<Duration>,
    },
    /// Anything else (5xx, 50000, timeouts, garbage, unknown codes): this
    /// video backs off, nothing else changes. The text is for logs and never
    /// contains the API key.
    Transient(String),
    /// A status answer about another video than the one asked for (its
    /// `data.video_id` differs: a proxy or cache mix-up upstream). Nothing in
    /// it is trusted; like a transient error, this video backs off.
    Misrouted {
        /// The id the answer names (at most [`MAX_LOGGED_CHARS`] characters).
        answered: String,
    },
}

impl PollAnswer {
    /// Checks a status answer against the id that was asked for: one whose
    /// `data.video_id` is present and different becomes
    /// [`PollAnswer::Misrouted`]. An answer without `video_id` is accepted
    /// (JoggAI's documented body always has it, but leniency costs nothing
    /// here: the request named the video).
    pub fn for_video(self, requested: &str) -> PollAnswer {
        match self {
            PollAnswer::Status(VideoStatus {
                video_id: Some(answered),
                ..
            }) if answered != requested => PollAnswer::Misrouted {
                answered: truncated(&answered),
            },
            other => other,
        }
    }
}

/// Classifies an HTTP answer. `retry_after` is the raw `Retry-After` header.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> PollAnswer {
    match status {
        429 => {
            return PollAnswer::RateLimited {
                retry_after: retry_after.and_then(|value| parse_retry_after(value, now)),
            };
        }
        401 => return PollAnswer::Paused(PauseReason::InvalidApiKey),
        403 => return PollAnswer::Paused(PauseReason::NoPermission),
        200..=299 => {}
        other => return PollAnswer::Transient(format!("HTTP {other}")),
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
        return PollAnswer::Transient(format!("non-JSON body ({} bytes)", body.len()));
    };
    let Some(code) = envelope.get("code").and_then(integer) else {
        return PollAnswer::Transient("answer without a numeric code".into());
    };
    match code {
        code::OK => parse_status(&envelope),
        code::NOT_FOUND => PollAnswer::NotFound,
        code::PARAMETER_ERROR => PollAnswer::InvalidId,
        code::INVALID_API_KEY => PollAnswer::Paused(PauseReason::InvalidApiKey),
        code::NO_PERMISSION => PollAnswer::Paused(PauseReason::NoPermission),
        code::INSUFFICIENT_CREDIT => PollAnswer::Paused(PauseReason::InsufficientCredit),
        code::RATE_LIMITED => PollAnswer::RateLimited {
            retry_after: retry_after.and_then(|value| parse_retry_after(value, now)),
        },
        code::SYSTEM_ERROR => PollAnswer::Transient("upstream system error (50000)".into()),
        other => PollAnswer::Transient(format!("unknown business code {other}")),
    }
}

/// Latest plausible `created_at` (unix seconds): 9999-12-31T23:59:59Z.
const MAX_CREATED_AT: i64 = 253_402_300_799;

/// Reads `data` of a code-0 answer, tolerating missing and mistyped fields
/// everywhere except the status itself.
fn parse_status(envelope: &Value) -> PollAnswer {
    let data = envelope.get("data").unwrap_or(&Value::Null);
    let Some(status) = data.get("status").and_then(Value::as_str) else {
        return PollAnswer::Transient("code 0 without data.status".into());
    };
    let error = data.get("error").unwrap_or(&Value::Null);
    let mut rejected_urls = Vec::new();
    let mut url = |field: &'static str| {
        let value = data.get(field)?;
        let usable = value.as_str().filter(|url| is_absolute_http_url(url));
        if usable.is_none() && !is_blank(value) {
            // A string as its text, anything else as JSON.
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            rejected_urls.push(RejectedUrl {
                field,
                value: truncated(&shown),
            });
        }
        usable.map(str::to_owned)
    };
    let video_url = url("video_url");
    let cover_url = url("cover_url");
    PollAnswer::Status(VideoStatus {
        // A number is accepted as the id's text; `null` or `""` count as
        // absent, anything else must equal the requested id.
        video_id: data.get("video_id").and_then(|id| match id {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }),
        status: status.to_owned(),
        class: StatusClass::of(status),
        video_url,
        cover_url,
        // Unix seconds; anything outside what a date can be (milliseconds
        // sent by mistake, garbage) is dropped rather than stored.
        created_at: data
            .get("created_at")
            .and_then(integer)
            .filter(|seconds| (0..=MAX_CREATED_AT).contains(seconds)),
        duration: data.get("duration").and_then(number),
        error_code: error.get("code").and_then(text),
        error_message: non_empty_string(error.get("message")),
        rejected_urls,
    })
}

/// Whether `raw` is an absolute `http`/`https` URL with a host, written out
/// as such: no surrounding or embedded whitespace, control characters or
/// backslashes (which a lenient parser would quietly strip, encode or turn
/// into `/`), and an explicit `scheme://host` (not `https:host`, which the
/// parser would repair). The value is kept as sent, so a signed CDN link is
/// not re-encoded.
fn is_absolute_http_url(raw: &str) -> bool {
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &raw[7..]
    } else if lower.starts_with("https://") {
        &raw[8..]
    } else {
        return false;
    };
    // The parser would also repair `https:///host` and read `\` as `/`;
    // a receiver might not, so such values are not URLs here.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return false;
    }
    if raw
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return false;
    }
    // Scheme and host are checked above; the parser checks the rest (the
    // host's syntax, the port, percent-encoding).
    reqwest::Url::parse(raw).is_ok()
}

/// `null`, `""` or whitespace: a field upstream left empty, not a bad URL.
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// The first [`MAX_LOGGED_CHARS`] characters of `value`.
fn truncated(value: &str) -> String {
    value.chars().take(MAX_LOGGED_CHARS).collect()
}

/// An integer sent as a JSON number or a numeric string.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A float sent as a JSON number or a numeric string.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// A string or number rendered as text (error codes come as either).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn non_empty_string(value: Option<&Value>) -> Option<String> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `Retry-After` as delay-seconds or an HTTP date; a date in the past means
/// "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> PollAnswer {
        classify(200, None, body.as_bytes(), SystemTime::now())
    }

    #[test]
    fn whole_numbers_sent_as_floats_are_codes_and_fractions_are_not() {
        assert_eq!(
            answer(r#"{"code":10104.0,"msg":"x"}"#),
            PollAnswer::NotFound,
            "a whole float is the code it spells"
        );
        assert!(
            matches!(
                answer(r#"{"code":0.5,"data":{"status":"completed"}}"#),
                PollAnswer::Transient(_)
            ),
            "a fraction is no code, so nothing is decided"
        );
        assert!(matches!(
            answer(r#"{"code":1e300,"data":{"status":"completed"}}"#),
            PollAnswer::Transient(_)
        ));
    }

    #[test]
    fn numbers_and_error_codes_sent_as_text_are_read() {
        let body = r#"{"code":0,"data":{"status":"failed","duration":" 12.5 ",
            "error":{"code":"E_RENDER","message":"m"}}}"#;
        let PollAnswer::Status(status) = answer(body) else {
            panic!()
        };
        assert_eq!(status.duration, Some(12.5));
        assert_eq!(status.error_code.as_deref(), Some("E_RENDER"));
        let body = r#"{"code":0,"data":{"status":"failed","error":{"code":"","message":"m"}}}"#;
        let PollAnswer::Status(status) = answer(body) else {
            panic!()
        };
        assert_eq!(status.error_code, None, "an empty code is no code");
    }

    #[test]
    fn every_status_spelling() {
        for (status, class) in [
            ("pending", StatusClass::InProgress),
            ("processing", StatusClass::InProgress),
            ("completed", StatusClass::Completed),
            ("success", StatusClass::Completed),
            ("succeeded", StatusClass::Completed),
            ("SUCCESS", StatusClass::Completed),
            ("failed", StatusClass::Failed),
            ("fail", StatusClass::Failed),
            ("error", StatusClass::Failed),
            ("rendering", StatusClass::Unknown),
            ("", StatusClass::Unknown),
        ] {
            assert_eq!(StatusClass::of(status), class, "{status}");
        }
    }

    #[test]
    fn created_at_outside_any_date_is_dropped() {
        for (raw, expected) in [
            ("1732806631", Some(1_732_806_631)),
            ("253402300799", Some(253_402_300_799)),
            ("1732806631000", None),
            ("-5", None),
        ] {
            let body = format!(r#"{{"code":0,"data":{{"status":"pending","created_at":{raw}}}}}"#);
            let PollAnswer::Status(status) = answer(&body) else {
                panic!("{body}")
            };
            assert_eq!(status.created_at, expected, "{raw}");
        }
    }

    #[test]
    fn full_answer_with_extras_is_parsed() {
        let body = r#"{"code":0,"msg":"ok","rid":"r-1","data":{"video_id":"v1","status":"completed",
            "video_url":"https://cdn.example/v1.mp4","cover_url":"https://cdn.example/v1.jpg",
            "created_at":1640995200,"duration":12.5,"new_field":{"x":1}}}"#;
        let PollAnswer::Status(status) = answer(body) else {
            panic!()
        };
        assert_eq!(status.class, StatusClass::Completed);
        assert_eq!(
            status.video_url.as_deref(),
            Some("https://cdn.example/v1.mp4")
        );
        assert_eq!(status.created_at, Some(1_640_995_200));
        assert_eq!(status.duration, Some(12.5));
    }

    #[test]
    fn missing_and_mistyped_optional_fields_are_tolerated() {
        let body = r#"{"code":"0","data":{"status":"failed","video_url":7,"created_at":"1640995200",
            "duration":"x","error":{"code":4001,"message":"bad avatar"}}}"#;
        let PollAnswer::Status(status) = answer(body) else {
            panic!()
        };
        assert_eq!(status.class, StatusClass::Failed);
        assert_eq!(status.video_url, None);
        assert_eq!(status.created_at, Some(1_640_995_200));
        assert_eq!(status.duration, None);
        assert_eq!(status.error_code.as_deref(), Some("4001"));
        assert_eq!(status.error_message.as_deref(), Some("bad avatar"));
        let PollAnswer::Status(bare) = answer(r#"{"code":0,"data":{"status":"pending"}}"#) else {
            panic!()
        };
        assert_eq!(bare.video_url, None);
    }

    #[test]
    fn an_answer_about_another_video_is_misrouted() {
        let body = r#"{"code":0,"data":{"video_id":"B","status":"completed",
            "video_url":"https://cdn.example/B.mp4"}}"#;
        assert_eq!(
            answer(body).for_video("A"),
            PollAnswer::Misrouted {
                answered: "B".into()
            }
        );
        let PollAnswer::Status(status) = answer(body).for_video("B") else {
            panic!("the right id is accepted")
        };
        assert_eq!(status.video_id.as_deref(), Some("B"));
        // The comparison is exact: ids are case-sensitive.
        assert!(matches!(
            answer(body).for_video("b"),
            PollAnswer::Misrouted { .. }
        ));
        // A numeric id is compared as its text.
        let numeric = r#"{"code":0,"data":{"video_id":42,"status":"pending"}}"#;
        assert!(matches!(
            answer(numeric).for_video("42"),
            PollAnswer::Status(_)
        ));
        assert!(matches!(
            answer(numeric).for_video("43"),
            PollAnswer::Misrouted { .. }
        ));
        // A hostile id is cut short for the log.
        let long = format!(
            r#"{{"code":0,"data":{{"video_id":"{}","status":"pending"}}}}"#,
            "x".repeat(10_000)
        );
        let PollAnswer::Misrouted { answered } = answer(&long).for_video("A") else {
            panic!()
        };
        assert_eq!(answered.len(), MAX_LOGGED_CHARS);
    }

    #[test]
    fn an_answer_without_video_id_is_accepted() {
        for body in [
            r#"{"code":0,"data":{"status":"completed"}}"#,
            r#"{"code":0,"data":{"video_id":null,"status":"completed"}}"#,
            r#"{"code":0,"data":{"video_id":"","status":"completed"}}"#,
        ] {
            let PollAnswer::Status(status) = answer(body).for_video("A") else {
                panic!("{body}")
            };
            assert_eq!(status.class, StatusClass::Completed);
        }
        // Other answers carry no id to check.
        assert_eq!(
            answer(r#"{"code":10104}"#).for_video("A"),
            PollAnswer::NotFound
        );
    }

    #[test]
    fn only_absolute_http_urls_are_kept() {
        let with_urls = |video_url: &str, cover_url: &str| {
            let body = format!(
                r#"{{"code":0,"data":{{"status":"completed","video_url":{video_url},"cover_url":{cover_url}}}}}"#
            );
            let PollAnswer::Status(status) = answer(&body) else {
                panic!("{body}")
            };
            status
        };
        for good in [
            "https://cdn.example/v.mp4",
            "http://cdn.example:8080/v.mp4?sig=a%2Fb&x=1#t",
            "HTTPS://CDN.example/V.mp4",
        ] {
            let status = with_urls(&format!("{good:?}"), &format!("{good:?}"));
            assert_eq!(status.video_url.as_deref(), Some(good), "kept as sent");
            assert_eq!(status.cover_url.as_deref(), Some(good));
            assert!(status.rejected_urls.is_empty());
        }
        for bad in [
            r#""javascript:alert(1)""#,
            r#""data:text/html,<script>alert(1)</script>""#,
            r#""/relative/v.mp4""#,
            r#""cdn.example/v.mp4""#,
            r#""https:cdn.example/v.mp4""#,
            r#""https:///v.mp4""#,
            r#""https://:443/v.mp4""#,
            r#""https://user@/v.mp4""#,
            r#""https://cdn.example\\evil.example/v.mp4""#,
            r#""https://cdn.example:99999/v.mp4""#,
            r#""https://[::1/v.mp4""#,
            r#""ftp://cdn.example/v.mp4""#,
            r#""file:///etc/passwd""#,
            r#"" https://cdn.example/v.mp4""#,
            r#""https://cdn.example/a b.mp4""#,
            r#""https://cdn.example/v.mp4\n""#,
            r#""not a url at all""#,
            "42",
            r#"{"href":"https://cdn.example/v.mp4"}"#,
        ] {
            let status = with_urls(bad, bad);
            assert_eq!(status.class, StatusClass::Completed, "still completed");
            assert_eq!((status.video_url, status.cover_url), (None, None), "{bad}");
            let fields: Vec<&str> = status.rejected_urls.iter().map(|r| r.field).collect();
            assert_eq!(fields, ["video_url", "cover_url"], "{bad}");
        }
        // The log shows a string's text, anything else as JSON.
        let status = with_urls(r#""javascript:alert(1)""#, "42");
        assert_eq!(
            status.rejected_urls,
            [
                RejectedUrl {
                    field: "video_url",
                    value: "javascript:alert(1)".into()
                },
                RejectedUrl {
                    field: "cover_url",
                    value: "42".into()
                }
            ]
        );
        // Empty values are absent, not rejected.
        let status = with_urls("null", r#""""#);
        assert_eq!((status.video_url, status.cover_url), (None, None));
        assert!(status.rejected_urls.is_empty());
    }

    #[test]
    fn business_codes() {
        let with_code = |code: i64| answer(&format!(r#"{{"code":{code},"msg":"x"}}"#));
        assert_eq!(with_code(10104), PollAnswer::NotFound);
        assert_eq!(with_code(40000), PollAnswer::InvalidId);
        assert_eq!(
            with_code(10105),
            PollAnswer::Paused(PauseReason::InvalidApiKey)
        );
        assert_eq!(
            with_code(18025),
            PollAnswer::Paused(PauseReason::NoPermission)
        );
        assert_eq!(
            with_code(18020),
            PollAnswer::Paused(PauseReason::InsufficientCredit)
        );
        assert_eq!(
            with_code(429),
            PollAnswer::RateLimited { retry_after: None }
        );
        assert!(matches!(with_code(50000), PollAnswer::Transient(_)));
        assert!(matches!(with_code(77777), PollAnswer::Transient(_)));
    }

    #[test]
    fn http_layer() {
        let now = SystemTime::now();
        assert_eq!(
            classify(429, Some("7"), b"", now),
            PollAnswer::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(401, None, b"", now),
            PollAnswer::Paused(PauseReason::InvalidApiKey)
        );
        assert_eq!(
            classify(403, None, b"", now),
            PollAnswer::Paused(PauseReason::NoPermission)
        );
        for status in [500, 502, 503, 404, 418] {
            assert!(matches!(
                classify(status, None, b"{}", now),
                PollAnswer::Transient(_)
            ));
        }
        for garbage in [
            "<html>oops</html>",
            "",
            "{\"code\":",
            "[]",
            "{\"code\":0}",
            "{\"code\":0,\"data\":[]}",
        ] {
            assert!(
                matches!(answer(garbage), PollAnswer::Transient(_)),
                "{garbage}"
            );
        }
    }

    #[test]
    fn retry_after_as_seconds_or_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
