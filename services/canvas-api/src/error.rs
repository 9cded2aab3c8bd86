//! Errors a client sees: a status, a stable code and a message about its request. Internal
//! causes are logged, never sent.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{
        HeaderValue, StatusCode,
        header::{RETRY_AFTER, WWW_AUTHENTICATE},
    },
    response::{IntoResponse, Response},
};
use pixel_common::{
    canvas::{GeometryError, PaletteError},
    error::ErrorChain,
    opening::Closed,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable, machine-readable: `out_of_bounds`, `unknown_color`, `invalid_body`,
    /// `body_too_large`, `invalid_client_id`, `invalid_idempotency_key`, `unauthorized`, `invalid_path`, `invalid_query`,
    /// `cooldown`, `rate_limited`, `canvas_closed`, `banned`, `nothing_to_undo`, `undo_superseded`,
    /// `invalid_player`, `not_banned`, `history_gone`,
    /// `not_found`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: &'static str,
    /// For people; may change.
    pub message: String,
    /// With `cooldown` and `rate_limited`: when the client may place again, in ms (the
    /// `Retry-After` header rounds it up to seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    OutOfBounds(#[from] GeometryError),
    #[error(transparent)]
    UnknownColor(#[from] PaletteError),
    #[error("invalid request body")]
    Body(#[source] JsonRejection),
    #[error("{0}")]
    BodyValue(String),
    #[error("invalid path")]
    Path(#[source] PathRejection),
    #[error("invalid query")]
    Query(#[source] QueryRejection),
    #[error("{0}")]
    QueryValue(String),
    #[error(
        "the {} header must be 1 to 64 of A-Z a-z 0-9 . _ -",
        pixel_common::ports::CLIENT_ID_HEADER
    )]
    ClientId,
    #[error(
        "the {} header must be 1 to 64 of A-Z a-z 0-9 _ -",
        pixel_common::ports::IDEMPOTENCY_KEY_HEADER
    )]
    IdempotencyKey,
    #[error("placements are accepted only from the canvas's gateway; place through its WebSocket")]
    Unauthorized,
    #[error("this client placed a pixel recently; retry in {retry_after_ms} ms")]
    Cooldown { retry_after_ms: u64 },
    #[error("this client places faster than the canvas allows; retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    #[error("{0}")]
    Closed(Closed),
    #[error("this player is banned from placing on this canvas")]
    Banned,
    #[error("moderation needs this canvas's moderator token (Authorization: Bearer)")]
    NotModerator,
    #[error("a player is named by their public name: 1 to 64 of A-Z a-z 0-9 . _ -")]
    InvalidPlayer,
    #[error("this player has no ban")]
    NotBanned,
    #[error(transparent)]
    RollbackGone(crate::rollback::PlanError),
    #[error(
        "no placement of this client to undo: none within the undo window, or it was undone already"
    )]
    NothingToUndo,
    #[error(
        "the pixel was placed over since this client's placement, which is no longer there to undo"
    )]
    UndoSuperseded,
    #[error(
        "history after version {since} is no longer kept (or the canvas is behind it); refetch the snapshot"
    )]
    HistoryGone { since: u64 },
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the canvas store is unavailable")]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::OutOfBounds(_) => (StatusCode::BAD_REQUEST, "out_of_bounds"),
            Self::UnknownColor(_) => (StatusCode::BAD_REQUEST, "unknown_color"),
            Self::Body(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::BAD_REQUEST, "body_too_large")
            }
            Self::Body(_) | Self::BodyValue(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::Path(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            Self::Query(_) | Self::QueryValue(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::ClientId => (StatusCode::BAD_REQUEST, "invalid_client_id"),
            Self::IdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Cooldown { .. } => (StatusCode::TOO_MANY_REQUESTS, "cooldown"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Closed(_) => (StatusCode::FORBIDDEN, "canvas_closed"),
            Self::Banned => (StatusCode::FORBIDDEN, "banned"),
            Self::NotModerator => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::InvalidPlayer => (StatusCode::BAD_REQUEST, "invalid_player"),
            Self::NotBanned => (StatusCode::NOT_FOUND, "not_banned"),
            Self::RollbackGone(_) => (StatusCode::GONE, "history_gone"),
            Self::NothingToUndo => (StatusCode::CONFLICT, "nothing_to_undo"),
            Self::UndoSuperseded => (StatusCode::CONFLICT, "undo_superseded"),
            Self::HistoryGone { .. } => (StatusCode::GONE, "history_gone"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// What the client may read: rejections describe the client's own input.
    fn public_message(&self) -> String {
        match self {
            Self::Body(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                "request body is too large".to_owned()
            }
            Self::Body(rejection) => rejection.body_text(),
            Self::Path(rejection) => rejection.body_text(),
            Self::Query(rejection) => rejection.body_text(),
            Self::Store(_) => "the canvas store is unavailable; try again shortly".to_owned(),
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The status and what the client reads: the whole answer's, or one placement's in a
    /// batch answer. Logs it (server errors as warnings, with their whole chain).
    pub fn detail(&self) -> (StatusCode, ErrorDetail) {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %ErrorChain(self), code, "request failed");
        } else {
            tracing::debug!(error = %ErrorChain(self), code, "request rejected");
        }
        let retry_after_ms = match self {
            Self::Cooldown { retry_after_ms } | Self::RateLimited { retry_after_ms } => {
                Some(*retry_after_ms)
            }
            _ => None,
        };
        let detail = ErrorDetail {
            code,
            message: self.public_message(),
            retry_after_ms,
        };
        (status, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.detail();
        let body = ErrorBody { error };
        let mut response = (status, Json(body)).into_response();
        match self {
            Self::Cooldown { retry_after_ms } | Self::RateLimited { retry_after_ms } => {
                let seconds = retry_after_ms.div_ceil(1000).max(1);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            Self::Unauthorized | Self::NotModerator => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
