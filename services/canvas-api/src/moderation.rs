//! The moderation API under `/api/v1/moderation`, for holders of the canvas's moderator
//! token (`Authorization: Bearer`): bans, rollbacks and the audit log. Every action is
//! written to the audit log; a rollback is a sequence of ordinary placements attributed to
//! the moderator, so every client converges through the normal update frames. A signed-in
//! moderator acts through the gateway, which holds the token and names them.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::HeaderMap,
};
use pixel_common::ports;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    rollback::{self, Area, PlanError},
    store::{AuditEntry, BanKind, Change},
};

/// Who the audit log and the history name for actions taken with the moderator token.
pub const MODERATOR: &str = "moderator";

/// A ban's settings.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// Answer the player's placements as placed, but write and publish nothing.
    #[serde(default)]
    pub shadow: bool,
    /// Why, for the audit log (at most 500 characters).
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// A banned player.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ban {
    /// The player's public name, as `placedBy` shows it.
    pub player: String,
    pub shadow: bool,
}

/// Every ban.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BansResponse {
    pub bans: Vec<Ban>,
}

/// A rectangle of the canvas.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AreaRequest {
    #[schema(minimum = 0)]
    pub x: i64,
    #[schema(minimum = 0)]
    pub y: i64,
    #[schema(minimum = 1)]
    pub width: i64,
    #[schema(minimum = 1)]
    pub height: i64,
}

/// A rollback: an `area` back to its state at `toVersion` (or at the time `toMs`), or every
/// placement of a `player` from `sinceMs` on.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollbackRequest {
    pub area: Option<AreaRequest>,
    /// With `area`: the canvas version whose colours come back.
    pub to_version: Option<u64>,
    /// With `area`: the time (ms since the Unix epoch) whose colours come back.
    pub to_ms: Option<u64>,
    /// A player's public name (`placedBy`), whose placements are taken back.
    pub player: Option<String>,
    /// With `player`: from when (ms since the Unix epoch).
    pub since_ms: Option<u64>,
}

/// The rollback shapes, for the OpenAPI document (the handler reads [`RollbackRequest`]
/// and says which shape a body misses).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum RollbackBody {
    AreaToVersion(AreaToVersion),
    AreaToTime(AreaToTime),
    PlayerSince(PlayerSince),
}

/// An area back to its colours at a canvas version.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AreaToVersion {
    pub area: AreaRequest,
    /// At most the canvas's current version.
    #[schema(minimum = 0)]
    pub to_version: u64,
}

/// An area back to its colours at a time.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AreaToTime {
    pub area: AreaRequest,
    /// Milliseconds since the Unix epoch.
    #[schema(minimum = 0)]
    pub to_ms: u64,
}

/// A player's placements from a time on, taken back.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlayerSince {
    /// The player's public name (`placedBy`).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub player: String,
    /// Milliseconds since the Unix epoch.
    #[schema(minimum = 0)]
    pub since_ms: u64,
}

/// What a rollback did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackResponse {
    /// Pixels set back, each a new canvas version.
    pub placed: u64,
    /// Pixels left alone: someone placed there while the rollback ran.
    pub skipped: u64,
    /// The canvas version after the rollback.
    pub version: u64,
}

/// Query of `GET /api/v1/moderation/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The most entries to return, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    pub entries: Vec<AuditEntry>,
}

/// Checks the moderator token; who acts: the signed-in moderator the gateway names in
/// `X-Moderator` (it holds the token for them), else [`MODERATOR`].
fn moderator(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    match &state.settings.moderator_token {
        Some(token) if token.admits(headers) => Ok(headers
            .get(ports::MODERATOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|name| crate::api::is_client_name(name))
            .unwrap_or(MODERATOR)
            .to_owned()),
        _ => Err(ApiError::NotModerator),
    }
}

/// A JSON object body read as `T`: serde's derive also reads arrays as structs, which the
/// API does not define.
fn object_body<T: DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(value) = body.map_err(ApiError::Body)?;
    if !value.is_object() {
        return Err(ApiError::BodyValue("expected a JSON object".to_owned()));
    }
    serde_json::from_value(value).map_err(|error| ApiError::BodyValue(error.to_string()))
}

/// A player's public name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn player(name: &str) -> Result<&str, ApiError> {
    crate::api::is_client_name(name)
        .then_some(name)
        .ok_or(ApiError::InvalidPlayer)
}

#[utoipa::path(get, path = "/api/v1/moderation/bans", tag = "moderation",
    security(("moderatorToken" = [])),
    responses(
        (status = 200, description = "Every ban", body = BansResponse),
        (status = 401, description = "unauthorized: no or another moderator token", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn bans(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<BansResponse>, ApiError> {
    moderator(&state, &headers)?;
    let bans = state
        .store
        .bans()
        .await?
        .into_iter()
        .map(|(player, kind)| Ban {
            player,
            shadow: kind == BanKind::Shadow,
        })
        .collect();
    Ok(Json(BansResponse { bans }))
}

#[utoipa::path(put, path = "/api/v1/moderation/bans/{player}", tag = "moderation",
    params(("player" = String, Path, description = "The player's public name (placedBy)",
        min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    security(("moderatorToken" = [])),
    request_body = BanRequest,
    responses(
        (status = 200, description = "Banned (or the ban changed): placements are refused with banned, or, shadow, dropped", body = Ban),
        (status = 400, description = "invalid_player or invalid_body", body = ErrorBody),
        (status = 401, description = "unauthorized: no or another moderator token", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn ban(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Ban>, ApiError> {
    let by = moderator(&state, &headers)?;
    let Path(name) = path.map_err(ApiError::Path)?;
    let name = player(&name)?;
    let request: BanRequest = object_body(body)?;
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 500)
    {
        return Err(ApiError::BodyValue(
            "reason must be at most 500 characters".to_owned(),
        ));
    }
    let kind = if request.shadow {
        BanKind::Shadow
    } else {
        BanKind::Ban
    };
    state.store.ban(name, kind).await?;
    let detail = json!({"player": name, "shadow": request.shadow, "reason": request.reason});
    state.store.audit(&by, "ban", &detail).await?;
    tracing::info!(player = name, shadow = request.shadow, "player banned");
    Ok(Json(Ban {
        player: name.to_owned(),
        shadow: request.shadow,
    }))
}

#[utoipa::path(delete, path = "/api/v1/moderation/bans/{player}", tag = "moderation",
    params(("player" = String, Path, description = "The player's public name (placedBy)",
        min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    security(("moderatorToken" = [])),
    responses(
        (status = 200, description = "The ban is lifted", body = Ban),
        (status = 400, description = "invalid_player", body = ErrorBody),
        (status = 401, description = "unauthorized: no or another moderator token", body = ErrorBody),
        (status = 404, description = "not_banned: the player has no ban", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn unban(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Ban>, ApiError> {
    let by = moderator(&state, &headers)?;
    let Path(name) = path.map_err(ApiError::Path)?;
    let name = player(&name)?;
    if !state.store.unban(name).await? {
        return Err(ApiError::NotBanned);
    }
    state
        .store
        .audit(&by, "unban", &json!({"player": name}))
        .await?;
    tracing::info!(player = name, "ban lifted");
    Ok(Json(Ban {
        player: name.to_owned(),
        shadow: false,
    }))
}

#[utoipa::path(post, path = "/api/v1/moderation/rollbacks", tag = "moderation",
    security(("moderatorToken" = [])),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "Rolled back: each pixel set back is a new version attributed to the moderator", body = RollbackResponse),
        (status = 400, description = "invalid_body (not exactly one of area with toVersion or toMs, or player with sinceMs), invalid_player or out_of_bounds", body = ErrorBody),
        (status = 401, description = "unauthorized: no or another moderator token", body = ErrorBody),
        (status = 410, description = "history_gone: the history no longer reaches back that far", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn roll_back(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<RollbackResponse>, ApiError> {
    let by = moderator(&state, &headers)?;
    let request: RollbackRequest = object_body(body)?;
    let changes = plan(&state, &request).await?;
    let settings = &state.settings;
    let done = state
        .store
        .roll_back(&by, &changes, settings.history_max_len)
        .await?;
    // Read your writes: this replica's snapshots include the rollback from now on.
    state.cache.acknowledged(done.version);
    let mut detail = serde_json::to_value(&request).unwrap_or_default();
    detail["placed"] = done.applied.into();
    detail["skipped"] = done.skipped.into();
    detail["version"] = done.version.into();
    state.store.audit(&by, "rollback", &detail).await?;
    tracing::info!(placed = done.applied, skipped = done.skipped, "rolled back");
    Ok(Json(RollbackResponse {
        placed: done.applied,
        skipped: done.skipped,
        version: done.version,
    }))
}

async fn plan(state: &AppState, request: &RollbackRequest) -> Result<Vec<Change>, ApiError> {
    let size = state.settings.size;
    // Versions and times are signed 64-bit in Redis and in the document.
    let numbers = [request.to_version, request.to_ms, request.since_ms];
    if numbers
        .into_iter()
        .flatten()
        .any(|n| n > crate::api::MAX_VERSION)
    {
        return Err(ApiError::BodyValue(format!(
            "toVersion, toMs and sinceMs must be at most {}",
            crate::api::MAX_VERSION
        )));
    }
    let shape = "expected {\"area\", \"toVersion\" or \"toMs\"} or {\"player\", \"sinceMs\"}";
    let planned = match request {
        RollbackRequest {
            area: Some(area),
            to_version,
            to_ms,
            player: None,
            since_ms: None,
        } => {
            let area = checked_area(state, *area)?;
            match (to_version, to_ms) {
                (Some(version), None) => {
                    let current = state.store.version().await?;
                    if *version > current {
                        return Err(ApiError::BodyValue(format!(
                            "toVersion {version} is ahead of the canvas (version {current})"
                        )));
                    }
                    let entries = state.store.history_after(*version).await?;
                    rollback::area_to_version(&entries, *version, current, area, size)
                }
                (None, Some(ms)) => {
                    let entries = state.store.history_after(0).await?;
                    let current = state.store.version().await?;
                    rollback::after_time(&entries, *ms).and_then(|after| {
                        let since = after.first().map_or(current, |e| e.version - 1);
                        rollback::area_to_version(after, since, current, area, size)
                    })
                }
                _ => return Err(ApiError::BodyValue(shape.to_owned())),
            }
        }
        RollbackRequest {
            area: None,
            to_version: None,
            to_ms: None,
            player: Some(name),
            since_ms: Some(since_ms),
        } => {
            let name = player(name)?;
            let entries = state.store.history_after(0).await?;
            rollback::player_since(&entries, name, *since_ms, size)
        }
        _ => return Err(ApiError::BodyValue(shape.to_owned())),
    };
    planned.map_err(|error| match error {
        PlanError::Gone { .. } | PlanError::NoPrevious { .. } => ApiError::RollbackGone(error),
    })
}

fn checked_area(state: &AppState, area: AreaRequest) -> Result<Area, ApiError> {
    let size = state.settings.size;
    if area.width < 1 || area.height < 1 {
        return Err(ApiError::BodyValue(
            "area.width and area.height must be at least 1".to_owned(),
        ));
    }
    let corner = size.point(area.x, area.y)?;
    let far = size.point(
        area.x.saturating_add(area.width - 1),
        area.y.saturating_add(area.height - 1),
    )?;
    Ok(Area {
        x: corner.x,
        y: corner.y,
        width: far.x - corner.x + 1,
        height: far.y - corner.y + 1,
    })
}

#[utoipa::path(get, path = "/api/v1/moderation/audit", tag = "moderation",
    params(AuditQuery),
    security(("moderatorToken" = [])),
    responses(
        (status = 200, description = "Moderation actions, newest first", body = AuditResponse),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 401, description = "unauthorized: no or another moderator token", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditResponse>, ApiError> {
    moderator(&state, &headers)?;
    let Query(query) = query.map_err(ApiError::Query)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::QueryValue("limit must be 1 to 1000".to_owned()));
    }
    let entries = state.store.audit_log(limit as usize).await?;
    Ok(Json(AuditResponse { entries }))
}
