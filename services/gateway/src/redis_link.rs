//! The gateway's Redis: one connection for commands (readiness, the canvas version, the
//! online count) and, per subscription attempt, one pub/sub connection. Every call is
//! bounded by the configured timeout.

use std::{future::Future, time::Duration};

use pixel_common::{
    config::RedisArgs,
    redis_schema::{
        COOLDOWN_KEY_PREFIX, IDENTITIES_ISSUED_KEY_PREFIX, NAMES_KEY, ONLINE_KEY, UNDO_KEY_PREFIX,
        UPDATES_CHANNEL, VERSION_KEY,
    },
};
use redis::{
    AsyncCommands, Client, IntoConnectionInfo, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream},
};

/// Why Redis gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid Redis configuration")]
    Config(#[source] RedisError),
    #[error("Redis command failed")]
    Command(#[from] RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Records this gateway's connection count with an expiry (by Redis's clock), drops
/// expired entries and returns the sum of the live ones: the cluster-wide online count.
const ONLINE_SCRIPT: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', ms + tonumber(ARGV[3])))
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local count, expires = string.match(all[i + 1], '^(%d+) (%d+)$')
  if count and tonumber(expires) >= ms then
    total = total + tonumber(count)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return total
";

/// Counts one more identity issued to an address within the window (which starts with the
/// first); returns 0 when it is within the limit, else the milliseconds until the window
/// ends.
const ISSUE_SCRIPT: &str = r"
local issued = redis.call('INCR', KEYS[1])
if issued == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if issued > tonumber(ARGV[2]) then
  local left = redis.call('PTTL', KEYS[1])
  if left < 1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    left = tonumber(ARGV[1])
  end
  return left
end
return 0
";

/// A handle on Redis; cheap to clone. Connects lazily and reconnects by itself.
#[derive(Clone)]
pub struct RedisLink {
    client: Client,
    conn: ConnectionManager,
    timeout: Duration,
    online: Script,
    issue: Script,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Must be called inside a Tokio runtime. Does not connect yet.
    pub fn new(args: &RedisArgs) -> Result<Self, LinkError> {
        let timeout = args.timeout();
        let mut info = args
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(LinkError::Config)?;
        if let Some(password) = &args.redis_password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(LinkError::Config)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(LinkError::Config)?;
        Ok(Self {
            client,
            conn,
            timeout,
            online: Script::new(ONLINE_SCRIPT),
            issue: Script::new(ISSUE_SCRIPT),
        })
    }

    /// The bound on one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a Redis call within twice the timeout (a script may take two round trips).
    pub async fn bounded<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, LinkError>
    where
        LinkError: From<E>,
    {
        let limit = self.timeout * 2;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LinkError::Timeout(limit)),
        }
    }

    /// PING on the command connection.
    pub async fn ping(&self) -> Result<(), LinkError> {
        let mut conn = self.conn.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// The canvas version (0 before the first placement).
    pub async fn version(&self) -> Result<u64, LinkError> {
        let mut conn = self.conn.clone();
        let version: Option<u64> = self.bounded(conn.get(VERSION_KEY)).await?;
        Ok(version.unwrap_or(0))
    }

    /// Reports `count` connections for `gateway` (valid for `ttl`) and returns the
    /// cluster-wide count.
    pub async fn report_online(
        &self,
        gateway: &str,
        count: usize,
        ttl: Duration,
    ) -> Result<u64, LinkError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.online.prepare_invoke();
        invocation
            .key(ONLINE_KEY)
            .arg(gateway)
            .arg(count)
            .arg(ttl_ms);
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Counts an identity issued to `address`: `Ok(None)` when it stays within `limit` per
    /// `window`, else `Ok(Some(wait))`, the time until the address may be given another.
    pub async fn count_issued(
        &self,
        address: &str,
        limit: u32,
        window: Duration,
    ) -> Result<Option<Duration>, LinkError> {
        let mut conn = self.conn.clone();
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.issue.prepare_invoke();
        invocation
            .key(format!("{IDENTITIES_ISSUED_KEY_PREFIX}{address}"))
            .arg(window_ms)
            .arg(limit);
        let wait_ms: u64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    /// How long `id` stays in its cooldown, and how long its last placement may still be
    /// undone (each zero when there is none), read at once.
    pub async fn timers(&self, id: &str) -> Result<Timers, LinkError> {
        let mut conn = self.conn.clone();
        let (cooldown, undo): (i64, i64) = self
            .bounded(
                redis::pipe()
                    .pttl(format!("{COOLDOWN_KEY_PREFIX}{id}"))
                    .pttl(format!("{UNDO_KEY_PREFIX}{id}"))
                    .query_async(&mut conn),
            )
            .await?;
        // PTTL answers -2 (no key) or -1 (no expiry, never written so): none left.
        let left = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(Timers {
            cooldown: left(cooldown),
            undo: left(undo),
        })
    }

    /// Records the display name a signed-in identity's provider gave.
    pub async fn set_display_name(&self, id: &str, name: &str) -> Result<(), LinkError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hset::<_, _, _, ()>(NAMES_KEY, id, name))
            .await
    }

    /// The display name recorded for a signed-in identity, if any.
    pub async fn display_name(&self, id: &str) -> Result<Option<String>, LinkError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hget(NAMES_KEY, id)).await
    }

    /// Removes this gateway's entry from the online count.
    pub async fn forget_online(&self, gateway: &str) -> Result<(), LinkError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hdel::<_, _, ()>(ONLINE_KEY, gateway))
            .await
    }

    /// A new pub/sub connection subscribed to the update channel.
    pub async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), LinkError> {
        self.bounded(async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(UPDATES_CHANNEL).await?;
            Ok::<_, RedisError>((sink, stream))
        })
        .await
    }
}

/// A person's running timers, for the hello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timers {
    pub cooldown: Duration,
    pub undo: Duration,
}
