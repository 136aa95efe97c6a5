//! `pgway probe`: a gRPC health check with grpc_health_probe's flags and exit codes, for slim
//! images that ship no probe, so that scripts written for grpc_health_probe work unchanged.
//!
//! Flags are spelled the Go way (`-addr=host:port`, `-service=name`, `-connect-timeout=1s`,
//! `-rpc-timeout=1s`, `-tls`, `-tls-ca-cert=file`, `-tls-client-cert=file`,
//! `-tls-client-key=file`, `-tls-server-name=name`, `-user-agent=ua`, `-v`); `--addr` and
//! `-addr value` work too, and `-h`, `-help` or `--help` prints [`USAGE`]. Without `-addr` it
//! probes the gateway's own `PGWAY_GRPC_ADDR` (see [`default_addr`]), so an image's health
//! check follows the port the gateway listens on.

use std::error::Error;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// grpc_health_probe's exit codes.
pub mod exit {
    /// `-h`: the usage was printed (Go's flag package exits 0 for it too).
    pub const HELP: u8 = 0;
    pub const SERVING: u8 = 0;
    pub const INVALID_ARGUMENTS: u8 = 1;
    pub const CONNECTION_FAILURE: u8 = 2;
    pub const RPC_FAILURE: u8 = 3;
    pub const UNHEALTHY: u8 = 4;
}

/// What `pgway probe -h` prints: the flags [`parse`] accepts, in grpc_health_probe's words.
pub const USAGE: &str = "\
Usage: pgway probe [flags]

Checks a gRPC server's health (grpc.health.v1.Health/Check) the way grpc_health_probe does.
Flags take their value as -flag=value, -flag value or --flag=value.

  -addr host:port           address to connect to (default: where PGWAY_GRPC_ADDR says the
                            gateway listens, 0.0.0.0/:: as loopback; 127.0.0.1:50051 if unset)
  -service name             service to check (default \"\": liveness; pgway.v1.Database: readiness)
  -connect-timeout duration time to establish the connection (default 1s)
  -rpc-timeout duration     time for the health check (default 1s)
  -tls                      connect over TLS (default: plaintext)
  -tls-ca-cert file         CA certificates (PEM) to verify the server with (default: the
                            system's roots)
  -tls-client-cert file     client certificate (PEM) for mutual TLS; needs -tls-client-key
  -tls-client-key file      private key (PEM) of -tls-client-cert
  -tls-server-name name     name the server's certificate must carry (default: from -addr)
  -user-agent string        user-agent of the check (default \"grpc_health_probe\")
  -v                        print the parsed options and the time taken to stderr
  -h, -help                 print this help

Not supported: -tls-no-verify, -spiffe, -alts, -gzip.

Exit codes: 0 serving, 1 invalid arguments, 2 connection failure, 3 RPC failure, 4 not serving.
";

/// What a `pgway probe` command line asks for.
// Parsed once per run: the size of the largest variant doesn't matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Probe a server.
    Probe(ProbeArgs),
    /// Print [`USAGE`] and exit 0 (`-h`, `-help`, `--help`), as grpc_health_probe does.
    Help,
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

/// Parses grpc_health_probe-style arguments. A help flag wins wherever it stands, unless a bad
/// flag comes before it (Go's flag package stops at the first error too).
pub fn parse(args: &[String]) -> Result<Invocation, String> {
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
            "h" | "help" => return Ok(Invocation::Help),
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
    Ok(Invocation::Probe(parsed))
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
    let parsed = parse(args).and_then(|invocation| match invocation {
        Invocation::Probe(mut args) => {
            if args.addr.is_empty() {
                let listen = std::env::var("PGWAY_GRPC_ADDR").ok();
                args.addr = default_addr(listen.as_deref())?;
            }
            Ok(Some(args))
        }
        Invocation::Help => Ok(None),
    });
    let args = match parsed {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return exit::HELP;
        }
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID_ARGUMENTS;
        }
    };
    if args.verbose {
        eprintln!("parsed options:");
        eprintln!(
            "> addr={} conn_timeout={:?} rpc_timeout={:?}",
            args.addr, args.connect_timeout, args.rpc_timeout
        );
        eprintln!("> tls={} server_name={:?}", args.tls, args.tls_server_name);
    }
    let endpoint = match endpoint(&args).await {
        Ok(endpoint) => endpoint,
        Err(error) => {
            eprintln!("error: {error}");
            return exit::INVALID_ARGUMENTS;
        }
    };
    let started = Instant::now();
    let channel = match connect(&args, endpoint).await {
        Ok(channel) => channel,
        Err(message) => {
            eprintln!("{message}");
            return exit::CONNECTION_FAILURE;
        }
    };
    let connected = started.elapsed();
    if args.verbose {
        eprintln!("connection established (took {connected:?})");
    }
    let status = match check(&args, channel).await {
        Ok(status) => status,
        Err(message) => {
            eprintln!("{message}");
            return exit::RPC_FAILURE;
        }
    };
    if args.verbose {
        let rpc = started.elapsed() - connected;
        eprintln!("time elapsed: connect={connected:?} rpc={rpc:?}");
    }
    if status == ServingStatus::Serving {
        println!("status: SERVING");
        exit::SERVING
    } else {
        eprintln!(
            "service unhealthy (responded with {:?})",
            status.as_str_name()
        );
        exit::UNHEALTHY
    }
}

/// The endpoint `args` describe: scheme, TLS, user agent and connect timeout.
async fn endpoint(args: &ProbeArgs) -> Result<Endpoint, String> {
    let scheme = if args.tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.addr))
        .map_err(|e| format!("invalid -addr {:?}: {e}", args.addr))?;
    if let Some(tls) = tls(args).await? {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {}", with_causes(&e)))?;
    }
    let endpoint = endpoint
        .user_agent(args.user_agent.clone())
        .map_err(|e| format!("invalid -user-agent: {e}"))?;
    Ok(endpoint.connect_timeout(args.connect_timeout))
}

/// Connects within `-connect-timeout`; the error is the line to print.
async fn connect(args: &ProbeArgs, endpoint: Endpoint) -> Result<Channel, String> {
    match tokio::time::timeout(args.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(format!(
            "error: failed to connect service at {:?}: {}",
            args.addr,
            with_causes(&error)
        )),
        Err(_) => Err(format!(
            "timeout: failed to connect service {:?} within {:?}",
            args.addr, args.connect_timeout
        )),
    }
}

/// Asks for the service's status within `-rpc-timeout`; the error is the line to print.
async fn check(args: &ProbeArgs, channel: Channel) -> Result<ServingStatus, String> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: args.service.clone(),
    });
    request.set_timeout(args.rpc_timeout);
    let mut client = HealthClient::new(channel);
    match tokio::time::timeout(args.rpc_timeout, client.check(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner().status()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "error: this server does not implement the grpc health protocol \
             (grpc.health.v1.Health): {}",
            status.message()
        )),
        Ok(Err(status)) => Err(format!(
            "error: health rpc failed: {} {}",
            status.code(),
            join_causes(status.message().to_owned(), status.source())
        )),
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {:?}",
            args.rpc_timeout
        )),
    }
}

/// `error`'s message followed by its causes'. tonic's transport errors say only "transport
/// error": why (connection refused, a certificate not trusted) is in their sources.
fn with_causes(error: &(dyn Error + 'static)) -> String {
    join_causes(error.to_string(), error.source())
}

/// `text`, then each message down the `source` chain, `: `-joined. A message already said (some
/// errors repeat their cause's in their own) or empty is left out.
fn join_causes(mut text: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
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

    /// The probe `list` asks for; panics on help or an error.
    fn probe(list: &[&str]) -> ProbeArgs {
        match parse(&args(list)) {
            Ok(Invocation::Probe(parsed)) => parsed,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    #[test]
    fn go_style_flags_parse() {
        let parsed = probe(&[
            "-addr=localhost:50051",
            "-service=pgway.v1.Database",
            "-connect-timeout=250ms",
            "-rpc-timeout",
            "2s",
        ]);
        assert_eq!(parsed.addr, "localhost:50051");
        assert_eq!(parsed.service, "pgway.v1.Database");
        assert_eq!(parsed.connect_timeout, Duration::from_millis(250));
        assert_eq!(parsed.rpc_timeout, Duration::from_secs(2));
        let parsed = probe(&["--addr", "h:1", "-tls", "-tls-ca-cert=/ca.pem"]);
        assert!(parsed.tls);
        assert_eq!(parsed.tls_ca_cert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn without_addr_the_gateways_own_address_is_probed() {
        assert_eq!(probe(&["-service=x"]).addr, "");
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

    #[test]
    fn help_flags_ask_for_the_usage() {
        for flag in ["-h", "-help", "--help", "--h"] {
            assert_eq!(parse(&args(&[flag])), Ok(Invocation::Help), "{flag}");
            assert_eq!(
                parse(&args(&["-addr=h:1", flag, "-bogus"])),
                Ok(Invocation::Help),
                "{flag} after other flags"
            );
        }
        // As in Go, a bad flag before it is reported instead.
        assert!(parse(&args(&["-bogus", "-h"])).is_err());
        // Every flag parse accepts is in the usage.
        let flags = "-addr -service -connect-timeout -rpc-timeout -tls -tls-ca-cert \
                     -tls-client-cert -tls-client-key -tls-server-name -user-agent -v";
        for flag in flags.split_whitespace() {
            assert!(
                USAGE.contains(&format!("\n  {flag} ")),
                "{flag} missing from the usage"
            );
        }
    }

    /// An error whose message may or may not repeat its cause's, like hyper's and tonic's.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|cause| cause as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_are_joined_each_once() {
        let refused = Layer("Connection refused (os error 111)", None);
        let tcp = Layer("tcp connect error", Some(Box::new(refused)));
        let transport = Layer("transport error", Some(Box::new(tcp)));
        assert_eq!(
            with_causes(&transport),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        let repeated = Layer(
            "tcp connect error: refused",
            Some(Box::new(Layer("refused", Some(Box::new(Layer("", None)))))),
        );
        let outer = Layer("transport error", Some(Box::new(repeated)));
        assert_eq!(
            with_causes(&outer),
            "transport error: tcp connect error: refused"
        );
        let outer: &(dyn Error + 'static) = &outer;
        assert_eq!(join_causes(String::new(), Some(outer)), with_causes(outer));
    }
}
