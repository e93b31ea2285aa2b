//! The clients: who sends what, how each answer is judged, and the record of every request.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defender_sandbox::{TENANT_A, TENANT_B};
use fastrand::Rng;
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Asks the sandbox to refuse (403) and count a token for another tenant than this names.
const EXPECT_TENANT: &str = "x-sandbox-expect-tenant";

/// How a request names its tenant: not at all (the credential's home tenant), or the partner
/// tenant by alias or by GUID.
#[derive(Clone, Copy)]
pub enum Tenant {
    Home,
    Alias,
    Guid,
}

impl Tenant {
    fn random(rng: &mut Rng) -> Tenant {
        [Tenant::Home, Tenant::Alias, Tenant::Guid][rng.usize(..3)]
    }

    fn header(self) -> Option<&'static str> {
        match self {
            Tenant::Home => None,
            Tenant::Alias => Some("contoso"),
            Tenant::Guid => Some(TENANT_B),
        }
    }

    fn id(self) -> &'static str {
        match self {
            Tenant::Home => TENANT_A,
            Tenant::Alias | Tenant::Guid => TENANT_B,
        }
    }
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Ok,
    /// An error status and the proxy's `x-defender-proxy-error` code, if it made the answer.
    Status(u16, Option<String>),
    /// No answer, or an answer whose body broke off: connect, timeout, body, connection closed
    /// before an answer, other request errors.
    Transport(&'static str),
    /// A 2xx whose content was wrong.
    BadData(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Status(s, Some(code)) => write!(f, "{s} {code}"),
            Outcome::Status(s, None) => write!(f, "{s} (from the API)"),
            Outcome::Transport(what) => write!(f, "transport error: {what}"),
            Outcome::BadData(what) => write!(f, "bad 2xx: {what}"),
        }
    }
}

/// One request: what, when (seconds since the start) and how it ended.
pub struct Record {
    pub op: &'static str,
    pub start: f64,
    pub end: f64,
    pub outcome: Outcome,
}

/// Operations on routes with a rate limit.
const LIMITED: [&str; 5] = ["incidents", "incident", "alerts", "machines", "hunting"];

impl Record {
    /// The proxy refused it because the client went over the route's quota for longer than
    /// the queue waits: the client's doing, not a fault.
    pub fn over_quota(&self) -> bool {
        LIMITED.contains(&self.op)
            && self.outcome == Outcome::Status(429, Some("RateLimited".to_owned()))
    }
}

/// What a 2xx must contain.
enum Expect {
    /// A page of items of this tenant, whose next link points at the proxy.
    List(&'static str),
    /// One item of this tenant.
    Item(&'static str),
    /// Advanced hunting rows of this tenant.
    Hunting(&'static str),
    /// Exactly this many bytes of the sandbox's pattern.
    Download(u64),
    /// `{"bytes": N}`.
    Upload(usize),
    /// The request as the API saw it: a bearer token, no tenant header.
    Echo,
    /// `{"slept_millis": N}`.
    Slow(u64),
}

/// The shared side of the clients.
pub struct Load {
    http: reqwest::Client,
    /// A client that opens a new connection for every request.
    fresh: reqwest::Client,
    base: String,
    t0: Instant,
    deadline: Instant,
    records: Mutex<Vec<Record>>,
}

impl Load {
    pub fn new(base: &str, t0: Instant, deadline: Instant) -> reqwest::Result<Load> {
        Ok(Load {
            http: crate::http(),
            fresh: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(120))
                .build()?,
            base: base.to_owned(),
            t0,
            deadline,
            records: Mutex::new(Vec::new()),
        })
    }

    /// Two pagers per tenant, one hunter, `bulk` bulk clients; each runs until the deadline.
    pub fn spawn_clients(self: Arc<Self>, seed: u64, bulk: usize) -> Vec<JoinHandle<()>> {
        let mut rng = Rng::with_seed(seed);
        let mut tasks = Vec::new();
        for tenant in [Tenant::Home, Tenant::Home, Tenant::Alias, Tenant::Guid] {
            let rng = Rng::with_seed(rng.u64(..));
            tasks.push(tokio::spawn(self.clone().pager(rng, tenant)));
        }
        tasks.push(tokio::spawn(
            self.clone().hunter(Rng::with_seed(rng.u64(..))),
        ));
        for _ in 0..bulk {
            let rng = Rng::with_seed(rng.u64(..));
            tasks.push(tokio::spawn(self.clone().bulk(rng)));
        }
        tasks
    }

    pub fn take_records(&self) -> Vec<Record> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    async fn think(&self, rng: &mut Rng, millis: std::ops::RangeInclusive<u64>) {
        let until = Instant::now() + Duration::from_millis(rng.u64(millis));
        tokio::time::sleep_until(until.min(self.deadline)).await;
    }

    /// Lists incidents, alerts or machines of one tenant, following every next link; after a
    /// list of incidents, a third of the time, gets 5-15 of them one by one (as a script
    /// reading details does), which runs the tenant's incidents quota into its queue.
    async fn pager(self: Arc<Self>, mut rng: Rng, tenant: Tenant) {
        while self.running() {
            let (op, path) = [
                ("incidents", "/api/incidents?$top=50"),
                ("alerts", "/mde/api/alerts?$top=100"),
                ("machines", "/mde/api/machines?$top=50"),
            ][rng.usize(..3)];
            let mut url = format!("{}{path}", self.base);
            let mut ids = Vec::new();
            for _ in 0..20 {
                let req = self.http.get(&url);
                let Some(page) = self
                    .exchange(op, tenant, req, Expect::List(tenant.id()))
                    .await
                else {
                    break;
                };
                let items = page["value"].as_array().into_iter().flatten();
                ids.extend(items.filter_map(|i| i["incidentId"].as_u64()));
                match page["@odata.nextLink"].as_str() {
                    Some(next) => url = next.to_owned(),
                    None => break,
                }
            }
            if !ids.is_empty() && rng.u32(0..3) == 0 {
                self.details(&mut rng, tenant, &ids).await;
            }
            self.think(&mut rng, 1000..=3000).await;
        }
    }

    async fn details(&self, rng: &mut Rng, tenant: Tenant, ids: &[u64]) {
        for _ in 0..rng.usize(5..=15) {
            let url = format!(
                "{}/api/incidents/{}",
                self.base,
                ids[rng.usize(..ids.len())]
            );
            let req = self.http.get(url);
            if self
                .exchange("incident", tenant, req, Expect::Item(tenant.id()))
                .await
                .is_none()
            {
                break;
            }
        }
    }

    /// Advanced hunting, each on a new connection, for either tenant.
    async fn hunter(self: Arc<Self>, mut rng: Rng) {
        while self.running() {
            let tenant = Tenant::random(&mut rng);
            let query = json!({"Query": format!("DeviceProcessEvents | take {}", rng.u32(1..=50))});
            let req = self
                .fresh
                .post(format!("{}/api/advancedhunting/run", self.base))
                .json(&query);
            self.exchange("hunting", tenant, req, Expect::Hunting(tenant.id()))
                .await;
            self.think(&mut rng, 500..=1500).await;
        }
    }

    /// Echoes, downloads, small (replayable) and large uploads, slow answers.
    async fn bulk(self: Arc<Self>, mut rng: Rng) {
        let mut n = 0u64;
        while self.running() {
            n += 1;
            let tenant = Tenant::random(&mut rng);
            let base = &self.base;
            let (op, req, expect) = match rng.u32(0..20) {
                0..=5 => (
                    "echo",
                    self.http.get(format!("{base}/api/_test/echo?n={n}")),
                    Expect::Echo,
                ),
                6..=10 => {
                    let bytes = rng.u64(64 * 1024..=2 * 1024 * 1024);
                    let url = format!("{base}/api/_test/download?bytes={bytes}");
                    ("download", self.http.get(url), Expect::Download(bytes))
                }
                11..=15 => upload(&self.http, base, "upload", rng.usize(1024..=60 * 1024)),
                16..=18 => {
                    let size = rng.usize(128 * 1024..=1024 * 1024);
                    upload(&self.http, base, "upload-large", size)
                }
                _ => {
                    let millis = rng.u64(500..=3000);
                    let url = format!("{base}/api/_test/slow?millis={millis}");
                    ("slow", self.http.get(url), Expect::Slow(millis))
                }
            };
            self.exchange(op, tenant, req, expect).await;
            self.think(&mut rng, 0..=20).await;
        }
    }

    /// Sends with the tenant headers, judges the answer, records it; the JSON body back
    /// (`null` for a download) when it passed.
    async fn exchange(
        &self,
        op: &'static str,
        tenant: Tenant,
        req: RequestBuilder,
        expect: Expect,
    ) -> Option<Value> {
        let mut req = req.header(EXPECT_TENANT, tenant.id());
        if let Some(name) = tenant.header() {
            req = req.header("x-tenant-id", name);
        }
        let start = self.t0.elapsed().as_secs_f64();
        let result = match req.send().await {
            Ok(resp) => self.judge(resp, &expect).await,
            Err(e) => {
                let outcome = transport(&e);
                eprintln!("soak: {op} at {start:.1} s: {}", chain(&e));
                Err(outcome)
            }
        };
        let end = self.t0.elapsed().as_secs_f64();
        let outcome = result.as_ref().err().cloned().unwrap_or(Outcome::Ok);
        let record = Record {
            op,
            start,
            end,
            outcome,
        };
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        result.ok()
    }

    async fn judge(&self, resp: Response, expect: &Expect) -> Result<Value, Outcome> {
        let status = resp.status();
        if !status.is_success() {
            let code = resp
                .headers()
                .get("x-defender-proxy-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = resp.bytes().await;
            return Err(Outcome::Status(status.as_u16(), code));
        }
        if let Expect::Download(n) = expect {
            return download(resp, *n).await.map(|()| Value::Null);
        }
        let bytes = resp.bytes().await.map_err(|e| transport(&e))?;
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|_| Outcome::BadData("not JSON"))?;
        check_json(&body, expect, &self.base).map(|()| body)
    }
}

fn upload(
    http: &reqwest::Client,
    base: &str,
    op: &'static str,
    size: usize,
) -> (&'static str, RequestBuilder, Expect) {
    let req = http
        .post(format!("{base}/api/_test/upload"))
        .header("content-type", "application/octet-stream")
        .body(vec![0x5a_u8; size]);
    (op, req, Expect::Upload(size))
}

/// Reads a download to its end, checking every byte of the pattern and the length.
async fn download(mut resp: Response, want: u64) -> Result<(), Outcome> {
    let mut offset = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(&e))? {
        let start = offset;
        let intact = chunk
            .iter()
            .zip(start..)
            .all(|(b, i)| u64::from(*b) == i % 256);
        if !intact {
            return Err(Outcome::BadData("download corrupted"));
        }
        offset += chunk.len() as u64;
    }
    if offset == want {
        Ok(())
    } else {
        Err(Outcome::BadData("download of the wrong length"))
    }
}

fn check_json(body: &Value, expect: &Expect, base: &str) -> Result<(), Outcome> {
    let of_tenant = |items: &Value, field: &str, tenant: &str| {
        let items = items.as_array().ok_or(Outcome::BadData("no item array"))?;
        if items.iter().all(|i| i[field].as_str() == Some(tenant)) {
            Ok(())
        } else {
            Err(Outcome::BadData("an item of another tenant"))
        }
    };
    let check = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(Outcome::BadData(what))
        }
    };
    match expect {
        Expect::List(tenant) => {
            of_tenant(&body["value"], "tenantId", tenant)?;
            let next = body["@odata.nextLink"].as_str();
            let through_proxy = next.is_none_or(|n| n.starts_with(&format!("{base}/")));
            check(through_proxy, "a next link not rewritten to the proxy")
        }
        Expect::Item(tenant) => check(
            body["tenantId"].as_str() == Some(tenant),
            "an item of another tenant",
        ),
        Expect::Hunting(tenant) => of_tenant(&body["Results"], "TenantId", tenant),
        Expect::Upload(n) => check(
            body["bytes"].as_u64() == Some(*n as u64),
            "upload count wrong",
        ),
        Expect::Slow(ms) => check(
            body["slept_millis"].as_u64() == Some(*ms),
            "slow answer wrong",
        ),
        Expect::Echo => {
            let headers = &body["headers"];
            let bearer = headers["authorization"][0]
                .as_str()
                .is_some_and(|v| v.starts_with("Bearer "));
            check(bearer, "echo without a bearer token")?;
            check(
                headers["x-tenant-id"].is_null(),
                "the tenant header was forwarded",
            )
        }
        Expect::Download(_) => Ok(()),
    }
}

/// An error with its sources, for the log of a run.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn transport(e: &reqwest::Error) -> Outcome {
    Outcome::Transport(if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if chain(e).contains("closed before message completed") {
        "connection closed before an answer"
    } else {
        "request"
    })
}
