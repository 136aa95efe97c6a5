//! The authentication interceptor of the gRPC door: reads the `authorization` metadata, asks
//! the core's [`Authenticator`], and puts the [`Caller`] in the request's extensions.

use std::sync::Arc;

use ::metrics::counter;
use tonic::{Request, Status};

use crate::core::auth::{Authenticator, Authorization, Caller, Refused};
use crate::core::error::GatewayError;
use crate::core::telemetry as metrics;

/// The interceptor in front of the Database service (and, when configured, of health and
/// reflection): it finds the [`Caller`] and puts it in the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthInterceptor(pub Arc<Authenticator>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = match request.metadata().get("authorization") {
            None => Authorization::Missing,
            Some(value) => value
                .to_str()
                .map_or(Authorization::NotText, Authorization::Text),
        };
        match self.0.authenticate(authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(refused) => {
                let reason = match &refused {
                    Refused::Unauthenticated { reason, .. } => *reason,
                    Refused::PermissionDenied(_) => "role",
                };
                counter!(metrics::AUTH_FAILURES, "reason" => reason).increment(1);
                // The call's own `call finished` line (code UNAUTHENTICATED) is the record at
                // info; this says why, without flooding the log under a credential-guessing run.
                tracing::debug!(reason, "call refused by authentication");
                Err(GatewayError::from(refused).into())
            }
        }
    }
}

/// The caller a handler is serving (the interceptor always sets one; a missing one can only
/// mean a wiring bug, and is refused rather than served open).
pub fn caller_of<T>(request: &Request<T>) -> Result<Caller, GatewayError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| GatewayError::Internal("no caller on the request".into()))
}
