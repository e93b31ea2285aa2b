//! One request's dealings with the identity provider and the upstream: the rate limit, the
//! token, the send, the replay after a 401, and absorbing an upstream 429/503 by waiting and
//! retrying when the wait fits. Token acquisition, rate limiting and forwarding never call each
//! other; this is where they are composed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::upstream::{Added, UpBody};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::AppState;
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::forward::{self, Outbound};
use crate::ratelimit::{LimitSpec, retry_after_from};
use crate::routing::Route;
use crate::runtime::Runtime;
use crate::token::{CredentialSource, Token, TokenKey};

/// Upstream throttling answers absorbed per request at most.
const MAX_ABSORBED: u32 = 3;
/// A throttling answer's body is read (to find the retry time) up to this size.
const THROTTLE_BODY_BYTES: usize = 16 * 1024;

/// What the upstream answered.
pub enum Answer {
    /// Head received, body still streaming.
    Streamed(Box<Response<UpBody>>),
    /// A throttling answer whose body was read to learn when to retry.
    Read(Response<Bytes>),
}

/// One request's context.
pub struct Exchange<'a> {
    /// Shared state.
    pub state: &'a AppState,
    /// The worker's upstream client.
    pub client: &'a forward::HttpClient,
    /// The config the request started with.
    pub rt: &'a Runtime,
    /// The matched route.
    pub route: &'a Route,
    /// The client's request head.
    pub parts: &'a http::request::Parts,
    /// Its fields as they came (HTTP/1.1), when its header map is empty.
    pub raw: Option<&'a crate::rawhead::RawHeaders>,
    /// The request ID.
    pub request_id: &'a crate::proxy::RequestId,
    /// The route's credential.
    pub source: &'a Arc<CredentialSource>,
    /// The tenant's ID (the token is for it, with the route's scope and credential).
    pub tenant: &'a Arc<str>,
    /// The worker serving the request.
    pub worker: usize,
}

impl Exchange<'_> {
    /// Sends the request within the rate limit, then with a token. After an upstream 401, drops that
    /// token and replays once with a fresh one; after a 429/503 naming a retry time, pauses the
    /// bucket and, when the body was kept and the wait fits, waits and retries.
    pub async fn run(
        &self,
        body: RequestBody,
        latency: &mut Option<Duration>,
    ) -> Result<Answer, ProxyError> {
        let mut next = Some(body);
        let (mut replayed, mut absorbed) = (false, 0);
        loop {
            self.admit().await?;
            // Read after the queue, so a long wait never leaves the token expired when sent;
            // the token's check, the upstream deadline and the pool's checks share the one
            // reading (each reading of the clock costs about 20 ns). A token that had to be
            // fetched (or waited for) is followed by a new reading: the upstream's time starts
            // when the request is sent.
            let now = Instant::now();
            let (token, now) = match self.state.tokens.get_local(
                self.worker,
                self.source,
                self.tenant,
                &self.route.scope,
                now,
            ) {
                Some(token) => (token, now),
                None => (self.token(now).await?, Instant::now()),
            };
            let body = next.take().ok_or(ProxyError::Internal)?;
            let replay = body.try_clone();
            let resp = self.send(&token, body, latency, now).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !replayed && replay.is_some() {
                tracing::info!(route = %self.route.name, "upstream answered 401; fetching a new token and replaying once");
                self.state.tokens.invalidate(&self.key(), &token);
                (replayed, next) = (true, replay);
                continue;
            }
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
            {
                return Ok(Answer::Streamed(resp));
            }
            let (answer, wait) = Box::pin(retry_time(resp)).await;
            let (Some(spec), Some(wait)) = (self.limit(), wait) else {
                return Ok(answer);
            };
            self.state
                .limiter
                .pause(spec, self.tenant, Instant::now() + wait);
            let absorb =
                self.route.retry_throttled && absorbed < MAX_ABSORBED && wait <= spec.max_wait;
            if !absorb || replay.is_none() {
                spec.stats.passed_through.fetch_add(1, Ordering::Relaxed);
                return Ok(answer);
            }
            tracing::info!(route = %self.route.name, limit = %spec.name, wait_ms = wait.as_millis() as u64, "upstream throttled; waiting and retrying");
            spec.stats.absorbed.fetch_add(1, Ordering::Relaxed);
            (absorbed, next) = (absorbed + 1, replay);
        }
    }

    fn limit(&self) -> Option<&LimitSpec> {
        self.route.rate_limit.and_then(|i| self.rt.limits.get(i))
    }

    async fn admit(&self) -> Result<(), ProxyError> {
        let Some(spec) = self.limit() else {
            return Ok(());
        };
        match self.state.limiter.acquire(spec, self.tenant).await {
            Ok(_) => Ok(()),
            Err(refused) => Err(ProxyError::RateLimited {
                limit: spec.name.to_string(),
                retry_after: refused.retry_after,
            }),
        }
    }

    /// The token's cache key: (credential, tenant, scope).
    fn key(&self) -> TokenKey {
        TokenKey {
            credential: self.source.id,
            tenant: self.tenant.clone(),
            scope: self.route.scope.clone(),
        }
    }

    async fn token(&self, now: Instant) -> Result<Arc<Token>, ProxyError> {
        self.state
            .tokens
            .get_on(
                self.worker,
                self.source,
                self.tenant,
                &self.route.scope,
                now,
            )
            .await
            .map_err(|e| e.to_proxy_error(&self.source.name))
    }

    async fn send(
        &self,
        token: &Token,
        body: RequestBody,
        latency: &mut Option<Duration>,
        started: Instant,
    ) -> Result<Box<Response<UpBody>>, ProxyError> {
        let out = Outbound {
            route: self.route,
            added: Added {
                raw: self.raw,
                tenant_header: &self.rt.tenant_header,
                bearer: token.header(),
                request_id: self.request_id,
            },
        };
        let replay = self
            .parts
            .method
            .is_idempotent()
            .then(|| body.try_clone())
            .flatten();
        let req = forward::build_request(self.parts, &out, body)?;
        let upstream = &self.route.upstream;
        let mut sent = forward::send(
            self.client,
            upstream,
            req,
            &out.added,
            (started, self.rt.request_timeout),
            false,
        )
        .await;
        if let (Ok(forward::Sent::Stale), Some(body)) = (&sent, replay) {
            // The upstream closed a kept-alive connection as the request went out; an
            // idempotent request is sent again, once, on a new connection.
            tracing::debug!(route = %self.route.name, "stale upstream connection; resending on a new one");
            let req = forward::build_request(self.parts, &out, body)?;
            let now = Instant::now();
            let left = self.rt.request_timeout.saturating_sub(now - started);
            sent = Box::pin(forward::send(
                self.client,
                upstream,
                req,
                &out.added,
                (now, left),
                true,
            ))
            .await;
        }
        *latency = Some(started.elapsed());
        match sent? {
            forward::Sent::Answer(resp) => Ok(resp),
            forward::Sent::Stale => Err(ProxyError::UpstreamUnavailable),
        }
    }
}

/// When a throttling answer says to come back: its `Retry-After`, or else its (small) body.
async fn retry_time(resp: Box<Response<UpBody>>) -> (Answer, Option<Duration>) {
    // The throttling path looks at several fields and may keep the answer: one whole map.
    let (mut parts, mut body) = (*resp).into_parts();
    crate::rawhead::materialize(&mut parts.headers, body.take_fields());
    let resp = Box::new(Response::from_parts(parts, body));
    if let Some(wait) = retry_after_from(resp.headers(), None) {
        return (Answer::Streamed(resp), Some(wait));
    }
    let small = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= THROTTLE_BODY_BYTES);
    if !small {
        return (Answer::Streamed(resp), None);
    }
    let (parts, body) = (*resp).into_parts();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(body, THROTTLE_BODY_BYTES).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    let wait = retry_after_from(&parts.headers, Some(&bytes));
    (Answer::Read(Response::from_parts(parts, bytes)), wait)
}
