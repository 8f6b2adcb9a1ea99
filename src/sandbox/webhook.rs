//! The two webhooks Mono sends when a realtime job ends, and their delivery.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request};
use serde_json::{json, Value};

use super::seed::Account;
use super::{JobState, Sandbox, SandboxJob};

/// Each webhook delivery gives up after this long.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// `mono.accounts.jobs.update` then `mono.events.account_updated` for an ended job.
pub(super) fn job_events(job: &SandboxJob, account: &Account) -> Vec<Value> {
    let (data_status, sync_status) = match (job.status, job.reauth_required) {
        (JobState::Failed, true) => ("FAILED", "REAUTHORISATION_REQUIRED"),
        (JobState::Failed, false) => ("FAILED", "FAILED"),
        (JobState::Finished, _) => ("AVAILABLE", "SUCCESSFUL"),
        (JobState::Processing, _) => ("PROCESSING", "PROCESSING"),
    };
    vec![
        json!({
            "event": "mono.accounts.jobs.update",
            "event_id": uuid::Uuid::new_v4().to_string(),
            "data": {
                "id": job.id,
                "name": job.kind.job_name(),
                "status": job.status.as_str(),
            }
        }),
        json!({
            "event": "mono.events.account_updated",
            "event_id": uuid::Uuid::new_v4().to_string(),
            "data": {
                "account": {
                    "_id": account.id,
                    "name": account.name,
                    "accountNumber": account.account_number,
                    "currency": "NGN",
                    "balance": account.balance,
                    "type": "SAVINGS ACCOUNT - INDIVIDUAL",
                    "institution": {
                        "name": "Sandbox Bank",
                        "bankCode": "000000",
                        "type": "PERSONAL_BANKING",
                    },
                },
                "meta": {
                    "data_status": data_status,
                    "auth_method": "mobile_banking",
                    "sync_status": sync_status,
                    "job_id": job.id,
                    "has_new_data": job.has_new_data,
                },
            }
        }),
    ]
}

impl Sandbox {
    /// Posts the events in order; failures are logged and counted, never retried.
    pub(super) async fn send_webhooks(&self, events: Vec<Value>) {
        let Some(url) = self.shared.cfg.webhook_url.clone() else {
            return;
        };
        for event in events {
            let name = event["event"].as_str().unwrap_or("unknown").to_owned();
            match self.post_webhook(&url, &event).await {
                Ok(()) => {
                    self.bump("webhooks_sent");
                    tracing::debug!(event = %name, "sandbox webhook sent");
                }
                Err(err) => {
                    self.bump("webhooks_failed");
                    tracing::warn!(event = %name, error = %err, "sandbox webhook failed");
                }
            }
        }
    }

    async fn post_webhook(&self, url: &str, event: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.shared.cfg.webhook_secret {
            req = req.header("mono-webhook-secret", secret);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad webhook request: {e}"))?;
        let client = &self.shared.webhook_client;
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the reply so the connection can go back to the pool.
            resp.into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("receiver answered {status}"))
            }
        };
        match tokio::time::timeout(WEBHOOK_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_owned()),
        }
    }
}
