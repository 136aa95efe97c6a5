//! Who may call, and as whom.
//!
//! A door hands [`Authenticator::authenticate`] the `authorization` its request carried
//! (`Bearer …`), before the request's message is even decoded: it is checked against the
//! static tokens ([`tokens`]) and JWT keys ([`jwt`]) in memory, so a call without valid
//! credentials is refused without a database round trip. The [`Caller`] it finds travels with
//! the request to the handlers: a token caller runs as the gateway's own database role, a JWT
//! caller runs as its `role` claim with its claims in `request.jwt.claims`. [`limits`] caps
//! what one caller may hold at once.
//!
//! The token, secret and JWKS files are re-read when they change (polled) and on SIGHUP; a
//! file that fails to parse keeps the previous contents in force.

pub mod cache;
pub mod jwt;
pub mod limits;
pub mod tokens;

use std::fmt::{self, Write as _};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::metrics::counter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::error::GatewayError;
use crate::core::telemetry as metrics;

use cache::VerifiedCache;
use jwt::{JwtRules, KeySet, Secret};
use tokens::TokenSet;

/// The `authorization` a request carried, as its door read it.
#[derive(Debug, Clone, Copy)]
pub enum Authorization<'a> {
    /// None was sent.
    Missing,
    /// One was sent that is not visible ASCII text.
    NotText,
    /// Its text.
    Text(&'a str),
}

/// Why a call was turned away by the authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No credentials, or credentials that don't check out. `reason` is a metric label.
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    /// Valid credentials asking for something they may not have (a role off the allow list).
    PermissionDenied(String),
}

impl From<Refused> for GatewayError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthenticated { message, .. } => GatewayError::Unauthenticated(message),
            Refused::PermissionDenied(message) => GatewayError::PermissionDenied(message),
        }
    }
}

/// The caller of one request, as the authenticator found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `PGWAY_AUTH=none`: callers are not told apart.
    Open,
    /// A static token; `fingerprint` names it without revealing it.
    Token { fingerprint: Arc<str> },
    /// A verified JWT: statements run as its role, under row-level security.
    Jwt(Arc<jwt::Verified>),
}

impl Caller {
    /// The key per-caller limits count under (`None`: not limited per caller).
    pub fn limit_key(&self) -> Option<String> {
        match self {
            Caller::Open => None,
            Caller::Token { fingerprint } => Some(format!("token:{fingerprint}")),
            Caller::Jwt(verified) => Some(match &verified.subject {
                Some(sub) => format!("jwt:{sub}"),
                None => format!("jwt-role:{}", verified.role),
            }),
        }
    }

    /// How the caller is named in logs: a token's fingerprint, a JWT's role and subject. Never
    /// a secret. Formatted only when a log line is written, so a call whose span is off costs
    /// no allocation.
    pub fn log_name(&self) -> LogName<'_> {
        LogName(self)
    }
}

/// A [`Caller`]'s name in logs; see [`Caller::log_name`].
#[derive(Debug, Clone, Copy)]
pub struct LogName<'a>(&'a Caller);

impl fmt::Display for LogName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Caller::Open => f.write_str("open"),
            Caller::Token { fingerprint } => write!(f, "token:{fingerprint}"),
            Caller::Jwt(verified) => {
                write!(f, "jwt:{}:", verified.role)?;
                match verified.subject.as_deref() {
                    None => f.write_str("-"),
                    // A subject is the token issuer's text: no control characters (a forged
                    // line break in a log), and no more than 64 characters of it.
                    Some(sub) => sub
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(64)
                        .try_for_each(|c| f.write_char(c)),
                }
            }
        }
    }
}

/// A file whose parsed contents are kept in memory and replaced when the file changes.
#[derive(Debug)]
pub struct Watched<T> {
    setting: &'static str,
    path: PathBuf,
    parse: fn(&[u8]) -> Result<T, String>,
    current: RwLock<Arc<T>>,
    /// SHA-256 of the contents last read: a change is seen by content, so a Kubernetes Secret
    /// swapped in through a symlink counts even when sizes and times say nothing.
    digest: RwLock<[u8; 32]>,
}

impl<T> Watched<T> {
    /// Reads and parses the file at start-up; an error names the setting, not the contents.
    pub fn load(
        setting: &'static str,
        path: PathBuf,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<Watched<T>, String> {
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        let value = parse(&bytes).map_err(|e| format!("{path:?}: {e}"))?;
        Ok(Watched {
            setting,
            path,
            parse,
            current: RwLock::new(Arc::new(value)),
            digest: RwLock::new(tokens::sha256(&bytes)),
        })
    }

    /// The contents in force.
    pub fn get(&self) -> Arc<T> {
        // A poisoned lock only means a reader panicked; the value itself is whole.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the file and takes its contents if they changed (or always, when `force`);
    /// keeps the old contents if the new ones don't parse. The files are small (tokens, a
    /// secret, a JWKS), so reading them every few seconds costs nothing worth saving.
    async fn refresh(&self, force: bool) {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(setting = self.setting, path = ?self.path, %error, "cannot read the file; keeping what was loaded");
                return;
            }
        };
        let digest = tokens::sha256(&bytes);
        {
            let mut known = self.digest.write().unwrap_or_else(|e| e.into_inner());
            if !force && *known == digest {
                return;
            }
            // A broken version is reported once, not at every tick.
            *known = digest;
        }
        match (self.parse)(&bytes) {
            Ok(value) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
                counter!(metrics::AUTH_RELOADS, "setting" => self.setting, "outcome" => "ok")
                    .increment(1);
                info!(setting = self.setting, path = ?self.path, "reloaded");
            }
            Err(error) => {
                counter!(metrics::AUTH_RELOADS, "setting" => self.setting, "outcome" => "error")
                    .increment(1);
                warn!(setting = self.setting, path = ?self.path, %error, "reload failed; keeping what was loaded");
            }
        }
    }
}

/// The authentication settings, checked at start-up.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `PGWAY_AUTH=none`: run open.
    pub open: bool,
    pub tokens_file: Option<PathBuf>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_jwks_file: Option<PathBuf>,
    pub jwt: JwtRules,
    pub public_health: bool,
    pub public_reflection: bool,
    pub reload_interval: Duration,
}

/// Checks credentials against what is loaded.
#[derive(Debug)]
pub struct Authenticator {
    open: bool,
    tokens: Option<Watched<TokenSet>>,
    secret: Option<Watched<Secret>>,
    keys: Option<Watched<KeySet>>,
    rules: JwtRules,
    reload_interval: Duration,
    verified: VerifiedCache,
}

/// JWTs kept verified (see [`cache`]), for that many distinct callers' tokens in use at once.
/// (A const: the `unwrap` is evaluated, and would fail, at compile time.)
const VERIFIED_CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// Larger tokens are verified every time: with this bound the cache holds well under 20 MB
/// (a Supabase token is about 1 KB).
const VERIFIED_MAX_TOKEN: usize = 4096;

impl Authenticator {
    /// Loads the files named in `config`; an unreadable or invalid file is an error naming its
    /// setting.
    pub fn load(config: &AuthConfig) -> Result<Authenticator, (&'static str, String)> {
        fn watch<T>(
            setting: &'static str,
            path: &Option<PathBuf>,
            parse: fn(&[u8]) -> Result<T, String>,
        ) -> Result<Option<Watched<T>>, (&'static str, String)> {
            path.clone()
                .map(|path| Watched::load(setting, path, parse))
                .transpose()
                .map_err(|e| (setting, e))
        }
        Ok(Authenticator {
            open: config.open,
            tokens: watch(
                "PGWAY_AUTH_TOKENS_FILE",
                &config.tokens_file,
                TokenSet::parse,
            )?,
            secret: watch(
                "PGWAY_JWT_SECRET_FILE",
                &config.jwt_secret_file,
                Secret::parse,
            )?,
            keys: watch("PGWAY_JWT_JWKS_FILE", &config.jwt_jwks_file, KeySet::parse)?,
            rules: config.jwt.clone(),
            reload_interval: config.reload_interval,
            verified: VerifiedCache::new(VERIFIED_CAPACITY),
        })
    }

    fn jwt_configured(&self) -> bool {
        self.secret.is_some() || self.keys.is_some()
    }

    /// Finds the caller of a request from the `authorization` it carried.
    pub fn authenticate(&self, authorization: Authorization<'_>) -> Result<Caller, Refused> {
        if self.open {
            return Ok(Caller::Open);
        }
        let value = match authorization {
            Authorization::Missing => {
                return Err(Refused::Unauthenticated {
                    reason: "missing",
                    message: "this gateway needs credentials: send `authorization: Bearer <token>`"
                        .into(),
                });
            }
            Authorization::NotText => None,
            Authorization::Text(value) => Some(value),
        };
        let credential = value
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Refused::Unauthenticated {
                reason: "malformed",
                message: "the authorization metadata must be `Bearer <token>`".into(),
            })?;
        let digest = tokens::sha256(credential.as_bytes());
        if let Some(tokens) = &self.tokens
            && let Some(fingerprint) = tokens.get().check(&digest)
        {
            return Ok(Caller::Token {
                fingerprint: fingerprint.into(),
            });
        }
        // A JWT has three dot-separated parts; anything else can only have been a token.
        if self.jwt_configured() && credential.split('.').count() == 3 {
            let keys = (
                self.secret.as_ref().map(Watched::get),
                self.keys.as_ref().map(Watched::get),
            );
            let now = jsonwebtoken::get_current_timestamp();
            if let Some(verified) = self.verified.get(&digest, &keys, now) {
                return Ok(Caller::Jwt(verified));
            }
            let verified = Arc::new(jwt::verify(
                credential,
                keys.0.as_deref(),
                keys.1.as_deref(),
                &self.rules,
            )?);
            if credential.len() <= VERIFIED_MAX_TOKEN {
                self.verified.put(digest, Arc::clone(&verified), keys);
            }
            return Ok(Caller::Jwt(verified));
        }
        Err(Refused::Unauthenticated {
            reason: "unknown_token",
            message: "the bearer token is not accepted".into(),
        })
    }

    /// Re-reads the files when they change or on SIGHUP, until `stop`.
    pub async fn watch_files(self: Arc<Self>, stop: CancellationToken) {
        if self.tokens.is_none() && !self.jwt_configured() {
            return;
        }
        let mut trigger = crate::core::reload::Trigger::new(self.reload_interval);
        while let Some(force) = trigger.next(&stop).await {
            if let Some(w) = &self.tokens {
                w.refresh(force).await;
            }
            if let Some(w) = &self.secret {
                w.refresh(force).await;
            }
            if let Some(w) = &self.keys {
                w.refresh(force).await;
            }
        }
    }
}
