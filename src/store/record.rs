//! Job records: what the proxy knows about a realtime job, and how updates change it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::Kind;
use crate::clock::now_ms;

/// Status of a Mono sync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Still running.
    Processing,
    /// Completed successfully.
    Finished,
    /// Failed (possibly needing reauthorisation).
    Failed,
}

impl JobStatus {
    /// Parses Mono's value in any case (`FINISHED` = `finished`).
    pub fn parse(s: &str) -> Option<JobStatus> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("processing") {
            Some(JobStatus::Processing)
        } else if s.eq_ignore_ascii_case("finished") {
            Some(JobStatus::Finished)
        } else if s.eq_ignore_ascii_case("failed") {
            Some(JobStatus::Failed)
        } else {
            None
        }
    }

    /// Lowercase value as sent in `x-job-status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processing => "processing",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
        }
    }

    /// Finished and failed never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Processing)
    }
}

/// What the proxy knows about the last realtime job of an (account, endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Mono's job id (`x-job-id`).
    pub job_id: String,
    /// Account id.
    pub account: String,
    /// Endpoint the job was started from.
    pub kind: Kind,
    /// Current status.
    pub status: JobStatus,
    /// When the realtime call that started it was made (unix ms): anchors the window.
    pub started_at: u64,
    /// Last change (unix ms).
    pub updated_at: u64,
    /// Whether the sync brought new data, once known.
    pub has_new_data: Option<bool>,
    /// The account must be reauthorised.
    pub reauth_required: bool,
}

/// Key of a record: tenant, account, endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// Tenant id (a hash of the secret key, never the key).
    pub tenant: Arc<str>,
    /// Account id.
    pub account: String,
    /// Endpoint.
    pub kind: Kind,
}

impl RecordKey {
    /// The key of an account endpoint's record for a tenant.
    pub fn new(tenant: &Arc<str>, account: &str, kind: Kind) -> RecordKey {
        RecordKey {
            tenant: Arc::clone(tenant),
            account: account.to_string(),
            kind,
        }
    }

    /// `tenant:account:kind`, for flights and store keys.
    pub fn flat(&self) -> String {
        format!("{}:{}:{}", self.tenant, self.account, self.kind.as_str())
    }
}

/// A change to a job learned from a webhook, a poll or a job-status response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    /// New status.
    pub status: JobStatus,
    /// `has_new_data` when the source says.
    pub has_new_data: Option<bool>,
    /// Reauthorisation required.
    pub reauth_required: bool,
}

/// The result of applying an update to a record.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The record after the update.
    pub record: JobRecord,
    /// The tenant of the record.
    pub tenant: Arc<str>,
    /// Whether anything changed (false when the update was already applied).
    pub changed: bool,
}

/// A job record with the tenant that owns it.
pub type OwnedRecord = (Arc<str>, JobRecord);

/// The record after an update: terminal states stay as they are, flags only accumulate.
pub fn apply_update(record: &JobRecord, update: &JobUpdate) -> JobRecord {
    let mut next = record.clone();
    if record.status.is_terminal() && record.status != update.status {
        return next;
    }
    next.status = update.status;
    if update.has_new_data.is_some() {
        next.has_new_data = update.has_new_data;
    }
    next.reauth_required |= update.reauth_required;
    if next != *record {
        next.updated_at = now_ms();
    }
    next
}

#[cfg(test)]
pub(crate) fn sample(status: JobStatus) -> JobRecord {
    JobRecord {
        job_id: "j1".into(),
        account: "a".into(),
        kind: Kind::Balance,
        status,
        started_at: 1,
        updated_at: 1,
        has_new_data: None,
        reauth_required: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_never_change() {
        let done = sample(JobStatus::Finished);
        let update = JobUpdate {
            status: JobStatus::Failed,
            has_new_data: None,
            reauth_required: true,
        };
        assert_eq!(apply_update(&done, &update), done);
    }

    #[test]
    fn job_status_values_parse_in_any_case() {
        assert_eq!(JobStatus::parse(" FINISHED "), Some(JobStatus::Finished));
        assert_eq!(JobStatus::parse("nope"), None);
    }
}
