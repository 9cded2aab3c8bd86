//! Well-known ports, environment variable names and probe paths of the deployed services.

/// The frontend serves the page and its assets.
pub const FRONTEND: u16 = 3000;
/// canvas-api serves the REST API.
pub const CANVAS_API: u16 = 3001;
/// The gateway serves WebSocket clients.
pub const GATEWAY: u16 = 3002;
/// The operator's health and metrics endpoint.
pub const OPERATOR_HEALTH: u16 = 8080;

/// Liveness probe path, served by every binary.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness probe path: ready only when the binary's dependencies answer.
pub const READYZ_PATH: &str = "/readyz";

/// Address a binary listens on (`host:port`).
pub const ENV_LISTEN_ADDR: &str = "PIXEL_LISTEN_ADDR";
/// Log format: `text` for people, `json` for log pipelines.
pub const ENV_LOG_FORMAT: &str = "PIXEL_LOG_FORMAT";
