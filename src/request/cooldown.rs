//! Mono's 429 cooldowns as the request classes see them: starting one when Mono answers 429
//! (here, in Redis and on every replica), and asking whether one holds a call back.

use std::time::{Duration, UNIX_EPOCH};

use http::HeaderMap;

use crate::clock::now_ms;
use crate::headers::retry_after;
use crate::state::State;
use crate::store::Broadcast;

/// Mono answered 429 on a route: calls for the tenant, route and account are answered here until
/// `Retry-After` (capped; a default when absent) passes, on every replica.
pub async fn cool_down(
    state: &State,
    tenant: &str,
    route: &str,
    account: &str,
    headers: &HeaderMap,
) {
    let upstream = &state.config.load().upstream;
    let now = UNIX_EPOCH + Duration::from_millis(now_ms());
    let wait = retry_after(headers, now)
        .unwrap_or(upstream.cooldown)
        .min(upstream.max_cooldown);
    let until_ms = now_ms() + wait.as_millis() as u64;
    state.cooldowns.set(tenant, route, account, until_ms);
    tracing::warn!(
        route,
        account,
        wait_s = wait.as_secs(),
        "mono answered 429; holding calls back"
    );
    // Recorded before the 429 is answered, so a retry on another replica finds it at once
    // (the broadcast may arrive after the retry does).
    state
        .store
        .set_cooldown(tenant, route, account, until_ms)
        .await;
    let msg = Broadcast::Cooldown {
        tenant: tenant.to_string(),
        route: route.to_string(),
        account: account.to_string(),
        until_ms,
    };
    if let Err(e) = state.store.publish(&msg).await {
        tracing::warn!(error = %e, "could not broadcast a cooldown");
    }
}

/// How long calls for `(tenant, route, account)` must still wait after a Mono 429: this
/// replica's table first, then (Redis, when `remote`) the fleet's record.
pub async fn held_back(
    state: &State,
    tenant: &str,
    route: &str,
    account: &str,
    remote: bool,
) -> Option<Duration> {
    if let Some(left) = state.cooldowns.remaining(tenant, route, account) {
        return Some(left);
    }
    if !remote {
        return None;
    }
    let until = state.store.cooldown(tenant, route, account).await?;
    state.cooldowns.set(tenant, route, account, until);
    state.cooldowns.remaining(tenant, route, account)
}
