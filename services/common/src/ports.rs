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

/// Every binary's default listen address: `[::]:port`, which `serve::bind` makes listen on
/// IPv6 and IPv4 alike (IPv4 only on a host without IPv6).
pub const fn listen_any(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
}
/// Log format: `text` for people, `json` for log pipelines.
pub const ENV_LOG_FORMAT: &str = "PIXEL_LOG_FORMAT";
/// Prometheus metrics path, served by every service.
pub const METRICS_PATH: &str = "/metrics";
/// The gateway's gauge of the WebSocket clients it holds, on its [`METRICS_PATH`]: the
/// tooling tells by it which gateway replica serves a client.
pub const GATEWAY_CONNECTIONS_METRIC: &str = "gateway_connections";

/// Redis's port (the `<canvas>-redis` StatefulSet).
pub const REDIS: u16 = 6379;

/// Defaults for a binary started on one machine (clap defaults must be literals): Redis and
/// canvas-api on loopback at their well-known ports ([`REDIS`], [`CANVAS_API`]).
pub const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const LOCAL_API_URL: &str = "http://127.0.0.1:3001";

// What the operator sets on the canvas-api and gateway pods (docs/protocol.md, Environment).

/// Redis URL, `redis://host:port[/db]`, without the password.
pub const ENV_REDIS_URL: &str = "PIXEL_REDIS_URL";
/// Redis password (from the canvas's Secret); unset when Redis has none.
pub const ENV_REDIS_PASSWORD: &str = "PIXEL_REDIS_PASSWORD";
/// How long one Redis command may take before the request fails with 503, in milliseconds.
pub const ENV_REDIS_TIMEOUT_MS: &str = "PIXEL_REDIS_TIMEOUT_MS";
/// Canvas width in pixels (`spec.canvas.width`).
pub const ENV_CANVAS_WIDTH: &str = "PIXEL_CANVAS_WIDTH";
/// Canvas height in pixels (`spec.canvas.height`).
pub const ENV_CANVAS_HEIGHT: &str = "PIXEL_CANVAS_HEIGHT";
/// Palette, comma-separated `#RRGGBB` (`spec.canvas.palette`).
pub const ENV_CANVAS_PALETTE: &str = "PIXEL_CANVAS_PALETTE";
/// Seconds a client waits between placements (`spec.canvas.cooldownSeconds`); 0 disables.
pub const ENV_CANVAS_COOLDOWN_SECONDS: &str = "PIXEL_CANVAS_COOLDOWN_SECONDS";
/// Seconds a person may undo their last placement (`spec.canvas.undoSeconds`); 0 disables.
pub const ENV_CANVAS_UNDO_SECONDS: &str = "PIXEL_CANVAS_UNDO_SECONDS";
/// `true` while the canvas is frozen (`spec.canvas.readOnly`).
pub const ENV_CANVAS_READ_ONLY: &str = "PIXEL_CANVAS_READ_ONLY";
/// When the canvas opens, RFC 3339 (`spec.canvas.schedule.start`); unset: open already.
pub const ENV_CANVAS_OPENS_AT: &str = "PIXEL_CANVAS_OPENS_AT";
/// When the canvas closes, RFC 3339 (`spec.canvas.schedule.end`); unset: never.
pub const ENV_CANVAS_CLOSES_AT: &str = "PIXEL_CANVAS_CLOSES_AT";
/// Placements per second one person (client id) may sustain across every connection and
/// replica; 0: no limit.
pub const ENV_PLACEMENT_RATE: &str = "PIXEL_PLACEMENT_RATE";
/// Placements one person may make at once (the rate's burst).
pub const ENV_PLACEMENT_BURST: &str = "PIXEL_PLACEMENT_BURST";
/// How many placements the history stream keeps.
pub const ENV_HISTORY_MAX_LEN: &str = "PIXEL_HISTORY_MAX_LEN";
/// The most placements one `GET /api/v1/history` answer carries.
pub const ENV_HISTORY_PAGE_MAX: &str = "PIXEL_HISTORY_PAGE_MAX";
/// How long canvas-api serves a cached snapshot before checking Redis's version, in ms.
pub const ENV_SNAPSHOT_MAX_AGE_MS: &str = "PIXEL_SNAPSHOT_MAX_AGE_MS";
/// The largest HTTP request body canvas-api reads, in bytes.
pub const ENV_MAX_BODY_BYTES: &str = "PIXEL_MAX_BODY_BYTES";

/// The header carrying the placing client's id (set by the gateway).
pub const CLIENT_ID_HEADER: &str = "x-client-id";
/// The header naming one placement, so that sending it again (the gateway's one retry after
/// a connection refused or reset) answers as the first time and places nothing: 1 to 64 of
/// `A-Z a-z 0-9 _ -`, unique per client for [`crate::redis_schema::PLACEMENT_KEY_TTL`].
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The credential canvas-api's placement endpoint requires of its caller, the gateway
/// (`Authorization: Bearer <token>`): a per-canvas random token from the `<canvas>-internal`
/// Secret, so nothing reachable through the Ingress can place a pixel.
pub const ENV_API_TOKEN: &str = "PIXEL_API_TOKEN";
/// The credential of the canvas's moderators on canvas-api's moderation API
/// (`Authorization: Bearer <token>`), from the `<canvas>-moderator` Secret; unset: no
/// moderation.
pub const ENV_MODERATOR_TOKEN: &str = "PIXEL_MODERATOR_TOKEN";
/// The shortest internal token the services accept.
pub const API_TOKEN_MIN_LEN: usize = 16;
/// Who acts, on a moderation request the gateway forwards for a signed-in moderator (their
/// handle); believed only with the moderator token.
pub const MODERATOR_HEADER: &str = "x-moderator";
/// The header carrying the canvas version of a snapshot.
pub const CANVAS_VERSION_HEADER: &str = "x-canvas-version";

/// canvas-api's placement endpoint (`POST`), which the gateway calls.
pub const API_PIXELS_PATH: &str = "/api/v1/pixels";
/// canvas-api's undo endpoint (`POST`): the caller's last placement, within the window.
pub const API_UNDO_PATH: &str = "/api/v1/pixels/undo";
/// canvas-api's batch placement endpoint (`POST`), the gateway's: the placements its
/// clients made together, one answer each.
pub const API_PIXELS_BATCH_PATH: &str = "/api/v1/pixels/batch";
/// The most placements one batch request carries (and one placement script call applies).
pub const PLACEMENT_BATCH_MAX: usize = 256;
/// canvas-api's history endpoint (`GET ?since=<version>`), which the gateway calls to resync.
pub const API_HISTORY_PATH: &str = "/api/v1/history";
/// canvas-api's info endpoint (`GET`).
pub const API_INFO_PATH: &str = "/api/v1/info";
/// canvas-api's snapshot endpoint (`GET`).
pub const API_CANVAS_PATH: &str = "/api/v1/canvas";
/// The moderation API's prefix.
pub const API_MODERATION_PATH: &str = "/api/v1/moderation";

/// canvas-api's base URL as the gateway reaches it (`http://host:port`).
pub const ENV_API_URL: &str = "PIXEL_API_URL";
/// WebSocket connections one gateway accepts (`spec.gateway.maxConnections`).
pub const ENV_MAX_CONNECTIONS: &str = "PIXEL_MAX_CONNECTIONS";

// The gateway (docs/protocol.md, WebSocket protocol). It also reads the Redis and canvas
// variables above, and ENV_API_URL and ENV_MAX_CONNECTIONS.

/// The gateway's WebSocket path.
pub const WS_PATH: &str = "/ws";
/// How long one gateway call to canvas-api may take, in milliseconds.
pub const ENV_API_TIMEOUT_MS: &str = "PIXEL_API_TIMEOUT_MS";
/// The largest WebSocket message (and frame) a client may send, in bytes.
pub const ENV_WS_MAX_MESSAGE_BYTES: &str = "PIXEL_WS_MAX_MESSAGE_BYTES";
/// Placements per second one connection may sustain (a token bucket's refill rate).
pub const ENV_WS_PLACEMENT_RATE: &str = "PIXEL_WS_PLACEMENT_RATE";
/// Placements one connection may send at once (the token bucket's size).
pub const ENV_WS_PLACEMENT_BURST: &str = "PIXEL_WS_PLACEMENT_BURST";
/// Rejected messages in a row (rate-limited or invalid) after which a connection is closed.
pub const ENV_WS_FLOOD_LIMIT: &str = "PIXEL_WS_FLOOD_LIMIT";
/// Origins allowed to open a WebSocket besides the gateway's own host; `*` allows any.
pub const ENV_WS_ALLOWED_ORIGINS: &str = "PIXEL_WS_ALLOWED_ORIGINS";
/// How often the gateway pings each client, in milliseconds.
pub const ENV_WS_PING_INTERVAL_MS: &str = "PIXEL_WS_PING_INTERVAL_MS";
/// How long a client may stay silent (no message, no pong) before it is closed, in ms.
pub const ENV_WS_IDLE_TIMEOUT_MS: &str = "PIXEL_WS_IDLE_TIMEOUT_MS";
/// How long one write to a client may block before the connection is dropped, in ms.
pub const ENV_WS_SEND_TIMEOUT_MS: &str = "PIXEL_WS_SEND_TIMEOUT_MS";
/// WebSocket connections one client address may hold at once (0: no limit).
pub const ENV_WS_MAX_CONNECTIONS_PER_ADDRESS: &str = "PIXEL_WS_MAX_CONNECTIONS_PER_ADDRESS";
/// Proxies (CIDRs) whose `X-Forwarded-For` names the client's address.
pub const ENV_WS_TRUSTED_PROXIES: &str = "PIXEL_WS_TRUSTED_PROXIES";
/// The proxies the gateway always believes, and all it believes by default: one in its own
/// pod (loopback). A private range is no proof of a proxy.
pub const LOOPBACK_PROXIES: &str = "127.0.0.0/8,::1/128";
/// How many update batches a client may fall behind before it is closed (4008).
pub const ENV_WS_CLIENT_QUEUE: &str = "PIXEL_WS_CLIENT_QUEUE";
/// How long the gateway gathers updates into one frame, in milliseconds (1..=50).
pub const ENV_WS_BATCH_MS: &str = "PIXEL_WS_BATCH_MS";
/// The most missed updates a reconnecting client is sent from history before it is told
/// to refetch the snapshot instead.
pub const ENV_WS_RESYNC_MAX: &str = "PIXEL_WS_RESYNC_MAX";
/// How often a gateway reports its connection count to Redis, in milliseconds.
pub const ENV_ONLINE_INTERVAL_MS: &str = "PIXEL_ONLINE_INTERVAL_MS";
/// How long a stopping gateway waits for its connections to close, in milliseconds.
pub const ENV_SHUTDOWN_GRACE_MS: &str = "PIXEL_SHUTDOWN_GRACE_MS";

// Identity (docs/protocol.md, Identity): the gateway's.

/// The key that signs identity cookies (at least 32 bytes), from the `<canvas>-internal`
/// Secret.
pub const ENV_IDENTITY_KEY: &str = "PIXEL_IDENTITY_KEY";
/// The key before the last rotation: cookies it signed still verify (and are signed anew).
pub const ENV_IDENTITY_KEY_PREVIOUS: &str = "PIXEL_IDENTITY_KEY_PREVIOUS";
/// The key of a rotation under way: it verifies (cookies a gateway that already signs with
/// it gave) but does not sign yet.
pub const ENV_IDENTITY_KEY_NEXT: &str = "PIXEL_IDENTITY_KEY_NEXT";
/// Whether identity cookies carry `Secure` (the canvas is served over TLS).
pub const ENV_IDENTITY_COOKIE_SECURE: &str = "PIXEL_IDENTITY_COOKIE_SECURE";
/// Identities one client address may be given per window, across every gateway.
pub const ENV_IDENTITY_ISSUE_LIMIT: &str = "PIXEL_IDENTITY_ISSUE_LIMIT";
/// The window of [`ENV_IDENTITY_ISSUE_LIMIT`], in seconds.
pub const ENV_IDENTITY_ISSUE_WINDOW_SECONDS: &str = "PIXEL_IDENTITY_ISSUE_WINDOW_SECONDS";

// Sign-in (docs/protocol.md, Sign-in): the gateway's OpenID Connect relying party. Sign-in
// mode is on when the issuer is set; identities are then only ever signed-in people.

/// The OpenID Connect issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
pub const ENV_OIDC_ISSUER: &str = "PIXEL_OIDC_ISSUER";
/// The client ID registered with the provider.
pub const ENV_OIDC_CLIENT_ID: &str = "PIXEL_OIDC_CLIENT_ID";
/// The client secret, from the Secret `spec.auth.clientSecretRef` names.
pub const ENV_OIDC_CLIENT_SECRET: &str = "PIXEL_OIDC_CLIENT_SECRET";
/// The callback URL registered with the provider: `<public origin>` + [`AUTH_CALLBACK_PATH`].
pub const ENV_OIDC_REDIRECT_URL: &str = "PIXEL_OIDC_REDIRECT_URL";
/// Email domains whose people may sign in, comma-separated (empty: any).
pub const ENV_OIDC_ALLOWED_EMAIL_DOMAINS: &str = "PIXEL_OIDC_ALLOWED_EMAIL_DOMAINS";
/// Groups whose members may sign in, comma-separated (empty: any).
pub const ENV_OIDC_ALLOWED_GROUPS: &str = "PIXEL_OIDC_ALLOWED_GROUPS";
/// Groups whose members moderate, comma-separated (empty: nobody signed in does).
pub const ENV_OIDC_MODERATOR_GROUPS: &str = "PIXEL_OIDC_MODERATOR_GROUPS";
/// Where the gateway serves the moderation API to signed-in moderators: this prefix and
/// the path below `/api/v1/moderation`.
pub const AUTH_MODERATION_PATH: &str = "/auth/moderation";
/// The claim that lists a person's groups.
pub const ENV_OIDC_GROUPS_CLAIM: &str = "PIXEL_OIDC_GROUPS_CLAIM";
/// Whether signed-out visitors may watch the canvas.
pub const ENV_OIDC_WATCHERS_ALLOWED: &str = "PIXEL_OIDC_WATCHERS_ALLOWED";
/// How long a sign-in lasts, in seconds.
pub const ENV_OIDC_SESSION_SECONDS: &str = "PIXEL_OIDC_SESSION_SECONDS";
/// Starts a sign-in; `?next=` says where to come back to.
pub const AUTH_LOGIN_PATH: &str = "/auth/login";
/// Where the provider sends the browser back with the authorization code.
pub const AUTH_CALLBACK_PATH: &str = "/auth/callback";
/// Signs out (`POST`).
pub const AUTH_LOGOUT_PATH: &str = "/auth/logout";
/// The prefix the Ingress routes to the gateway for the three above.
pub const AUTH_PATH_PREFIX: &str = "/auth";
/// Tests: the OpenID Connect provider binary the sign-in browser test runs (`cargo xtask
/// test` builds it and sets this).
pub const ENV_TEST_OIDC_PROVIDER: &str = "PIXEL_TEST_OIDC_PROVIDER";

/// Tests: the S3-compatible server the backup tests run (s3s-fs, which `cargo xtask test`
/// installs and names here).
pub const ENV_TEST_S3_SERVER: &str = "PIXEL_TEST_S3_SERVER";

// The frontend (docs/protocol.md, Frontend): where the page finds the API and the gateway.

/// The API base URL the page uses: a path on the page's own origin (`/api/v1`, behind the
/// Ingress) or an absolute `http(s)://` URL.
pub const ENV_PUBLIC_API_URL: &str = "PIXEL_PUBLIC_API_URL";
/// The WebSocket URL the page opens: a path on the page's own origin (`/ws`) or an absolute
/// `ws(s)://` URL.
pub const ENV_PUBLIC_WS_URL: &str = "PIXEL_PUBLIC_WS_URL";

/// Origins whose pages may call canvas-api from a browser (CORS), comma-separated.
pub const ENV_CORS_ALLOWED_ORIGINS: &str = "PIXEL_CORS_ALLOWED_ORIGINS";

// Backups (docs/protocol.md, Backups): `backup upload` in the backup Job, `backup restore`
// in the Redis pod of a canvas restored from one. The store's settings are both's.

/// The S3-compatible endpoint (`http(s)://host[:port]`).
pub const ENV_BACKUP_ENDPOINT: &str = "PIXEL_BACKUP_ENDPOINT";
/// The bucket.
pub const ENV_BACKUP_BUCKET: &str = "PIXEL_BACKUP_BUCKET";
/// The prefix of the canvas's objects in the bucket (ends with `/`, or is empty).
pub const ENV_BACKUP_PREFIX: &str = "PIXEL_BACKUP_PREFIX";
/// The region the endpoint signs for.
pub const ENV_BACKUP_REGION: &str = "PIXEL_BACKUP_REGION";
/// The access key ID, from the Secret the canvas names.
pub const ENV_BACKUP_ACCESS_KEY_ID: &str = "PIXEL_BACKUP_ACCESS_KEY_ID";
/// The secret access key, from the same Secret.
pub const ENV_BACKUP_SECRET_ACCESS_KEY: &str = "PIXEL_BACKUP_SECRET_ACCESS_KEY";
/// How many backups to keep; older ones are deleted after an upload.
pub const ENV_BACKUP_RETENTION: &str = "PIXEL_BACKUP_RETENTION";
/// The RDB file to upload (written by the Job's dump container).
pub const ENV_BACKUP_FILE: &str = "PIXEL_BACKUP_FILE";
/// The file holding the canvas version the RDB file holds (written beside it).
pub const ENV_BACKUP_VERSION_FILE: &str = "PIXEL_BACKUP_VERSION_FILE";
/// Where the upload writes its [`crate::backup::BackupRecord`] (the termination message).
pub const ENV_BACKUP_RESULT_FILE: &str = "PIXEL_BACKUP_RESULT_FILE";
/// The host of the canvas's Redis, for the backup Job's dump step.
pub const ENV_BACKUP_REDIS_HOST: &str = "PIXEL_BACKUP_REDIS_HOST";
/// Its port.
pub const ENV_BACKUP_REDIS_PORT: &str = "PIXEL_BACKUP_REDIS_PORT";
/// The backup a restore starts from: `latest` or an object's key.
pub const ENV_RESTORE_FROM: &str = "PIXEL_RESTORE_FROM";
/// Redis's data directory, which a restore fills when it holds no data yet.
pub const ENV_RESTORE_DATA_DIR: &str = "PIXEL_RESTORE_DATA_DIR";

// The operator (config/manager sets some of them).

/// Whether the operator joins a leader election (`true`) or leads alone.
pub const ENV_LEADER_ELECT: &str = "PIXEL_LEADER_ELECT";
/// The Lease the operator's replicas elect their leader on.
pub const ENV_LEASE_NAME: &str = "PIXEL_LEASE_NAME";
/// Seconds a lease stays valid without renewal.
pub const ENV_LEASE_DURATION_SECONDS: &str = "PIXEL_LEASE_DURATION_SECONDS";
/// The one namespace the operator watches; all when unset.
pub const ENV_WATCH_NAMESPACE: &str = "PIXEL_WATCH_NAMESPACE";
/// Canvases the operator reconciles at once.
pub const ENV_MAX_CONCURRENT_RECONCILES: &str = "PIXEL_MAX_CONCURRENT_RECONCILES";
/// How long the operator gathers changes to one canvas before reconciling it, in ms.
pub const ENV_RECONCILE_DEBOUNCE_MS: &str = "PIXEL_RECONCILE_DEBOUNCE_MS";
/// The Redis image of canvases that leave `spec.redis.image` unset.
pub const ENV_DEFAULT_REDIS_IMAGE: &str = "PIXEL_DEFAULT_REDIS_IMAGE";
/// The image repository of canvases that leave `spec.image.repository` unset.
pub const ENV_IMAGE_REPOSITORY: &str = "PIXEL_IMAGE_REPOSITORY";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_defaults_use_the_well_known_ports() {
        assert!(LOCAL_REDIS_URL.ends_with(&format!(":{REDIS}")));
        assert!(LOCAL_API_URL.ends_with(&format!(":{CANVAS_API}")));
    }
}
