//! One access-log line and the metrics of each request. The layers below report what they
//! learn (route, tenant, upstream latency, the upstream's request ID) into the request's
//! `Trace`; the line is written when the response head is ready.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{BoxFuture, Next, Request, Response, Shared, send};
use crate::error::ERROR_HEADER;
use crate::routing::Tenant;
use crate::runtime::Runtime;
use crate::server::Peer;

/// What the layers learned about a request, for its log line and metrics.
#[derive(Debug, Clone, Default)]
pub struct Trace(Arc<Mutex<Fields>>);

#[derive(Debug, Default)]
struct Fields {
    client: Option<Arc<str>>,
    route: Option<usize>,
    tenant: Option<Tenant>,
    upstream_latency: Option<Duration>,
    upstream_request_id: Option<HeaderValue>,
}

impl Trace {
    fn with(&self, f: impl FnOnce(&mut Fields)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The `[clients.NAME]` whose key the request carried.
    pub fn set_client(&self, name: &Arc<str>) {
        self.with(|t| t.client = Some(name.clone()));
    }

    /// The request's route (its index).
    pub fn set_route(&self, index: usize) {
        self.with(|t| t.route = Some(index));
    }

    /// The request's tenant.
    pub fn set_tenant(&self, tenant: &Tenant) {
        self.with(|t| t.tenant = Some(tenant.clone()));
    }

    /// The time to the upstream's response head, and its request ID.
    pub fn set_upstream(&self, latency: Duration, request_id: Option<&HeaderValue>) {
        self.with(|t| {
            t.upstream_latency = Some(latency);
            t.upstream_request_id = request_id.cloned();
        });
    }

    fn take(&self) -> Fields {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Logs and counts each request; see the module doc.
#[derive(Clone)]
pub struct AccessLogLayer {
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

impl AccessLogLayer {
    /// For config `rt`.
    pub fn new(shared: &Arc<Shared>, rt: &Arc<Runtime>) -> Self {
        AccessLogLayer {
            shared: shared.clone(),
            rt: rt.clone(),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = AccessLog;
    fn layer(&self, inner: S) -> AccessLog {
        AccessLog {
            inner: Next::new(inner),
            shared: self.shared.clone(),
            rt: self.rt.clone(),
        }
    }
}

/// The service of `AccessLogLayer`.
#[derive(Clone)]
pub struct AccessLog {
    inner: Next<Infallible>,
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

/// Counts a request in flight until dropped (also when the client goes away mid-request).
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Service<Request> for AccessLog {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (inner, shared, rt) = (self.inner.clone(), self.shared.clone(), self.rt.clone());
        let trace = Trace::default();
        req.extensions_mut().insert(trace.clone());
        // Writes are logged even with the access log off: "who isolated that machine?"
        let write = !matches!(*req.method(), Method::GET | Method::HEAD);
        let line = (rt.access_log || write).then(|| Line {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            request_id: req.extensions().get::<RequestId>().cloned(),
            peer: req.extensions().get::<Peer>().copied().unwrap_or_default(),
        });
        shared.metrics.inflight.inc();
        let in_flight = InFlight(shared.metrics.inflight.clone());
        Box::pin(async move {
            let Ok(resp) = send(&inner, req).await;
            drop(in_flight);
            let fields = trace.take();
            let error = resp
                .headers()
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok());
            let status = resp.status().as_u16();
            match fields.route {
                Some(i) => {
                    let name = &rt.router.routes()[i].name;
                    shared
                        .metrics
                        .count_request(name, status, fields.upstream_latency);
                }
                None => shared.metrics.count_rejected(error.unwrap_or("Other")),
            }
            if let Some(mut line) = line {
                // Who wrote: on TCP, the peer's user is looked up for writes only (see
                // `Peer::tcp_uid`).
                if write && line.peer.uid.is_none() {
                    line.peer.uid = line.peer.tcp_uid().await;
                }
                line.write(&rt, &fields, &resp, error);
            }
            Ok(resp)
        })
    }
}

/// What the access-log line needs from the request.
struct Line {
    started: Instant,
    method: http::Method,
    path: String,
    request_id: Option<RequestId>,
    peer: Peer,
}

impl Line {
    fn write(self, rt: &Runtime, fields: &Fields, resp: &Response, error: Option<&str>) {
        let route = fields.route.map(|i| &*rt.router.routes()[i].name);
        let bytes = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok());
        tracing::info!(
            target: "defender_proxy::access",
            request_id = self.request_id.as_ref().map_or("-", RequestId::as_str),
            method = %self.method,
            path = self.path,
            client = fields.client.as_deref(),
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            route,
            tenant = fields.tenant.as_ref().map(|t| &*t.label),
            tenant_id = fields.tenant.as_ref().map(|t| &*t.id),
            status = resp.status().as_u16(),
            error,
            bytes,
            upstream_ms = fields.upstream_latency.map(|d| d.as_millis() as u64),
            total_ms = self.started.elapsed().as_millis() as u64,
            upstream_request_id = fields.upstream_request_id.as_ref().and_then(|v| v.to_str().ok()),
            "request"
        );
    }
}
