//! Signature checks independent of `jogg_relay::delivery::signing`: the
//! Standard Webhooks reference implementation (`standardwebhooks`) and an
//! HMAC-SHA256 from another crate (`hmac-sha256`, not RustCrypto's `hmac`
//! the relay signs with), each pinned to published test vectors here. The
//! integration tests verify what the receiver recorded (raw body and
//! headers) with these, never with the relay's own verification.

use jogg_relay::sim::Received;
use standardwebhooks::Webhook;

/// Lowercase hex HMAC-SHA256 of `body` keyed with the bytes of `key`.
pub fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    hmac_sha256::HMAC::mac(body, key)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn header<'a>(callback: &'a Received, name: &str) -> Option<&'a str> {
    callback.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the `webhook-*` headers are a valid Standard Webhooks signature
/// of the raw body with `secret` (`whsec_…`), computed by the reference
/// implementation, and `webhook-id` is the body's `event_id`.
pub fn standard_ok(secret: &str, callback: &Received) -> bool {
    let (Some(id), Some(timestamp), Some(signature)) = (
        header(callback, "webhook-id"),
        header(callback, "webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header(callback, "webhook-signature"),
    ) else {
        return false;
    };
    let expected = Webhook::new(secret)
        .expect("a valid secret")
        .sign(id, timestamp, &callback.raw_body)
        .expect("a UTF-8 body");
    callback.body["event_id"].as_str() == Some(id)
        && signature.split(' ').any(|candidate| candidate == expected)
}

/// Whether `X-Webhook-Signature` is the hex HMAC-SHA256 of the raw body
/// keyed with the whole secret string.
pub fn joggai_ok(secret: &str, callback: &Received) -> bool {
    header(callback, "x-webhook-signature")
        == Some(&hmac_hex(secret.as_bytes(), &callback.raw_body))
}

/// Both signatures verify with `secret`.
pub fn verified(secret: &str, callback: &Received) -> bool {
    standard_ok(secret, callback) && joggai_ok(secret, callback)
}

/// The oracles themselves against published vectors, and the relay's
/// signing against the oracles.
mod vectors {
    use jogg_relay::config::WebhookSecret;
    use jogg_relay::delivery::signing;
    use secrecy::SecretString;

    use super::*;

    /// RFC 4231 §4.2, §4.3 and §4.7 (a key longer than the block size).
    #[test]
    fn hmac_oracle_matches_rfc_4231() {
        assert_eq!(
            hmac_hex(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_hex(
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
            ),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        );
    }

    /// (secret, id, timestamp, body, signature) published by Standard
    /// Webhooks: the specification's example, and the reference libraries'
    /// signing test.
    const STANDARD: &[(&str, &str, i64, &str, &str)] = &[
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    fn parse(secret: &str) -> WebhookSecret {
        WebhookSecret::parse(SecretString::from(secret), "callbacks.secret").unwrap()
    }

    #[test]
    fn standard_oracle_and_relay_match_the_published_vectors() {
        for (secret, id, timestamp, body, signature) in STANDARD {
            let reference = Webhook::new(secret).unwrap();
            assert_eq!(
                reference.sign(id, *timestamp, body.as_bytes()).unwrap(),
                *signature
            );
            assert_eq!(
                signing::standard_signature(&parse(secret), id, *timestamp, body.as_bytes()),
                *signature,
                "the relay's layout for {id}"
            );
        }
    }

    #[test]
    fn joggai_signature_matches_the_oracle() {
        for (secret, _, _, body, _) in STANDARD {
            assert_eq!(
                signing::joggai_signature(&parse(secret), body.as_bytes()),
                hmac_hex(secret.as_bytes(), body.as_bytes())
            );
        }
    }
}
