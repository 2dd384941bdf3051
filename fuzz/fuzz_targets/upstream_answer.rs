//! Fuzzes the classification of upstream answers: any status, any
//! `Retry-After`, any body must give an answer, never a panic.
#![no_main]

use std::time::{Duration, SystemTime};

use jogg_relay::jogg::answer::classify;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]) % 600;
    let split = (data[2] as usize).min(data.len() - 3);
    let (retry_after, body) = data[3..].split_at(split);
    let retry_after = std::str::from_utf8(retry_after).ok();
    let _ = classify(status, retry_after, body, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
});
