//! The rate limit as a layer. Each request has one wait budget in total: its route's limit's
//! `max_wait_secs`, or `server.max_wait_secs` on a route without a limit. A request on a route
//! with a `rate_limit` waits its turn in the (limit, tenant) queue, or is refused at once with
//! a truthful `Retry-After` when its turn is further off than what is left of its budget. An
//! upstream 429 or 503 that says when to come back, on any route, pauses the bucket (if any)
//! until then; when the route allows it, the wait fits what is left of the budget, and the body
//! was kept, the request waits and is sent again, unseen by the client (at most `MAX_ABSORBED`
//! times). Otherwise the upstream's answer, with its own `Retry-After`, goes to the client.
//! Every response on a limited route tells what is left of the budget in its headers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::route::Routed;
use super::{BoxFuture, Next, Request, Response, Shared, send};
use crate::body;
use crate::error::ProxyError;
use crate::ratelimit::{LimitSpec, Limiter, retry_after_from};
use crate::runtime::Runtime;

/// Upstream throttling answers absorbed per request at most.
const MAX_ABSORBED: u32 = 3;
/// A throttling answer's body is read (to find the retry time) up to this size...
const THROTTLE_BODY_BYTES: usize = 16 * 1024;
/// ...within this time.
const THROTTLE_BODY_TIME: Duration = Duration::from_secs(5);

/// Queues and absorbs; see the module doc.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

impl RateLimitLayer {
    /// For config `rt`, with the shared buckets.
    pub fn new(shared: &Arc<Shared>, rt: &Arc<Runtime>) -> Self {
        RateLimitLayer {
            shared: shared.clone(),
            rt: rt.clone(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = RateLimit;
    fn layer(&self, inner: S) -> RateLimit {
        RateLimit {
            inner: Next::new(inner),
            shared: self.shared.clone(),
            rt: self.rt.clone(),
        }
    }
}

/// The service of `RateLimitLayer`.
#[derive(Clone)]
pub struct RateLimit {
    inner: Next,
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
}

impl Service<Request> for RateLimit {
    type Response = Response;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let routed = Routed::of(&req)?;
            let (shared, rt) = (this.shared.clone(), this.rt.clone());
            let mut resp = this.send(req).await?;
            let limit = routed.route(&rt).rate_limit.and_then(|i| rt.limits.get(i));
            if let Some(spec) = limit {
                budget_headers(&shared.limiter, spec, &routed.tenant.id, resp.headers_mut());
            }
            Ok(resp)
        })
    }
}

impl RateLimit {
    async fn send(self, req: Request) -> Result<Response, ProxyError> {
        let routed = Routed::of(&req)?;
        let route = routed.route(&self.rt);
        let spec = route.rate_limit.and_then(|i| self.rt.limits.get(i));
        let tenant = &routed.tenant.id;
        let limiter = &self.shared.limiter;
        let deadline = Instant::now() + spec.map_or(self.rt.max_wait, |s| s.max_wait);
        let (mut next, mut absorbed) = (Some(req), 0);
        loop {
            if let Some(spec) = spec {
                let left = deadline.saturating_duration_since(Instant::now());
                limiter
                    .acquire_within(spec, tenant, left)
                    .await
                    .map_err(|refused| ProxyError::RateLimited {
                        limit: spec.name.to_string(),
                        retry_after: refused.retry_after,
                    })?;
            }
            let req = next.take().ok_or(ProxyError::Internal)?;
            let again = body::replay(&req);
            let resp = send(&self.inner, req).await?;
            if !matches!(
                resp.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                return Ok(resp);
            }
            let (mut resp, wait) = retry_time(resp).await;
            let Some(wait) = wait else {
                return Ok(resp);
            };
            let until = Instant::now() + wait;
            if let Some(spec) = spec {
                limiter.pause(spec, tenant, until);
            }
            let fits = until <= deadline && absorbed < MAX_ABSORBED;
            if !route.retry_throttled || !fits || again.is_none() {
                if let Some(spec) = spec {
                    spec.stats.passed_through.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(resp);
            }
            tracing::info!(route = %route.name, wait_ms = wait.as_millis() as u64, "upstream throttled; waiting and retrying");
            match spec {
                // The paused bucket holds the retry back, behind the requests queued before it.
                Some(spec) => {
                    spec.stats.absorbed.fetch_add(1, Ordering::Relaxed);
                }
                None => tokio::time::sleep_until(until).await,
            }
            absorbed += 1;
            next = again.map(|again| again.into_request(&mut resp));
        }
    }
}

/// Names the limit a response counted against...
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-defender-proxy-ratelimit");
/// ...and what is left of it in its rolling minute...
pub const REMAINING_MINUTE_HEADER: HeaderName =
    HeaderName::from_static("x-defender-proxy-ratelimit-remaining-minute");
/// ...and its rolling hour, for the windows the limit has.
pub const REMAINING_HOUR_HEADER: HeaderName =
    HeaderName::from_static("x-defender-proxy-ratelimit-remaining-hour");

/// Tells the client what is left of the (limit, tenant) budget, so it can pace itself.
fn budget_headers(limiter: &Limiter, spec: &LimitSpec, tenant: &Arc<str>, h: &mut HeaderMap) {
    let Some(budget) = limiter.budget(spec, tenant) else {
        return;
    };
    if let Ok(name) = HeaderValue::from_str(&spec.name) {
        h.insert(LIMIT_HEADER, name);
    }
    let minute = limiter.windows().minute.as_secs();
    for w in &budget.windows {
        let header = if w.window_secs == minute {
            REMAINING_MINUTE_HEADER
        } else {
            REMAINING_HOUR_HEADER
        };
        h.insert(header, HeaderValue::from(w.remaining));
    }
}

/// When a throttling answer says to come back: its `Retry-After`, or else its (small) body,
/// which is then read and put back whole.
async fn retry_time(resp: Response) -> (Response, Option<Duration>) {
    if let Some(wait) = retry_after_from(resp.headers(), None) {
        return (resp, Some(wait));
    }
    let small = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= THROTTLE_BODY_BYTES);
    if !small {
        return (resp, None);
    }
    let (mut parts, incoming) = resp.into_parts();
    let limit = THROTTLE_BODY_BYTES as u64;
    let read = tokio::time::timeout(
        THROTTLE_BODY_TIME,
        body::limit_and_keep(incoming, limit, THROTTLE_BODY_BYTES),
    )
    .await;
    let bytes = match read {
        Ok(Ok((_, Some(whole)))) => whole,
        _ => Bytes::new(),
    };
    let wait = retry_after_from(&parts.headers, Some(&bytes));
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
    (Response::from_parts(parts, body::full(bytes)), wait)
}
