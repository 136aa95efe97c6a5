//! Streams that would hold a shutdown open: a health `Watch` and a reflection stream have no
//! end of their own (a tool such as grpcurl or a watching load balancer keeps them open as
//! long as it likes), and the server's drain waits for every stream. [`EndOnStop`] ends them
//! with UNAVAILABLE when the gateway starts stopping, after what was already sent (a watcher
//! still hears NOT_SERVING first), so the drain only waits for real work.
//!
//! The Database service's own streams end by other rules (calls in flight get the grace
//! period; see `service`), so it is not wrapped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::server::NamedService;
use tower::Service;

/// A service whose responses end with UNAVAILABLE once `stopping` is cancelled.
#[derive(Clone, Debug)]
pub struct EndOnStop<S> {
    inner: S,
    stopping: CancellationToken,
}

impl<S> EndOnStop<S> {
    pub fn new(inner: S, stopping: CancellationToken) -> Self {
        EndOnStop { inner, stopping }
    }
}

impl<S: NamedService> NamedService for EndOnStop<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for EndOnStop<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ReqBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The caller's side ends too: a reflection stream's reader would otherwise keep the
        // HTTP/2 stream open after the response ended, and the drain waits for that.
        let request =
            request.map(|body| tonic::body::Body::new(UntilStop::new(body, &self.stopping, None)));
        let response = self.inner.call(request);
        let stopping = self.stopping.clone();
        // Boxed: only health and reflection calls come through here, never the hot path.
        Box::pin(async move {
            let response = response.await?;
            let mut unavailable = HeaderMap::new();
            unavailable.insert("grpc-status", HeaderValue::from_static("14"));
            unavailable.insert(
                "grpc-message",
                HeaderValue::from_static("the%20gateway%20is%20shutting%20down"),
            );
            Ok(response.map(|body| {
                tonic::body::Body::new(UntilStop::new(body, &stopping, Some(unavailable)))
            }))
        })
    }
}

/// A body that ends once its stop fires, with `trailers` as its last frame when given.
struct UntilStop<B> {
    inner: B,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    trailers: Option<HeaderMap>,
    ended: bool,
}

impl<B> UntilStop<B> {
    fn new(inner: B, stopping: &CancellationToken, trailers: Option<HeaderMap>) -> Self {
        UntilStop {
            inner,
            stop: Box::pin(stopping.clone().cancelled_owned()),
            trailers,
            ended: false,
        }
    }
}

impl<B: Body + Unpin> Body for UntilStop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What the stream has ready goes first: tonic encodes whole messages per frame, so
        // ending between frames never cuts a message.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.stop.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.ended = true;
        Poll::Ready(
            self.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
