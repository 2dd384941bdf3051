//! CSRF protection: every state-changing form carries its session's token
//! in a hidden `csrf` field, compared in constant time. `SameSite=Strict`
//! already keeps the cookie off other sites' requests; the token also
//! covers browsers that ignore the attribute.

/// The form field that carries the token.
pub const FIELD: &str = "csrf";

/// Whether `presented` (a form's field, if sent) is the session's token.
///
/// Both are hashed first, as the bearer token is (`api`'s comparison), so
/// the comparison runs over 32 bytes whatever the lengths.
pub fn verify(expected: &str, presented: Option<&str>) -> bool {
    use sha2::{Digest as _, Sha256};
    use subtle::ConstantTimeEq as _;
    let Some(presented) = presented else {
        return false;
    };
    Sha256::digest(presented.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

/// The value of `name` in a form body (`application/x-www-form-urlencoded`);
/// the first, when repeated.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sessions_token_passes() {
        let token = "a".repeat(64);
        assert!(verify(&token, Some(&token)));
        assert!(!verify(&token, None));
        assert!(!verify(&token, Some("")));
        assert!(!verify(&token, Some(&"a".repeat(63))));
        assert!(!verify(&token, Some(&format!("{}b", "a".repeat(63)))));
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"csrf=ab%2Bc&token=x+y&csrf=second";
        assert_eq!(form_field(body, "csrf").as_deref(), Some("ab+c"));
        assert_eq!(form_field(body, "token").as_deref(), Some("x y"));
        assert_eq!(form_field(body, "other"), None);
    }
}
