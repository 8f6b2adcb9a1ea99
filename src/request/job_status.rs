//! Job status (spec §5): terminal jobs answered locally, others fetched and learned from.

use std::sync::Arc;

use http::{Response, StatusCode};

use crate::body::Body;
use crate::error::{json_response, timestamp, ProxyError};
use crate::headers::{set_cache_status, CacheResult};
use crate::request::context::JobRead;
use crate::request::sync;
use crate::route::Kind;
use crate::state::State;
use crate::store::{JobRecord, JobStatus};

/// Answers `GET /v2/accounts/{id}/jobs/{job_id}`.
pub async fn serve(
    state: &Arc<State>,
    read: &JobRead,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    // Only the tenant (and account) that started a job may read it locally or update it.
    let mut ours = true;
    if let Some((owner, record)) = state.store.job(&read.job_id).await? {
        ours = owner == read.tenant.id && record.account == read.account;
        if ours && record.status.is_terminal() {
            let mut resp = json_response(StatusCode::OK, job_envelope(&record));
            set_cache_status(resp.headers_mut(), CacheResult::Hit, None);
            return Ok((resp, CacheResult::Hit));
        }
    }
    let req = state
        .upstream
        .get(&read.target(), &read.tenant.key, &read.request_id, false)?;
    let fetched = state
        .upstream
        .fetch(
            "job_status",
            req,
            state.config.load().upstream.timeout,
            &read.trace,
        )
        .await?;
    if ours && fetched.status.is_success() {
        if let Some(update) = sync::parse_job_status(&fetched.body) {
            sync::apply(state, &read.job_id, &update, None, Some(&read.tenant.id)).await;
        }
    }
    let mut resp = fetched.to_response();
    set_cache_status(resp.headers_mut(), CacheResult::Miss, None);
    Ok((resp, CacheResult::Miss))
}

/// Mono's job-status envelope for a record.
pub fn job_envelope(record: &JobRecord) -> String {
    let (name, kind) = match record.kind {
        Kind::Balance => ("jobs.accounts.sync_balance", "balance"),
        Kind::Transactions => ("jobs.accounts.sync_statement", "statement"),
    };
    serde_json::json!({
        "status": "successful",
        "message": "Job execution completed",
        "timestamp": timestamp(),
        "data": {
            "id": record.job_id,
            "job_status": record.status.as_str(),
            "name": name,
            "account": record.account,
            "type": kind,
            "synced": record.status == JobStatus::Finished,
            "reauth_required": record.reauth_required,
        }
    })
    .to_string()
}
