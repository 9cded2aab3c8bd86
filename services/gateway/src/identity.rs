//! Who a connection places as: a person, not a connection. A browser's first connection is
//! given a random anonymous identity in a signed cookie (HttpOnly, SameSite=Lax), set on
//! the upgrade's answer; every later connection (a reload, a second tab) presents it, so
//! the cooldown, which canvas-api keys by identity, follows the person. Issuing is limited
//! per client address in Redis, across every gateway, so clearing cookies in a loop does
//! not beat the cooldown. Cookie signing is the `cookie` crate's (HMAC-SHA256), keyed by the
//! canvas's identity key; the previous key still verifies during a rotation.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, HeaderValue, header::COOKIE};
use cookie::{Cookie, CookieJar, Key, SameSite};
use pixel_common::{
    error::ErrorChain,
    identity::{ANONYMOUS_PREFIX, COOKIE_NAME, handle_of, is_anonymous, is_signed_in},
    ports,
};

use crate::{metrics::Metrics, redis_link::RedisLink, sign_in::SignIn};

/// The shortest identity key accepted (it is expanded into the signing key).
pub const KEY_MIN_BYTES: usize = 32;

/// The gateway's identity flags.
#[derive(Clone, clap::Args)]
pub struct IdentityArgs {
    /// The key that signs identity cookies, at least 32 bytes (checked by [`Issuer::new`]:
    /// the parser's errors would print the value).
    #[arg(long, env = ports::ENV_IDENTITY_KEY, hide_env_values = true)]
    pub identity_key: String,

    /// The key before the last rotation (cookies it signed still verify); empty: none.
    #[arg(long, env = ports::ENV_IDENTITY_KEY_PREVIOUS, hide_env_values = true)]
    pub identity_key_previous: Option<String>,

    /// The key of a rotation under way: it verifies, and will sign once every gateway has
    /// it; empty: none.
    #[arg(long, env = ports::ENV_IDENTITY_KEY_NEXT, hide_env_values = true)]
    pub identity_key_next: Option<String>,

    /// Whether identity cookies carry `Secure` (set when the canvas is served over TLS).
    #[arg(long, env = ports::ENV_IDENTITY_COOKIE_SECURE, default_value_t = false, action = clap::ArgAction::Set)]
    pub identity_cookie_secure: bool,

    /// Identities one client address may be given per window, across every gateway.
    #[arg(long, env = ports::ENV_IDENTITY_ISSUE_LIMIT, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub identity_issue_limit: u32,

    /// The issuance window, in seconds.
    #[arg(long, env = ports::ENV_IDENTITY_ISSUE_WINDOW_SECONDS, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub identity_issue_window_seconds: u64,
}

impl std::fmt::Debug for IdentityArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityArgs")
            .field("identity_cookie_secure", &self.identity_cookie_secure)
            .field("identity_issue_limit", &self.identity_issue_limit)
            .field(
                "identity_issue_window_seconds",
                &self.identity_issue_window_seconds,
            )
            .finish_non_exhaustive()
    }
}

/// An identity key is too short (its value is not repeated here).
#[derive(Debug, thiserror::Error)]
#[error("{name} must be at least {KEY_MIN_BYTES} bytes")]
pub struct KeyError {
    name: &'static str,
}
/// How long a browser keeps the cookie: the most Chromium allows.
const COOKIE_MAX_AGE_DAYS: i64 = 400;

/// The keys that sign and verify identity cookies.
#[derive(Clone)]
pub struct IdentityKeys {
    current: Key,
    previous: Option<Key>,
    next: Option<Key>,
    /// Whether cookies carry `Secure` (the canvas is served over TLS).
    secure: bool,
}

impl std::fmt::Debug for IdentityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKeys")
            .field("previous", &self.previous.is_some())
            .field("next", &self.next.is_some())
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

/// What an identity cookie holds: an identity, and for a signed-in one when its sign-in
/// ends (seconds since the Unix epoch) and whether it moderates. The signed value is the
/// identity alone, or `<identity>~<ends>`, or `<identity>~<ends>~moderator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub until: Option<u64>,
    /// A member of a moderator group at sign-in.
    pub moderator: bool,
}

/// The mark of a moderator's session value.
const MODERATOR_MARK: &str = "moderator";

impl Session {
    pub fn anonymous(id: String) -> Self {
        Self {
            id,
            until: None,
            moderator: false,
        }
    }

    /// A signed-in person's session, ending at `until`.
    pub fn signed_in(id: String, until: u64, moderator: bool) -> Self {
        Self {
            id,
            until: Some(until),
            moderator,
        }
    }

    fn value(&self) -> String {
        match (self.until, self.moderator) {
            (Some(until), true) => format!("{}~{until}~{MODERATOR_MARK}", self.id),
            (Some(until), false) => format!("{}~{until}", self.id),
            (None, _) => self.id.clone(),
        }
    }

    /// The session a verified cookie value holds, if it is one and has not ended:
    /// anonymous identities without an end, signed-in ones with one.
    fn parse(value: &str, now: u64) -> Option<Self> {
        let mut parts = value.split('~');
        let id = parts.next()?;
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => is_anonymous(id).then(|| Self::anonymous(id.to_owned())),
            (Some(until), mark, None) => {
                let until: u64 = until.parse().ok()?;
                let moderator = match mark {
                    None => false,
                    Some(MODERATOR_MARK) => true,
                    Some(_) => return None,
                };
                (is_signed_in(id) && until > now)
                    .then(|| Self::signed_in(id.to_owned(), until, moderator))
            }
            _ => None,
        }
    }
}

/// A cookie's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// Signed with the current key.
    Current(Session),
    /// Signed with the previous key: valid, and to be signed anew.
    Previous(Session),
    /// Signed with the next key, by a gateway a rotation reached first: valid, kept.
    Upcoming(Session),
    /// No identity cookie, or one that does not verify (forged, altered, or from a key
    /// older than the previous one).
    None,
}

/// A verified identity, its public handle and, when signed in, its display name and when
/// its sign-in ends (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    pub id: String,
    pub handle: String,
    pub name: Option<String>,
    pub until: Option<u64>,
}

impl Player {
    pub fn new(id: String) -> Self {
        let handle = handle_of(&id);
        Self {
            id,
            handle,
            name: None,
            until: None,
        }
    }

    /// Whether this is a signed-in person (else an anonymous identity).
    pub fn signed_in(&self) -> bool {
        is_signed_in(&self.id)
    }

    /// Whether a sign-in's end has come (an open connection outlives its cookie).
    pub fn ended(&self) -> bool {
        self.until.is_some_and(|until| seconds_now() >= until)
    }
}

impl IdentityKeys {
    /// `current` and `previous` are the canvas's key material (at least
    /// [`KEY_MIN_BYTES`] each; checked by [`Issuer::new`]).
    pub fn new(current: &str, previous: Option<&str>, secure: bool) -> Self {
        Self::rotating(current, previous, None, secure)
    }

    /// [`Self::new`] during a rotation: `next` verifies too.
    pub fn rotating(
        current: &str,
        previous: Option<&str>,
        next: Option<&str>,
        secure: bool,
    ) -> Self {
        let key = |k: Option<&str>| {
            k.filter(|k| !k.is_empty())
                .map(|k| Key::derive_from(k.as_bytes()))
        };
        Self {
            current: Key::derive_from(current.as_bytes()),
            previous: key(previous),
            next: key(next),
            secure,
        }
    }

    /// The cookie's name: with `Secure`, `__Host-` in front, so that no other host (a
    /// sibling subdomain) and no plain-HTTP answer can plant one.
    pub fn cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{COOKIE_NAME}")
        } else {
            COOKIE_NAME.to_owned()
        }
    }

    /// The identity the request's cookie carries, if it verifies (and, signed in, has not
    /// ended). Only the first two cookies of the name are tried: a request cannot make the
    /// gateway check many.
    pub fn presented(&self, headers: &HeaderMap) -> Presented {
        self.presented_at(headers, seconds_now())
    }

    fn presented_at(&self, headers: &HeaderMap, now: u64) -> Presented {
        let name = self.cookie_name();
        let candidates = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|header| Cookie::split_parse(header.to_owned()).flatten())
            .filter(|cookie| cookie.name() == name)
            .take(2);
        for cookie in candidates {
            let mut jar = CookieJar::new();
            jar.add_original(cookie.into_owned());
            let verified = |key: &Key| {
                jar.signed(key)
                    .get(&name)
                    .and_then(|c| Session::parse(c.value(), now))
            };
            if let Some(session) = verified(&self.current) {
                return Presented::Current(session);
            }
            if let Some(session) = self.previous.as_ref().and_then(verified) {
                return Presented::Previous(session);
            }
            if let Some(session) = self.next.as_ref().and_then(verified) {
                return Presented::Upcoming(session);
            }
        }
        Presented::None
    }

    /// The `Set-Cookie` value that gives the browser the anonymous identity `id`, signed
    /// with the current key.
    pub fn set_cookie(&self, id: &str) -> HeaderValue {
        self.cookie_for(&Session::anonymous(id.to_owned()))
    }

    /// The `Set-Cookie` value that removes the identity cookie (signing out).
    pub fn clear_cookie(&self) -> HeaderValue {
        let cookie = Cookie::build((self.cookie_name(), ""))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::ZERO)
            .build();
        HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value holding `session`, signed with the current key; it lasts as
    /// long as the session (anonymous: as long as browsers keep cookies).
    pub fn cookie_for(&self, session: &Session) -> HeaderValue {
        let max_age = match session.until {
            Some(until) => cookie::time::Duration::seconds(
                i64::try_from(until.saturating_sub(seconds_now())).unwrap_or(i64::MAX),
            ),
            None => cookie::time::Duration::days(COOKIE_MAX_AGE_DAYS),
        };
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.current).add(
            Cookie::build((self.cookie_name(), session.value()))
                .path("/")
                .http_only(true)
                .same_site(SameSite::Lax)
                .secure(self.secure)
                .max_age(max_age),
        );
        let signed = jar
            .delta()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        // The signed value is base64 and the attributes are fixed: always a valid header.
        HeaderValue::from_str(&signed).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Where a connection sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seat {
    /// It places as this identity.
    Player(Player),
    /// It may watch but not place.
    Watcher(WatchReason),
}

/// Why a connection has no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchReason {
    /// Its address was given as many identities as the window allows; another may be given
    /// from `until` on.
    IssueLimit { until: Instant },
    /// Redis, which counts the issued identities, did not answer.
    Unavailable,
    /// The canvas takes only signed-in people, and this visitor has not signed in.
    SignInRequired,
}

/// Gives connections their seats: verifies cookies, issues identities within the limit
/// (anonymous mode) or seats only signed-in people (sign-in mode).
#[derive(Debug)]
pub struct Issuer {
    pub keys: IdentityKeys,
    /// Identities one client address may be given per `window`.
    pub limit: u32,
    pub window: Duration,
    /// Sign-in mode's relying party; `None`: anonymous identities.
    pub sign_in: Option<SignIn>,
}

impl Issuer {
    /// From the flags, once the keys are checked (anonymous mode).
    pub fn new(args: &IdentityArgs) -> Result<Self, KeyError> {
        Self::with_sign_in(args, None)
    }

    /// From the flags, once the keys are checked; with `sign_in`, in sign-in mode.
    pub fn with_sign_in(args: &IdentityArgs, sign_in: Option<SignIn>) -> Result<Self, KeyError> {
        let given = |key: &Option<String>| key.clone().filter(|k| !k.is_empty());
        let (previous, next) = (
            given(&args.identity_key_previous),
            given(&args.identity_key_next),
        );
        for (name, key) in [
            (ports::ENV_IDENTITY_KEY, Some(args.identity_key.as_str())),
            (ports::ENV_IDENTITY_KEY_PREVIOUS, previous.as_deref()),
            (ports::ENV_IDENTITY_KEY_NEXT, next.as_deref()),
        ] {
            if key.is_some_and(|key| key.len() < KEY_MIN_BYTES) {
                return Err(KeyError { name });
            }
        }
        Ok(Self {
            keys: IdentityKeys::rotating(
                &args.identity_key,
                previous.as_deref(),
                next.as_deref(),
                args.identity_cookie_secure,
            ),
            limit: args.identity_issue_limit,
            window: Duration::from_secs(args.identity_issue_window_seconds),
            sign_in,
        })
    }

    /// The seat of a connection whose upgrade request has `headers`, from `address` (when
    /// known), and the `Set-Cookie` its answer carries: a new identity's, or a presented
    /// one signed anew with the current key.
    pub async fn seat(
        &self,
        redis: &RedisLink,
        metrics: &Metrics,
        headers: &HeaderMap,
        address: Option<IpAddr>,
    ) -> (Seat, Option<HeaderValue>) {
        let presented = self.keys.presented(headers);
        if self.sign_in.is_some() {
            return self.signed_in_seat(redis, metrics, presented).await;
        }
        match presented {
            Presented::Current(session) | Presented::Upcoming(session) => {
                metrics.seat("verified");
                (Seat::Player(Player::new(session.id)), None)
            }
            Presented::Previous(session) => {
                metrics.seat("renewed");
                let cookie = self.keys.cookie_for(&session);
                (Seat::Player(Player::new(session.id)), Some(cookie))
            }
            Presented::None => {
                // Connections without an address (an embedded router) share one counter.
                let address = address.map_or_else(|| "unknown".to_owned(), issuance_bucket);
                match redis.count_issued(&address, self.limit, self.window).await {
                    Ok(None) => {
                        metrics.seat("issued");
                        let id = new_identity();
                        let cookie = self.keys.set_cookie(&id);
                        (Seat::Player(Player::new(id)), Some(cookie))
                    }
                    Ok(Some(retry_after)) => {
                        // Debug only: every connection of a flood would log it.
                        metrics.seat("limited");
                        tracing::debug!(%address, "identity issuance limit reached for an address");
                        let until = Instant::now() + retry_after;
                        (Seat::Watcher(WatchReason::IssueLimit { until }), None)
                    }
                    Err(error) => {
                        metrics.seat("unavailable");
                        // Counted, and logged at debug: a Redis outage shows in readiness.
                        tracing::debug!(error = %ErrorChain(&error), "cannot count issued identities");
                        (Seat::Watcher(WatchReason::Unavailable), None)
                    }
                }
            }
        }
    }
}

impl Issuer {
    /// Sign-in mode: a signed-in session is a player (with the display name its sign-in
    /// recorded); anything else, an anonymous identity included, only watches.
    async fn signed_in_seat(
        &self,
        redis: &RedisLink,
        metrics: &Metrics,
        presented: Presented,
    ) -> (Seat, Option<HeaderValue>) {
        let (session, renewed) = match presented {
            Presented::Current(session) | Presented::Upcoming(session) => (session, false),
            Presented::Previous(session) => (session, true),
            Presented::None => {
                metrics.seat("signed_out");
                return (Seat::Watcher(WatchReason::SignInRequired), None);
            }
        };
        if !is_signed_in(&session.id) {
            metrics.seat("signed_out");
            return (Seat::Watcher(WatchReason::SignInRequired), None);
        }
        metrics.seat(if renewed { "renewed" } else { "verified" });
        let cookie = renewed.then(|| self.keys.cookie_for(&session));
        let mut player = Player::new(session.id);
        player.until = session.until;
        player.name = redis
            .display_name(&player.id)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(error = %ErrorChain(&error), "cannot read a display name");
                None
            });
        (Seat::Player(player), cookie)
    }
}

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whose issuance counter an address counts on: an IPv4 address, or an IPv6 address's /64
/// (one subscriber's usual allocation: per /128 it would give one a practically unlimited
/// number of counters).
fn issuance_bucket(address: IpAddr) -> String {
    match address.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A new anonymous identity: 128 random bits.
pub fn new_identity() -> String {
    format!("{ANONYMOUS_PREFIX}{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "an identity key of thirty-two or more bytes";
    const OLD_KEY: &str = "the previous identity key, also 32+ bytes";

    fn request_with(set_cookie: &HeaderValue) -> HeaderMap {
        // What a browser sends back: the name=value pair, without the attributes.
        let pair = set_cookie
            .to_str()
            .expect("text")
            .split(';')
            .next()
            .expect("a pair")
            .to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).expect("header"),
        );
        headers
    }

    #[test]
    fn an_issued_cookie_verifies_and_carries_its_attributes() {
        let keys = IdentityKeys::new(KEY, None, false);
        let id = new_identity();
        let set = keys.set_cookie(&id);
        let text = set.to_str().expect("text");
        assert!(text.starts_with(&format!("{COOKIE_NAME}=")), "{text}");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=34560000"] {
            assert!(text.contains(attribute), "{attribute} in {text}");
        }
        assert!(!text.contains("Secure"), "{text}");
        assert!(
            !text.starts_with(&format!("{COOKIE_NAME}={id}")),
            "the value carries its signature, not the bare id: {text}"
        );
        assert_eq!(
            keys.presented(&request_with(&set)),
            Presented::Current(Session::anonymous(id.clone()))
        );
        let secure_keys = IdentityKeys::new(KEY, None, true);
        let secure = secure_keys.set_cookie(&id);
        let text = secure.to_str().expect("text");
        assert!(
            text.starts_with(&format!("__Host-{COOKIE_NAME}=")),
            "{text}"
        );
        assert!(text.contains("Secure"), "{text}");
        assert_eq!(
            secure_keys.presented(&request_with(&secure)),
            Presented::Current(Session::anonymous(id.clone()))
        );
        // Over TLS, a cookie without the prefix (planted by another host) is not looked at.
        assert_eq!(secure_keys.presented(&request_with(&set)), Presented::None);
    }

    #[test]
    fn forged_altered_and_foreign_cookies_do_not_verify() {
        let keys = IdentityKeys::new(KEY, None, false);
        let mut headers = HeaderMap::new();
        assert_eq!(keys.presented(&headers), Presented::None);
        let id = new_identity();
        for forged in [
            format!("{COOKIE_NAME}={id}"),
            format!("{COOKIE_NAME}=AAAA{id}"),
            format!("{COOKIE_NAME}="),
            "pxp_other=1".to_owned(),
        ] {
            headers.insert(COOKIE, HeaderValue::from_str(&forged).expect("header"));
            assert_eq!(keys.presented(&headers), Presented::None, "{forged}");
        }
        let other = IdentityKeys::new("another canvas's key, 32 bytes long", None, false);
        let foreign = request_with(&other.set_cookie(&id));
        assert_eq!(keys.presented(&foreign), Presented::None);
        // A signed value with one character changed.
        let set = keys.set_cookie(&id);
        let mut tampered = set.to_str().expect("text").to_owned();
        let at = COOKIE_NAME.len() + 3;
        let swapped = if &tampered[at..=at] == "A" { "B" } else { "A" };
        tampered.replace_range(at..=at, swapped);
        let tampered = HeaderValue::from_str(&tampered).expect("header");
        assert_eq!(keys.presented(&request_with(&tampered)), Presented::None);
    }

    #[test]
    fn the_previous_key_verifies_during_a_rotation_and_no_older_one() {
        let id = new_identity();
        let before = IdentityKeys::new(OLD_KEY, None, false).set_cookie(&id);
        let rotated = IdentityKeys::new(KEY, Some(OLD_KEY), false);
        assert_eq!(
            rotated.presented(&request_with(&before)),
            Presented::Previous(Session::anonymous(id.clone()))
        );
        let again = IdentityKeys::new("a third key, after the next rotation!", Some(KEY), false);
        assert_eq!(again.presented(&request_with(&before)), Presented::None);
    }

    #[test]
    fn mid_rotation_the_next_key_verifies_without_signing() {
        let id = new_identity();
        let promoted = IdentityKeys::new(KEY, Some(OLD_KEY), false).set_cookie(&id);
        // A gateway not yet promoted: it signs with the old key and knows the new one.
        let before = IdentityKeys::rotating(OLD_KEY, None, Some(KEY), false);
        assert_eq!(
            before.presented(&request_with(&promoted)),
            Presented::Upcoming(Session::anonymous(id.clone()))
        );
        let own = before.set_cookie(&id);
        assert_eq!(
            before.presented(&request_with(&own)),
            Presented::Current(Session::anonymous(id.clone()))
        );
        // And the promoted gateway reads what the other still signs.
        let after = IdentityKeys::new(KEY, Some(OLD_KEY), false);
        assert_eq!(
            after.presented(&request_with(&own)),
            Presented::Previous(Session::anonymous(id))
        );
    }

    #[test]
    fn a_sign_in_verifies_until_it_ends_and_only_as_a_signed_in_identity() {
        let keys = IdentityKeys::new(KEY, None, false);
        let id = pixel_common::identity::signed_in_identity("https://id.example/", "42");
        for moderator in [false, true] {
            let session = Session::signed_in(id.clone(), 2_000, moderator);
            let set = keys.cookie_for(&session);
            let text = set.to_str().expect("text").to_owned();
            assert!(
                text.contains("HttpOnly") && text.contains("SameSite=Lax"),
                "{text}"
            );
            assert_eq!(
                keys.presented_at(&request_with(&set), 1_999),
                Presented::Current(session)
            );
            assert_eq!(
                keys.presented_at(&request_with(&set), 2_000),
                Presented::None
            );
        }
        // A signed-in identity without an end, an anonymous one with an end, or an unknown
        // mark, is not a cookie this gateway signs: whoever made it, it does not verify.
        for value in [
            id.clone(),
            format!("{}~9999999999", new_identity()),
            format!("{id}~9999999999~admin"),
            format!("{id}~9999999999~moderator~x"),
        ] {
            let mut jar = CookieJar::new();
            jar.signed_mut(&Key::derive_from(KEY.as_bytes()))
                .add(Cookie::new(COOKIE_NAME, value.clone()));
            let made = jar.delta().next().expect("cookie").to_string();
            let made = HeaderValue::from_str(&made).expect("header");
            assert_eq!(
                keys.presented_at(&request_with(&made), 0),
                Presented::None,
                "{value}"
            );
        }
        let cleared = keys.clear_cookie();
        let cleared = cleared.to_str().expect("text");
        assert!(
            cleared.starts_with(&format!("{COOKIE_NAME}=;")),
            "{cleared}"
        );
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
    }

    #[test]
    fn identities_are_random_and_valid_client_ids() {
        let (a, b) = (new_identity(), new_identity());
        assert_ne!(a, b);
        assert!(is_anonymous(&a), "{a}");
        assert!(a.len() <= 64);
        // The handle is the contract's digest of the identity (tested there not to show it).
        assert_eq!(Player::new(a.clone()).handle, handle_of(&a));
    }
}
