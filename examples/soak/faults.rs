//! The fault injector: every 20-40 s one fault of the token endpoint or the API for a few
//! seconds, through the sandbox's `/_sandbox/*` controls; and which failures each explains.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use defender_sandbox::{ApiFault, TokenFault};
use fastrand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use crate::load::{Outcome, Record};

/// No fault before this (the first tokens are fetched in peace).
const FIRST_AFTER: Duration = Duration::from_secs(15);
/// No fault starts later than this before the end, so the run ends in a clean state.
const QUIET_END: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Token500,
    Token503,
    Token429,
    TokenSlow,
    TokenGarbage,
    Revoke,
    Api503,
    ApiReset,
    ApiStall,
}

const KINDS: [Kind; 9] = [
    Kind::Token500,
    Kind::Token503,
    Kind::Token429,
    Kind::TokenSlow,
    Kind::TokenGarbage,
    Kind::Revoke,
    Kind::Api503,
    Kind::ApiReset,
    Kind::ApiStall,
];

impl Kind {
    fn is_token(self) -> bool {
        matches!(
            self,
            Kind::Token500 | Kind::Token503 | Kind::Token429 | Kind::TokenSlow | Kind::TokenGarbage
        )
    }

    /// The control to post and its body; `None` for a plain revocation.
    fn arm(self, rng: &mut Rng) -> Option<(&'static str, Value)> {
        let token = |status, retry_after_secs| TokenFault::Status {
            status,
            retry_after_secs,
            error: None,
            aadsts: None,
        };
        let (path, body) = match self {
            Kind::Token500 => ("token-fault", fault(&token(500, None))),
            Kind::Token503 => ("token-fault", fault(&token(503, Some(3)))),
            Kind::Token429 => ("token-fault", fault(&token(429, Some(2)))),
            Kind::TokenSlow => ("token-fault", fault(&TokenFault::Delay { millis: 4000 })),
            Kind::TokenGarbage => ("token-fault", fault(&TokenFault::Garbage)),
            Kind::Revoke => return None,
            Kind::Api503 => {
                let retry_after = Some(rng.u32(1..=10).to_string());
                let f = ApiFault::Status {
                    status: 503,
                    retry_after,
                };
                ("api-fault", fault(&f))
            }
            Kind::ApiReset => ("api-fault", fault(&ApiFault::ResetMidBody)),
            Kind::ApiStall => ("api-fault", fault(&ApiFault::Stall { millis: 7000 })),
        };
        Some((path, body))
    }

    /// The failures this fault (with a revocation, if one went with it) may cause. An API that
    /// answers an upload early (401, 503) without reading its body resets the connection, and
    /// the proxy, still sending, may see the reset before the answer: 502 for uploads.
    fn allows(self, r: &Record, revoked: bool) -> bool {
        let outcome = &r.outcome;
        let code = |s: &str| Some(s.to_owned());
        let early_answer = revoked || self == Kind::Api503;
        let upload_reset = r.op.starts_with("upload")
            && *outcome == Outcome::Status(502, code("UpstreamUnavailable"));
        let revoked_401 = revoked && *outcome == Outcome::Status(401, None);
        revoked_401
            || (early_answer && upload_reset)
            || match self {
                Kind::Token500 | Kind::Token503 | Kind::Token429 | Kind::TokenGarbage => {
                    *outcome == Outcome::Status(503, code("TokenUnavailable"))
                }
                Kind::TokenSlow | Kind::Revoke => false,
                Kind::Api503 => *outcome == Outcome::Status(503, None),
                Kind::ApiReset => {
                    *outcome == Outcome::Status(502, code("UpstreamUnavailable"))
                        || *outcome == Outcome::Transport("body")
                }
                Kind::ApiStall => *outcome == Outcome::Status(504, code("UpstreamTimeout")),
            }
    }

    /// How long after clearing the fault its effects may last: a token failure is remembered
    /// and retried with backoff; a revocation hits requests until the new token is in.
    fn grace_secs(self) -> f64 {
        match self {
            k if k.is_token() => 12.0,
            Kind::Revoke => 5.0,
            _ => 2.0,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Token500 => "token endpoint 500",
            Kind::Token503 => "token endpoint 503, Retry-After 3",
            Kind::Token429 => "token endpoint 429, Retry-After 2",
            Kind::TokenSlow => "token endpoint 4 s slow",
            Kind::TokenGarbage => "token endpoint answers HTML",
            Kind::Revoke => "all tokens revoked",
            Kind::Api503 => "API 503 with Retry-After",
            Kind::ApiReset => "API resets mid-body",
            Kind::ApiStall => "API stalls 7 s (timeout 5 s)",
        }
    }
}

/// A fault as the control endpoints take it.
fn fault(f: &impl serde::Serialize) -> Value {
    serde_json::to_value(f).unwrap_or_default()
}

/// One fault, from arming to clearing, in seconds since the start.
pub struct Episode {
    kind: Kind,
    revoked: bool,
    pub start: f64,
    pub end: f64,
}

impl Episode {
    pub fn label(&self) -> String {
        let revoke = if self.revoked && self.kind != Kind::Revoke {
            " + tokens revoked"
        } else {
            ""
        };
        format!("{}{revoke}", self.kind.label())
    }

    /// The request overlapped the fault (or its after-effects) and failed as the fault may cause.
    pub fn explains(&self, r: &Record) -> bool {
        r.start <= self.end + self.kind.grace_secs()
            && r.end >= self.start
            && self.kind.allows(r, self.revoked)
    }
}

#[derive(Clone)]
pub struct Injector {
    http: reqwest::Client,
    sandbox: String,
    t0: Instant,
    episodes: Arc<Mutex<Vec<Episode>>>,
}

impl Injector {
    pub fn new(sandbox: &str, t0: Instant) -> Injector {
        Injector {
            http: crate::http(),
            sandbox: sandbox.to_owned(),
            t0,
            episodes: Arc::default(),
        }
    }

    /// Every kind in turn (shuffled), one at a time, held 3-8 s, 20-40 s apart; token faults
    /// come with a revocation half the time, so that the proxy must fetch while they last.
    pub async fn run(self, seed: u64, deadline: Instant) {
        let mut rng = Rng::with_seed(seed.rotate_left(17));
        let mut order = Vec::new();
        let mut next = self.t0 + FIRST_AFTER;
        loop {
            let hold = Duration::from_millis(rng.u64(3000..=8000));
            if next + hold + QUIET_END > deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
            if order.is_empty() {
                order = KINDS.to_vec();
                rng.shuffle(&mut order);
            }
            let kind = order.pop().unwrap_or(Kind::Revoke);
            let revoked = kind == Kind::Revoke || (kind.is_token() && rng.bool());
            let start = self.t0.elapsed().as_secs_f64();
            if let Some((path, body)) = kind.arm(&mut rng) {
                self.post(path, Some(body)).await;
            }
            if revoked {
                self.post("revoke", None).await;
            }
            tokio::time::sleep(hold).await;
            self.clear().await;
            let end = self.t0.elapsed().as_secs_f64();
            self.lock().push(Episode {
                kind,
                revoked,
                start,
                end,
            });
            next += Duration::from_secs(rng.u64(20..=40));
        }
    }

    /// Clears both faults.
    pub async fn clear(&self) {
        self.post("token-fault", None).await;
        self.post("api-fault", None).await;
    }

    /// The episodes so far, oldest first.
    pub fn episodes(&self) -> Vec<Episode> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Episode>> {
        self.episodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn post(&self, control: &str, body: Option<Value>) {
        let url = format!("{}/_sandbox/{control}", self.sandbox);
        let req = match body {
            Some(body) => self.http.post(&url).json(&body),
            None => self.http.post(&url),
        };
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => eprintln!("soak: {url} answered {}", resp.status()),
            Err(e) => eprintln!("soak: {url}: {e}"),
        }
    }
}
