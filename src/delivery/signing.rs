//! Callback signatures (README, "Verifying signatures"): Standard Webhooks
//! and JoggAI style.
//! Used by the delivery worker to sign and by the simulator's receiver to
//! verify, so both sides share one implementation of the byte layout.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::WebhookSecret;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The Standard Webhooks `webhook-signature` value:
/// `v1,` + base64(HMAC-SHA256(decoded key, "{id}.{timestamp}.{body}")).
pub fn standard_signature(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let digest = hmac(
        secret.key(),
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The JoggAI-style `X-Webhook-Signature`: lowercase hex HMAC-SHA256 of the
/// body, keyed with the whole secret string.
pub fn joggai_signature(secret: &WebhookSecret, body: &[u8]) -> String {
    let digest = joggai_digest(secret.full().expose_secret().as_bytes(), body);
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes a JoggAI-style signature writes in hex: HMAC-SHA256 of `body`
/// keyed with `key`, the secret string's bytes. Shared by the callbacks the
/// relay signs and the pushes from JoggAI it verifies.
pub fn joggai_digest(key: &[u8], body: &[u8]) -> Vec<u8> {
    hmac(key, &[body])
}

/// Checks a `webhook-signature` header (which may list several
/// space-separated signatures) in constant time per candidate.
pub fn verify_standard(
    secret: &WebhookSecret,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    let expected = standard_signature(secret, id, timestamp, body);
    header
        .split_whitespace()
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

/// Checks an `X-Webhook-Signature` header in constant time.
pub fn verify_joggai(secret: &WebhookSecret, body: &[u8], header: &str) -> bool {
    let expected = joggai_signature(secret, body);
    constant_time_eq(
        header.trim().to_ascii_lowercase().as_bytes(),
        expected.as_bytes(),
    )
}

/// `subtle`'s constant-time comparison (a different length is `false` at
/// once; lengths of signatures are public).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    /// The Standard Webhooks specification's published example.
    fn spec_secret() -> WebhookSecret {
        WebhookSecret::parse(
            SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "callbacks.secret",
        )
        .unwrap()
    }

    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn standard_webhooks_known_answer() {
        let signature = standard_signature(
            &spec_secret(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            BODY,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn joggai_style_known_answer() {
        // Computed independently with Python's hmac module.
        assert_eq!(
            joggai_signature(&spec_secret(), BODY),
            "80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c"
        );
    }

    #[test]
    fn verification_accepts_the_right_signature_only() {
        let secret = spec_secret();
        let id = "evt_1";
        let good = standard_signature(&secret, id, 1000, BODY);
        assert!(verify_standard(&secret, id, 1000, BODY, &good));
        assert!(verify_standard(
            &secret,
            id,
            1000,
            BODY,
            &format!("v1,bogus= {good}")
        ));
        assert!(
            !verify_standard(&secret, id, 1001, BODY, &good),
            "timestamp is signed"
        );
        assert!(
            !verify_standard(&secret, "evt_2", 1000, BODY, &good),
            "id is signed"
        );
        assert!(
            !verify_standard(&secret, id, 1000, b"{}", &good),
            "body is signed"
        );
        let hex = joggai_signature(&secret, BODY);
        assert!(verify_joggai(&secret, BODY, &hex));
        assert!(verify_joggai(&secret, BODY, &hex.to_uppercase()));
        assert!(!verify_joggai(&secret, b"{}", &hex));
    }
}
