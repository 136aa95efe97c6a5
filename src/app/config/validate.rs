//! The serve settings checked one by one and built into the [`Config`] the gateway runs with;
//! a bad one is reported by its environment variable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::core::auth::jwt::JwtRules;
use crate::core::auth::limits::CallerQuota;
use crate::core::auth::{AuthConfig, Authenticator};
use crate::core::dbtls::require_auth::RequireAuth;
use crate::core::dbtls::{self, DatabaseTls, SslMode};
use crate::core::pool::PoolConfig;
use crate::grpc::{CallBounds, TxConfig};
use crate::pgwire::statements::Bound;

use super::cli::{AuthMode, ServeArgs};
use super::{Config, ConfigError, PgConfig, invalid};

/// `PGWAY_PG_MAX_PINNED` without a value: all of the pool but a quarter of it, and at least
/// two connections, kept for unpinned clients (and the gRPC door), never less than one. A
/// pinned client holds its connection until it disconnects, so the cap is what keeps the
/// others served; half the pool (4 of 8 on two cores) was reached by an ordinary
/// application's LISTEN connections and temp tables within a second.
pub fn default_max_pinned(pool_max: u32) -> usize {
    let pool_max = pool_max as usize;
    pool_max.saturating_sub((pool_max / 4).max(2)).max(1)
}

/// A list of names (`PGWAY_PG_DATABASES`, `PGWAY_PG_ADMIN_USERS`, ...), trimmed; an empty
/// name is refused (a stray comma is a mistake).
fn names(setting: &'static str, names: &[String]) -> Result<Vec<String>, ConfigError> {
    names
        .iter()
        .map(|name| match name.trim() {
            "" => Err(invalid(setting, "an empty name in the list")),
            name => Ok(name.to_owned()),
        })
        .collect()
}

/// Connections kept ready without `PGWAY_POOL_MIN` (fewer only when `PGWAY_POOL_MAX` is
/// lower): the smallest pool the default maximum allows.
pub const DEFAULT_POOL_MIN: u32 = 5;

/// The default pool size: 4 connections per core, clamped to 5..=20. More connections than the
/// server has cores to run them only add contention; fewer than 5 starve bursts.
pub fn default_pool_max() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .clamp(5, 20)
}

impl ServeArgs {
    /// Checks every setting and builds the [`Config`] the gateway runs with.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        // In this order, so that of several bad settings the same one is reported as always.
        let (mut database, database_tls) = self.database()?;
        let pool = self.pool()?;
        self.check_counts_and_durations()?;
        let metrics_addr = self.metrics_addr()?;
        let limits = self.bounds()?;
        let statement_timeout = self.statement_timeout.unwrap_or(self.request_timeout);
        if statement_timeout.is_zero() {
            return Err(invalid("PGWAY_STATEMENT_TIMEOUT", "must be more than zero"));
        }
        // Enforced by the server too, so a statement stops even if the gateway can't cancel
        // it (a network cut); a caller's SET of its own is undone by the reset that follows.
        let mut options = database.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis()
        ));
        database.options(&options);
        let (auth, authenticator) = self.auth_config()?;
        let tls = self.tls()?;
        let pg = self.pg(&pool)?;

        Ok(Config {
            database,
            database_tls,
            grpc_addr: self.grpc_addr,
            caller_quota: CallerQuota {
                max_calls: self.max_calls_per_caller,
                max_transactions: self
                    .max_transactions_per_caller
                    .unwrap_or((pool.max as usize / 2).max(1)),
            },
            pool,
            metrics_addr,
            limits,
            request_timeout: self.request_timeout,
            statement_timeout,
            tx: TxConfig {
                max_attempts: self.tx_max_attempts,
                idle_timeout: self.tx_idle_timeout,
                max_duration: self.tx_max_duration,
            },
            health_interval: self.health_interval,
            shutdown_grace: self.shutdown_grace,
            auth,
            authenticator,
            tls,
            pg,
        })
    }

    /// The PostgreSQL door's settings, or `None` when `PGWAY_PG_ADDR` is empty.
    fn pg(&self, pool: &PoolConfig) -> Result<Option<PgConfig>, ConfigError> {
        let addr = match self.pg_addr.trim() {
            "" => return Ok(None),
            addr => addr
                .parse()
                .map_err(|e| invalid("PGWAY_PG_ADDR", format!("not an address ({e})")))?,
        };
        let prepared_statements = NonZeroUsize::new(self.pg_prepared_statements)
            .ok_or_else(|| invalid("PGWAY_PG_PREPARED_STATEMENTS", "must be at least 1"))?;
        if let Some(path) = &self.pg_auth_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("PGWAY_PG_AUTH_FILE", format!("{}: {e}", path.display())))?;
            crate::pgwire::userlist::UserList::parse(&text)
                .map_err(|e| invalid("PGWAY_PG_AUTH_FILE", format!("{}: {e}", path.display())))?;
        }
        if self
            .pg_auth_query
            .as_deref()
            .is_some_and(|q| !q.contains("$1"))
        {
            return Err(invalid(
                "PGWAY_PG_AUTH_QUERY",
                "must take the user name as $1",
            ));
        }
        for (setting, value) in [
            ("PGWAY_PG_MAX_CLIENTS", self.pg_max_clients),
            ("PGWAY_PG_MAX_LOGINS", self.pg_max_logins),
            (
                "PGWAY_PG_MAX_LOGINS_PER_ADDRESS",
                self.pg_max_logins_per_address,
            ),
        ] {
            if value == 0 {
                return Err(invalid(setting, "must be at least 1"));
            }
        }
        if self.pg_login_timeout.is_zero() {
            return Err(invalid("PGWAY_PG_LOGIN_TIMEOUT", "must be more than 0"));
        }
        if self.pg_require_tls && self.tls_cert.is_none() {
            return Err(invalid(
                "PGWAY_PG_REQUIRE_TLS",
                "needs PGWAY_TLS_CERT and PGWAY_TLS_KEY: the door has no TLS to require",
            ));
        }
        Ok(Some(PgConfig {
            addr,
            auth_file: self.pg_auth_file.clone(),
            auth_query: self.pg_auth_query.clone(),
            prepared_statements,
            max_pinned: self
                .pg_max_pinned
                .unwrap_or_else(|| default_max_pinned(pool.max)),
            keep_unnamed: match self.pg_keep_unnamed.as_str() {
                "always" => crate::pgwire::KeepUnnamed::Always,
                "autocommit" => crate::pgwire::KeepUnnamed::Autocommit,
                _ => crate::pgwire::KeepUnnamed::Off,
            },
            session_state: if self.pg_session_state == "error" {
                crate::pgwire::SessionStateMode::Error
            } else {
                crate::pgwire::SessionStateMode::Pin
            },
            max_clients: self.pg_max_clients,
            max_request_bytes: self.max_request_bytes,
            require_tls: self.pg_require_tls || self.tls_client_ca.is_some(),
            client_certificates: self.tls_client_ca.is_some(),
            login_timeout: self.pg_login_timeout,
            gate: crate::pgwire::gate::GateLimits {
                max_logins: self.pg_max_logins,
                max_per_address: self.pg_max_logins_per_address,
            },
            statement_cache: Bound {
                count: positive("PGWAY_PG_STATEMENT_CACHE", self.pg_statement_cache)?,
                bytes: self.pg_statement_cache_bytes,
            },
            client_statements: Bound {
                count: positive(
                    "PGWAY_PG_MAX_CLIENT_STATEMENTS",
                    self.pg_max_client_statements,
                )?,
                bytes: self.pg_max_client_statement_bytes,
            },
            client_idle_timeout: self.pg_client_idle_timeout,
            transaction_timeout: self.pg_transaction_timeout,
            idle_in_transaction_timeout: self.pg_idle_in_transaction_timeout,
            client_write_timeout: self.pg_client_write_timeout,
            warm: self.pool_min.unwrap_or(DEFAULT_POOL_MIN).min(pool.max),
            databases: names("PGWAY_PG_DATABASES", &self.pg_databases)?,
            admin_users: names("PGWAY_PG_ADMIN_USERS", &self.pg_admin_users)?,
            stats_users: names("PGWAY_PG_STATS_USERS", &self.pg_stats_users)?,
        }))
    }

    /// The database's connection settings and TLS, from the URL (or `DATABASE_URL`), with
    /// pgway's timeouts and keepalives.
    fn database(&self) -> Result<(tokio_postgres::Config, DatabaseTls), ConfigError> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => std::env::var("DATABASE_URL").map_err(|_| {
                invalid(
                    "PGWAY_DATABASE_URL",
                    "not set (nor DATABASE_URL): say which database to serve",
                )
            })?,
        };
        // Neither tokio-postgres' parse error nor ours echoes the URL, so no password can leak
        // here. The CA and client certificate files are read now, once.
        let (mut database, database_tls) =
            dbtls::parse(&url).map_err(|e| invalid("PGWAY_DATABASE_URL", e.to_string()))?;
        if database.get_hosts().is_empty() {
            return Err(invalid("PGWAY_DATABASE_URL", "names no host"));
        }
        // PostgreSQL offers no TLS on its Unix socket: a mode that demands it could never
        // connect (the PostgreSQL door would skip it, as libpq does, and the gRPC door fail).
        let unix = database
            .get_hosts()
            .iter()
            .any(|host| matches!(host, tokio_postgres::config::Host::Unix(_)));
        if unix && !matches!(database_tls.mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(invalid(
                "PGWAY_DATABASE_URL",
                format!(
                    "sslmode={} with a Unix-socket host: PostgreSQL has no TLS there; use \
                     sslmode=disable or prefer",
                    database_tls.mode().as_str()
                ),
            ));
        }
        if database.get_application_name().is_none() {
            database.application_name("pgway");
        }
        // Without these a dead host hangs a connection for hours (keepalives idle 2 h by default).
        database
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));
        let require_auth = RequireAuth::parse(&self.database_require_auth)
            .map_err(|e| invalid("PGWAY_DATABASE_REQUIRE_AUTH", e))?;
        Ok((database, database_tls.with_require_auth(require_auth)))
    }

    /// The pool's size and timings.
    fn pool(&self) -> Result<PoolConfig, ConfigError> {
        let max = self.pool_max.unwrap_or_else(default_pool_max);
        if max == 0 {
            return Err(invalid("PGWAY_POOL_MAX", "must be at least 1"));
        }
        let min = match self.pool_min {
            Some(min) if min > max => {
                return Err(invalid(
                    "PGWAY_POOL_MIN",
                    format!("{min} is above PGWAY_POOL_MAX ({max})"),
                ));
            }
            // With the PostgreSQL door on, the door keeps PGWAY_POOL_MIN warm (see
            // `PgConfig::warm`), counting the gRPC door's idle connections among them; bb8's
            // own minimum would refill by taking places the door holds.
            _ if !self.pg_addr.trim().is_empty() => 0,
            Some(min) => min,
            None => DEFAULT_POOL_MIN.min(max),
        };
        Ok(PoolConfig {
            min,
            max,
            acquire_timeout: self.acquire_timeout,
            max_lifetime: self.conn_max_lifetime,
            idle_timeout: self.conn_idle_timeout,
            statement_cache_size: self.statement_cache_size,
            max_waiting: self.max_waiting,
            max_concurrent_connects: self.max_concurrent_connects,
        })
    }

    /// Durations that must be more than zero, counts that must be at least one.
    fn check_counts_and_durations(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("PGWAY_ACQUIRE_TIMEOUT", self.acquire_timeout),
            ("PGWAY_CONNECT_TIMEOUT", self.connect_timeout),
            ("PGWAY_REQUEST_TIMEOUT", self.request_timeout),
            ("PGWAY_CONN_MAX_LIFETIME", self.conn_max_lifetime),
            ("PGWAY_CONN_IDLE_TIMEOUT", self.conn_idle_timeout),
            ("PGWAY_TX_IDLE_TIMEOUT", self.tx_idle_timeout),
            ("PGWAY_TX_MAX_DURATION", self.tx_max_duration),
            ("PGWAY_HEALTH_INTERVAL", self.health_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be more than zero"));
            }
        }
        for (setting, value) in [
            ("PGWAY_MAX_ROWS", self.max_rows as usize),
            ("PGWAY_STREAM_BATCH_ROWS", self.stream_batch_rows as usize),
            ("PGWAY_TX_MAX_ATTEMPTS", self.tx_max_attempts as usize),
            (
                "PGWAY_MAX_CONCURRENT_CONNECTS",
                self.max_concurrent_connects,
            ),
        ] {
            if value == 0 {
                return Err(invalid(setting, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// Where `/metrics` is served; `None` when the setting is empty.
    fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_addr.trim() {
            "" => Ok(None),
            addr => addr.parse::<SocketAddr>().map(Some).map_err(|e| {
                invalid(
                    "PGWAY_METRICS_ADDR",
                    format!("{addr:?} is not host:port ({e}); leave it empty to turn metrics off"),
                )
            }),
        }
    }

    /// What one call may send and get back.
    fn bounds(&self) -> Result<CallBounds, ConfigError> {
        if self.max_response_bytes < 1024 {
            return Err(invalid("PGWAY_MAX_RESPONSE_BYTES", "must be at least 1KiB"));
        }
        for (setting, value, least) in [
            ("PGWAY_MAX_REQUEST_BYTES", self.max_request_bytes, 1024),
            ("PGWAY_MAX_SQL_BYTES", self.max_sql_bytes, 16),
            ("PGWAY_MAX_STATEMENTS", self.max_statements, 1),
        ] {
            if value < least {
                return Err(invalid(setting, format!("must be at least {least}")));
            }
        }
        if self.max_params > 65_535 {
            return Err(invalid(
                "PGWAY_MAX_PARAMS",
                "PostgreSQL takes at most 65535 parameters",
            ));
        }
        Ok(CallBounds {
            max_rows: self.max_rows,
            max_response_bytes: self.max_response_bytes,
            stream_batch_rows: self.stream_batch_rows,
            stream_batch_bytes: (256 * 1024).min(self.max_response_bytes),
            max_request_bytes: self.max_request_bytes,
            max_sql_bytes: self.max_sql_bytes,
            max_params: self.max_params,
            max_statements: self.max_statements,
        })
    }

    /// The TLS settings, with the files read and checked now so a bad one stops start-up.
    fn tls(&self) -> Result<Option<crate::core::tls::TlsConfig>, ConfigError> {
        let (cert, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) => {
                return match self.tls_client_ca {
                    Some(_) => Err(invalid(
                        "PGWAY_TLS_CLIENT_CA",
                        "needs PGWAY_TLS_CERT and PGWAY_TLS_KEY: client certificates are asked for only over TLS",
                    )),
                    None => Ok(None),
                };
            }
            (Some(_), None) => {
                return Err(invalid(
                    "PGWAY_TLS_KEY",
                    "not set, but PGWAY_TLS_CERT is: set both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "PGWAY_TLS_CERT",
                    "not set, but PGWAY_TLS_KEY is: set both or neither",
                ));
            }
        };
        let files = crate::core::tls::TlsFiles {
            cert,
            key,
            client_ca: self.tls_client_ca.clone(),
        };
        let initial = files
            .load_blocking()
            .map_err(|error| invalid(error.setting, error.to_string()))?;
        Ok(Some(crate::core::tls::TlsConfig {
            files,
            reload_interval: self.tls_reload_interval,
            initial,
        }))
    }
}

impl ServeArgs {
    /// The authentication settings, checked, and their files loaded.
    fn auth_config(&self) -> Result<(AuthConfig, Arc<Authenticator>), ConfigError> {
        let open = self.auth == Some(AuthMode::None);
        let jwt = self.jwt_secret_file.is_some() || self.jwt_jwks_file.is_some();
        let credentials = self.auth_tokens_file.is_some() || jwt;
        if open && credentials {
            return Err(invalid(
                "PGWAY_AUTH",
                "is none, but tokens or JWT keys are configured too: unset one or the other",
            ));
        }
        if !open && !credentials {
            return Err(invalid(
                "PGWAY_AUTH",
                "no credentials are configured: set PGWAY_AUTH_TOKENS_FILE and/or \
                 PGWAY_JWT_SECRET_FILE / PGWAY_JWT_JWKS_FILE, or PGWAY_AUTH=none to let anyone \
                 who reaches the port call",
            ));
        }
        let allowed_roles: HashSet<String> = self
            .jwt_allowed_roles
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        if jwt && allowed_roles.is_empty() {
            return Err(invalid(
                "PGWAY_JWT_ALLOWED_ROLES",
                "JWTs are accepted, so name the roles they may run as (such as anon,authenticated)",
            ));
        }
        if let Some(role) = allowed_roles
            .iter()
            .find(|r| r.len() > 63 || r.contains('\0'))
        {
            return Err(invalid(
                "PGWAY_JWT_ALLOWED_ROLES",
                format!("{role:?} is not a PostgreSQL role name"),
            ));
        }
        if self.auth_reload_interval.is_zero() {
            return Err(invalid(
                "PGWAY_AUTH_RELOAD_INTERVAL",
                "must be more than zero",
            ));
        }
        let config = AuthConfig {
            open,
            tokens_file: self.auth_tokens_file.clone(),
            jwt_secret_file: self.jwt_secret_file.clone(),
            jwt_jwks_file: self.jwt_jwks_file.clone(),
            jwt: JwtRules {
                audience: self.jwt_audience.clone(),
                issuer: self.jwt_issuer.clone(),
                role_claim: self.jwt_role_claim.clone(),
                allowed_roles,
                leeway: self.jwt_leeway,
            },
            public_health: self.auth_public_health,
            public_reflection: self.auth_public_reflection,
            reload_interval: self.auth_reload_interval,
        };
        let authenticator =
            Authenticator::load(&config).map_err(|(setting, reason)| invalid(setting, reason))?;
        Ok((config, Arc::new(authenticator)))
    }
}

/// `value` as a count that must be at least 1.
fn positive(setting: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(setting, "must be at least 1"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::app::config::Cli;
    use crate::app::config::Command;
    use crate::app::config::parse::invalid_value;

    #[test]
    fn default_pool_is_clamped() {
        let max = default_pool_max();
        assert!((5..=20).contains(&max));
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec![
            "pgway",
            "serve",
            "--database-url",
            "postgres://u@127.0.0.1/db",
            "--auth",
            "none",
        ];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Some(Command::Serve(args)) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = args(&["--pool-min", "9", "--pool-max", "3"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_POOL_MIN");
        let err = args(&["--max-rows", "0"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_MAX_ROWS");
        assert!(Cli::try_parse_from(["pgway", "--acquire-timeout", "soon"]).is_err());
    }

    #[test]
    fn the_pool_keeps_five_ready_unless_its_maximum_is_lower() {
        // With the gRPC door alone.
        let config = args(&["--pg-addr", ""]).validate().unwrap();
        assert_eq!(config.pool.min, 5);
        let config = args(&["--pg-addr", "", "--pool-max", "3"])
            .validate()
            .unwrap();
        assert_eq!((config.pool.min, config.pool.max), (3, 3));
        let config = args(&["--pg-addr", "", "--pool-min", "1"])
            .validate()
            .unwrap();
        assert_eq!(config.pool.min, 1);
    }

    #[test]
    fn with_the_postgres_door_the_door_keeps_the_minimum_warm() {
        let config = args(&[]).validate().unwrap();
        assert_eq!(config.pool.min, 0);
        assert_eq!(config.pg.unwrap().warm, DEFAULT_POOL_MIN);
        let config = args(&["--pool-min", "2"]).validate().unwrap();
        assert_eq!(config.pool.min, 0);
        assert_eq!(config.pg.unwrap().warm, 2);
        let config = args(&["--pool-min", "0"]).validate().unwrap();
        assert_eq!(config.pg.unwrap().warm, 0);
    }

    #[test]
    fn the_pin_cap_keeps_a_share_of_the_pool_for_unpinned_clients() {
        let caps: Vec<usize> = [1, 2, 3, 4, 5, 8, 12, 20]
            .into_iter()
            .map(default_max_pinned)
            .collect();
        assert_eq!(caps, [1, 1, 1, 2, 3, 6, 9, 15]);
        let pg = |argv: &[&str]| args(argv).validate().unwrap().pg.unwrap();
        assert_eq!(pg(&["--pool-max", "8"]).max_pinned, 6);
        assert_eq!(
            pg(&["--pool-max", "8", "--pg-max-pinned", "2"]).max_pinned,
            2
        );
    }

    #[test]
    fn the_doors_databases_are_any_unless_listed() {
        let pg = |argv: &[&str]| args(argv).validate().unwrap().pg.unwrap();
        assert!(pg(&[]).databases.is_empty());
        assert_eq!(
            pg(&["--pg-databases", "app, reports"]).databases,
            ["app", "reports"]
        );
        let err = args(&["--pg-databases", "app,,reports"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_PG_DATABASES");
    }

    #[test]
    fn settings_errors_name_the_variable_and_the_flag() {
        let err = args(&["--max-rows", "0"]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "PGWAY_MAX_ROWS (--max-rows): must be at least 1"
        );
        let refused = Cli::try_parse_from(["pgway", "serve", "--pool-max", "abc"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.starts_with("PGWAY_POOL_MAX (--pool-max): invalid value \"abc\": "),
            "{message}"
        );
        let refused = Cli::try_parse_from(["pgway", "serve", "--log-format", "xml"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.contains("PGWAY_LOG_FORMAT (--log-format)"),
            "{message}"
        );
        assert!(message.contains("json"), "{message}");
        let refused = Cli::try_parse_from(["pgway", "stats", "--metrics-addr", "x"]).unwrap_err();
        let message = invalid_value(&refused).unwrap();
        assert!(
            message.starts_with("PGWAY_METRICS_ADDR (--metrics-addr)"),
            "{message}"
        );
    }

    #[test]
    fn tls_settings_come_together() {
        let err = args(&["--tls-cert", "/c.pem"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_KEY");
        let err = args(&["--tls-key", "/k.pem"]).validate().unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CERT");
        let err = args(&["--tls-client-ca", "/ca.pem"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CLIENT_CA");
        let err = args(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/k.pem"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "PGWAY_TLS_CERT");
        assert!(err.reason.contains("/nonexistent/c.pem"), "{err}");
        assert!(args(&[]).validate().unwrap().tls.is_none());
    }

    #[test]
    fn good_settings_validate() {
        let config = args(&["--pool-max", "7"]).validate().unwrap();
        assert_eq!(config.pool.max, 7);
        assert_eq!(config.limits.max_rows, 10_000);
    }
}
