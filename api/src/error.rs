//! One error type for every handler, mapped to the status codes VISA's client reads.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 or 422: the request itself is invalid, and the message explains the fix.
    #[error("{message}")]
    BadRequest { status: StatusCode, message: String },
    /// 401: VISA reads it as an authentication failure.
    #[error("missing or invalid X-Auth-Token header")]
    Unauthorized,
    /// 403: the request is valid but a quota forbids it.
    #[error("{0}")]
    Forbidden(String),
    /// 404: for an instance, VISA reads it as "deleted".
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the instance is in a state where the action makes no sense, such as being deleted.
    #[error("{0}")]
    Conflict(String),
    /// 503: a backend is down, so the request cannot be served correctly now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged with its cause; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match &rejection {
            JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
            JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
            other => other.status(),
        };
        Self::BadRequest {
            status,
            message: rejection.body_text(),
        }
    }
}

impl From<visa_jobs::store::StoreError> for ApiError {
    fn from(error: visa_jobs::store::StoreError) -> Self {
        Self::Unavailable(format!("database unavailable: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::BadRequest { status, message } => (*status, message.clone()),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, self.to_string()),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, message.clone()),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, message.clone()),
            Self::Conflict(message) => (StatusCode::CONFLICT, message.clone()),
            Self::MethodNotAllowed(message) => (StatusCode::METHOD_NOT_ALLOWED, message.clone()),
            Self::Unavailable(cause) => {
                error!(%cause, "request failed: backend unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a backend of the provider is unavailable; retry later".to_owned(),
                )
            }
            Self::Internal(cause) => {
                error!(%cause, "request failed: internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}
