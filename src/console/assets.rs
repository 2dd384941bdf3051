//! The console's one asset, embedded in the binary: nothing is fetched
//! from anywhere but the relay itself.

use axum::http::header;
use axum::response::IntoResponse;

/// The stylesheet's path under `/ui`.
pub const CSS_PATH: &str = "/ui/assets/console.css";

/// The stylesheet.
const CSS: &str = include_str!("console.css");

/// `GET /ui/assets/console.css`.
pub async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}
