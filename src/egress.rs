//! Outbound connections to upstream APIs: direct, or through the HTTP proxy that `HTTPS_PROXY`
//! names (a CONNECT tunnel; `NO_PROXY` honoured), as corporate networks require. TLS is layered
//! on top by the caller, so the upstream's certificate is verified end to end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::body::BoxError;

/// Connects directly or through the environment's HTTPS proxy.
#[derive(Clone)]
pub struct EgressConnector {
    direct: HttpConnector,
    proxies: Arc<Matcher>,
}

impl EgressConnector {
    /// Uses `HTTPS_PROXY`/`https_proxy`, `ALL_PROXY` and `NO_PROXY` as they are at start-up.
    pub fn from_env(direct: HttpConnector) -> Self {
        EgressConnector {
            direct,
            proxies: Arc::new(Matcher::from_env()),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        // Plain http is only allowed to loopback (config validation), which is never proxied.
        let intercept = (dst.scheme_str() == Some("https"))
            .then(|| self.proxies.intercept(&dst))
            .flatten();
        match intercept {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.direct.clone());
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Box::pin(async move { tunnel.call(dst).await.map_err(Into::into) })
            }
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { direct.call(dst).await.map_err(Into::into) })
            }
        }
    }
}
