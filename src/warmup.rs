//! Warm-up: at start and after each reload, the token of each route's credential for its home
//! (or pinned) tenant and scope is fetched in the background, so `/readyz` tells the truth from
//! the start: 503 with the reason until those tokens were had, and again while one is refused.
//! Partner tenants are not warmed: a refused customer tenant fails that tenant's requests, not
//! the pod's readiness.

use std::sync::Arc;
use std::time::Duration;

use crate::AppState;
use crate::runtime::Runtime;
use crate::token::TokenKey;

/// Longest pause between two attempts of one warm-up fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// (credential index, tenant ID, scope) of every token the routes of `rt` need without a
/// tenant header.
pub fn keys(rt: &Runtime) -> Vec<(usize, Arc<str>, Arc<str>)> {
    let mut keys: Vec<_> = rt
        .router
        .routes()
        .iter()
        .filter_map(|r| {
            let tenant = rt.router.tenant(r, None).ok()?;
            Some((r.credential, tenant.id.clone(), r.scope.clone()))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Starts the warm-up of the config now installed in `state`; each fetch retries with backoff
/// until it succeeds, the config is replaced, or the proxy stops.
pub fn spawn(state: &Arc<AppState>) {
    let rt = state.runtime.load_full();
    if !rt.warm_up {
        return;
    }
    for (credential, tenant, scope) in keys(&rt) {
        rt.credentials[credential].watch(&tenant, &scope);
        tokio::spawn(warm(state.clone(), rt.clone(), credential, tenant, scope));
    }
}

async fn warm(
    state: Arc<AppState>,
    rt: Arc<Runtime>,
    credential: usize,
    tenant: Arc<str>,
    scope: Arc<str>,
) {
    let source = rt.credentials[credential].clone();
    let key = TokenKey {
        credential: source.id,
        tenant,
        scope,
    };
    let mut round = 0u32;
    loop {
        let current = Arc::ptr_eq(&state.runtime.load(), &rt);
        if !current || state.cancel.is_cancelled() {
            return;
        }
        if state.shared.tokens.get(&source, &key).await.is_ok() {
            return;
        }
        round += 1;
        let wait = Duration::from_secs(1 << round.min(6)).min(MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.cancel.cancelled() => return,
        }
    }
}
