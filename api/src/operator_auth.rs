//! HTTP Basic authentication of operators, separate from the token that VISA sends.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::app::AppState;

/// Shortest operator password accepted from the password file.
const MIN_PASSWORD_LENGTH: usize = 12;
const CHALLENGE: &str = "Basic realm=\"VISA provider operators\", charset=\"UTF-8\"";

/// The operator's user name and password, kept only as SHA-256 digests.
pub struct OperatorCredentials {
    user_digest: [u8; 32],
    password_digest: [u8; 32],
}

impl OperatorCredentials {
    pub fn new(user: &str, password: &str) -> anyhow::Result<Self> {
        if user.is_empty() || user.contains(':') {
            anyhow::bail!(
                "operator user name {user:?} is invalid: use a non-empty name without ':'"
            );
        }
        if password.chars().count() < MIN_PASSWORD_LENGTH {
            anyhow::bail!(
                "the operator password is shorter than {MIN_PASSWORD_LENGTH} characters: write a \
                 longer one"
            );
        }
        Ok(Self {
            user_digest: Sha256::digest(user.as_bytes()).into(),
            password_digest: Sha256::digest(password.as_bytes()).into(),
        })
    }

    /// Reads the password from the first line of `path`.
    pub fn load(user: &str, path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            anyhow::anyhow!(
                "failed to read the operator password file {}: {error}",
                path.display()
            )
        })?;
        let password = text.lines().next().unwrap_or_default().trim();
        Self::new(user, password)
            .map_err(|error| anyhow::anyhow!("{error} (in {})", path.display()))
    }

    /// Checks an `Authorization` header value. Both digests are always compared, in constant
    /// time, so the time taken does not depend on which part differs or where.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some((user, password)) = parse_basic(authorization) else {
            return false;
        };
        let user_digest: [u8; 32] = Sha256::digest(user.as_bytes()).into();
        let password_digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let equal =
            user_digest.ct_eq(&self.user_digest) & password_digest.ct_eq(&self.password_digest);
        equal.into()
    }
}

/// Splits `Basic base64(user:password)` into the user name and the password.
fn parse_basic(authorization: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(authorization).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Lets a request through only with the operator's credentials. VISA's `X-Auth-Token` opens
/// nothing here. Without configured credentials the operator pages return 404.
pub async fn require_operator(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(credentials) = state.operator.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            "operator pages are disabled: start the API with --operator-password-file\n",
        )
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match given {
        Some(value) if credentials.accepts(value) => next.run(request).await,
        Some(_) => {
            warn!(path = %request.uri().path(), "operator authentication failed");
            challenge()
        }
        None => challenge(),
    }
}

fn challenge() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, CHALLENGE)],
        "operator credentials required\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_and_password: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(user_and_password)).into_bytes()
    }

    #[test]
    fn accepts_only_exact_credentials() {
        let credentials = OperatorCredentials::new("operator", "correct-horse-battery").unwrap();
        assert!(credentials.accepts(&basic("operator:correct-horse-battery")));
        assert!(credentials.accepts(b"basic b3BlcmF0b3I6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5"));
        assert!(!credentials.accepts(&basic("operator:correct-horse-batterY")));
        assert!(!credentials.accepts(&basic("Operator:correct-horse-battery")));
        assert!(!credentials.accepts(&basic("operator:")));
        assert!(!credentials.accepts(&basic("operator")));
        assert!(!credentials.accepts(b"Bearer correct-horse-battery"));
        assert!(!credentials.accepts(b"Basic not-base64!"));
        assert!(!credentials.accepts(b""));
    }

    #[test]
    fn password_may_contain_colons() {
        let credentials = OperatorCredentials::new("operator", "pass:word:with:colons").unwrap();
        assert!(credentials.accepts(&basic("operator:pass:word:with:colons")));
    }

    #[test]
    fn rejects_weak_settings() {
        assert!(OperatorCredentials::new("operator", "short").is_err());
        assert!(OperatorCredentials::new("", "long-enough-password").is_err());
        assert!(OperatorCredentials::new("op:erator", "long-enough-password").is_err());
    }
}
