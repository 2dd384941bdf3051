//! Fuzzes enqueue request parsing as the API does it: JSON first, then the
//! item validation; an accepted id must be a valid video id.
#![no_main]

use jogg_relay::api::videos::parse_new_video;
use jogg_relay::domain::{Millis, VideoId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let items = match value.get("videos").and_then(|v| v.as_array()) {
        Some(items) => items.clone(),
        None => vec![value],
    };
    for item in &items {
        for allow_private in [false, true] {
            if let Ok(video) = parse_new_video(item, Millis(0), allow_private) {
                assert!(VideoId::parse(video.video_id.as_str()).is_ok());
            }
        }
    }
});
