//! Job tracking (spec §5) over real sockets: job records learned by polling and from job-status
//! responses passing through, terminal jobs answered locally, the poll deadline, reauth.

mod support;

use std::time::Duration;

use mono_proxy::sandbox::{JobState, RunningSandbox};
use support::*;

const BALANCE: &str = "/v2/accounts/acc1/balance";

/// Polling every 100 ms, no webhook: jobs are learned by polling.
const POLLING: &str = "[jobs]\npoll_interval = \"100ms\"";
/// No polling: job records change only when the test makes them.
const NO_POLL: &str = "[jobs]\npoll = false";

fn job_path(account: &str, job_id: &str) -> String {
    format!("/v2/accounts/{account}/jobs/{job_id}")
}

/// Starts a realtime job through the proxy and returns its id.
async fn start_job(proxy: &TestProxy, path: &str) -> String {
    let r = proxy.realtime(path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-cache"), Some("MISS"));
    r.header("x-job-id").expect("x-job-id").to_string()
}

/// Waits until the sandbox itself has ended the job.
async fn sandbox_job_ends(sb: &RunningSandbox, job_id: &str) {
    let ended = eventually(Duration::from_secs(10), || async {
        sb.sandbox
            .job(job_id)
            .is_some_and(|j| j.status != JobState::Processing)
    })
    .await;
    assert!(ended, "sandbox job {job_id} never ended");
}

#[tokio::test]
async fn terminal_job_status_is_answered_locally_and_processing_is_fetched() {
    let sb = slow_jobs().await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let job_id = start_job(&proxy, BALANCE).await;
    let path = job_path("acc1", &job_id);

    for n in 1..=2 {
        let r = proxy.get(&path, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"]["job_status"], "processing");
        assert_eq!(r.header("x-cache"), Some("MISS"));
        assert_eq!(sb.sandbox.count("job"), n, "a processing job is fetched");
    }

    sb.sandbox.finish_jobs_now();
    let learned = proxy.get(&path, &[]).await;
    assert_eq!(learned.json()["data"]["job_status"], "finished");
    assert_eq!(sb.sandbox.count("job"), 3);

    let local = proxy.get(&path, &[]).await;
    assert_eq!(local.status, 200);
    assert_eq!(sb.sandbox.count("job"), 3, "terminal: no upstream call");
    let body = local.json();
    assert_eq!(body["status"], "successful");
    assert_eq!(body["data"]["id"], job_id.as_str());
    assert_eq!(body["data"]["job_status"], "finished");
    assert_eq!(body["data"]["account"], "acc1");
    assert_eq!(body["data"]["synced"], true);
    assert_eq!(body["data"]["reauth_required"], false);
    assert_eq!(local.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn job_finished_by_polling_is_answered_locally() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(POLLING).start().await;
    let job_id = start_job(&proxy, BALANCE).await;

    let finished = eventually(Duration::from_secs(10), || async {
        proxy.realtime(BALANCE).await.header("x-job-status") == Some("finished")
    })
    .await;
    assert!(finished, "the poller never learned the job finished");
    let polls = sb.sandbox.count("job");
    assert!(polls >= 1);

    let local = proxy.get(&job_path("acc1", &job_id), &[]).await;
    assert_eq!(local.status, 200, "{}", local.text());
    assert_eq!(local.json()["data"]["job_status"], "finished");
    assert_eq!(sb.sandbox.count("job"), polls, "answered from the record");
}

#[tokio::test]
async fn job_status_passing_through_updates_the_record_without_polling() {
    let sb = slow_jobs().await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let job_id = start_job(&proxy, BALANCE).await;
    assert_eq!(
        proxy.realtime(BALANCE).await.header("x-job-status"),
        Some("processing")
    );

    sb.sandbox.finish_jobs_now();
    sandbox_job_ends(&sb, &job_id).await;
    // Nothing told the proxy yet: the record still says processing.
    assert_eq!(
        proxy.realtime(BALANCE).await.header("x-job-status"),
        Some("processing")
    );
    let status = proxy.get(&job_path("acc1", &job_id), &[]).await;
    assert_eq!(status.json()["data"]["job_status"], "finished");

    let collapsed = proxy.realtime(BALANCE).await;
    assert_eq!(collapsed.status, 200, "{}", collapsed.text());
    assert_eq!(collapsed.header("x-cache"), Some("COLLAPSED"));
    assert_eq!(collapsed.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(collapsed.header("x-job-status"), Some("finished"));
    assert_eq!(sb.sandbox.count("job"), 1, "no poll, one pass-through");
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
}

#[tokio::test(start_paused = true)]
async fn poller_gives_up_at_its_deadline() {
    let sb = slow_jobs().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll_interval = \"100ms\"\npoll_deadline = \"300ms\"")
        .start()
        .await;
    start_job(&proxy, BALANCE).await;
    assert_eq!(proxy.running.state.polls.active(), 1, "the job is followed");

    // Polls at 100 ms and 250 ms; the next one falls past the 300 ms deadline.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "mono_proxy_job_polls_total{outcome=\"deadline\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        proxy.running.state.polls.active(),
        0,
        "the job is still followed after the deadline"
    );
    let polls = sb.sandbox.count("job");
    assert_eq!(polls, 2, "it polled before giving up");
    // Stable afterwards: no poll is scheduled any more.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sb.sandbox.count("job"), polls, "polls stopped");
    assert_eq!(
        proxy.realtime(BALANCE).await.header("x-job-status"),
        Some("processing")
    );
}

#[tokio::test]
async fn reauth_account_job_ends_failed_with_reauth_required() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(POLLING).start().await;
    let path = "/v2/accounts/reauth1/balance";
    let job_id = start_job(&proxy, path).await;

    let failed = eventually(Duration::from_secs(10), || async {
        proxy.realtime(path).await.header("x-job-status") == Some("failed")
    })
    .await;
    assert!(failed, "the collapsed answer never said failed");
    let polls = sb.sandbox.count("job");

    let local = proxy.get(&job_path("reauth1", &job_id), &[]).await;
    assert_eq!(local.status, 200, "{}", local.text());
    let body = local.json();
    assert_eq!(body["data"]["job_status"], "failed");
    assert_eq!(body["data"]["reauth_required"], true);
    assert_eq!(body["data"]["synced"], false);
    assert_eq!(sb.sandbox.count("job"), polls, "answered from the record");
}
