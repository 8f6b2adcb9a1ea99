//! The poll queue: which processing jobs are followed, handed to the poller task.
//!
//! Request classes put jobs here; the poller task (started beside the servers) takes them. The
//! set of followed jobs is bounded so a flood of realtime calls cannot grow it without end.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::store::JobRecord;
use crate::telemetry::Trace;
use crate::tenant::Tenant;

/// Jobs followed at once at most; more are left to webhooks and job-status reads.
pub const MAX_FOLLOWED: usize = 10_000;

/// A job to follow until it ends.
#[derive(Debug, Clone)]
pub struct PollRequest {
    /// The tenant whose key polls it.
    pub tenant: Tenant,
    /// The job as it was when tracking began.
    pub record: JobRecord,
    /// The trace of the realtime call that started it: its polls join it.
    pub trace: Trace,
}

/// The receiving end, owned by the poller task.
pub type PollReceiver = mpsc::UnboundedReceiver<PollRequest>;

/// The sending end and the set of jobs followed now.
pub struct PollQueue {
    enabled: bool,
    tx: mpsc::UnboundedSender<PollRequest>,
    active: Mutex<HashSet<String>>,
}

impl PollQueue {
    /// A queue, and the receiver the poller task reads; `enabled = false` tracks nothing.
    pub fn new(enabled: bool) -> (PollQueue, PollReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = PollQueue {
            enabled,
            tx,
            active: Mutex::new(HashSet::new()),
        };
        (queue, rx)
    }

    /// Starts following a processing job unless polling is off, it ended, or it is followed.
    pub fn track(&self, tenant: &Tenant, record: &JobRecord, trace: &Trace) {
        if !self.enabled || record.status.is_terminal() {
            return;
        }
        {
            let mut active = self
                .active
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if active.len() >= MAX_FOLLOWED {
                tracing::debug!(job_id = %record.job_id, "poll queue full; leaving the job to webhooks");
                return;
            }
            if !active.insert(record.job_id.clone()) {
                return;
            }
        }
        let request = PollRequest {
            tenant: tenant.clone(),
            record: record.clone(),
            trace: trace.clone(),
        };
        if self.tx.send(request).is_err() {
            // No poller runs (the state is being torn down): nothing will follow the job.
            self.done(&record.job_id);
        }
    }

    /// The poller stopped following a job.
    pub fn done(&self, job_id: &str) {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(job_id);
    }

    /// Jobs being followed now.
    pub fn active(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}
