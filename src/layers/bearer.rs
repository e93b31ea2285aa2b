//! The bearer: the route's credential's token for the request's tenant and the route's scope,
//! from the token cache, as `Authorization`. When the upstream answers 401 the token is
//! dropped from the cache and the request sent once more with a fresh one, if its body was
//! kept.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{StatusCode, header};
use tower::{Layer, Service};

use super::route::Routed;
use super::{BoxFuture, Next, Request, Response, Shared, send};
use crate::body;
use crate::error::ProxyError;
use crate::runtime::Runtime;
use crate::token::{CredentialSource, Token, TokenKey};

/// Injects the token; see the module doc.
#[derive(Clone)]
pub struct BearerLayer {
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

impl BearerLayer {
    /// For config `rt`, with the shared token cache.
    pub fn new(shared: &Arc<Shared>, rt: &Arc<Runtime>) -> Self {
        BearerLayer {
            shared: shared.clone(),
            rt: rt.clone(),
        }
    }
}

impl<S> Layer<S> for BearerLayer
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = Bearer;
    fn layer(&self, inner: S) -> Bearer {
        Bearer {
            inner: Next::new(inner),
            shared: self.shared.clone(),
            rt: self.rt.clone(),
        }
    }
}

/// The service of `BearerLayer`.
#[derive(Clone)]
pub struct Bearer {
    inner: Next,
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

impl Service<Request> for Bearer {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}

impl Bearer {
    async fn send(self, mut req: Request) -> Result<Response, ProxyError> {
        let routed = Routed::of(&req)?;
        let route = routed.route(&self.rt);
        let source = self.rt.credentials[route.credential].clone();
        let key = TokenKey {
            credential: source.id,
            tenant: routed.tenant.id.clone(),
            scope: route.scope.clone(),
        };
        let again = body::replay(&req);
        let token = fetch_token(&self.shared, &source, &key).await?;
        set_bearer(&mut req, &token);
        let mut resp = send(&self.inner, req).await?;
        let Some(again) = again.filter(|_| resp.status() == StatusCode::UNAUTHORIZED) else {
            return Ok(resp);
        };
        let mut again = again.into_request(&mut resp);
        tracing::info!(route = %route.name, "upstream answered 401; fetching a new token and replaying once");
        self.shared.tokens.invalidate(&key, &token);
        let token = fetch_token(&self.shared, &source, &key).await?;
        set_bearer(&mut again, &token);
        send(&self.inner, again).await
    }
}

/// The token for `key`, or the error to answer.
async fn fetch_token(
    shared: &Shared,
    source: &Arc<CredentialSource>,
    key: &TokenKey,
) -> Result<Token, ProxyError> {
    shared
        .tokens
        .get(source, key)
        .await
        .map_err(|e| e.to_proxy_error(&source.name))
}

/// `Authorization: Bearer ...`, marked sensitive so that no log shows it.
fn set_bearer(req: &mut Request, token: &Token) {
    let mut value = token.header().clone();
    value.set_sensitive(true);
    req.headers_mut().insert(header::AUTHORIZATION, value);
}
