//! `pgway probe`: a gRPC health check with grpc_health_probe's flags and exit codes, for slim
//! images that ship no probe, so that scripts written for grpc_health_probe work unchanged.
//!
//! Flags are spelled the Go way (`-addr=host:port`, `-service=name`, `-connect-timeout=1s`,
//! `-rpc-timeout=1s`, `-tls`, `-tls-ca-cert=file`, `-tls-client-cert=file`,
//! `-tls-client-key=file`, `-tls-server-name=name`, `-user-agent=ua`, `-v`); `--addr` and
//! `-addr value` work too. Without `-addr` it probes the gateway's own `PGWAY_GRPC_ADDR` (see
//! [`default_addr`]), so an image's health check follows the port the gateway listens on.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// grpc_health_probe's exit codes.
pub mod exit {
    pub const SERVING: u8 = 0;
    pub const INVALID_ARGUMENTS: u8 = 1;
    pub const CONNECTION_FAILURE: u8 = 2;
    pub const RPC_FAILURE: u8 = 3;
    pub const UNHEALTHY: u8 = 4;
}

/// What to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeArgs {
    /// Empty when `-addr` isn't given: [`run`] then probes [`default_addr`].
    pub addr: String,
    pub service: String,
    pub connect_timeout: Duration,
    pub rpc_timeout: Duration,
    pub tls: bool,
    pub tls_ca_cert: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub user_agent: String,
    pub verbose: bool,
}

impl Default for ProbeArgs {
    fn default() -> Self {
        ProbeArgs {
            addr: String::new(),
            service: String::new(),
            connect_timeout: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(1),
            tls: false,
            tls_ca_cert: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_server_name: None,
            user_agent: "grpc_health_probe".into(),
            verbose: false,
        }
    }
}

/// Parses grpc_health_probe-style arguments.
pub fn parse(args: &[String]) -> Result<ProbeArgs, String> {
    let mut parsed = ProbeArgs::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let flag = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        let boolean = |inline: Option<String>| match inline.as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(format!("-{name}: not a boolean: {other}")),
        };
        let mut value = |inline: Option<String>| {
            inline
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("flag needs an argument: -{name}"))
        };
        let duration = |text: String| {
            crate::app::config::parse_duration(&text).map_err(|e| format!("-{name}: {e}"))
        };
        match name {
            "addr" => parsed.addr = value(inline)?,
            "service" => parsed.service = value(inline)?,
            "connect-timeout" => parsed.connect_timeout = duration(value(inline)?)?,
            "rpc-timeout" => parsed.rpc_timeout = duration(value(inline)?)?,
            "tls" => parsed.tls = boolean(inline)?,
            "tls-ca-cert" => parsed.tls_ca_cert = Some(value(inline)?.into()),
            "tls-client-cert" => parsed.tls_client_cert = Some(value(inline)?.into()),
            "tls-client-key" => parsed.tls_client_key = Some(value(inline)?.into()),
            "tls-server-name" => parsed.tls_server_name = Some(value(inline)?),
            "user-agent" => parsed.user_agent = value(inline)?,
            "v" => parsed.verbose = boolean(inline)?,
            "tls-no-verify" | "spiffe" | "alts" | "gzip" => {
                return Err(format!("-{name} is not supported by pgway probe"));
            }
            other => return Err(format!("flag provided but not defined: -{other}")),
        }
    }
    if parsed.tls_client_cert.is_some() != parsed.tls_client_key.is_some() {
        return Err("specify both -tls-client-cert and -tls-client-key".into());
    }
    if !parsed.tls
        && (parsed.tls_ca_cert.is_some()
            || parsed.tls_client_cert.is_some()
            || parsed.tls_server_name.is_some())
    {
        return Err("specified -tls-* flags without -tls".into());
    }
    Ok(parsed)
}

/// The address to probe without `-addr`: where a gateway with the same environment listens
/// (`PGWAY_GRPC_ADDR`, or its default), an unspecified address (`0.0.0.0`, `::`) turned into
/// the loopback one of its family.
pub fn default_addr(listen: Option<&str>) -> Result<String, String> {
    let listen = listen.unwrap_or(crate::app::config::DEFAULT_GRPC_ADDR);
    let mut addr: SocketAddr = listen.parse().map_err(|_| {
        format!("-addr not specified, and PGWAY_GRPC_ADDR={listen:?} is not host:port")
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr.to_string())
}

/// Runs the probe and returns the exit code, printing what grpc_health_probe would print.
pub async fn run(args: &[String]) -> u8 {
    let parsed = parse(args).and_then(|mut args| {
        if args.addr.is_empty() {
            let listen = std::env::var("PGWAY_GRPC_ADDR").ok();
            args.addr = default_addr(listen.as_deref())?;
        }
        Ok(args)
    });
    let args = match parsed {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID_ARGUMENTS;
        }
    };
    let scheme = if args.tls { "https" } else { "http" };
    let endpoint = match Endpoint::from_shared(format!("{scheme}://{}", args.addr)) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("error: invalid -addr {:?}: {error}", args.addr);
            return exit::INVALID_ARGUMENTS;
        }
    };
    let endpoint = match tls(&args).await {
        Ok(Some(tls)) => match endpoint.tls_config(tls) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                eprintln!("error: TLS configuration: {error}");
                return exit::INVALID_ARGUMENTS;
            }
        },
        Ok(None) => endpoint,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID_ARGUMENTS;
        }
    };
    let endpoint = match endpoint.user_agent(args.user_agent.clone()) {
        Ok(endpoint) => endpoint.connect_timeout(args.connect_timeout),
        Err(error) => {
            eprintln!("error: invalid -user-agent: {error}");
            return exit::INVALID_ARGUMENTS;
        }
    };
    let channel = match tokio::time::timeout(args.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(error)) => {
            eprintln!(
                "error: failed to connect service at {:?}: {error}",
                args.addr
            );
            return exit::CONNECTION_FAILURE;
        }
        Err(_) => {
            eprintln!(
                "timeout: failed to connect service {:?} within {:?}",
                args.addr, args.connect_timeout
            );
            return exit::CONNECTION_FAILURE;
        }
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: args.service.clone(),
    });
    request.set_timeout(args.rpc_timeout);
    let mut client = HealthClient::new(channel);
    let check = client.check(request);
    let response = match tokio::time::timeout(args.rpc_timeout, check).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            eprintln!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            );
            return exit::RPC_FAILURE;
        }
        Ok(Err(status)) => {
            eprintln!(
                "error: health rpc failed: {} {}",
                status.code(),
                status.message()
            );
            return exit::RPC_FAILURE;
        }
        Err(_) => {
            eprintln!(
                "timeout: health rpc did not complete within {:?}",
                args.rpc_timeout
            );
            return exit::RPC_FAILURE;
        }
    };
    if response.status() == ServingStatus::Serving {
        println!("status: SERVING");
        exit::SERVING
    } else {
        eprintln!(
            "service unhealthy (responded with {:?})",
            response.status().as_str_name()
        );
        exit::UNHEALTHY
    }
}

async fn tls(args: &ProbeArgs) -> Result<Option<ClientTlsConfig>, String> {
    if !args.tls {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new().with_enabled_roots();
    if let Some(path) = &args.tls_ca_cert {
        let pem = tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read -tls-ca-cert {}: {e}", path.display()))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
        let cert = tokio::fs::read(cert)
            .await
            .map_err(|e| format!("cannot read -tls-client-cert {}: {e}", cert.display()))?;
        let key = tokio::fs::read(key)
            .await
            .map_err(|e| format!("cannot read -tls-client-key {}: {e}", key.display()))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn go_style_flags_parse() {
        let parsed = parse(&args(&[
            "-addr=localhost:50051",
            "-service=pgway.v1.Database",
            "-connect-timeout=250ms",
            "-rpc-timeout",
            "2s",
        ]))
        .unwrap();
        assert_eq!(parsed.addr, "localhost:50051");
        assert_eq!(parsed.service, "pgway.v1.Database");
        assert_eq!(parsed.connect_timeout, Duration::from_millis(250));
        assert_eq!(parsed.rpc_timeout, Duration::from_secs(2));
        let parsed = parse(&args(&["--addr", "h:1", "-tls", "-tls-ca-cert=/ca.pem"])).unwrap();
        assert!(parsed.tls);
        assert_eq!(parsed.tls_ca_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn without_addr_the_gateways_own_address_is_probed() {
        assert_eq!(parse(&args(&["-service=x"])).unwrap().addr, "");
        assert_eq!(default_addr(None).unwrap(), "127.0.0.1:50051");
        assert_eq!(
            default_addr(Some("0.0.0.0:6000")).unwrap(),
            "127.0.0.1:6000"
        );
        assert_eq!(default_addr(Some("[::]:6000")).unwrap(), "[::1]:6000");
        assert_eq!(default_addr(Some("10.1.2.3:7")).unwrap(), "10.1.2.3:7");
        assert!(
            default_addr(Some("nowhere"))
                .unwrap_err()
                .contains("PGWAY_GRPC_ADDR")
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&args(&["-addr=h:1", "-bogus"])).is_err());
        assert!(parse(&args(&["-addr=h:1", "-tls-ca-cert=x"])).is_err());
        assert!(parse(&args(&["-addr=h:1", "-rpc-timeout=soon"])).is_err());
        assert!(parse(&args(&["-addr"])).is_err());
    }
}
