//! The last few requests that failed, for the admin view: kept only on the error path, so
//! answering successfully costs nothing here.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many failures are remembered.
const KEEP: usize = 20;

/// One failed request, without anything secret or personal (no account id, no key).
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// When, RFC 3339.
    pub at: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The error kind (`upstream_timeout`, `rate_limited`, …).
    pub kind: &'static str,
    /// The request class.
    pub class: &'static str,
    /// The route name.
    pub route: &'static str,
    /// The client name.
    pub client: &'static str,
}

/// The last 20 failures (`KEEP`), newest last.
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<RecentError>>);

impl RecentErrors {
    /// Remembers a failure, forgetting the oldest past `KEEP`.
    pub fn push(&self, e: RecentError) {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// The failures remembered, newest first.
    pub fn newest_first(&self) -> Vec<RecentError> {
        let q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.iter().rev().cloned().collect()
    }
}
