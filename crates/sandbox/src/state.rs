//! The sandbox's shared state: options, counters, tokens, faults, limiter, last request.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use http::HeaderMap;
use tokio::sync::watch;

use super::faults::{ApiFault, FaultSlot, TokenFault};
use super::ratelimit::RateLimiter;
use super::tokens::{Rejections, TokenStore};
use super::{RecordedRequest, SandboxOptions};

/// API request arrival times kept, enough for a test to check a quota over a window.
const ARRIVALS_KEPT: usize = 10_000;

/// Everything the handlers share, behind one `Arc`.
pub(super) struct State {
    pub opts: SandboxOptions,
    pub addr: SocketAddr,
    pub tokens: TokenStore,
    pub token_requests: AtomicU64,
    pub api_requests: AtomicU64,
    /// Bearer tokens the API refused, by reason.
    pub rejections: Rejections,
    pub token_fault: FaultSlot<TokenFault>,
    pub api_fault: FaultSlot<ApiFault>,
    pub limiter: RateLimiter,
    last_request: Mutex<Option<RecordedRequest>>,
    /// When the latest API requests arrived, oldest first (at most `ARRIVALS_KEPT`).
    arrivals: Mutex<std::collections::VecDeque<std::time::Instant>>,
    shutdown: watch::Sender<bool>,
    /// Device codes and refresh tokens.
    pub user_flows: super::user_flow::UserFlows,
    /// Certificates registered for client assertions.
    pub certificates: super::assertion::Certificates,
    /// Client ID (lower case) → the federated assertion it accepts.
    federated: Mutex<std::collections::HashMap<String, String>>,
}

impl State {
    pub fn new(opts: SandboxOptions, addr: SocketAddr) -> Self {
        State {
            tokens: TokenStore::new(opts.token_lifetime_secs),
            addr,
            token_requests: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            rejections: Rejections::default(),
            token_fault: FaultSlot::new(),
            api_fault: FaultSlot::new(),
            limiter: RateLimiter::default(),
            last_request: Mutex::new(None),
            arrivals: Mutex::default(),
            shutdown: watch::channel(false).0,
            certificates: super::assertion::Certificates::new(&opts.certificates),
            user_flows: Default::default(),
            federated: Mutex::new(
                opts.federated_tokens
                    .iter()
                    .map(|(c, t)| (c.to_ascii_lowercase(), t.clone()))
                    .collect(),
            ),
            opts,
        }
    }

    pub fn set_federated_token(&self, client_id: &str, token: &str) {
        lock(&self.federated).insert(client_id.to_ascii_lowercase(), token.to_owned());
    }

    /// True when `assertion` is the federated token registered for `client_id`.
    pub fn federated_matches(&self, client_id: &str, assertion: &str) -> bool {
        lock(&self.federated)
            .get(&client_id.to_ascii_lowercase())
            .is_some_and(|t| t == assertion)
    }

    /// A receiver that sees `true` once [`State::shutdown`] was called.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn record(&self, method: &http::Method, uri: &http::Uri, headers: &HeaderMap) {
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let request = RecordedRequest {
            method: method.to_string(),
            path_and_query,
            headers,
        };
        *lock(&self.last_request) = Some(request);
        let mut arrivals = lock(&self.arrivals);
        if arrivals.len() == ARRIVALS_KEPT {
            arrivals.pop_front();
        }
        arrivals.push_back(std::time::Instant::now());
    }

    /// When the latest API requests arrived, oldest first.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        lock(&self.arrivals).iter().copied().collect()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.last_request).clone()
    }

    /// `http://host[:port]` as the client addressed us (the `Host` header), for absolute links.
    pub fn origin(&self, headers: &HeaderMap) -> String {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(is_host_byte));
        match host {
            Some(host) => format!("http://{host}"),
            None => format!("http://{}", self.addr),
        }
    }
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)
}

/// Locks a mutex, carrying on if a panicking holder poisoned it (the data stays usable).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
