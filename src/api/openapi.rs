//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API
//! (README, "HTTP API").
//!
//! It is generated from the handlers' own types (their `ToSchema` derives)
//! and the `#[utoipa::path]` attribute beside each handler, which lists
//! every status the handler can answer and the error codes each carries.
//! The repository keeps the same document as `openapi.json`; a test holds
//! the served document equal to that file and checks the document against
//! real requests to a running relay.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{stats, videos, webhook};

/// Everything the document's root says about the API as a whole: what no
/// single operation can (unknown routes and methods, the panic net, the
/// second listener).
const DESCRIPTION: &str = "\
The HTTP API of jogg-relay: it takes JoggAI video ids, polls JoggAI for \
them and sends signed callbacks when they finish. The README's \"HTTP API\" \
section explains each operation.

Every error, on every route, is `{\"error\":{\"code\":\"snake_case\",\
\"message\":\"…\"}}` (`ErrorBody`); each response lists the codes it can \
carry. Besides those: a path no route serves is `404 not_found`; a method \
a path does not support is `405 method_not_allowed` (with `Allow`); a \
handler panic, a bug, is `500 internal`.

With `server.token` set, every `/v1/*` request needs \
`Authorization: Bearer <token>` (security scheme `bearer`); without it \
(the relay then listens on loopback only) no request needs one. \
`POST /webhooks/jogg` is authenticated by its `X-Webhook-Signature` \
instead, and is also the only route of the `server.webhook_bind` listener.";

/// The description, derived from the handlers' annotations and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "jogg-relay", description = DESCRIPTION),
    paths(
        videos::enqueue,
        videos::list,
        videos::enqueue_batch,
        videos::show,
        videos::cancel,
        videos::redeliver,
        stats::show,
        webhook::receive,
        super::healthz,
        super::readyz,
        super::metrics,
        serve,
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "videos", description = "Tracking videos and what was learned of them (`/v1/*`)."),
        (name = "pushes", description = "JoggAI's own webhook, taken as a hint."),
        (name = "operations", description = "Health, readiness, metrics and this description; no token needed."),
    )
)]
struct ApiDoc;

/// Adds the `bearer` security scheme the `/v1/*` operations name.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "`server.token`, required on `/v1/*` when configured; the scheme \
                 name in any case, one or more spaces before the token.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The description as a value.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The description as served and as committed in `openapi.json`:
/// pretty-printed, with a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the description serializes: it holds only strings, numbers and maps");
    text.push('\n');
    text
}

/// `GET /openapi.json`: the description, built once per process.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This description",
    description = "The OpenAPI 3.1 description of the HTTP API; the repository keeps the same document as `openapi.json`.",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 description.", body = Object))
)]
pub async fn serve() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(document_json).as_str();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}
