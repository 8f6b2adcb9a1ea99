//! Mono's webhooks (spec §6): authenticate, apply once, relay to every target, lose nothing.
//!
//! Mono retries any delivery we do not answer 200, so a target that is down turns into a 502
//! and a later retry; the delivery memory makes the retry apply nothing twice and relay only to
//! the targets that have not had it yet.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde_json::Value;

use crate::body::{collect_limited, Body, BrokenBody, CollectError};
use crate::deliveries::{target_step, EventKey};
use crate::error::{envelope, json_response, timestamp, ProxyError};
use crate::headers::{strip_hop_by_hop, MONO_SEC_KEY, MONO_WEBHOOK_SECRET};
use crate::request::sync;
use crate::route::is_valid_id;
use crate::state::State;
use crate::store::{JobStatus, JobUpdate, StepClaim};
use crate::telemetry::{Trace, SPANS};
use crate::tenant::WebhookApp;
use tracing::Instrument;

/// Handles one delivery from Mono.
pub async fn serve(
    state: &Arc<State>,
    req: Request<Incoming>,
    trace: &Trace,
) -> Result<Response<Body>, ProxyError> {
    let secrets = state.secrets.load_full();
    if !secrets.any_webhook_secret() {
        state.metrics.webhook("unknown", "rejected");
        tracing::warn!("webhook refused: no webhook secret is configured (MONO_WEBHOOK_SECRET)");
        return Err(ProxyError::Unauthorized("webhook secret is not configured"));
    }
    let presented = req
        .headers()
        .get(MONO_WEBHOOK_SECRET)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    // Every app posts to the one path; its secret says which app (and so which tenant and
    // which targets) the event belongs to.
    let Some(app) = secrets.webhook_app(presented) else {
        state.metrics.webhook("unknown", "rejected");
        return Err(ProxyError::Unauthorized("invalid mono-webhook-secret"));
    };
    let (tenant, targets): (Option<&str>, &[Uri]) = match app {
        WebhookApp::Default => (None, &state.config.load().webhook.forward_to),
        WebhookApp::Client(c) => (Some(&c.tenant.id), &c.forward_to),
    };
    let limit = state.config.load().webhook.max_body;
    let (parts, body) = req.into_parts();
    let body = collect_limited(body, limit).await.map_err(|e| match e {
        CollectError::TooLarge => ProxyError::PayloadTooLarge(limit),
        CollectError::Read(_) => ProxyError::BadRequest(BrokenBody.to_string()),
    })?;
    let event: Value = serde_json::from_slice(&body)
        .map_err(|e| ProxyError::BadRequest(format!("malformed JSON: {e}")))?;
    let name = event
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    state.metrics.webhook(&name, "received");

    // An app's own events are remembered apart from the default app's.
    let key = match (event.get("event_id").and_then(Value::as_str), tenant) {
        (Some(id), None) => EventKey::id(id),
        (Some(id), Some(t)) => EventKey::id(&format!("{t}:{id}")),
        (None, None) => EventKey::body(&body),
        (None, Some(t)) => EventKey::body(&[t.as_bytes(), b":", &body[..]].concat()),
    };
    let progress = state.deliveries.progress(&key);
    // Held across the relay: a retry racing the first delivery waits for it instead of doubling it.
    let mut progress = progress.lock().await;
    // The same steps fleet-wide: a retry that lands on another replica does only what is left.
    let event_name = key.hex();
    if !progress.applied {
        match claim(state, &event_name, "apply").await {
            StepClaim::Mine => match apply(state, &name, &event, tenant)
                .instrument(tracing::trace_span!(target: SPANS, "webhook apply", event = %name))
                .await
            {
                Ok(()) => {
                    state.store.step_done(&event_name, "apply").await;
                    state.metrics.webhook(&name, "applied");
                }
                Err(e) => {
                    state.store.step_failed(&event_name, "apply").await;
                    return Err(e);
                }
            },
            StepClaim::Done => state.metrics.webhook(&name, "duplicate"),
            StepClaim::Busy => {
                return Err(ProxyError::Unavailable(
                    "another replica is applying this event; retry",
                ))
            }
        }
        progress.applied = true;
    }
    progress.delivered.resize(targets.len(), false);
    let failed = relay(
        state,
        &Relay {
            name: &name,
            event: &event_name,
            targets,
            trace,
        },
        &parts.headers,
        &body,
        &mut progress.delivered,
    )
    .await;
    if failed == 0 {
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({
                "status": "successful",
                "message": "webhook received",
                "timestamp": timestamp(),
                "data": null,
            })
            .to_string(),
        ))
    } else {
        Ok(envelope(
            StatusCode::BAD_GATEWAY,
            &format!(
                "relay failed for {failed} of {} targets; retry the delivery",
                targets.len()
            ),
        ))
    }
}

/// Applies an event to job records and caches of `tenant` (every tenant for the default app);
/// unknown events change nothing.
async fn apply(
    state: &Arc<State>,
    name: &str,
    event: &Value,
    tenant: Option<&str>,
) -> Result<(), ProxyError> {
    let data = event.get("data").unwrap_or(&Value::Null);
    match name {
        "mono.accounts.jobs.update" => {
            // Job ids are keys and upstream paths: an invalid one is relayed, never applied.
            let id = data
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| is_valid_id(id));
            let status = data
                .get("status")
                .and_then(Value::as_str)
                .and_then(JobStatus::parse);
            if let (Some(id), Some(status)) = (id, status) {
                let update = JobUpdate {
                    status,
                    has_new_data: data.get("has_new_data").and_then(Value::as_bool),
                    reauth_required: data
                        .get("reauth_required")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                };
                sync::apply(state, id, &update, None, tenant).await;
            }
        }
        "mono.events.account_updated" | "mono.accounts.account_updated" => {
            let meta = data.get("meta").unwrap_or(&Value::Null);
            let Some(update) = sync_update(meta) else {
                return Ok(());
            };
            let account = account_id(data).filter(|a| is_valid_id(a));
            let job_id = meta
                .get("job_id")
                .and_then(Value::as_str)
                .filter(|id| is_valid_id(id));
            match job_id {
                Some(job_id) => {
                    sync::apply(state, job_id, &update, account.as_deref(), tenant).await;
                }
                None => {
                    if let Some(account) = account {
                        sync::apply_to_account(state, &account, &update, tenant).await?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The job update `meta.sync_status` means: `SUCCESSFUL`, `FAILED`, `REAUTHORISATION_REQUIRED`.
fn sync_update(meta: &Value) -> Option<JobUpdate> {
    let sync = meta
        .get("sync_status")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (status, reauth_required) = if sync.eq_ignore_ascii_case("SUCCESSFUL") {
        (JobStatus::Finished, false)
    } else if sync.eq_ignore_ascii_case("FAILED") {
        (JobStatus::Failed, false)
    } else if sync.eq_ignore_ascii_case("REAUTHORISATION_REQUIRED") {
        (JobStatus::Failed, true)
    } else {
        return None;
    };
    Some(JobUpdate {
        status,
        has_new_data: meta.get("has_new_data").and_then(Value::as_bool),
        reauth_required,
    })
}

/// `data.account._id`, `data.account.id`, or `data.account` as a string.
fn account_id(data: &Value) -> Option<String> {
    let account = data.get("account")?;
    let id = match account {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => o.get("_id").or_else(|| o.get("id")).and_then(Value::as_str),
        _ => None,
    }?;
    Some(id.to_string())
}

/// Claims a step of an event for this replica; while another replica holds it, waits (a relay
/// takes at most the webhook timeout) and asks again.
async fn claim(state: &State, event: &str, step: &str) -> StepClaim {
    let timeout = state.config.load().webhook.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    // Held well past one relay's timeout, so a slow relay is never done twice at once.
    let lease = (timeout * 2).max(Duration::from_secs(60));
    loop {
        let claim = state.store.step_claim(event, step, lease).await;
        if claim != StepClaim::Busy || tokio::time::Instant::now() >= deadline {
            return claim;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Relays to every target not yet delivered, concurrently; returns how many failed.
/// What is relayed: an event (its name for metrics, its digest for the fleet's step claims) to
/// its app's targets.
struct Relay<'a> {
    name: &'a str,
    event: &'a str,
    targets: &'a [Uri],
    trace: &'a Trace,
}

async fn relay(
    state: &Arc<State>,
    what: &Relay<'_>,
    headers: &HeaderMap,
    body: &Bytes,
    delivered: &mut [bool],
) -> usize {
    let (name, event, targets, trace) = (what.name, what.event, what.targets, what.trace);
    let mut forward = headers.clone();
    strip_hop_by_hop(&mut forward);
    forward.remove(header::HOST);
    forward.remove(header::CONTENT_LENGTH);
    forward.remove(MONO_SEC_KEY);
    let timeout = state.config.load().webhook.timeout;
    let sends = targets
        .iter()
        .zip(delivered.iter())
        .enumerate()
        .filter(|(_, (_, done))| !**done)
        .map(|(i, (target, _))| {
            let forward = &forward;
            async move {
                let step = target_step(&target.to_string());
                let result = match claim(state, event, &step).await {
                    StepClaim::Mine => {
                        let started = std::time::Instant::now();
                        let sent = send(state, target, forward, body.clone(), timeout, trace)
                            .instrument(tracing::trace_span!(target: SPANS, "webhook relay", target = %origin(target)))
                            .await;
                        state.metrics.relay_time(sent.is_ok(), started.elapsed());
                        match &sent {
                            Ok(()) => state.store.step_done(event, &step).await,
                            Err(_) => state.store.step_failed(event, &step).await,
                        }
                        sent
                    }
                    StepClaim::Done => Ok(()),
                    StepClaim::Busy => Err("another replica is relaying it; not confirmed".into()),
                };
                (i, result)
            }
        });
    let results = futures_util::future::join_all(sends).await;
    let mut failed = 0;
    for (i, result) in results {
        match result {
            Ok(()) => {
                delivered[i] = true;
                state.metrics.webhook(name, "relayed");
            }
            Err(e) => {
                failed += 1;
                state.metrics.webhook(name, "relay_failed");
                tracing::warn!(target = %origin(&targets[i]), error = %e, "webhook relay failed");
            }
        }
    }
    failed
}

/// A relay target as logs and spans may show it: scheme, host and port only (the path, a
/// query or credentials may be the receiver's secret).
fn origin(target: &Uri) -> String {
    format!(
        "{}://{}",
        target.scheme_str().unwrap_or("http"),
        target
            .authority()
            .map_or("", |a| a.as_str().rsplit('@').next().unwrap_or_default())
    )
}

/// One relay to one target: 2xx or the reason it failed.
async fn send(
    state: &State,
    target: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    timeout: Duration,
    trace: &Trace,
) -> Result<(), String> {
    let mut req = Request::new(Body::full(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target.clone();
    *req.headers_mut() = headers.clone();
    if let Some(authority) = target.authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let resp = state
        .upstream
        .relay(req, timeout, trace)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    // Drain the body so the pooled connection can be reused.
    let _ = collect_limited(resp.into_body(), 64 * 1024).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("target answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_reads_every_shape() {
        let v: Value = serde_json::json!({"account": {"_id": "a1"}});
        assert_eq!(account_id(&v).as_deref(), Some("a1"));
        let v: Value = serde_json::json!({"account": "a2"});
        assert_eq!(account_id(&v).as_deref(), Some("a2"));
    }

    #[test]
    fn sync_status_maps_to_job_updates() {
        let m = serde_json::json!({"sync_status": "reauthorisation_required"});
        let u = sync_update(&m).unwrap();
        assert_eq!(u.status, JobStatus::Failed);
        assert!(u.reauth_required);
        assert!(sync_update(&serde_json::json!({"sync_status": "NEW"})).is_none());
    }
}
