//! The REST handlers under `/api/v1`, each annotated for the OpenAPI document.

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{
            ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
            VARY,
        },
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use pixel_common::{
    canvas::Point,
    identity::{is_signed_in, public_name},
    opening::Closed,
    ports::{CANVAS_VERSION_HEADER, CLIENT_ID_HEADER, IDEMPOTENCY_KEY_HEADER, PLACEMENT_BATCH_MAX},
    wire::SNAPSHOT_CONTENT_TYPE,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    AppState,
    cache::Encoding,
    error::{ApiError, ErrorBody},
    store::{HistoryEntry, Placed, Placement, Undo},
};

/// The canvas's settings and current version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfoResponse {
    pub width: u16,
    pub height: u16,
    /// `#RRGGBB` colours; a pixel's colour is an index into this list.
    pub palette: Vec<String>,
    pub cooldown_seconds: u32,
    /// Seconds a person may undo their last placement; 0 when undo is off.
    pub undo_seconds: u32,
    /// Frozen: placements are refused with `canvas_closed`.
    pub read_only: bool,
    /// When placements open (ms since the Unix epoch); null: open already.
    pub opens_at_ms: Option<u64>,
    /// When placements close (ms since the Unix epoch); null: never.
    pub closes_at_ms: Option<u64>,
    /// Bumped by one per placement; 0 before the first.
    pub version: u64,
}

/// A placement: a JSON object with exactly these fields (arrays and other shapes are
/// refused, although serde's derive would read `[x, y, color]` as one).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    pub x: i64,
    pub y: i64,
    /// Palette index.
    pub color: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceFields {
    #[serde(deserialize_with = "json_integer")]
    x: i64,
    #[serde(deserialize_with = "json_integer")]
    y: i64,
    #[serde(deserialize_with = "json_integer")]
    color: i64,
}

impl<'de> Deserialize<'de> for PlaceRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;

        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = PlaceFields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a JSON object {"x", "y", "color"}"#)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PlaceFields, A::Error> {
                // The derive reads the fields, refusing unknown and duplicate ones.
                PlaceFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        let PlaceFields { x, y, color } = deserializer.deserialize_map(ObjectOnly)?;
        Ok(Self { x, y, color })
    }
}

/// A JSON Schema `integer`: any number without a fractional part, so `3.0` too. Integers
/// beyond `i64` saturate (and are then out of the canvas, like any too large value).
fn json_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_i64() {
        return Ok(value);
    }
    if number.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match number.as_f64() {
        // Saturating conversion, exact for every integral value in range.
        #[allow(clippy::cast_possible_truncation)]
        Some(value) if value.fract() == 0.0 => Ok(value as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not an integer"
        ))),
    }
}

/// [`json_integer`] within `i64`, as a batch's schema (`int64`) has it: a batch answers its
/// placements one by one only once its body has the documented shape, so a number beyond
/// it refuses the whole body rather than saturating.
fn json_int64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_i64() {
        return Ok(value);
    }
    match number.as_f64() {
        // Past ±2^63 an integer that is not an `i64` parses as a float rounded to ±2^63,
        // so both bounds are exclusive (a float-written integer this close is no pixel).
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        Some(value)
            if value.fract() == 0.0 && value > i64::MIN as f64 && value < i64::MAX as f64 =>
        {
            Ok(value as i64)
        }
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not an integer of 64 bits"
        ))),
    }
}

/// An accepted placement.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaceResponse {
    /// The canvas version this placement produced.
    pub version: u64,
    /// Milliseconds since the Unix epoch, by Redis's clock.
    pub placed_at_ms: u64,
}

/// An undone placement: the pixel and the colour it has again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UndoResponse {
    /// The canvas version the undo produced.
    pub version: u64,
    /// Milliseconds since the Unix epoch, by Redis's clock.
    pub placed_at_ms: u64,
    pub x: u16,
    pub y: u16,
    /// The palette index the pixel has again.
    pub color: u8,
}

/// One pixel and who placed it last.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PixelResponse {
    pub x: u16,
    pub y: u16,
    pub color: u8,
    /// The version of the last placement here; null when nobody placed this pixel.
    pub version: Option<u64>,
    pub placed_at_ms: Option<u64>,
    /// Who placed it, as shown publicly: an identity's handle, never the identity.
    pub placed_by: Option<String>,
    /// A signed-in placer's display name, as their provider gave it (never an email).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed_by_name: Option<String>,
}

/// The largest canvas version: Redis counts it with `INCR`, a signed 64-bit integer.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Query of `GET /api/v1/history`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Return placements with versions above this one.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub since: u64,
    /// The most placements to return; 0 counts as 1; at most the configured page size (the
    /// default).
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4_294_967_295_i64)]
    pub limit: Option<u32>,
}

/// Placements after `since`, oldest first, versions contiguous.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryResponse {
    pub since: u64,
    /// The canvas version when this page was read.
    pub current_version: u64,
    pub updates: Vec<HistoryEntry>,
    /// True when placements after the last one here exist: ask again with its version.
    pub more: bool,
}

/// Binary body (OpenAPI `string`, format `binary`).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryBody(pub Vec<u8>);

/// The OpenAPI document as served, built once from the router.
#[derive(Debug, Clone)]
pub struct OpenApiJson(pub Bytes);

#[utoipa::path(get, path = "/api/v1/info", tag = "canvas",
    responses(
        (status = 200, description = "Canvas settings and current version", body = InfoResponse),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn info(State(state): State<AppState>) -> Result<Json<InfoResponse>, ApiError> {
    let settings = &state.settings;
    Ok(Json(InfoResponse {
        width: settings.size.width(),
        height: settings.size.height(),
        palette: settings.palette.to_strings(),
        cooldown_seconds: settings.cooldown_seconds,
        undo_seconds: settings.undo_seconds,
        read_only: settings.opening.read_only,
        opens_at_ms: settings.opening.opens_at_ms,
        closes_at_ms: settings.opening.closes_at_ms,
        version: state.store.version().await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/canvas", tag = "canvas",
    params(("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The snapshot (layout in docs/protocol.md); gzip or br when accepted",
            content_type = "application/vnd.pixel-playground.snapshot", body = BinaryBody,
            headers(("ETag" = String, description = "W/\"<version>\""),
                    ("X-Canvas-Version" = u64, description = "The snapshot's version"))),
        (status = 304, description = "The snapshot has not changed since the ETag given"),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn canvas(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cached = state.cache.get(&state.store).await?;
    let encoding = accepted_encoding(&headers);
    let mut response = versioned(
        &headers,
        cached.version(),
        SNAPSHOT_CONTENT_TYPE,
        || async {
            cached
                .body(encoding)
                .await
                .map_err(|error| ApiError::Internal(Box::new(error)))
        },
    )
    .await?;
    // Compressed here once per version; the compression layer leaves an encoded body alone.
    let modified = response.status() == StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if let (Some(value), true) = (encoding.header(), modified) {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// The encoding to answer with: br, then gzip, when `Accept-Encoding` allows it (a `q` of 0
/// refuses; `*` allows both), else none.
pub fn accepted_encoding(headers: &HeaderMap) -> Encoding {
    let (mut br, mut gzip, mut any) = (None, None, None);
    for item in headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let allowed = parts
            .filter_map(|param| param.strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next_back()
            .is_none_or(|q| q > 0.0);
        match name.as_str() {
            "br" => br = Some(allowed),
            "gzip" | "x-gzip" => gzip = Some(allowed),
            "*" => any = Some(allowed),
            _ => {}
        }
    }
    if br.or(any).unwrap_or(false) {
        Encoding::Brotli
    } else if gzip.or(any).unwrap_or(false) {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

#[utoipa::path(get, path = "/api/v1/canvas.png", tag = "canvas",
    params(("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "The canvas as an indexed-colour PNG, one image pixel per canvas pixel",
            content_type = "image/png", body = BinaryBody,
            headers(("ETag" = String, description = "W/\"<version>\""),
                    ("X-Canvas-Version" = u64, description = "The image's version"))),
        (status = 304, description = "The image has not changed since the ETag given"),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn canvas_png(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cached = state.cache.get(&state.store).await?;
    let palette = &state.settings.palette;
    versioned(&headers, cached.version(), "image/png", || async move {
        cached
            .png(palette)
            .await
            .map_err(|error| ApiError::Internal(Box::new(error)))
    })
    .await
}

/// Answers 304 when `If-None-Match` names this version, else the body `make` produces, with
/// the version as ETag and header. Clients must revalidate (`no-cache`): the canvas changes.
async fn versioned<F>(
    headers: &HeaderMap,
    version: u64,
    content_type: &'static str,
    make: impl FnOnce() -> F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Bytes, ApiError>>,
{
    let etag = format!("W/\"{version}\"");
    let meta = [
        (
            ETAG,
            HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(Box::new(e)))?,
        ),
        (
            CANVAS_VERSION_HEADER
                .parse()
                .map_err(|e| ApiError::Internal(Box::new(e)))?,
            HeaderValue::from(version),
        ),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if matches_etag(headers, version) {
        return Ok((StatusCode::NOT_MODIFIED, meta).into_response());
    }
    let body = make().await?;
    Ok((
        meta,
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response())
}

/// `If-None-Match` uses the weak comparison: `W/"7"` and `"7"` both match version 7.
fn matches_etag(headers: &HeaderMap, version: u64) -> bool {
    let wanted = format!("\"{version}\"");
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == wanted)
}

/// A client id or a player's public name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn is_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The client id header.
fn client_id(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(CLIENT_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| is_client_name(id))
        .ok_or(ApiError::ClientId)
}

/// An idempotency key: 1 to 64 of `A-Z a-z 0-9 _ -`.
fn is_idempotency_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// The client a placement or an undo is for, while the canvas takes them.
fn open_for<'h>(state: &AppState, headers: &'h HeaderMap) -> Result<&'h str, ApiError> {
    let client_id = client_id(headers)?;
    match state.settings.opening.closed_now() {
        Some(closed) => Err(ApiError::Closed(closed)),
        None => Ok(client_id),
    }
}

#[utoipa::path(post, path = "/api/v1/pixels", tag = "canvas",
    params(("X-Client-Id" = String, Header, description = "The placing client: 1 to 64 of A-Z a-z 0-9 . _ -",
        min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names the placement: sent again by the same client within 60 s, it is answered as the first time and places nothing. 1 to 64 of A-Z a-z 0-9 _ -",
        min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("internalToken" = [])),
    request_body = PlaceRequest,
    responses(
        (status = 200, description = "Placed; the new canvas version", body = PlaceResponse),
        (status = 400, description = "out_of_bounds, unknown_color, invalid_body, body_too_large, invalid_client_id or invalid_idempotency_key", body = ErrorBody),
        (status = 401, description = "unauthorized: the caller is not the canvas's gateway (no or another internal token)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "canvas_closed (the canvas is frozen or outside its schedule) or banned (a moderator banned the client)", body = ErrorBody),
        (status = 429, description = "cooldown (the client is in its cooldown) or rate_limited (it placed faster than PIXEL_PLACEMENT_RATE allows); retryAfterMs in the body", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the client may place again"))),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn place(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PlaceRequest>, JsonRejection>,
) -> Result<Json<PlaceResponse>, ApiError> {
    let result = place_checked(&state, &headers, body).await;
    state.metrics.placed(outcome_label(&result));
    result.map(Json)
}

/// A placement's result, as the metrics count it.
fn outcome_label<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "accepted",
        Err(ApiError::Cooldown { .. }) => "cooldown",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Store(_)) => "unavailable",
        Err(ApiError::Unauthorized) => "unauthorized",
        Err(_) => "rejected",
    }
}

async fn place_checked(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<PlaceRequest>, JsonRejection>,
) -> Result<PlaceResponse, ApiError> {
    // Before anything else: a caller without the token learns nothing about its request.
    if !state.settings.api_token.admits(headers) {
        return Err(ApiError::Unauthorized);
    }
    let Json(request) = body.map_err(ApiError::Body)?;
    // A header that is not text is as malformed as one of the wrong characters.
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default())
    };
    let placement = checked_placement(
        state,
        header(CLIENT_ID_HEADER).unwrap_or_default(),
        state.settings.opening.closed_now(),
        header(IDEMPOTENCY_KEY_HEADER),
        (request.x, request.y, request.color),
    )?;
    decided(state, state.placements.place(placement).await)
}

/// A placement by a valid client id, while the canvas is open (`closed` is why it is not),
/// with a valid key if any, on this canvas's grid and palette: checked in that order, alike
/// for a placement alone and one of a batch.
fn checked_placement(
    state: &AppState,
    client_id: &str,
    closed: Option<Closed>,
    idempotency_key: Option<&str>,
    (x, y, color): (i64, i64, i64),
) -> Result<Placement, ApiError> {
    if !is_client_name(client_id) {
        return Err(ApiError::ClientId);
    }
    if let Some(closed) = closed {
        return Err(ApiError::Closed(closed));
    }
    // A malformed key is refused rather than ignored: a retry without it could place twice.
    if !idempotency_key.is_none_or(is_idempotency_key) {
        return Err(ApiError::IdempotencyKey);
    }
    let settings = &state.settings;
    let point = settings.size.point(x, y)?;
    let color = settings.palette.index(color)?;
    Ok(Placement {
        index: settings.size.index(point),
        x: point.x,
        y: point.y,
        color,
        client_id: client_id.to_owned(),
        idempotency_key: idempotency_key.map(str::to_owned),
    })
}

/// The client's answer to what Redis decided about its placement.
fn decided(
    state: &AppState,
    placed: Result<Placed, crate::store::StoreError>,
) -> Result<PlaceResponse, ApiError> {
    match placed? {
        Placed::Accepted {
            version,
            placed_at_ms,
        } => {
            // Read your writes: no snapshot from this replica is older than this answer.
            state.cache.acknowledged(version);
            Ok(PlaceResponse {
                version,
                placed_at_ms,
            })
        }
        Placed::InCooldown { retry_after_ms } => Err(ApiError::Cooldown { retry_after_ms }),
        Placed::RateLimited { retry_after_ms } => Err(ApiError::RateLimited { retry_after_ms }),
        Placed::Banned => Err(ApiError::Banned),
    }
}

/// One placement of a batch: the client it is for, and what `POST /api/v1/pixels` takes in
/// its headers and body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchPlacement {
    /// The placing client, as `X-Client-Id`: 1 to 64 of A-Z a-z 0-9 . _ -
    pub client_id: String,
    #[serde(deserialize_with = "json_int64")]
    pub x: i64,
    #[serde(deserialize_with = "json_int64")]
    pub y: i64,
    /// Palette index.
    #[serde(deserialize_with = "json_int64")]
    pub color: i64,
    /// As `Idempotency-Key`: 1 to 64 of A-Z a-z 0-9 _ -
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Placements the gateway's clients made together.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At most 256, applied in this order.
    pub placements: Vec<BatchPlacement>,
}

/// One placement's answer in a batch: `status` is what `POST /api/v1/pixels` would have
/// answered it with; `200` with `version` and `placedAtMs`, else `error` as that endpoint's
/// error body has it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAnswer {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorDetail>,
}

/// The batch's answers, one per placement, in the request's order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchAnswer>,
}

/// The largest batch request body read: [`PLACEMENT_BATCH_MAX`] placements of the longest
/// client id and key, with room for spacing.
pub const BATCH_BODY_MAX_BYTES: usize = PLACEMENT_BATCH_MAX * 256;

#[utoipa::path(post, path = "/api/v1/pixels/batch", tag = "canvas",
    security(("internalToken" = [])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One answer per placement, in order, each with the status and body POST /api/v1/pixels would have answered it with (a refused placement fails alone; one Redis failed after its first write fails the rest of the batch with it)", body = BatchResponse),
        (status = 400, description = "invalid_body (not the documented shape, or more than 256 placements) or body_too_large", body = ErrorBody),
        (status = 401, description = "unauthorized: the caller is not the canvas's gateway (no or another internal token)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
    ))]
pub async fn place_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Json<BatchResponse>, ApiError> {
    if !state.settings.api_token.admits(&headers) {
        state.metrics.placed("unauthorized");
        return Err(ApiError::Unauthorized);
    }
    let Json(request) = body.map_err(ApiError::Body)?;
    if request.placements.len() > PLACEMENT_BATCH_MAX {
        return Err(ApiError::BodyValue(format!(
            "a batch carries at most {PLACEMENT_BATCH_MAX} placements"
        )));
    }
    let closed = state.settings.opening.closed_now();
    let mut answers: Vec<Option<Result<PlaceResponse, ApiError>>> =
        Vec::with_capacity(request.placements.len());
    let (mut valid, mut slots) = (Vec::new(), Vec::new());
    for (slot, item) in request.placements.iter().enumerate() {
        let checked = checked_placement(
            &state,
            &item.client_id,
            closed,
            item.idempotency_key.as_deref(),
            (item.x, item.y, item.color),
        );
        match checked {
            Ok(placement) => {
                valid.push(placement);
                slots.push(slot);
                answers.push(None);
            }
            Err(error) => answers.push(Some(Err(error))),
        }
    }
    for (slot, placed) in slots
        .into_iter()
        .zip(state.placements.place_all(valid).await)
    {
        answers[slot] = Some(decided(&state, placed));
    }
    let results = answers
        .into_iter()
        .flatten()
        .map(|answer| {
            state.metrics.placed(outcome_label(&answer));
            match answer {
                Ok(placed) => BatchAnswer {
                    status: StatusCode::OK.as_u16(),
                    version: Some(placed.version),
                    placed_at_ms: Some(placed.placed_at_ms),
                    error: None,
                },
                Err(error) => {
                    let (status, detail) = error.detail();
                    BatchAnswer {
                        status: status.as_u16(),
                        version: None,
                        placed_at_ms: None,
                        error: Some(detail),
                    }
                }
            }
        })
        .collect();
    Ok(Json(BatchResponse { results }))
}

#[utoipa::path(post, path = "/api/v1/pixels/undo", tag = "canvas",
    params(("X-Client-Id" = String, Header, description = "The client whose last placement to undo: 1 to 64 of A-Z a-z 0-9 . _ -",
        min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    security(("internalToken" = [])),
    responses(
        (status = 200, description = "Undone: the pixel has its earlier colour again, as a new version", body = UndoResponse),
        (status = 400, description = "invalid_client_id", body = ErrorBody),
        (status = 401, description = "unauthorized: the caller is not the canvas's gateway (no or another internal token)", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "canvas_closed (the canvas is frozen or outside its schedule) or banned (a moderator banned the client)", body = ErrorBody),
        (status = 409, description = "nothing_to_undo (no placement within the undo window) or undo_superseded (the pixel was placed over since)", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn undo(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<UndoResponse>, ApiError> {
    let result = undo_checked(&state, &headers).await;
    let outcome = match &result {
        Ok(_) => "undone",
        Err(ApiError::Store(_)) => "unavailable",
        Err(ApiError::Unauthorized) => "unauthorized",
        Err(_) => "rejected",
    };
    state.metrics.placed(outcome);
    result.map(Json)
}

async fn undo_checked(state: &AppState, headers: &HeaderMap) -> Result<UndoResponse, ApiError> {
    if !state.settings.api_token.admits(headers) {
        return Err(ApiError::Unauthorized);
    }
    let client_id = open_for(state, headers)?;
    let settings = &state.settings;
    match state
        .store
        .undo(client_id, settings.history_max_len)
        .await?
    {
        Undo::Undone {
            version,
            placed_at_ms,
            x,
            y,
            color,
        } => {
            state.cache.acknowledged(version);
            Ok(UndoResponse {
                version,
                placed_at_ms,
                x,
                y,
                color,
            })
        }
        Undo::NothingToUndo => Err(ApiError::NothingToUndo),
        Undo::Superseded => Err(ApiError::UndoSuperseded),
        Undo::Banned => Err(ApiError::Banned),
    }
}

#[utoipa::path(get, path = "/api/v1/pixels/{x}/{y}", tag = "canvas",
    params(("x" = u16, Path, description = "Column, from 0"), ("y" = u16, Path, description = "Row, from 0")),
    responses(
        (status = 200, description = "The pixel's colour and its last placement", body = PixelResponse),
        (status = 400, description = "out_of_bounds or invalid_path", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn pixel(
    State(state): State<AppState>,
    path: Result<Path<(i64, i64)>, PathRejection>,
) -> Result<Json<PixelResponse>, ApiError> {
    let Path((x, y)) = path.map_err(ApiError::Path)?;
    let Point { x, y } = state.settings.size.point(x, y)?;
    let index = state.settings.size.index(Point { x, y });
    let (color, record) = state.store.pixel(index).await?;
    let color = if state.settings.palette.color(color).is_some() {
        color
    } else {
        0
    };
    let placed_by_name = match &record {
        Some(record) if is_signed_in(&record.client_id) => {
            state.store.display_name(&record.client_id).await?
        }
        _ => None,
    };
    Ok(Json(PixelResponse {
        x,
        y,
        color,
        version: record.as_ref().map(|r| r.version),
        placed_at_ms: record.as_ref().map(|r| r.placed_at_ms),
        placed_by: record.map(|r| public_name(&r.client_id)),
        placed_by_name,
    }))
}

#[utoipa::path(get, path = "/api/v1/history", tag = "canvas",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Placements after `since`, oldest first", body = HistoryResponse),
        (status = 400, description = "invalid_query", body = ErrorBody),
        (status = 410, description = "history_gone: the placements right after `since` are no longer kept, or `since` is ahead of the canvas; refetch the snapshot", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let Query(query) = query.map_err(ApiError::Query)?;
    if query.since > MAX_VERSION {
        return Err(ApiError::QueryValue(format!(
            "since must be at most {MAX_VERSION}, the largest canvas version"
        )));
    }
    let page_max = state.settings.history_page_max.max(1);
    let limit = query.limit.unwrap_or(page_max).clamp(1, page_max);
    let since = query.since;
    let (current_version, entries) = state.store.history(since, limit as usize).await?;
    let gone = since > current_version
        || (since < current_version && entries.first().map(|e| e.version) != since.checked_add(1));
    if gone {
        return Err(ApiError::HistoryGone { since });
    }
    let last = entries.last().map_or(since, |e| e.version);
    Ok(Json(HistoryResponse {
        since,
        current_version,
        more: last < current_version,
        updates: entries,
    }))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        doc.0,
    )
}

#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Redis answers PING", body = String),
        (status = 503, description = "Redis does not answer", body = String),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(error) => {
            tracing::warn!(error = %pixel_common::error::ErrorChain(&error), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
        }
    }
}

/// Unknown paths: a JSON 404 like every other error.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known path with another method: a JSON 405 (the router adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(matches_etag(&with("W/\"7\""), 7));
        assert!(matches_etag(&with("\"7\""), 7));
        assert!(matches_etag(&with("\"3\", W/\"7\""), 7));
        assert!(matches_etag(&with("*"), 7));
        assert!(!matches_etag(&with("W/\"6\""), 7));
        assert!(!matches_etag(&with("7"), 7));
        assert!(!matches_etag(&HeaderMap::new(), 7));
    }

    #[test]
    fn a_placement_is_an_object_with_exactly_its_fields() {
        let parse = |body: &str| serde_json::from_str::<PlaceRequest>(body);
        let place = parse(r#"{"x": 1, "y": 2.0, "color": 3}"#).expect("an object");
        assert_eq!((place.x, place.y, place.color), (1, 2, 3));
        for bad in [
            "[1, 2, 3]",
            r#"{"x": 1, "y": 2}"#,
            r#"{"x": 1, "y": 2, "color": 3, "z": 4}"#,
            r#"{"x": 1, "x": 2, "y": 2, "color": 3}"#,
            r#"{"x": 1.5, "y": 2, "color": 3}"#,
            r#""x""#,
            "null",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ids_are_checked() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                CLIENT_ID_HEADER,
                HeaderValue::from_str(value).expect("header"),
            );
            headers
        };
        assert_eq!(client_id(&with("abc-1.2_3")).ok(), Some("abc-1.2_3"));
        for bad in ["", "a b", "ä", &"x".repeat(65), "a\tb"] {
            assert!(client_id(&with(bad)).is_err(), "{bad:?}");
        }
        assert!(client_id(&HeaderMap::new()).is_err());
    }
}
