//! Sandbox: an in-process emulator of the Entra ID token endpoint and a slice of the Defender API.
//!
//! One listener serves everything: `/{tenant}/oauth2/v2.0/token` and `/{tenant}/oauth2/token`
//! (client credentials), the Defender XDR / MDE / Graph security lists under `/api/*` and
//! `/v1.0/*` (bearer tokens from this sandbox only, per-tenant data, paging, rate limits), test
//! helpers under `/api/_test/*`, and fault injection and statistics under `/_sandbox/*`.
//! Used by `defender-proxy demo` and by the integration tests.

mod api;
mod assertion;
mod client_credentials;
mod control;
mod data;
mod data_alerts;
mod entra;
mod entra_error;
mod faults;
mod filter;
mod hunting;
mod lists;
mod managed_identity;
mod password;
mod ratelimit;
mod state;
mod testapi;
#[cfg(test)]
mod testkit;
mod time;
mod tokens;
mod user_flow;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::routing::{get, post};

pub use faults::{ApiFault, TokenFault};
use state::State;
pub use user_flow::DeviceStatus;

/// Client ID of the app registered by default.
pub const DEFAULT_CLIENT_ID: &str = "00000000-0000-0000-0000-00000000c1d0";
/// Client secret of the default app.
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-secret";
/// Client ID of the emulated machine's (system-assigned) managed identity.
pub const MANAGED_IDENTITY_ID: &str = "00000000-0000-0000-0000-0000000000a1";
/// First tenant the default app is consented in.
pub const TENANT_A: &str = "11111111-1111-1111-1111-111111111111";
/// Second tenant the default app is consented in.
pub const TENANT_B: &str = "22222222-2222-2222-2222-222222222222";

/// An app registration known to the sandbox's Entra ID.
#[derive(Clone, PartialEq, Eq)]
pub struct SandboxClient {
    /// Application (client) ID.
    pub client_id: String,
    /// The one valid client secret.
    pub client_secret: String,
    /// Tenant IDs (or domain names) this app is consented in; `"*"` = any tenant.
    pub tenants: Vec<String>,
}

impl fmt::Debug for SandboxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("tenants", &self.tenants)
            .finish()
    }
}

/// How the sandbox behaves; every field has a default.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Registered apps (default: [`DEFAULT_CLIENT_ID`] in [`TENANT_A`] and [`TENANT_B`]).
    pub clients: Vec<SandboxClient>,
    /// Lifetime of issued tokens (3600); `expires_in` advertises one second less.
    pub token_lifetime_secs: u64,
    /// When set, v2 answers carry `refresh_in` with this value.
    pub refresh_in_secs: Option<u64>,
    /// Incidents per tenant (120).
    pub incidents_per_tenant: usize,
    /// Alerts per tenant (300); alert `j` belongs to incident `j % incidents_per_tenant`.
    pub alerts_per_tenant: usize,
    /// Machines per tenant (80).
    pub machines_per_tenant: usize,
    /// Items per page when the request has no `$top` (50).
    pub page_size: usize,
    /// A cap on `$top` below each list's documented maximum (100 for XDR incidents, 10,000
    /// for MDE alerts and machines, 50 for Graph incidents, 2,000 for Graph alerts); none by
    /// default.
    pub max_page_size: usize,
    /// Enforce the per (app, tenant, API family) quotas below (true).
    pub rate_limits: bool,
    /// Incident requests (`/api/incidents*`) per minute (50).
    pub incidents_per_minute: u32,
    /// Incident requests per hour (1500).
    pub incidents_per_hour: u32,
    /// Advanced hunting runs (`/api/advancedhunting`, `/api/advancedqueries`) per minute (45).
    pub hunting_per_minute: u32,
    /// MDE advanced queries (`/api/advancedqueries`) per hour (1500).
    pub mde_hunting_per_hour: u32,
    /// MDE machine and alert requests (`/api/machines*`, `/api/alerts*`) per minute (100).
    pub mde_per_minute: u32,
    /// MDE machine and alert requests per hour (1500).
    pub mde_per_hour: u32,
    /// Graph requests (`/v1.0/*`) per minute (150).
    pub graph_per_minute: u32,
    /// Length of the "minute" window in seconds (60); the hour window is sixty of them, so a
    /// test that shortens the minute shortens the hour alike.
    pub rate_window_secs: u64,
    /// Seed of the generated data (0): the same seed gives the same incidents, alerts,
    /// machines and hunting rows in every run.
    pub seed: u64,
    /// Token audiences the API accepts (the five Defender / Graph resources).
    pub audiences: Vec<String>,
    /// Federated credentials: (client ID, the exact assertion accepted, e.g. a Kubernetes
    /// service account token). Changeable at run time with [`Sandbox::set_federated_token`].
    pub federated_tokens: Vec<(String, String)>,
    /// Users for the password (ROPC) grant: (user name, password).
    pub users: Vec<(String, String)>,
    /// Certificates registered for client assertions: (client ID, certificate DER).
    pub certificates: Vec<(String, Vec<u8>)>,
    /// The polling interval the device code flow asks for (5 s, as Entra; tests use 1).
    pub device_code_interval_secs: u64,
    /// Managed identities (client IDs) of the emulated machine; the first is the default one.
    pub managed_identities: Vec<String>,
    /// The tenant managed identity tokens are for.
    pub managed_identity_tenant: String,
    /// The `X-IDENTITY-HEADER` value the App Service endpoint expects.
    pub identity_header: String,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            clients: vec![SandboxClient {
                client_id: DEFAULT_CLIENT_ID.to_owned(),
                client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
                tenants: vec![TENANT_A.to_owned(), TENANT_B.to_owned()],
            }],
            token_lifetime_secs: 3600,
            refresh_in_secs: None,
            incidents_per_tenant: 120,
            alerts_per_tenant: 300,
            machines_per_tenant: 80,
            page_size: 50,
            max_page_size: usize::MAX,
            rate_limits: true,
            incidents_per_minute: 50,
            incidents_per_hour: 1500,
            hunting_per_minute: 45,
            mde_hunting_per_hour: 1500,
            mde_per_minute: 100,
            mde_per_hour: 1500,
            graph_per_minute: 150,
            rate_window_secs: 60,
            seed: 0,
            audiences: [
                "https://api.security.microsoft.com",
                "https://api.securitycenter.microsoft.com",
                "https://securitycenter.onmicrosoft.com/windowsatpservice",
                "https://api.securitycenter.windows.com",
                "https://graph.microsoft.com",
            ]
            .map(String::from)
            .to_vec(),
            federated_tokens: Vec::new(),
            users: Vec::new(),
            certificates: Vec::new(),
            device_code_interval_secs: 5,
            managed_identities: vec![MANAGED_IDENTITY_ID.to_owned()],
            managed_identity_tenant: TENANT_A.to_owned(),
            identity_header: "sandbox-identity-header".to_owned(),
        }
    }
}

/// One API request as the sandbox received it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as received, e.g. `/api/incidents?$top=10`.
    pub path_and_query: String,
    /// Header names in lower case, in arrival order; non-UTF-8 values are converted lossily.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running sandbox; clones share the same server and state.
#[derive(Clone)]
pub struct Sandbox {
    state: Arc<State>,
}

impl Sandbox {
    /// Serves on an already bound listener, in a task on the current tokio runtime,
    /// until [`Sandbox::shutdown`]. `async` so callers need no runtime handle of their own.
    ///
    /// # Errors
    ///
    /// When the listener's local address cannot be read.
    pub async fn start(
        listener: tokio::net::TcpListener,
        opts: SandboxOptions,
    ) -> std::io::Result<Sandbox> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(opts, addr));
        let app = router(state.clone());
        let mut stop = state.shutdown_signal();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let served = axum::serve(listener, app).with_graceful_shutdown(stopped);
            if let Err(err) = served.await {
                tracing::warn!(%err, "sandbox server failed");
            }
        });
        tracing::debug!(%addr, "sandbox listening");
        Ok(Sandbox { state })
    }

    /// `http://IP:PORT` of the listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Stops accepting connections and closes idle ones.
    pub fn shutdown(&self) {
        self.state.shutdown();
    }

    /// When the latest API requests arrived (up to 10,000), oldest first.
    pub fn api_request_times(&self) -> Vec<std::time::Instant> {
        self.state.arrivals()
    }

    /// Token endpoint POSTs so far, whatever their outcome.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    /// Requests to `/api/*` and `/v1.0/*` so far, whatever their outcome.
    pub fn api_requests(&self) -> u64 {
        self.state.api_requests.load(Ordering::Relaxed)
    }

    /// Arms `fault` for every token request until cleared with `None`.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.state.token_fault.set(fault, None);
    }

    /// Arms `fault` for the next `times` token requests only.
    pub fn set_token_fault_times(&self, fault: TokenFault, times: u32) {
        self.state.token_fault.set(Some(fault), Some(times));
    }

    /// Arms `fault` for every API request until cleared with `None`.
    pub fn set_api_fault(&self, fault: Option<ApiFault>) {
        self.state.api_fault.set(fault, None);
    }

    /// Arms `fault` for the next `times` API requests only.
    pub fn set_api_fault_times(&self, fault: ApiFault, times: u32) {
        self.state.api_fault.set(Some(fault), Some(times));
    }

    /// Accepts `token` (and no other) as the federated assertion of `client_id`.
    pub fn set_federated_token(&self, client_id: &str, token: &str) {
        self.state.set_federated_token(client_id, token);
    }

    /// Approves or declines the pending device sign-in with `user_code`; false if none.
    pub fn decide_device_code(&self, user_code: &str, status: DeviceStatus) -> bool {
        self.state.user_flows.decide(user_code, status)
    }

    /// Every refresh token issued so far stops working (a user must sign in again).
    pub fn revoke_refresh_tokens(&self) {
        self.state.user_flows.revoke_refresh_tokens();
    }

    /// Replaces the certificates registered for `client_id` (DER), e.g. to rotate them.
    pub fn set_certificates(&self, client_id: &str, certificates: Vec<Vec<u8>>) {
        self.state.certificates.set(client_id, certificates);
    }

    /// Invalidates every token issued so far: the API answers 401 to them.
    pub fn revoke_tokens(&self) {
        self.state.tokens.revoke_all();
    }

    /// Bearer tokens the API refused for `reason` (`expired`, `revoked`, `wrong_tenant`, ...).
    pub fn rejected_tokens(&self, reason: &str) -> u64 {
        self.state.rejections.snapshot()[reason]
            .as_u64()
            .unwrap_or(0)
    }

    /// Sets the lifetime of tokens issued from now on.
    pub fn set_token_lifetime_secs(&self, secs: u64) {
        self.state.tokens.set_lifetime_secs(secs);
    }

    /// The most recent API request (method, path and query, headers).
    pub fn last_api_request(&self) -> Option<RecordedRequest> {
        self.state.last_request()
    }
}

/// All routes of the sandbox on one router.
fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/metadata/identity/oauth2/token",
            get(managed_identity::imds),
        )
        .route("/msi/token", get(managed_identity::app_service))
        .route("/{tenant}/oauth2/v2.0/token", post(entra::token_v2))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(entra::devicecode))
        .route("/{tenant}/oauth2/token", post(entra::token_v1))
        .merge(control::routes())
        .merge(api::routes(state.clone()))
        .with_state(state)
}
