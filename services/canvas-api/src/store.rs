//! The canvas in Redis. Every placement is one Lua script, so it is atomic: cooldown check,
//! pixel, version, per-pixel record, history entry and publication happen together or not
//! at all, whichever API replica runs it. Every command is bounded by a timeout.

use std::{future::Future, time::Duration};

use pixel_common::{
    identity::public_name,
    redis_schema::{
        AUDIT_KEY, BANS_KEY, COOLDOWN_KEY_PREFIX, HISTORY_KEY, NAMES_KEY, PIXELS_KEY, PLACED_KEY,
        PLACEMENT_KEY_PREFIX, PLACEMENT_KEY_TTL, RATE_KEY_PREFIX, UNDO_KEY_PREFIX, UPDATES_CHANNEL,
        VERSION_KEY,
    },
};
use redis::{
    AsyncCommands, Client, IntoConnectionInfo, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream},
    streams::{StreamId, StreamRangeReply},
};

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis configuration")]
    Config(#[source] RedisError),
    #[error("Redis command failed")]
    Redis(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis holds unexpected data: {0}")]
    Corrupt(String),
    #[error("Redis failed the placement: {0}")]
    Script(String),
    /// The batch a placement went in failed as a whole; every placement in it sees this.
    #[error("the placement's batch failed")]
    Batch(#[source] std::sync::Arc<StoreError>),
    #[error("the placement queue is closed")]
    QueueClosed,
}

/// Each script trims the history stream to its length approximately (`MAXLEN ~`: whole
/// stream nodes at a time, at least that many entries kept) once it keeps 1,000 or more:
/// trimming one entry per placement was a large share of the script's time. A shorter
/// history is trimmed exactly, so it never keeps a node's worth (100) more than asked.
///
/// Applies a batch of placements (group commit: one script call for the placements that
/// reached one API replica together), one after the other, each exactly as if it came
/// alone: a placement sees the cooldown, rate, undo record and idempotency answer of those
/// before it in the batch. For each one: sets the pixel, bumps the version, records who
/// placed it, appends to the history stream (with the colour it replaced, for rollbacks)
/// and publishes the update (one message per placement, as the subscribers read it). First
/// refuses a banned client (by its public name), then enforces its placement rate (GCRA:
/// the key holds the theoretical arrival time, in µs, of its placements; `burst`
/// placements at once, then one per `interval`), then its cooldown with `SET NX PX`; a
/// refused placement consumes neither. A shadow-banned client is answered as if placed
/// (the current version, its rate and cooldown consumed) and nothing is written but an
/// undo record of version 0, so that its undo is answered like anyone's. With an undo
/// window, keeps what the placement replaced (colour and record) under the client's undo
/// key for [`UNDO_SCRIPT`]. With an idempotency key, an accepted placement's answer is kept
/// under it for `ARGV[7]` ms and a placement naming it again, while it lives, is given that
/// answer and changes nothing; a refused one keeps nothing (a retry is refused or accepted
/// afresh). Checked after the ban, so a ban in between holds.
///
/// `KEYS`: pixels, version, records, history, bans, then per placement its cooldown, undo,
/// rate and idempotency keys. `ARGV`: cooldown (ms), history length, channel, undo window
/// (ms), rate interval (µs), burst, idempotency TTL (ms), then per placement its index,
/// colour, client id, x, y, public name and `1` when it has an idempotency key (else
/// empty). Answers one reply per placement, in order: `{1, version, placed_at_ms}`,
/// `{0, retry_after_ms}` (cooldown), `{2, retry_after_ms}` (rate), `{3}` (banned), or
/// `{4, error}` when Redis failed the placement. A failure before the placement's first
/// write (the pixel) fails it alone and the others still apply; one after it (the history
/// or records key of the wrong type, a stream ahead of the version) has written part of it,
/// which Redis does not undo, so every placement after it in the batch gets the same `{4,
/// error}` unattempted: each would otherwise take a version and fail the same way, one gap
/// in the versions instead of one per placement.
pub const PLACE_SCRIPT: &str = r"
local function trim(kept) if tonumber(kept) >= 1000 then return '~' end return '=' end
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local ms = string.format('%d', math.floor(now_us / 1000))
local cooldown, history, channel = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local undo = tonumber(ARGV[4])
local interval, burst, answer_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local trimming = trim(history)
local writing = false
local function place(cooldown_key, undo_key, rate_key, answer_key, index, colour, client, x, y,
    name, keyed)
  local ban = redis.call('HGET', KEYS[5], name)
  if ban == 'ban' then return {3} end
  if keyed ~= '' then
    local answered = redis.call('GET', answer_key)
    if answered then
      local version, at = string.match(answered, '^(%d+) (%d+)$')
      return {1, tonumber(version), tonumber(at)}
    end
  end
  local next_arrival
  if interval > 0 then
    local arrival = tonumber(redis.call('GET', rate_key) or now_us)
    if arrival < now_us then arrival = now_us end
    next_arrival = arrival + interval
    local early = next_arrival - now_us - burst * interval
    if early > 0 then return {2, math.ceil(early / 1000)} end
  end
  if cooldown > 0 and not redis.call('SET', cooldown_key, '1', 'NX', 'PX', cooldown) then
    local left = redis.call('PTTL', cooldown_key)
    if left < 1 then left = 1 end
    return {0, left}
  end
  if next_arrival then
    redis.call('SET', rate_key, string.format('%d', next_arrival), 'PX',
      math.ceil((next_arrival - now_us) / 1000))
  end
  if ban == 'shadow' then
    if undo > 0 then
      local shown = redis.call('BITFIELD', KEYS[1], 'GET', 'u8', '#' .. index)[1]
      redis.call('SET', undo_key, index .. ' ' .. x .. ' ' .. y .. ' 0 ' .. shown .. ' ', 'PX',
        undo)
    end
    return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ms)}
  end
  writing = true
  local previous = redis.call('BITFIELD', KEYS[1], 'SET', 'u8', '#' .. index, colour)[1]
  local version = string.format('%d', redis.call('INCR', KEYS[2]))
  local record = undo > 0 and redis.call('HGET', KEYS[3], index)
  redis.call('HSET', KEYS[3], index, version .. ' ' .. ms .. ' ' .. client)
  redis.call('XADD', KEYS[4], 'MAXLEN', trimming, history, version .. '-0',
    'x', x, 'y', y, 'c', colour, 'id', client, 't', ms, 'p', previous)
  redis.call('PUBLISH', channel, version .. ' ' .. x .. ' ' .. y .. ' ' .. colour)
  if undo > 0 then
    redis.call('SET', undo_key, index .. ' ' .. x .. ' ' .. y .. ' ' .. version .. ' ' ..
      previous .. ' ' .. (record or ''), 'PX', undo)
  end
  if keyed ~= '' then
    redis.call('SET', answer_key, version .. ' ' .. ms, 'PX', answer_ttl)
  end
  return {1, tonumber(version), tonumber(ms)}
end
local replies, failed = {}, nil
for i = 0, (#KEYS - 5) / 4 - 1 do
  local k, a = 5 + 4 * i, 7 + 7 * i
  local reply = failed
  if not reply then
    writing = false
    local ok
    ok, reply = pcall(place, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4],
      ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
    if not ok then
      if type(reply) == 'table' then reply = reply.err end
      reply = {4, tostring(reply)}
      if writing then failed = reply end
    end
  end
  replies[i + 1] = reply
end
return replies
";

/// Undoes the client's last placement if it is still within the window and still the
/// pixel's last: the old colour and record come back as a new version (history entry of
/// kind `u`, published like any placement) and the cooldown is refunded. One undo per
/// placement; none for a banned client. A shadow-banned client's undo is answered as done
/// (the colour it had, the current version, the cooldown refunded) and writes nothing, so
/// the ban stays invisible; a shadow placement's record (version 0) outlives no ban. Returns `{1, version, placed_at_ms, x, y, colour}`,
/// `{0}` (nothing to undo), `{2}` (the pixel was placed over since) or `{3}` (banned).
const UNDO_SCRIPT: &str = r"
local function trim(kept) if tonumber(kept) >= 1000 then return '~' end return '=' end
local ban = redis.call('HGET', KEYS[7], ARGV[4])
if ban == 'ban' then return {3} end
local kept = redis.call('GET', KEYS[6])
if not kept then return {0} end
redis.call('DEL', KEYS[6])
local undo = {}
undo.i, undo.x, undo.y, undo.v, undo.c, undo.r =
  string.match(kept, '^(%d+) (%d+) (%d+) (%d+) (%d+) (.*)$')
if not undo.i then return redis.error_reply('corrupt undo record ' .. kept) end
local now = redis.call('TIME')
local ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
if ban == 'shadow' then
  redis.call('DEL', KEYS[5])
  return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ms), tonumber(undo.x),
    tonumber(undo.y), tonumber(undo.c)}
end
if undo.v == '0' then return {0} end
local current = redis.call('HGET', KEYS[3], undo.i)
if not current or string.match(current, '^%d+') ~= undo.v then return {2} end
local previous = redis.call('BITFIELD', KEYS[1], 'SET', 'u8', '#' .. undo.i, undo.c)[1]
local version = string.format('%d', redis.call('INCR', KEYS[2]))
if undo.r == '' then
  redis.call('HDEL', KEYS[3], undo.i)
else
  redis.call('HSET', KEYS[3], undo.i, undo.r)
end
redis.call('XADD', KEYS[4], 'MAXLEN', trim(ARGV[2]), ARGV[2], version .. '-0',
  'x', undo.x, 'y', undo.y, 'c', undo.c, 'id', ARGV[1], 't', ms, 'p', previous, 'k', 'u')
redis.call('PUBLISH', ARGV[3], version .. ' ' .. undo.x .. ' ' .. undo.y .. ' ' .. undo.c)
redis.call('DEL', KEYS[5])
return {1, tonumber(version), tonumber(ms), tonumber(undo.x), tonumber(undo.y), tonumber(undo.c)}
";

/// Applies a moderator's rollback: for each `index x y colour expected` group of ARGV
/// (after `by`, the history length and the channel), sets the pixel to `colour` as a new
/// version attributed to `by` (history kind `r`) unless its colour is no longer `expected`
/// (someone placed there since the rollback was planned: theirs stands). Returns
/// `{applied, skipped, version}`.
const ROLLBACK_SCRIPT: &str = r"
local function trim(kept) if tonumber(kept) >= 1000 then return '~' end return '=' end
local now = redis.call('TIME')
local ms = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local applied, skipped = 0, 0
for i = 4, #ARGV, 5 do
  local index, x, y, colour, expected = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local current = redis.call('BITFIELD', KEYS[1], 'GET', 'u8', '#' .. index)[1]
  if tostring(current) ~= expected then
    skipped = skipped + 1
  else
    redis.call('BITFIELD', KEYS[1], 'SET', 'u8', '#' .. index, colour)
    local version = string.format('%d', redis.call('INCR', KEYS[2]))
    redis.call('HSET', KEYS[3], index, version .. ' ' .. ms .. ' ' .. ARGV[1])
    redis.call('XADD', KEYS[4], 'MAXLEN', trim(ARGV[2]), ARGV[2], version .. '-0',
      'x', x, 'y', y, 'c', colour, 'id', ARGV[1], 't', ms, 'p', current, 'k', 'r')
    redis.call('PUBLISH', ARGV[3], version .. ' ' .. x .. ' ' .. y .. ' ' .. colour)
    applied = applied + 1
  end
end
return {applied, skipped, tonumber(redis.call('GET', KEYS[2]) or '0')}
";

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub password: Option<String>,
    pub timeout: Duration,
}

/// A placement to apply: already checked against the canvas and palette.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub index: usize,
    pub x: u16,
    pub y: u16,
    pub color: u8,
    pub client_id: String,
    /// Names the placement: a second one with the same key from the same client, within
    /// [`PLACEMENT_KEY_TTL`], is answered as the first was and places nothing.
    pub idempotency_key: Option<String>,
}

/// The canvas's rules every placement of a batch is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementRules {
    pub cooldown: Duration,
    /// How long the client may undo it; zero keeps no undo record.
    pub undo_window: Duration,
    /// The client's placement rate: one per `interval` (zero: unlimited), `burst` at once.
    pub rate: PlacementRate,
    pub history_max_len: u32,
}

/// How fast one client may place, across every connection and replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementRate {
    /// The time one placement costs; zero: no limit.
    pub interval: Duration,
    /// Placements at once.
    pub burst: u32,
}

/// The keys and arguments of a script call, in the script's order, as Redis receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl ScriptCall {
    /// [`PLACE_SCRIPT`]'s call for `batch`, in order: what [`Store::place_batch`] sends, and
    /// what the benchmark has `redis-benchmark` send (`EVALSHA`) to measure the script alone.
    pub fn of_batch(rules: &PlacementRules, batch: &[Placement]) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut keys = Vec::with_capacity(5 + 4 * batch.len());
        keys.extend(
            [PIXELS_KEY, VERSION_KEY, PLACED_KEY, HISTORY_KEY, BANS_KEY].map(str::to_owned),
        );
        let mut args = Vec::with_capacity(7 + 7 * batch.len());
        args.extend([
            millis(rules.cooldown).to_string(),
            rules.history_max_len.to_string(),
            UPDATES_CHANNEL.to_owned(),
            millis(rules.undo_window).to_string(),
            u64::try_from(rules.rate.interval.as_micros())
                .unwrap_or(u64::MAX)
                .to_string(),
            rules.rate.burst.to_string(),
            millis(PLACEMENT_KEY_TTL).to_string(),
        ]);
        for placement in batch {
            let client = placement.client_id.as_str();
            keys.extend([
                format!("{COOLDOWN_KEY_PREFIX}{client}"),
                format!("{UNDO_KEY_PREFIX}{client}"),
                format!("{RATE_KEY_PREFIX}{client}"),
                match &placement.idempotency_key {
                    Some(key) => format!("{PLACEMENT_KEY_PREFIX}{client}:{key}"),
                    // Unused by the script; a key of this canvas all the same (cluster slots).
                    None => PLACEMENT_KEY_PREFIX.to_owned(),
                },
            ]);
            args.extend([
                placement.index.to_string(),
                placement.color.to_string(),
                client.to_owned(),
                placement.x.to_string(),
                placement.y.to_string(),
                public_name(client),
                if placement.idempotency_key.is_some() {
                    "1".to_owned()
                } else {
                    String::new()
                },
            ]);
        }
        Self { keys, args }
    }
}

/// What Redis decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Accepted {
        version: u64,
        placed_at_ms: u64,
    },
    InCooldown {
        retry_after_ms: u64,
    },
    RateLimited {
        retry_after_ms: u64,
    },
    /// The client is banned from placing.
    Banned,
}

/// What an undo did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// The pixel got its old colour back as `version`.
    Undone {
        version: u64,
        placed_at_ms: u64,
        x: u16,
        y: u16,
        color: u8,
    },
    /// No placement of this client within the window (or it was undone already).
    NothingToUndo,
    /// The pixel was placed over since, so the placement is no longer there to undo.
    Superseded,
    /// The client is banned from placing.
    Banned,
}

/// One pixel a rollback sets: to `color`, unless it no longer has `expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub index: usize,
    pub x: u16,
    pub y: u16,
    pub color: u8,
    pub expected: u8,
}

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolledBack {
    pub applied: u64,
    /// Changes not made: someone placed on the pixel after the rollback was planned.
    pub skipped: u64,
    /// The canvas version after the last batch.
    pub version: u64,
}

/// A ban: placements refused (`banned`), or, shadow, answered as placed and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanKind {
    Ban,
    Shadow,
}

impl BanKind {
    fn stored(self) -> &'static str {
        match self {
            Self::Ban => "ban",
            Self::Shadow => "shadow",
        }
    }
}

/// One moderation action in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch, by Redis's clock.
    pub at_ms: u64,
    /// Who did it.
    pub by: String,
    /// `ban`, `unban` or `rollback`.
    pub action: String,
    /// What exactly, as the request gave it and with its result.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Changes per rollback script: each batch is atomic; between them placements go on.
const ROLLBACK_BATCH: usize = 500;
/// Moderation actions the audit log keeps.
const AUDIT_MAX_LEN: usize = 10_000;

/// Who last placed a pixel, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedRecord {
    pub version: u64,
    pub placed_at_ms: u64,
    pub client_id: String,
}

/// What made a history entry.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A person placed the pixel.
    #[default]
    Place,
    /// A person undid their previous placement there.
    Undo,
    /// A moderator's rollback set it.
    Rollback,
}

/// A placement in the history (also its JSON form in `GET /api/v1/history`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub version: u64,
    pub x: u16,
    pub y: u16,
    pub color: u8,
    /// Who placed it, as shown publicly: an identity's handle, never the identity.
    pub placed_by: String,
    pub placed_at_ms: u64,
    #[serde(default)]
    pub kind: EntryKind,
    /// The colour this entry replaced (not served: rollbacks read it); `None` in entries
    /// written before it was recorded.
    #[serde(skip)]
    pub previous: Option<u8>,
}

/// A handle on the canvas in Redis; cheap to clone. Connects lazily and reconnects by
/// itself, so the service starts (unready) while Redis is down.
#[derive(Clone)]
pub struct Store {
    client: Client,
    conn: ConnectionManager,
    timeout: Duration,
    place: Script,
    undo: Script,
    rollback: Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Must be called inside a Tokio runtime. Does not connect yet.
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(StoreError::Config)?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(StoreError::Config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(config.timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(StoreError::Config)?;
        Ok(Self {
            client,
            conn,
            timeout: config.timeout,
            place: Script::new(PLACE_SCRIPT),
            undo: Script::new(UNDO_SCRIPT),
            rollback: Script::new(ROLLBACK_SCRIPT),
        })
    }

    async fn bounded<T>(
        &self,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        // Two round trips at most (EVALSHA, then EVAL when the script is not cached yet).
        match tokio::time::timeout(self.timeout * 2, command).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout * 2)),
        }
    }

    /// A new connection subscribed to the update channel, split into the half that sends
    /// commands (PING) and the stream of messages.
    pub async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), StoreError> {
        self.bounded(async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(UPDATES_CHANNEL).await?;
            Ok((sink, stream))
        })
        .await
    }

    /// PING on a subscribed connection: its answer comes after every message published
    /// before Redis read the PING.
    pub async fn ping_subscription(&self, sink: &mut PubSubSink) -> Result<(), StoreError> {
        self.bounded(sink.ping::<redis::Value>()).await.map(drop)
    }

    /// PING: is Redis there and answering?
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// The current canvas version (0 before the first placement).
    pub async fn version(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let version: Option<u64> = self.bounded(conn.get(VERSION_KEY)).await?;
        Ok(version.unwrap_or(0))
    }

    /// The version and the raw pixel string, read atomically.
    pub async fn read_canvas(&self) -> Result<(u64, Vec<u8>), StoreError> {
        let mut conn = self.conn.clone();
        let (version, pixels): (Option<u64>, Option<Vec<u8>>) = self
            .bounded(
                redis::pipe()
                    .atomic()
                    .get(VERSION_KEY)
                    .get(PIXELS_KEY)
                    .query_async(&mut conn),
            )
            .await?;
        Ok((version.unwrap_or(0), pixels.unwrap_or_default()))
    }

    /// Applies `batch` in order in one atomic script call (see [`PLACE_SCRIPT`]): one answer
    /// per placement, in order. `Err` when Redis failed the call as a whole (nothing of it
    /// was applied, or its answer was lost); an inner `Err` when Redis failed that placement
    /// alone.
    pub async fn place_batch(
        &self,
        rules: &PlacementRules,
        batch: &[Placement],
    ) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let call = ScriptCall::of_batch(rules, batch);
        let mut invocation = self.place.prepare_invoke();
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg);
        }
        let replies: Vec<Vec<redis::Value>> =
            self.bounded(invocation.invoke_async(&mut conn)).await?;
        if replies.len() != batch.len() {
            return Err(StoreError::Corrupt(format!(
                "placement script answered {} replies for {} placements",
                replies.len(),
                batch.len()
            )));
        }
        Ok(replies.iter().map(|reply| placed(reply)).collect())
    }

    /// Undoes `client_id`'s last placement (see [`UNDO_SCRIPT`]).
    pub async fn undo(&self, client_id: &str, history_max_len: u32) -> Result<Undo, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.undo.prepare_invoke();
        invocation
            .key(PIXELS_KEY)
            .key(VERSION_KEY)
            .key(PLACED_KEY)
            .key(HISTORY_KEY)
            .key(format!("{COOLDOWN_KEY_PREFIX}{client_id}"))
            .key(format!("{UNDO_KEY_PREFIX}{client_id}"))
            .key(BANS_KEY)
            .arg(client_id)
            .arg(history_max_len)
            .arg(UPDATES_CHANNEL)
            .arg(public_name(client_id));
        let reply: Vec<u64> = self.bounded(invocation.invoke_async(&mut conn)).await?;
        let narrow = |value: u64| {
            u16::try_from(value)
                .map_err(|_| StoreError::Corrupt(format!("undo script answered {reply:?}")))
        };
        match reply.as_slice() {
            [1, version, placed_at_ms, x, y, color] => Ok(Undo::Undone {
                version: *version,
                placed_at_ms: *placed_at_ms,
                x: narrow(*x)?,
                y: narrow(*y)?,
                color: u8::try_from(narrow(*color)?)
                    .map_err(|_| StoreError::Corrupt(format!("undo colour {color}")))?,
            }),
            [0] => Ok(Undo::NothingToUndo),
            [2] => Ok(Undo::Superseded),
            [3] => Ok(Undo::Banned),
            other => Err(StoreError::Corrupt(format!(
                "undo script answered {other:?}"
            ))),
        }
    }

    /// The colour at a pixel index and the record of its last placement, read atomically.
    pub async fn pixel(&self, index: usize) -> Result<(u8, Option<PlacedRecord>), StoreError> {
        let mut conn = self.conn.clone();
        let offset = isize::try_from(index).unwrap_or(isize::MAX);
        let (color, record): (Vec<u8>, Option<String>) = self
            .bounded(
                redis::pipe()
                    .atomic()
                    .getrange(PIXELS_KEY, offset, offset)
                    .hget(PLACED_KEY, index)
                    .query_async(&mut conn),
            )
            .await?;
        let record = record.map(|r| parse_record(&r)).transpose()?;
        Ok((color.first().copied().unwrap_or(0), record))
    }

    /// The display name the gateway recorded for a signed-in identity at its last sign-in.
    pub async fn display_name(&self, client_id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(
            redis::cmd("HGET")
                .arg(NAMES_KEY)
                .arg(client_id)
                .query_async(&mut conn),
        )
        .await
    }

    /// The current version and up to `limit` history entries with versions above `since`,
    /// read atomically.
    pub async fn history(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<(u64, Vec<HistoryEntry>), StoreError> {
        let mut conn = self.conn.clone();
        let start = since
            .checked_add(1)
            .map_or_else(|| "+".to_owned(), |v| format!("{v}-0"));
        let (version, range): (Option<u64>, StreamRangeReply) = self
            .bounded(
                redis::pipe()
                    .atomic()
                    .get(VERSION_KEY)
                    .xrange_count(HISTORY_KEY, start, "+", limit)
                    .query_async(&mut conn),
            )
            .await?;
        let entries = range
            .ids
            .iter()
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((version.unwrap_or(0), entries))
    }
}

impl Store {
    /// Applies a rollback's changes in atomic batches (see [`ROLLBACK_SCRIPT`]), as
    /// placements attributed to `by`.
    pub async fn roll_back(
        &self,
        by: &str,
        changes: &[Change],
        history_max_len: u32,
    ) -> Result<RolledBack, StoreError> {
        let mut total = RolledBack {
            version: self.version().await?,
            ..RolledBack::default()
        };
        for batch in changes.chunks(ROLLBACK_BATCH) {
            let mut conn = self.conn.clone();
            let mut invocation = self.rollback.prepare_invoke();
            invocation
                .key(PIXELS_KEY)
                .key(VERSION_KEY)
                .key(PLACED_KEY)
                .key(HISTORY_KEY)
                .arg(by)
                .arg(history_max_len)
                .arg(UPDATES_CHANNEL);
            for change in batch {
                invocation
                    .arg(change.index)
                    .arg(change.x)
                    .arg(change.y)
                    .arg(change.color)
                    .arg(change.expected);
            }
            let reply: Vec<u64> = self.bounded(invocation.invoke_async(&mut conn)).await?;
            let [applied, skipped, version] = reply.as_slice() else {
                return Err(StoreError::Corrupt(format!(
                    "rollback script answered {reply:?}"
                )));
            };
            total.applied += applied;
            total.skipped += skipped;
            total.version = *version;
        }
        Ok(total)
    }

    /// Every history entry with a version above `since`, oldest first, read page by page.
    pub async fn history_after(&self, since: u64) -> Result<Vec<HistoryEntry>, StoreError> {
        const PAGE: usize = 1000;
        let mut entries: Vec<HistoryEntry> = Vec::new();
        let mut after = since;
        loop {
            let (_, page) = self.history(after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(entries);
            };
            after = last.version;
            let full = page.len() == PAGE;
            entries.extend(page);
            if !full {
                return Ok(entries);
            }
        }
    }

    /// The oldest history entry kept, if any.
    pub async fn oldest_entry(&self) -> Result<Option<HistoryEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let range: StreamRangeReply = self
            .bounded(conn.xrange_count(HISTORY_KEY, "-", "+", 1))
            .await?;
        range.ids.first().map(parse_entry).transpose()
    }

    /// Bans `player` (a public name).
    pub async fn ban(&self, player: &str, kind: BanKind) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hset::<_, _, _, ()>(BANS_KEY, player, kind.stored()))
            .await
    }

    /// Lifts `player`'s ban; false when there was none.
    pub async fn unban(&self, player: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let removed: u64 = self.bounded(conn.hdel(BANS_KEY, player)).await?;
        Ok(removed > 0)
    }

    /// Every ban, by player.
    pub async fn bans(&self) -> Result<Vec<(String, BanKind)>, StoreError> {
        let mut conn = self.conn.clone();
        let all: std::collections::BTreeMap<String, String> =
            self.bounded(conn.hgetall(BANS_KEY)).await?;
        all.into_iter()
            .map(|(player, kind)| match kind.as_str() {
                "ban" => Ok((player, BanKind::Ban)),
                "shadow" => Ok((player, BanKind::Shadow)),
                other => Err(StoreError::Corrupt(format!("ban {other:?} of {player}"))),
            })
            .collect()
    }

    /// Appends a moderation action to the audit log (stamped by Redis's clock).
    pub async fn audit(
        &self,
        by: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let detail = detail.to_string();
        self.bounded(
            redis::cmd("XADD")
                .arg(AUDIT_KEY)
                .arg("MAXLEN")
                .arg("~")
                .arg(AUDIT_MAX_LEN)
                .arg("*")
                .arg("by")
                .arg(by)
                .arg("action")
                .arg(action)
                .arg("detail")
                .arg(detail)
                .query_async::<()>(&mut conn),
        )
        .await
    }

    /// The newest `limit` moderation actions, newest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.conn.clone();
        let range: StreamRangeReply = self
            .bounded(conn.xrevrange_count(AUDIT_KEY, "+", "-", limit))
            .await?;
        range
            .ids
            .iter()
            .map(|entry| {
                let corrupt = || StoreError::Corrupt(format!("audit entry {}", entry.id));
                let at_ms = entry
                    .id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(corrupt)?;
                let detail: String = entry.get("detail").ok_or_else(corrupt)?;
                Ok(AuditEntry {
                    at_ms,
                    by: entry.get("by").ok_or_else(corrupt)?,
                    action: entry.get("action").ok_or_else(corrupt)?,
                    detail: serde_json::from_str(&detail).map_err(|_| corrupt())?,
                })
            })
            .collect()
    }
}

/// One placement's reply from [`PLACE_SCRIPT`].
fn placed(reply: &[redis::Value]) -> Result<Placed, StoreError> {
    let number = |value: &redis::Value| match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let numbers: Option<Vec<u64>> = reply.iter().map(number).collect();
    match numbers.as_deref() {
        Some([1, version, placed_at_ms]) => Ok(Placed::Accepted {
            version: *version,
            placed_at_ms: *placed_at_ms,
        }),
        Some([0, retry_after_ms]) => Ok(Placed::InCooldown {
            retry_after_ms: *retry_after_ms,
        }),
        Some([2, retry_after_ms]) => Ok(Placed::RateLimited {
            retry_after_ms: *retry_after_ms,
        }),
        Some([3]) => Ok(Placed::Banned),
        _ => match reply {
            [redis::Value::Int(4), redis::Value::BulkString(error)] => Err(StoreError::Script(
                String::from_utf8_lossy(error).into_owned(),
            )),
            other => Err(StoreError::Corrupt(format!(
                "placement script answered {other:?}"
            ))),
        },
    }
}

fn parse_record(record: &str) -> Result<PlacedRecord, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("pixel record {record:?}"));
    let mut parts = record.splitn(3, ' ');
    let mut next = || parts.next().ok_or_else(corrupt);
    Ok(PlacedRecord {
        version: next()?.parse().map_err(|_| corrupt())?,
        placed_at_ms: next()?.parse().map_err(|_| corrupt())?,
        client_id: next()?.to_owned(),
    })
}

fn parse_entry(entry: &StreamId) -> Result<HistoryEntry, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("history entry {}", entry.id));
    let version = entry
        .id
        .strip_suffix("-0")
        .and_then(|v| v.parse().ok())
        .ok_or_else(corrupt)?;
    Ok(HistoryEntry {
        version,
        x: entry.get("x").ok_or_else(corrupt)?,
        y: entry.get("y").ok_or_else(corrupt)?,
        color: entry.get("c").ok_or_else(corrupt)?,
        placed_by: public_name(&entry.get::<String>("id").ok_or_else(corrupt)?),
        placed_at_ms: entry.get("t").ok_or_else(corrupt)?,
        kind: match entry.get::<String>("k").as_deref() {
            None => EntryKind::Place,
            Some("u") => EntryKind::Undo,
            Some("r") => EntryKind::Rollback,
            Some(_) => return Err(corrupt()),
        },
        previous: entry.get("p"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `KEYS[n]` and `ARGV[n]` a script reads.
    fn highest_indexes(script: &str) -> (usize, usize) {
        let highest = |array: &str| {
            script
                .match_indices(&format!("{array}["))
                .filter_map(|(at, found)| {
                    let rest = &script[at + found.len()..];
                    rest[..rest.find(']')?].parse::<usize>().ok()
                })
                .max()
                .unwrap_or(0)
        };
        (highest("KEYS"), highest("ARGV"))
    }

    #[test]
    fn the_batch_call_gives_the_script_every_key_and_argument_it_reads() {
        let rules = PlacementRules {
            cooldown: Duration::from_secs(30),
            undo_window: Duration::from_secs(5),
            rate: PlacementRate {
                interval: Duration::from_millis(200),
                burst: 10,
            },
            history_max_len: 1000,
        };
        let placement = |idempotency_key: Option<&str>| Placement {
            index: 7,
            x: 7,
            y: 0,
            color: 3,
            client_id: "client-1".to_owned(),
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        // The shared part, then four keys and seven arguments per placement.
        assert_eq!(highest_indexes(PLACE_SCRIPT), (5, 7));
        assert!(PLACE_SCRIPT.contains("local k, a = 5 + 4 * i, 7 + 7 * i"));
        assert!(PLACE_SCRIPT.contains("KEYS[k + 4]") && PLACE_SCRIPT.contains("ARGV[a + 7]"));
        assert!(!PLACE_SCRIPT.contains("KEYS[k + 5]") && !PLACE_SCRIPT.contains("ARGV[a + 8]"));
        let batch = [placement(None), placement(Some("k-1"))];
        let call = ScriptCall::of_batch(&rules, &batch);
        assert_eq!((call.keys.len(), call.args.len()), (5 + 4 * 2, 7 + 7 * 2));
        assert_eq!(call.args[0], "30000", "the cooldown, in ms");
        assert_eq!(call.args[4], "200000", "the rate's interval, in µs");
        assert_eq!(call.args[7 + 6], "", "no idempotency key");
        assert_eq!(call.args[7 + 7 + 6], "1", "an idempotency key");
        assert_eq!(
            call.keys[5 + 4 + 3],
            format!("{PLACEMENT_KEY_PREFIX}client-1:k-1")
        );
    }

    #[test]
    fn pixel_records_parse() {
        assert_eq!(
            parse_record("7 1700000000000 client-1").expect("valid"),
            PlacedRecord {
                version: 7,
                placed_at_ms: 1_700_000_000_000,
                client_id: "client-1".to_owned()
            }
        );
        for bad in ["", "7", "7 x c", "x 1 c", "7 1"] {
            assert!(parse_record(bad).is_err(), "{bad:?}");
        }
    }
}
