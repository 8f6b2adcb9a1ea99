//! Webhook delivery memory across the fleet: each step of an event (applying it, relaying it to
//! one target) is claimed with `SET NX`, so a Mono retry landing on another replica does only
//! what is left.

use std::time::Duration;

use super::scripts::{STEP, UNSTEP};
use super::RedisStore;
use crate::store::StepClaim;

/// Mono retries for up to 48 h: remember done steps a little longer.
const DONE_RETENTION: Duration = Duration::from_secs(50 * 3600);

impl RedisStore {
    /// Claims a step for `lease` (past it, a replica that died holding it is forgotten); when
    /// Redis cannot say, this replica does it (at least once beats never).
    pub async fn step_claim(&self, event: &str, step: &str, lease: Duration) -> StepClaim {
        let s = &*self.inner;
        let mut call = STEP.key(s.keys.event_step(event, step));
        call.arg(self.busy()).arg(lease.as_millis() as u64);
        match s.script::<String>("step_claim", &call).await {
            Ok(v) if v == "done" => StepClaim::Done,
            Ok(v) if v == "busy" => StepClaim::Busy,
            Ok(_) => StepClaim::Mine,
            Err(e) => {
                tracing::debug!(error = %e.reason(), "webhook step claimed locally");
                StepClaim::Mine
            }
        }
    }

    /// Marks a step done for the fleet.
    pub async fn step_done(&self, event: &str, step: &str) {
        let s = &*self.inner;
        let set = redis::cmd("SET")
            .arg(s.keys.event_step(event, step))
            .arg("done")
            .arg("PX")
            .arg(DONE_RETENTION.as_millis() as u64)
            .to_owned();
        if let Err(e) = s.cmd::<()>("step_done", &set).await {
            tracing::debug!(error = %e.reason(), "webhook step not recorded in redis");
        }
    }

    /// Gives back a step that failed, if this replica still holds it.
    pub async fn step_failed(&self, event: &str, step: &str) {
        let s = &*self.inner;
        let mut call = UNSTEP.key(s.keys.event_step(event, step));
        call.arg(self.busy());
        if let Err(e) = s.script::<i64>("step_failed", &call).await {
            tracing::debug!(error = %e.reason(), "webhook step not given back; it expires");
        }
    }

    /// This replica's claim value.
    fn busy(&self) -> String {
        format!("busy:{}", self.inner.replica)
    }
}
