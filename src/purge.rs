//! `POST /purge`: an operator's purge of cached bodies, on every replica. Soft by default (the
//! bodies are served stale while one refresh replaces each), `hard` drops them. A realtime
//! window is reset only when asked (`window`), since the next realtime read then costs a
//! billable call.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::purges::PurgeScope;
use crate::route::Kind;
use crate::state::State;
use crate::store::{Broadcast, RecordKey, StoreStatus};

/// A purge order as the admin API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    account: Option<String>,
    route: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    window: bool,
}

/// Why a purge order was refused (nothing was purged).
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The body is not a purge order.
    #[error("{0}")]
    BadOrder(String),
    /// The realtime window could not be reset (the store is unreachable); the bodies were
    /// purged.
    #[error("bodies purged, but the realtime window could not be reset: {0}")]
    Window(String),
}

/// Applies a purge order (a JSON body) here, in the shared tier and on every replica.
pub async fn run(state: &State, body: &[u8]) -> Result<Value, PurgeError> {
    let order: Order = serde_json::from_slice(body).map_err(|e| {
        PurgeError::BadOrder(format!(
            "expected {{\"account\": \"…\"}}, {{\"route\": \"…\"}} or {{\"all\": true}}, with \"hard\" and (for an account) \"window\": {e}"
        ))
    })?;
    let scope = scope(state, &order)?;
    let tenants = state.secrets.load().tenant_ids();
    if let PurgeScope::Account(id) = &scope {
        // The account's indexed bodies leave Redis at once; for anything else the watermark
        // noted below makes every replica refetch and replace what Redis holds.
        if state.config.load().cache.shared {
            state.store.shared_invalidate(&tenants, id).await;
        }
    }
    let purged = scope.apply_here(&state.cache, &state.purges, &tenants, order.hard);
    let msg = Broadcast::Purge {
        scope: scope.clone(),
        hard: order.hard,
    };
    let fleet = match state.store.publish(&msg).await {
        // A degraded store in fail-open mode answers Ok without sending anything.
        Ok(()) if matches!(state.store.status(), StoreStatus::Degraded(_)) => {
            json!("not broadcast: the shared store is degraded")
        }
        Ok(()) => json!(state.store.is_shared()),
        Err(e) => {
            state.metrics.store_error("publish");
            tracing::warn!(error = %e, "could not broadcast a purge");
            json!(format!("not broadcast: {e}"))
        }
    };
    let windows = match (&scope, order.window) {
        (PurgeScope::Account(id), true) => Some(forget_windows(state, &tenants, id).await?),
        _ => None,
    };
    if let (Some(_), PurgeScope::Account(id)) = (windows, &scope) {
        let msg = Broadcast::ForgetWindow {
            account: id.clone(),
        };
        if let Err(e) = state.store.publish(&msg).await {
            tracing::warn!(error = %e, "could not broadcast a window reset");
        }
    }
    tracing::info!(
        ?scope,
        hard = order.hard,
        purged,
        window_reset = windows.is_some(),
        "purge"
    );
    let mut answer = json!({
        "scope": scope,
        "mode": if order.hard { "hard" } else { "soft" },
        "purged_here": purged,
        "fleet": fleet,
        "window_reset": windows.is_some(),
    });
    match windows {
        Some(n) => {
            answer["windows_forgotten"] = json!(n);
            answer["note"] = json!("the realtime window was reset: the next realtime read of this account makes a billable call to Mono");
        }
        None => {
            answer["note"] = json!("realtime windows are kept (resetting one costs a billable call); send {\"account\": \"…\", \"window\": true} to reset an account's");
        }
    }
    Ok(answer)
}

/// Exactly one of account, route and all, checked against what exists.
fn scope(state: &State, order: &Order) -> Result<PurgeScope, PurgeError> {
    let bad = |m: &str| Err(PurgeError::BadOrder(m.to_string()));
    let scope = match (&order.account, &order.route, order.all) {
        (Some(id), None, false) => {
            if !crate::api::is_valid_id(id) {
                return bad("\"account\" is not an account id");
            }
            PurgeScope::Account(id.clone())
        }
        (None, Some(name), false) => {
            let routes = state.routes.load();
            if routes.by_name(name).is_none() {
                let known: Vec<&str> = routes.iter().map(|r| r.name).collect();
                return bad(&format!(
                    "no route named {name:?}; routes: {}",
                    known.join(", ")
                ));
            }
            PurgeScope::Route(name.clone())
        }
        (None, None, true) => PurgeScope::All,
        _ => return bad("name exactly one of \"account\", \"route\" or \"all\": true"),
    };
    if order.window && !matches!(scope, PurgeScope::Account(_)) {
        return bad("\"window\" resets one account's realtime window: it needs \"account\"");
    }
    Ok(scope)
}

/// Forgets the account's realtime windows (balance and transactions) under every tenant.
async fn forget_windows(
    state: &State,
    tenants: &[std::sync::Arc<str>],
    account: &str,
) -> Result<usize, PurgeError> {
    let mut forgotten = 0;
    for tenant in tenants {
        for kind in [Kind::Balance, Kind::Transactions] {
            let key = RecordKey::new(tenant, account, kind);
            match state.store.forget_window(&key).await {
                Ok(held) => forgotten += usize::from(held),
                Err(e) => return Err(PurgeError::Window(e.to_string())),
            }
        }
    }
    Ok(forgotten)
}
