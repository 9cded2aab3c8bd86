//! Sign-in mode: the gateway as an OpenID Connect relying party (authorization code with
//! PKCE, `openidconnect`'s discovery, ID token verification and userinfo). A person who
//! signs in gets the identity cookie with `oidc.` and a digest of the issuer and their
//! subject, valid for the session's length; in this mode no anonymous identity is issued
//! or accepted, so every placement is a signed-in person's. The login state (CSRF state,
//! nonce, PKCE verifier, where to return) rides in a private (encrypted) cookie, so any
//! gateway replica may take the callback.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Query, State},
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{COOKIE, LOCATION, SET_COOKIE},
    },
    response::{IntoResponse, Response},
};
use cookie::{Cookie, CookieJar, Key, SameSite};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
    core::{CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata},
};
use pixel_common::{error::ErrorChain, identity::signed_in_identity, ports};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::{
    Gateway,
    identity::{Presented, Session},
};

/// The sign-in flags; sign-in mode is on when `--oidc-issuer` is set.
#[derive(Clone, Default, clap::Args)]
pub struct SignInArgs {
    /// The OpenID Connect issuer URL; unset: anonymous identities (no sign-in).
    #[arg(long, env = ports::ENV_OIDC_ISSUER)]
    pub oidc_issuer: Option<String>,

    /// The client ID registered with the provider.
    #[arg(long, env = ports::ENV_OIDC_CLIENT_ID, requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,

    /// The client secret.
    #[arg(long, env = ports::ENV_OIDC_CLIENT_SECRET, hide_env_values = true)]
    pub oidc_client_secret: Option<String>,

    /// The callback URL registered with the provider (the public origin and `/auth/callback`).
    #[arg(long, env = ports::ENV_OIDC_REDIRECT_URL)]
    pub oidc_redirect_url: Option<String>,

    /// Email domains whose people may sign in, comma-separated (empty: any). The email
    /// must be verified.
    #[arg(long, env = ports::ENV_OIDC_ALLOWED_EMAIL_DOMAINS, value_delimiter = ',')]
    pub oidc_allowed_email_domains: Vec<String>,

    /// Groups whose members may sign in, comma-separated (empty: any).
    #[arg(long, env = ports::ENV_OIDC_ALLOWED_GROUPS, value_delimiter = ',')]
    pub oidc_allowed_groups: Vec<String>,

    /// The userinfo claim that lists a person's groups.
    #[arg(long, env = ports::ENV_OIDC_GROUPS_CLAIM, default_value = "groups")]
    pub oidc_groups_claim: String,

    /// Groups whose members moderate, comma-separated: the gateway serves them the
    /// moderation API on `/auth/moderation/…` with the moderator token.
    #[arg(long, env = ports::ENV_OIDC_MODERATOR_GROUPS, value_delimiter = ',')]
    pub oidc_moderator_groups: Vec<String>,

    /// The moderation API's token, which the gateway presents for signed-in moderators.
    #[arg(long, env = ports::ENV_MODERATOR_TOKEN, hide_env_values = true)]
    pub moderator_token: Option<String>,

    /// Whether signed-out visitors may watch (else their upgrade is refused with 401).
    #[arg(long, env = ports::ENV_OIDC_WATCHERS_ALLOWED, default_value_t = true, action = clap::ArgAction::Set)]
    pub oidc_watchers_allowed: bool,

    /// How long a sign-in lasts, in seconds.
    #[arg(long, env = ports::ENV_OIDC_SESSION_SECONDS, default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(60..=34_560_000))]
    pub oidc_session_seconds: u64,
}

impl std::fmt::Debug for SignInArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInArgs")
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_client_id", &self.oidc_client_id)
            .field("oidc_redirect_url", &self.oidc_redirect_url)
            .field(
                "oidc_allowed_email_domains",
                &self.oidc_allowed_email_domains,
            )
            .field("oidc_allowed_groups", &self.oidc_allowed_groups)
            .field("oidc_moderator_groups", &self.oidc_moderator_groups)
            .field("oidc_watchers_allowed", &self.oidc_watchers_allowed)
            .finish_non_exhaustive()
    }
}

/// Sign-in is configured wrongly.
#[derive(Debug, thiserror::Error)]
pub enum SignInConfigError {
    #[error("sign-in needs {0} as well as {issuer}", issuer = ports::ENV_OIDC_ISSUER)]
    Missing(&'static str),
    #[error("{name} is not a URL")]
    Url {
        name: &'static str,
        #[source]
        source: openidconnect::url::ParseError,
    },
    #[error(
        "{issuer} must be an https:// URL (plain http only for a provider on this machine: \
         anyone between could forge its tokens)",
        issuer = ports::ENV_OIDC_ISSUER
    )]
    PlainHttp,
    #[error("cannot read the system's TLS roots for the OpenID Connect provider")]
    Tls(#[source] std::io::Error),
}

/// Who may sign in. Pure, so the rules are unit-tested without a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Lowercase email domains; empty: any.
    pub email_domains: Vec<String>,
    /// Groups; empty: any.
    pub groups: Vec<String>,
}

/// What the provider says of a person, from the verified ID token and userinfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
}

/// Why a verified person may still not sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error("sign-in takes a verified email address of {0}")]
    EmailDomain(String),
    #[error("sign-in takes membership of one of the groups {0}")]
    Group(String),
}

impl Admission {
    /// Whether `profile` may sign in: a verified email in an allowed domain (when domains
    /// are listed) and membership of an allowed group (when groups are listed).
    pub fn admit(&self, profile: &Profile) -> Result<(), NotAdmitted> {
        if !self.email_domains.is_empty() {
            let domain = profile
                .email
                .as_deref()
                .filter(|_| profile.email_verified)
                .and_then(|email| email.rsplit_once('@'))
                .map(|(_, domain)| domain.to_ascii_lowercase());
            if !domain.is_some_and(|d| self.email_domains.contains(&d)) {
                return Err(NotAdmitted::EmailDomain(self.email_domains.join(", ")));
            }
        }
        if !self.groups.is_empty() && !is_member(profile, &self.groups) {
            return Err(NotAdmitted::Group(self.groups.join(", ")));
        }
        Ok(())
    }
}

/// Whether `profile` is in one of `groups` (never when none are listed).
pub fn is_member(profile: &Profile, groups: &[String]) -> bool {
    profile.groups.iter().any(|g| groups.contains(g))
}

/// The groups the userinfo's `claim` lists: a list of strings, or one string (some
/// providers name a single role so). A standard claim may be named too.
fn groups_of(
    info: &openidconnect::UserInfoClaims<OtherClaims, CoreGenderClaim>,
    claim: &str,
) -> Vec<String> {
    let value = serde_json::to_value(info).unwrap_or_default();
    match value.get(claim) {
        Some(serde_json::Value::Array(groups)) => groups
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(group)) => vec![group.clone()],
        _ => Vec::new(),
    }
}

/// Who a callback signed in.
#[derive(Debug)]
struct SignedIn {
    identity: String,
    name: Option<String>,
    moderator: bool,
    next: String,
}

/// The longest display name kept, in characters.
pub const DISPLAY_NAME_MAX: usize = 32;

/// Whether `c` may be shown in a name: no control or format character (bidirectional
/// overrides among them, which could make a name read as another).
fn shown(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

/// The name shown for a signed-in person: the provider's `name`, else its
/// `preferred_username`, trimmed, without control or format characters, at most
/// [`DISPLAY_NAME_MAX`] characters. Never an email address (a value with `@`), nor one
/// that reads as a handle or as `moderator` (it could pose as another player): such
/// values are skipped.
pub fn display_name(profile: &Profile) -> Option<String> {
    let poses = |value: &str| {
        let lower = value.to_ascii_lowercase();
        lower.starts_with(pixel_common::identity::HANDLE_PREFIX)
            || lower.starts_with(pixel_common::identity::SIGNED_IN_HANDLE_PREFIX)
            || lower == "moderator"
    };
    [&profile.name, &profile.preferred_username]
        .into_iter()
        .flatten()
        .map(|value| {
            value
                .chars()
                .filter(|c| shown(*c))
                .collect::<String>()
                .trim()
                .chars()
                .take(DISPLAY_NAME_MAX)
                .collect::<String>()
        })
        .find(|value| !value.is_empty() && !value.contains('@') && !poses(value))
}

/// Where to send the browser after a sign-in or sign-out: `next` when it is a path on this
/// origin (`/…`, not `//…`) or a URL on one of `origins`; else `/`. An open redirect would
/// let anyone bounce our sign-in to their own page.
pub fn safe_next(next: Option<&str>, origins: &crate::ws::Origins) -> String {
    let Some(next) = next else {
        return "/".to_owned();
    };
    let local = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    let allowed_url = openidconnect::url::Url::parse(next).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && origins.allows_origin(&url.origin().ascii_serialization())
    });
    if (local || allowed_url) && !next.chars().any(char::is_control) {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

/// The provider client once discovered (endpoints from its metadata).
type ProviderClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The userinfo claims beyond the standard ones: every other claim, groups among them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
struct OtherClaims(serde_json::Map<String, serde_json::Value>);
impl openidconnect::AdditionalClaims for OtherClaims {}

/// What the state cookie holds between the redirect to the provider and the callback.
#[derive(Debug, Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    next: String,
}

/// The private cookie holding [`LoginState`].
const STATE_COOKIE: &str = "pxp_sign_in";
/// How long a sign-in at the provider may take.
const STATE_MAX_AGE_SECONDS: i64 = 600;

/// The configured relying party.
pub struct SignIn {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    groups_claim: String,
    pub admission: Admission,
    /// Members of these moderate.
    moderator_groups: Vec<String>,
    /// What the gateway presents to canvas-api for them.
    moderator_token: Option<String>,
    /// Whether signed-out visitors may watch.
    pub watchers_allowed: bool,
    /// How long a sign-in lasts.
    pub session: Duration,
    /// Encrypt the state cookie (the first) and decrypt it (any): derived from the identity
    /// keys, so a callback mid-rotation, on a replica a step ahead or behind, still reads it.
    state_keys: Vec<Key>,
    /// Whether cookies carry `Secure`.
    secure: bool,
    http: ProviderHttp,
    /// Discovered on first use (the provider may be down when the gateway starts), with
    /// when; discovered again after [`PROVIDER_REFRESH`] or an ID token that does not
    /// verify (the provider may have rotated its signing keys).
    provider: RwLock<Option<(ProviderClient, std::time::Instant)>>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("issuer", &self.issuer.as_str())
            .field("admission", &self.admission)
            .field("watchers_allowed", &self.watchers_allowed)
            .finish_non_exhaustive()
    }
}

/// Why a sign-in failed (logged with its chain; the browser gets the code).
#[derive(Debug, thiserror::Error)]
enum SignInError {
    #[error("the OpenID Connect provider's discovery failed")]
    Discovery(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the sign-in state cookie is missing, expired or does not match")]
    State,
    #[error("the provider refused the sign-in: {0}")]
    Provider(String),
    #[error("exchanging the authorization code failed")]
    Exchange(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the provider's ID token does not verify")]
    IdToken(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the provider's userinfo failed")]
    UserInfo(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    NotAdmitted(#[from] NotAdmitted),
}

impl SignInError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Discovery(_) | Self::Exchange(_) | Self::UserInfo(_) => {
                (StatusCode::BAD_GATEWAY, "provider_unavailable")
            }
            Self::State => (StatusCode::BAD_REQUEST, "sign_in_state"),
            Self::Provider(_) | Self::IdToken(_) => (StatusCode::UNAUTHORIZED, "sign_in_failed"),
            Self::NotAdmitted(_) => (StatusCode::FORBIDDEN, "not_admitted"),
        }
    }
}

/// How long discovered metadata and signing keys are used before they are fetched again.
const PROVIDER_REFRESH: Duration = Duration::from_secs(3600);
/// The largest answer read from the provider.
const PROVIDER_BODY_MAX: usize = 1 << 20;
/// How long one exchange with the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an exchange with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderHttpError {
    #[error("the provider did not answer")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("the provider's answer could not be read (or exceeds {PROVIDER_BODY_MAX} bytes)")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the provider did not answer within {PROVIDER_TIMEOUT:?}")]
    Timeout,
}

type Https = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// The provider's HTTP client: hyper over rustls (ring, the system's roots), HTTP or
/// HTTPS, following no redirect (that would open it to SSRF), each exchange bounded in
/// time and size.
#[derive(Debug, Clone)]
struct ProviderHttp(Https);

impl ProviderHttp {
    fn new() -> Result<Self, SignInConfigError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(SignInConfigError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        ))
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for ProviderHttp {
    type Error = ProviderHttpError;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, Self::Error>>
                + Send
                + 'c,
        >,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        use http_body_util::BodyExt;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, http_body_util::Full::new(body.into()));
            let exchange = async {
                let response = self
                    .0
                    .request(request)
                    .await
                    .map_err(ProviderHttpError::Request)?;
                let (parts, body) = response.into_parts();
                let body = http_body_util::Limited::new(body, PROVIDER_BODY_MAX)
                    .collect()
                    .await
                    .map_err(ProviderHttpError::Body)?
                    .to_bytes()
                    .to_vec();
                Ok(http::Response::from_parts(parts, body))
            };
            tokio::time::timeout(PROVIDER_TIMEOUT, exchange)
                .await
                .map_err(|_| ProviderHttpError::Timeout)?
        })
    }
}

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SignIn {
    /// From the flags, or `None` when sign-in is off. The identity keys (current first)
    /// seed the state cookie's keys, so every replica decrypts what another encrypted.
    pub fn new(
        args: &SignInArgs,
        identity_keys: &[&str],
        secure: bool,
    ) -> Result<Option<Self>, SignInConfigError> {
        let Some(issuer) = args.oidc_issuer.clone().filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let issuer = IssuerUrl::new(issuer).map_err(|source| SignInConfigError::Url {
            name: ports::ENV_OIDC_ISSUER,
            source,
        })?;
        if !secure_enough(issuer.url()) {
            return Err(SignInConfigError::PlainHttp);
        }
        let client_id = args
            .oidc_client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or(SignInConfigError::Missing(ports::ENV_OIDC_CLIENT_ID))?;
        let redirect = args
            .oidc_redirect_url
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or(SignInConfigError::Missing(ports::ENV_OIDC_REDIRECT_URL))?;
        let redirect = RedirectUrl::new(redirect).map_err(|source| SignInConfigError::Url {
            name: ports::ENV_OIDC_REDIRECT_URL,
            source,
        })?;
        let http = ProviderHttp::new()?;
        let listed = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        Ok(Some(Self {
            issuer,
            client_id: ClientId::new(client_id),
            client_secret: args
                .oidc_client_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(ClientSecret::new),
            redirect,
            groups_claim: args.oidc_groups_claim.clone(),
            admission: Admission {
                email_domains: listed(&args.oidc_allowed_email_domains)
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                groups: listed(&args.oidc_allowed_groups),
            },
            moderator_groups: listed(&args.oidc_moderator_groups),
            moderator_token: args.moderator_token.clone().filter(|t| !t.is_empty()),
            watchers_allowed: args.oidc_watchers_allowed,
            session: Duration::from_secs(args.oidc_session_seconds),
            state_keys: identity_keys
                .iter()
                .filter(|key| !key.is_empty())
                .map(|key| {
                    Key::derive_from(format!("pixel-playground sign-in state\0{key}").as_bytes())
                })
                .collect(),
            secure,
            http,
            provider: RwLock::new(None),
        }))
    }

    /// The provider client, discovering it on first use (and again after a failure).
    async fn provider(&self) -> Result<ProviderClient, SignInError> {
        if let Some((client, at)) = self.provider.read().await.as_ref()
            && at.elapsed() < PROVIDER_REFRESH
        {
            return Ok(client.clone());
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| SignInError::Discovery(Box::new(e)))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone());
        *self.provider.write().await = Some((client.clone(), std::time::Instant::now()));
        Ok(client)
    }

    fn cookie_name(&self) -> String {
        if self.secure {
            format!("__Host-{STATE_COOKIE}")
        } else {
            STATE_COOKIE.to_owned()
        }
    }

    fn state_cookie(&self, value: String, max_age: i64) -> HeaderValue {
        let mut jar = CookieJar::new();
        let Some(key) = self.state_keys.first() else {
            return HeaderValue::from_static("");
        };
        jar.private_mut(key).add(
            Cookie::build((self.cookie_name(), value))
                .path("/")
                .http_only(true)
                // Lax: the provider's redirect back is a top-level navigation from its site.
                .same_site(SameSite::Lax)
                .secure(self.secure)
                .max_age(cookie::time::Duration::seconds(max_age)),
        );
        let text = jar
            .delta()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn login_state(&self, headers: &HeaderMap) -> Option<LoginState> {
        let name = self.cookie_name();
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|header| Cookie::split_parse(header.to_owned()).flatten())
            .filter(|cookie| cookie.name() == name)
            .take(2)
            .find_map(|cookie| {
                let mut jar = CookieJar::new();
                jar.add_original(cookie.into_owned());
                self.state_keys.iter().find_map(|key| {
                    let value = jar.private(key).get(&name)?;
                    serde_json::from_str(value.value()).ok()
                })
            })
    }

    /// `GET /auth/login`: to the provider, with a fresh state, nonce and PKCE challenge.
    async fn start(&self, next: String) -> Result<Response, SignInError> {
        let provider = self.provider().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = provider
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".to_owned()))
            .add_scope(Scope::new("email".to_owned()))
            .set_pkce_challenge(challenge)
            .url();
        let login = LoginState {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
            next,
        };
        let cookie = self.state_cookie(
            serde_json::to_string(&login).unwrap_or_default(),
            STATE_MAX_AGE_SECONDS,
        );
        Ok(redirect(url.as_str(), [cookie]))
    }

    /// `GET /auth/callback`: the code for tokens, the ID token verified, the profile read
    /// and admitted; who signed in and where to go next.
    async fn finish(
        &self,
        query: &CallbackQuery,
        headers: &HeaderMap,
    ) -> Result<SignedIn, SignInError> {
        let login = self.login_state(headers).ok_or(SignInError::State)?;
        let same_state = query.state.as_deref().is_some_and(|state| {
            subtle::ConstantTimeEq::ct_eq(state.as_bytes(), login.state.as_bytes()).into()
        });
        if !same_state {
            return Err(SignInError::State);
        }
        if let Some(error) = &query.error {
            return Err(SignInError::Provider(error.clone()));
        }
        let code = query
            .code
            .clone()
            .ok_or_else(|| SignInError::Provider("no authorization code".to_owned()))?;
        let provider = self.provider().await?;
        let http = &self.http;
        let tokens = provider
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| SignInError::Exchange(Box::new(e)))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.verifier))
            .request_async(http)
            .await
            .map_err(|e| SignInError::Exchange(Box::new(e)))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| SignInError::Provider("no ID token".to_owned()))?;
        let verifier = provider.id_token_verifier();
        let claims = match id_token.claims(&verifier, &Nonce::new(login.nonce)) {
            Ok(claims) => claims,
            Err(error) => {
                // Perhaps new signing keys: the next sign-in discovers them.
                *self.provider.write().await = None;
                return Err(SignInError::IdToken(Box::new(error)));
            }
        };
        let subject = claims.subject().clone();
        let info: openidconnect::UserInfoClaims<OtherClaims, CoreGenderClaim> = provider
            .user_info(tokens.access_token().clone(), Some(subject.clone()))
            .map_err(|e| SignInError::UserInfo(Box::new(e)))?
            .request_async(http)
            .await
            .map_err(|e| SignInError::UserInfo(Box::new(e)))?;
        let localized = |claim: Option<&openidconnect::LocalizedClaim<_>>| {
            claim
                .and_then(|c| c.get(None))
                .map(|v: &openidconnect::EndUserName| v.to_string())
        };
        let (email, email_verified) = match info.email() {
            Some(email) => (Some(email), info.email_verified().unwrap_or(false)),
            None => (claims.email(), claims.email_verified().unwrap_or(false)),
        };
        let profile = Profile {
            subject: subject.to_string(),
            // The address and whether it is verified come from one source: the userinfo
            // when it has an address, else the ID token.
            email: email.map(|e| e.as_str().to_owned()),
            email_verified,
            name: localized(info.name()).or_else(|| localized(claims.name())),
            preferred_username: info
                .preferred_username()
                .or(claims.preferred_username())
                .map(|u| u.as_str().to_owned()),
            groups: groups_of(&info, &self.groups_claim),
        };
        self.admission.admit(&profile)?;
        Ok(SignedIn {
            identity: signed_in_identity(self.issuer.as_str(), &profile.subject),
            name: display_name(&profile),
            moderator: is_member(&profile, &self.moderator_groups),
            next: login.next,
        })
    }
}

/// A 303 to `location` with these `Set-Cookie` values.
fn redirect(location: &str, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    for cookie in cookies {
        response.headers_mut().append(SET_COOKIE, cookie);
    }
    response
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

fn sign_in_off() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "sign_in_off",
        "this canvas has no sign-in: identities are anonymous",
    )
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/login?next=…`.
pub async fn login(State(gateway): State<Gateway>, Query(query): Query<NextQuery>) -> Response {
    let Some(sign_in) = gateway.issuer.sign_in.as_ref() else {
        return sign_in_off();
    };
    let next = safe_next(query.next.as_deref(), &gateway.origins);
    match sign_in.start(next).await {
        Ok(response) => response,
        Err(error) => failed(&error),
    }
}

/// `GET /auth/callback?code=…&state=…`.
pub async fn callback(
    State(gateway): State<Gateway>,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Some(sign_in) = gateway.issuer.sign_in.as_ref() else {
        return sign_in_off();
    };
    let Ok(Query(query)) = query else {
        return failed(&SignInError::State);
    };
    match sign_in.finish(&query, &headers).await {
        Ok(signed_in) => {
            if let Some(name) = &signed_in.name
                && let Err(error) = gateway
                    .redis
                    .set_display_name(&signed_in.identity, name)
                    .await
            {
                // The sign-in stands; the pixel info shows the handle meanwhile.
                tracing::warn!(error = %ErrorChain(&error), "cannot record a display name");
            }
            gateway.shared.metrics.seat("signed_in");
            let until = seconds_now() + sign_in.session.as_secs();
            let session = Session::signed_in(signed_in.identity, until, signed_in.moderator);
            let cookie = gateway.issuer.keys.cookie_for(&session);
            let clear_state = sign_in.state_cookie(String::new(), 0);
            redirect(&signed_in.next, [cookie, clear_state])
        }
        Err(error) => failed(&error),
    }
}

/// `POST /auth/logout?next=…`: the identity cookie is cleared. Only from the canvas's own
/// pages (another site's form could sign people out).
pub async fn logout(
    State(gateway): State<Gateway>,
    Query(query): Query<NextQuery>,
    headers: HeaderMap,
) -> Response {
    if gateway.issuer.sign_in.is_none() {
        return sign_in_off();
    }
    if !posted_by_the_page(&gateway, &headers) {
        return origin_not_allowed();
    }
    let next = safe_next(query.next.as_deref(), &gateway.origins);
    redirect(&next, [gateway.issuer.keys.clear_cookie()])
}

/// Whether the provider may be reached this way: HTTPS, or plain HTTP to this machine.
fn secure_enough(url: &openidconnect::url::Url) -> bool {
    use openidconnect::url::Host;
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(Host::Domain(domain)) => domain == "localhost",
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Whether a request that changes something comes from a page of the canvas: its
/// `Origin` is the gateway's own host or a listed origin (`*` does not count here).
fn same_site(gateway: &Gateway, headers: &HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let Some(origin) = header(axum::http::header::ORIGIN) else {
        return false;
    };
    crate::ws::same_host(origin, header(axum::http::header::HOST))
        || gateway.origins.allows_origin(origin)
}

/// [`same_site`], or, for a form the page posts (whose `Origin` is `null` under the page's
/// `no-referrer` policy), the browser's own word that it comes from this site
/// (`Sec-Fetch-Site`). Enough for signing out, not for moderating.
fn posted_by_the_page(gateway: &Gateway, headers: &HeaderMap) -> bool {
    let origin = headers.get(axum::http::header::ORIGIN);
    if origin.is_some_and(|o| o.as_bytes() != b"null") {
        return same_site(gateway, headers);
    }
    headers
        .get("sec-fetch-site")
        .is_some_and(|site| matches!(site.as_bytes(), b"same-origin" | b"same-site"))
}

fn origin_not_allowed() -> Response {
    json_error(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "this is taken from the canvas's own pages only",
    )
}

/// Whether `rest` (what follows `/auth/moderation`) names a moderation request: `/` and
/// segments of `A-Z a-z 0-9 . _ -`, none of them `.` or `..` (which URL parsing would
/// resolve to another canvas-api path), then any query.
pub fn is_moderation_path(rest: &str) -> bool {
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    path.strip_prefix('/').is_some_and(|path| {
        path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
    })
}

/// The largest moderation request body forwarded.
const MODERATION_BODY_MAX: usize = 64 * 1024;

/// `/auth/moderation/…`: the moderation API for a signed-in moderator, forwarded to
/// canvas-api with the moderator token and their handle (the audit log names them). A
/// request that changes anything must come from a page of this origin (or an allowed
/// one): the session is a cookie, which a foreign page's form could otherwise send.
pub async fn moderate(
    State(gateway): State<Gateway>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(sign_in) = gateway.issuer.sign_in.as_ref() else {
        return sign_in_off();
    };
    let session = match gateway.issuer.keys.presented(&headers) {
        Presented::Current(s) | Presented::Previous(s) | Presented::Upcoming(s) => Some(s),
        Presented::None => None,
    };
    let Some(session) = session.filter(|s| s.until.is_some()) else {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "sign_in_required",
            "sign in as a moderator first",
        );
    };
    let token = match (&sign_in.moderator_token, session.moderator) {
        (Some(token), true) => token,
        _ => {
            return json_error(
                StatusCode::FORBIDDEN,
                "not_moderator",
                "this person is not in a moderator group of the canvas",
            );
        }
    };
    if method != axum::http::Method::GET && !same_site(&gateway, &headers) {
        return origin_not_allowed();
    }
    if body.len() > MODERATION_BODY_MAX {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        );
    }
    let rest = uri
        .path_and_query()
        .map_or("", |p| p.as_str())
        .strip_prefix(ports::AUTH_MODERATION_PATH)
        .unwrap_or("");
    if !is_moderation_path(rest) {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such moderation request",
        );
    }
    let handle = pixel_common::identity::handle_of(&session.id);
    match gateway
        .shared
        .api
        .moderate(token, &handle, method, rest, body)
        .await
    {
        Ok((status, content_type, body)) => {
            let mut response = (status, body).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "cannot forward a moderation request");
            json_error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                "canvas-api did not answer",
            )
        }
    }
}

fn failed(error: &SignInError) -> Response {
    let (status, code) = error.status_and_code();
    if status.is_server_error() {
        tracing::warn!(error = %ErrorChain(error), "sign-in failed");
    } else {
        tracing::debug!(error = %ErrorChain(error), "sign-in refused");
    }
    json_error(status, code, &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(email: &str, verified: bool, groups: &[&str]) -> Profile {
        Profile {
            subject: "s".to_owned(),
            email: Some(email.to_owned()),
            email_verified: verified,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn admission_takes_verified_emails_of_the_domains_and_members_of_the_groups() {
        let open = Admission::default();
        assert_eq!(open.admit(&Profile::default()), Ok(()));

        let domains = Admission {
            email_domains: vec!["example.com".to_owned()],
            groups: Vec::new(),
        };
        assert_eq!(
            domains.admit(&profile("ann@Example.COM", true, &[])),
            Ok(())
        );
        for refused in [
            profile("ann@example.com", false, &[]),
            profile("ann@example.com.evil.org", true, &[]),
            profile("ann@sub.example.com", true, &[]),
            profile("example.com", true, &[]),
            Profile::default(),
        ] {
            assert!(
                matches!(domains.admit(&refused), Err(NotAdmitted::EmailDomain(_))),
                "{refused:?}"
            );
        }

        let groups = Admission {
            email_domains: Vec::new(),
            groups: vec!["painters".to_owned(), "mods".to_owned()],
        };
        assert_eq!(groups.admit(&profile("a@b", false, &["x", "mods"])), Ok(()));
        assert!(matches!(
            groups.admit(&profile("a@b", true, &["Painters"])),
            Err(NotAdmitted::Group(_))
        ));

        let both = Admission {
            email_domains: vec!["example.com".to_owned()],
            groups: vec!["painters".to_owned()],
        };
        assert!(both.admit(&profile("a@example.com", true, &[])).is_err());
        assert!(
            both.admit(&profile("a@other.com", true, &["painters"]))
                .is_err()
        );
        assert_eq!(
            both.admit(&profile("a@example.com", true, &["painters"])),
            Ok(())
        );
    }

    #[test]
    fn display_names_are_short_clean_and_never_an_email() {
        let named = |name: Option<&str>, user: Option<&str>| Profile {
            name: name.map(str::to_owned),
            preferred_username: user.map(str::to_owned),
            ..Profile::default()
        };
        assert_eq!(
            display_name(&named(Some("  Ada Lovelace "), Some("ada"))),
            Some("Ada Lovelace".to_owned())
        );
        assert_eq!(
            display_name(&named(Some("ada@example.com"), Some("ada"))),
            Some("ada".to_owned())
        );
        assert_eq!(display_name(&named(None, Some("ada@example.com"))), None);
        assert_eq!(display_name(&named(Some(" \u{7}\n "), None)), None);
        let long = "x".repeat(100);
        assert_eq!(
            display_name(&named(Some(&long), None)).map(|n| n.chars().count()),
            Some(DISPLAY_NAME_MAX)
        );
        assert_eq!(
            display_name(&named(Some("Bob\u{0}\u{1b}[31m"), None)),
            Some("Bob[31m".to_owned())
        );
        assert_eq!(
            display_name(&named(Some("Eve\u{202e}evE"), None)),
            Some("EveevE".to_owned()),
            "no bidirectional override"
        );
        for posing in ["user-0a1b2c3d", "Anon-0a1b2c3d", "moderator"] {
            assert_eq!(
                display_name(&named(Some(posing), Some("eve"))),
                Some("eve".to_owned()),
                "{posing}"
            );
        }
    }

    #[test]
    fn a_provider_is_reached_over_https_or_on_this_machine() {
        let url = |u: &str| openidconnect::url::Url::parse(u).expect("url");
        for fine in [
            "https://id.example.com/",
            "http://localhost:9998/",
            "http://127.0.0.1:9998/",
            "http://[::1]:9998/",
        ] {
            assert!(secure_enough(&url(fine)), "{fine}");
        }
        for plain in [
            "http://id.example.com/",
            "http://10.0.0.1/",
            "ftp://id.example.com/",
        ] {
            assert!(!secure_enough(&url(plain)), "{plain}");
        }
    }

    #[test]
    fn moderation_paths_stay_below_the_moderation_api() {
        for kept in [
            "/bans",
            "/bans/anon-0a1b2c3d",
            "/bans/anon.x",
            "/audit?limit=5",
            "/rollbacks",
        ] {
            assert!(is_moderation_path(kept), "{kept}");
        }
        for refused in [
            "",
            "/",
            "bans",
            "/bans/",
            "/bans/..",
            "/../pixels",
            "/./audit",
            "/bans/%2e%2e",
            "//pixels",
            "/bans\\..",
        ] {
            assert!(!is_moderation_path(refused), "{refused}");
        }
    }

    #[test]
    fn next_is_a_local_path_or_an_allowed_origin_never_elsewhere() {
        let origins = crate::ws::Origins::new(&["https://canvas.example.com".to_owned()]);
        assert_eq!(safe_next(None, &origins), "/");
        for kept in [
            "/",
            "/?x=1",
            "/canvas#here",
            "https://canvas.example.com/",
            "https://canvas.example.com/a?b=c",
        ] {
            assert_eq!(safe_next(Some(kept), &origins), kept);
        }
        for refused in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "https://canvas.example.com.evil.example/",
            "javascript:alert(1)",
            "evil.example",
            "/\r\nSet-Cookie: x=1",
            "",
        ] {
            assert_eq!(safe_next(Some(refused), &origins), "/", "{refused:?}");
        }
    }
}
