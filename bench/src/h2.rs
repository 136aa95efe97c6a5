//! The gRPC transport to the gateway: hyper's HTTP/2 client connection used directly, or
//! tonic's `Channel`.

use std::time::Duration;

use clap::ValueEnum;
use tonic::transport::Endpoint;

use crate::BoxError;

/// How the load tool speaks gRPC to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GrpcClient {
    /// hyper's HTTP/2 client connection, used directly: the caller's task hands its request to
    /// the connection task, nothing more.
    H2,
    /// tonic's `Channel`: a `tower` buffer in front of the connection, i.e. one more queue and
    /// task hop per call, and a client-side timer per call when a deadline is set.
    TonicChannel,
}

type TransportFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>,
>;

/// One HTTP/2 connection to the gateway, shared by the callers given a clone of it.
///
/// The load generator shares the machine with what it measures, so every cycle it spends on a
/// call is taken from the gateway: it should not cost more than the client a service would
/// use. tonic's `Channel` is the convenient default (reconnects, load balancing), at the price
/// of a `tower::buffer::Buffer` task between the caller and the HTTP/2 connection; `H2` is the
/// connection alone.
#[derive(Clone)]
pub enum Transport {
    H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>),
    Channel(tonic::transport::Channel),
}

impl Transport {
    pub async fn connect(kind: GrpcClient, origin: &http::Uri) -> Result<Transport, BoxError> {
        match kind {
            GrpcClient::TonicChannel => {
                let channel = Endpoint::from(origin.clone())
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                Ok(Transport::Channel(channel))
            }
            GrpcClient::H2 => {
                let host = origin.host().ok_or("the gateway URL has no host")?;
                // A bracketed IPv6 literal in a URI is not a socket address as it stands.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = origin.port_u16().unwrap_or(80);
                let stream = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect((host, port)),
                )
                .await
                .map_err(|_| format!("connecting to {origin}: timed out"))??;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .handshake(hyper_util::rt::TokioIo::new(stream))
                        .await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("pgway-bench: HTTP/2 connection to the gateway ended: {e}");
                    }
                });
                Ok(Transport::H2(sender))
            }
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        match self {
            Transport::H2(sender) => sender.poll_ready(cx).map_err(Into::into),
            Transport::Channel(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> TransportFuture {
        match self {
            Transport::H2(sender) => {
                let sent = sender.send_request(request);
                Box::pin(async move { Ok(sent.await?.map(tonic::body::Body::new)) })
            }
            Transport::Channel(channel) => {
                let sent = channel.call(request);
                Box::pin(async move { Ok(sent.await?) })
            }
        }
    }
}
