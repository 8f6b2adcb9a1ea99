//! The simulated world: seeded accounts and the realtime jobs that sync them.

use std::collections::HashMap;

use tokio::time::Instant;

use super::seed::{self, Account};
use super::{lock, webhook, Sandbox};

/// Longest account or job id accepted.
const MAX_SANDBOX_ID_LEN: usize = 64;

/// Whether an account or job id can exist: `[A-Za-z0-9._-]{1,64}`, never `.` or `..`.
pub(super) fn valid_id(id: &str) -> bool {
    (1..=MAX_SANDBOX_ID_LEN).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `missing…` accounts do not exist: every route answers 404 for them.
pub(super) fn is_missing(id: &str) -> bool {
    id.starts_with("missing")
}

/// Which data a realtime job syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `GET …/balance` with `x-realtime: true`.
    Balance,
    /// `GET …/transactions` with `x-realtime: true`.
    Transactions,
}

impl JobKind {
    /// Mono's job name, e.g. `jobs.accounts.sync_balance`.
    pub fn job_name(self) -> &'static str {
        match self {
            JobKind::Balance => "jobs.accounts.sync_balance",
            JobKind::Transactions => "jobs.accounts.sync_statement",
        }
    }

    /// Mono's job `type`: `balance` or `statement`.
    pub fn job_type(self) -> &'static str {
        match self {
            JobKind::Balance => "balance",
            JobKind::Transactions => "statement",
        }
    }

    /// The route word: `balance` or `transactions`.
    pub fn route(self) -> &'static str {
        match self {
            JobKind::Balance => "balance",
            JobKind::Transactions => "transactions",
        }
    }
}

/// A job's state as Mono reports it in `x-job-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Still syncing.
    Processing,
    /// Synced successfully.
    Finished,
    /// Sync failed (see [`SandboxJob::reauth_required`]).
    Failed,
}

impl JobState {
    /// Lowercase wire value: `processing`, `finished` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Processing => "processing",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
        }
    }
}

/// A realtime job the sandbox started.
#[derive(Debug, Clone)]
pub struct SandboxJob {
    /// `jobs.accounts_` followed by 16 hex characters.
    pub id: String,
    /// Account id the job syncs.
    pub account: String,
    /// Balance or transactions.
    pub kind: JobKind,
    /// Current status.
    pub status: JobState,
    /// True once a finished sync changed the account's data.
    pub has_new_data: bool,
    /// True when the job failed because the user must re-authorise.
    pub reauth_required: bool,
    /// When the job started; the realtime window counts from here.
    pub started_at: Instant,
    /// When the job finished or failed.
    pub ended_at: Option<Instant>,
}

/// Everything the simulator knows: accounts, jobs and the realtime windows.
#[derive(Default)]
pub(super) struct World {
    accounts: HashMap<String, Account>,
    jobs: HashMap<String, SandboxJob>,
    /// Last job per (account, kind), for the realtime window.
    last_job: HashMap<(String, JobKind), String>,
}

impl World {
    pub(super) fn account(&mut self, id: &str) -> &mut Account {
        self.accounts
            .entry(id.to_owned())
            .or_insert_with(|| Account::seed(id))
    }
}

impl Sandbox {
    /// Stages a balance that the next successful sync of `account` applies (so it has new data).
    pub fn stage_balance(&self, account: &str, balance: i64) {
        lock(&self.shared.world).account(account).staged_balance = Some(balance);
    }

    /// Changes the balance right away, without a sync.
    pub fn set_balance(&self, account: &str, balance: i64) {
        lock(&self.shared.world)
            .account(account)
            .apply_balance(balance);
    }

    /// The account's current balance (seeding the account if needed).
    pub fn balance(&self, account: &str) -> i64 {
        lock(&self.shared.world).account(account).balance
    }

    /// A job by id.
    pub fn job(&self, job_id: &str) -> Option<SandboxJob> {
        lock(&self.shared.world).jobs.get(job_id).cloned()
    }

    /// All jobs started so far.
    pub fn jobs(&self) -> Vec<SandboxJob> {
        lock(&self.shared.world).jobs.values().cloned().collect()
    }

    /// Ends every processing job now, as if its delay had elapsed (webhooks are sent when a
    /// tokio runtime is available).
    pub fn finish_jobs_now(&self) {
        let ids: Vec<String> = lock(&self.shared.world)
            .jobs
            .values()
            .filter(|j| j.status == JobState::Processing)
            .map(|j| j.id.clone())
            .collect();
        for id in ids {
            self.end_job(&id);
        }
    }

    /// Forgets all realtime windows, so the next realtime call starts a new job.
    pub fn clear_windows(&self) {
        lock(&self.shared.world).last_job.clear();
    }

    /// Starts a realtime job or reports the one inside the window; returns the job and
    /// whether it is new.
    pub(super) fn realtime(&self, account: &str, kind: JobKind) -> (SandboxJob, bool) {
        let mut world = lock(&self.shared.world);
        world.account(account);
        let key = (account.to_owned(), kind);
        if let Some(job) = world.last_job.get(&key).and_then(|id| world.jobs.get(id)) {
            if job.started_at.elapsed() < self.shared.cfg.window {
                return (job.clone(), false);
            }
        }
        let job = SandboxJob {
            id: format!("jobs.accounts_{}", seed::random_hex16()),
            account: account.to_owned(),
            kind,
            status: JobState::Processing,
            has_new_data: false,
            reauth_required: false,
            started_at: Instant::now(),
            ended_at: None,
        };
        world.last_job.insert(key, job.id.clone());
        world.jobs.insert(job.id.clone(), job.clone());
        drop(world);
        tracing::debug!(job.id = %job.id, account = %account, kind = kind.route(), "sandbox job started");
        let sandbox = self.clone();
        let id = job.id.clone();
        let delay = self.shared.cfg.job_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            sandbox.end_job(&id);
        });
        (job, true)
    }

    /// Finishes or fails a processing job by its account's kind and sends the webhooks.
    fn end_job(&self, job_id: &str) {
        let mut world = lock(&self.shared.world);
        let Some(job) = world.jobs.get(job_id).cloned() else {
            return;
        };
        if job.status != JobState::Processing {
            return;
        }
        let (status, reauth, has_new_data) = if job.account.starts_with("reauth") {
            (JobState::Failed, true, false)
        } else if job.account.starts_with("fail") {
            (JobState::Failed, false, false)
        } else {
            let bump = self.shared.cfg.sync_changes_data;
            let account = world.account(&job.account);
            let target = account
                .staged_balance
                .take()
                .or(bump.then_some(account.balance + 100));
            let changed = target.is_some_and(|b| account.apply_balance(b));
            (JobState::Finished, false, changed)
        };
        let account = world.account(&job.account).clone();
        let Some(job) = world.jobs.get_mut(job_id) else {
            return;
        };
        job.status = status;
        job.reauth_required = reauth;
        job.has_new_data = has_new_data;
        job.ended_at = Some(Instant::now());
        let job = job.clone();
        drop(world);
        tracing::debug!(job.id = %job.id, status = status.as_str(), has_new_data, "sandbox job ended");
        if self.shared.cfg.webhook_url.is_none() {
            return;
        }
        let events = webhook::job_events(&job, &account);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let sandbox = self.clone();
                rt.spawn(async move { sandbox.send_webhooks(events).await });
            }
            Err(_) => {
                tracing::warn!(job.id = %job.id, "no tokio runtime, sandbox webhooks skipped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sandbox::{Sandbox, SandboxConfig, COUNTERS};

    #[test]
    fn sandbox_works_without_a_runtime_for_inspection() {
        let sb = Sandbox::new(SandboxConfig {
            webhook_url: Some("http://127.0.0.1:9/hooks".to_owned()),
            ..SandboxConfig::default()
        });
        sb.stage_balance("abc", 5);
        sb.finish_jobs_now();
        assert_eq!(sb.count("total"), 0);
        assert_eq!(sb.counts().len(), COUNTERS.len());
        assert_ne!(sb.balance("abc"), 5, "staged balance waits for a sync");
    }
}
