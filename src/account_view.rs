//! `GET /accounts/{id}` on the admin listener: what the proxy holds for one account, per
//! tenant: the realtime window per kind, the cached entries and the last `x-has-new-data`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::api::Kind;
use crate::cache::Freshness;
use crate::request::context::account_key;
use crate::state::State;
use crate::store::RecordKey;

/// The view of `account` (an id already checked by the caller).
pub async fn view(state: &State, account: &str) -> Value {
    let secrets = state.secrets.load();
    let window = state.config.load().realtime.window.as_millis() as u64;
    let mut tenants = Vec::new();
    for tenant in secrets.tenant_ids() {
        // Who uses this tenant: the default key, and clients with their own key.
        let mut used_by: Vec<&str> = secrets
            .clients
            .iter()
            .filter(|c| c.tenant.id == tenant)
            .map(|c| c.label)
            .collect();
        if tenant == secrets.default.id {
            used_by.insert(0, "default");
        }
        let mut realtime = serde_json::Map::new();
        for kind in [Kind::Balance, Kind::Transactions] {
            let key = RecordKey::new(&tenant, account, kind);
            let record = match state.store.get(&key).await {
                Ok(Some(r)) => json!({
                    "job_id": r.job_id,
                    "status": r.status,
                    "window_start": rfc3339(r.started_at),
                    "window_end": rfc3339(r.started_at + window),
                    "in_window": crate::clock::now_ms().saturating_sub(r.started_at) < window,
                    "has_new_data": r.has_new_data,
                    "reauth_required": r.reauth_required,
                }),
                Ok(None) => Value::Null,
                Err(e) => json!({ "error": e.to_string() }),
            };
            realtime.insert(kind.as_str().to_string(), record);
        }
        let mut last_new_data = Value::Null;
        let mut cached = Vec::new();
        for (path, body) in state.cache.entries(&account_key(&tenant, account)) {
            let (route, query) = split_path(&path);
            let (fresh, ttl_left) = match state.cache.freshness(&body) {
                Freshness::Fresh(left) => ("fresh", left),
                Freshness::Stale(past) => ("stale", -past),
                Freshness::Purged => ("purged", 0),
                Freshness::Expired => ("expired", 0),
            };
            if route == "balance" || route == "transactions" {
                last_new_data = json!(body.has_new_data);
            }
            cached.push(json!({
                "route": route,
                "query": query,
                "age_s": body.stored_at.elapsed().as_secs(),
                "ttl_left_s": ttl_left,
                "state": fresh,
                "bytes": body.body.len(),
                "x_has_new_data": body.has_new_data,
            }));
        }
        tenants.push(json!({
            "tenant": tenant.as_ref(),
            "used_by": used_by,
            "realtime": realtime,
            "cached": cached,
            "x_has_new_data": last_new_data,
        }));
    }
    json!({ "account": account, "tenants": tenants })
}

/// A cache path key (`transactions?page=2`, `statement_job/j1`) as route and the rest.
fn split_path(path: &str) -> (&str, &str) {
    match path.find(['?', '/']) {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, ""),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}
