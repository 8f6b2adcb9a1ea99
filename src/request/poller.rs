//! The poller task: follows processing jobs when no webhook reports them, with backoff, a
//! deadline and a bound on polls in flight.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::headers::new_request_id;
use crate::polls::{PollReceiver, PollRequest};
use crate::request::context::job_target;
use crate::request::sync;
use crate::state::State;

/// Longest pause between two polls of one job.
const MAX_POLL_DELAY: Duration = Duration::from_secs(60);

/// Takes jobs from the poll queue and follows each until it ends, for as long as the state lives.
pub async fn run(weak: Weak<State>, mut queue: PollReceiver) {
    let Some(state) = weak.upgrade() else { return };
    let permits = Arc::new(Semaphore::new(
        state.config.load().jobs.poll_concurrency.max(1),
    ));
    drop(state);
    while let Some(job) = queue.recv().await {
        let weak = weak.clone();
        let permits = Arc::clone(&permits);
        tokio::spawn(async move {
            follow(&weak, &permits, &job).await;
            if let Some(state) = weak.upgrade() {
                state.polls.done(&job.record.job_id);
            }
        });
    }
}

/// Polls one job until it is terminal, unknown upstream, or past the deadline.
async fn follow(weak: &Weak<State>, permits: &Arc<Semaphore>, job: &PollRequest) {
    let Some(state) = weak.upgrade() else { return };
    let mut delay = state.config.load().jobs.poll_interval;
    let deadline = Instant::now() + state.config.load().jobs.poll_deadline;
    let target = job_target(&job.record.account, &job.record.job_id);
    let job_id = job.record.job_id.as_str();
    drop(state);
    loop {
        tokio::time::sleep(delay).await;
        // Hold no strong reference while sleeping, so a stopped proxy can be dropped.
        let Some(state) = weak.upgrade() else { return };
        if Instant::now() >= deadline {
            state.metrics.poll("deadline");
            tracing::info!(
                job_id,
                "job still processing at the poll deadline; giving up"
            );
            return;
        }
        if let Ok(Some((_, current))) = state.store.job(job_id).await {
            if current.status.is_terminal() {
                return;
            }
        }
        let Ok(_permit) = Arc::clone(permits).acquire_owned().await else {
            return;
        };
        let rid = new_request_id();
        let req = match state.upstream.get(&target, &job.tenant.key, &rid, false) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build job poll");
                return;
            }
        };
        match state
            .upstream
            .fetch(
                "job_poll",
                req,
                state.config.load().upstream.timeout,
                &job.trace,
            )
            .await
        {
            Ok(f) if f.status.is_success() => {
                if let Some(update) = sync::parse_job_status(&f.body) {
                    sync::apply(&state, job_id, &update, None, None).await;
                    if update.status.is_terminal() {
                        state.metrics.poll("terminal");
                        return;
                    }
                }
                state.metrics.poll("processing");
            }
            Ok(f) if f.status == StatusCode::NOT_FOUND => {
                state.metrics.poll("not_found");
                return;
            }
            Ok(_) | Err(_) => state.metrics.poll("error"),
        }
        delay = (delay * 3 / 2).min(MAX_POLL_DELAY);
    }
}
