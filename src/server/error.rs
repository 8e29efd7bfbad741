//! API errors: `{"error": "<message naming the field>", "error_type": "<snake_case>"}` with the
//! status that says whose fault it is.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the offending field.
    pub error: String,
    /// `bad_request`, `request_timeout`, `payload_too_large`, `validation`, `unauthorized`, `not_found`,
    /// `overloaded`, `not_ready`, `unavailable`, `backend`.
    pub error_type: String,
}

/// The error responses every scoring route documents in the OpenAPI document (never built: the
/// handlers answer with [`ApiError`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ScoringErrors {
    #[response(status = 400, description = "Malformed JSON")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "Missing or wrong API key")]
    Unauthorized(ErrorBody),
    #[response(status = 408, description = "Request body not received in time")]
    RequestTimeout(ErrorBody),
    #[response(status = 413, description = "Payload too large")]
    PayloadTooLarge(ErrorBody),
    #[response(status = 422, description = "Invalid input")]
    Validation(ErrorBody),
    #[response(status = 429, description = "Overloaded; see Retry-After")]
    Overloaded(ErrorBody),
    #[response(status = 503, description = "Model not ready, or the retrieval database unreachable; see Retry-After")]
    NotReady(ErrorBody),
}

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    RequestTimeout,
    PayloadTooLarge(String),
    Validation(String),
    Unauthorized,
    NotFound(String),
    Overloaded,
    NotReady,
    /// A service the request needs (the retrieval database) is unreachable.
    Unavailable(String),
    Backend(String),
}

impl ApiError {
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Validation(_) => "validation",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Overloaded => "overloaded",
            ApiError::NotReady => "not_ready",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Backend(_) => "backend",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(_) => StatusCode::FAILED_DEPENDENCY,
        }
    }

    /// The request's `outcome` in the metrics.
    pub fn outcome(&self) -> crate::metrics::Outcome {
        use crate::metrics::Outcome;
        match self {
            ApiError::Unauthorized => Outcome::Unauthorized,
            ApiError::Overloaded | ApiError::NotReady | ApiError::Unavailable(_) => Outcome::Overloaded,
            ApiError::Backend(_) => Outcome::ServerError,
            ApiError::BadRequest(_)
            | ApiError::RequestTimeout
            | ApiError::PayloadTooLarge(_)
            | ApiError::Validation(_)
            | ApiError::NotFound(_) => Outcome::ClientError,
        }
    }

    /// What went wrong, naming the field.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) | ApiError::PayloadTooLarge(m) | ApiError::Validation(m) | ApiError::NotFound(m) | ApiError::Backend(m) => m.clone(),
            ApiError::Unavailable(m) => format!("unavailable: {m}; retry after the delay in Retry-After"),
            ApiError::Unauthorized => "authorization: missing or wrong bearer token".into(),
            ApiError::RequestTimeout => "body: not received within --body-timeout-s".into(),
            ApiError::Overloaded => "overloaded: too many candidates in flight; retry after the delay in Retry-After".into(),
            ApiError::NotReady => "not ready: the model is loading or warming up".into(),
        }
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error as E;
        match e {
            E::Input { field, reason } => ApiError::Validation(format!("{field}: {reason}")),
            E::TooLarge { field, reason } => ApiError::PayloadTooLarge(format!("{field}: {reason}")),
            E::NotReady => ApiError::NotReady,
            E::Overloaded => ApiError::Overloaded,
            E::Unavailable(m) => ApiError::Unavailable(m),
            E::Backend(m) => ApiError::Backend(m),
            other => ApiError::Backend(other.to_string()),
        }
    }
}

impl ApiError {
    /// Headers the error answers with whatever the body's shape: `Retry-After` when the client
    /// should come back, `WWW-Authenticate` for a missing key.
    pub fn headers(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            ApiError::Overloaded => Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            ApiError::NotReady => Some((header::RETRY_AFTER, HeaderValue::from_static("5"))),
            ApiError::Unavailable(_) => Some((header::RETRY_AFTER, HeaderValue::from_static("2"))),
            ApiError::Unauthorized => Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.message(), error_type: self.error_type().into() };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        resp.headers_mut().extend(self.headers());
        resp
    }
}
