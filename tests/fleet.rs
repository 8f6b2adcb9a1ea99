//! A fleet on managed-style Redis: TLS (and mutual TLS), ACL users and passwords, Redis Cluster,
//! Sentinel failover, and the shared cache tier. Every Redis here is a real `redis-server`
//! started on free loopback ports (see `support::redis_kinds`).

mod support;

use std::time::Duration;

use serde_json::json;
use support::receiver::Receiver;
use support::redis_kinds::{redis_cli, AclRedis, RedisCluster, SentinelSet, TlsRedis};
use support::*;

/// A generous per-operation timeout: two shared cores under a burst must not turn a slow answer
/// into a local fallback (and a second upstream call).
const TIMEOUT: &str = "timeout = \"1s\"";

fn prefix() -> String {
    format!("fleet-{}", uuid::Uuid::new_v4().simple())
}

/// A proxy in front of `sb` with `store` as its `[store]` table body.
async fn replica(sb: &mono_proxy::sandbox::RunningSandbox, store: &str, more: &str) -> TestProxy {
    ProxyBuilder::for_sandbox(sb)
        .toml(&format!("[store]\n{store}\n{TIMEOUT}\n{more}"))
        .start()
        .await
}

/// `[store]` keys for a plain Redis at `url` under `prefix`.
fn redis_store(url: &str, prefix: &str) -> String {
    format!("backend = \"redis\"\nredis_url = \"{url}\"\nprefix = \"{prefix}\"")
}

/// `n` realtime calls over `accounts` accounts, spread over the replicas, all at once.
async fn realtime_burst(
    replicas: &[&TestProxy],
    accounts: usize,
    n: usize,
    tag: &str,
) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = replicas[i % replicas.len()]
                .url(&format!("/v2/accounts/{tag}{}/balance", i % accounts));
            tokio::spawn(async move { get(&url, &[("x-realtime", "true")]).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for t in tasks {
        replies.push(t.await.expect("call task"));
    }
    replies
}

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

#[tokio::test]
async fn rediss_with_a_ca_file_shares_the_window_and_a_wrong_ca_is_refused_naming_the_store() {
    let redis = TlsRedis::start(false);
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let store = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nca_file = \"{}\"\nprefix = \"{p}\"",
        redis.url,
        toml_path(&redis.ca_file)
    );
    let a = replica(&sb, &store, "").await;
    let b = replica(&sb, &store, "").await;
    assert_eq!(a.store_state().await, "ok");
    let replies = realtime_burst(&[&a, &b], 1, 40, "tls").await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    // The record really is in the TLS Redis, under the hash-tagged layout.
    let keys = redis.cli(&["KEYS", &format!("{p}:*")]);
    assert!(keys.contains(":rec:balance"), "{keys}");

    let wrong = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nca_file = \"{}\"\nprefix = \"{p}\"",
        redis.url,
        toml_path(&redis.wrong_ca_file)
    );
    let refused = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[store]\n{wrong}\n{TIMEOUT}"))
        .try_start()
        .await;
    let Err(e) = refused else {
        panic!("a proxy trusting the wrong CA started");
    };
    assert!(e.contains("[store]"), "{e}");
    assert!(e.contains("ca_file"), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = TlsRedis::start(true);
    let sb = sandbox(sandbox_config()).await;
    let base = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nca_file = \"{}\"\nprefix = \"{}\"",
        redis.url,
        toml_path(&redis.ca_file),
        prefix()
    );
    let with_cert = format!(
        "{base}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        toml_path(&redis.client_cert),
        toml_path(&redis.client_key)
    );
    let a = replica(&sb, &with_cert, "").await;
    assert_eq!(a.store_state().await, "ok");
    let r = a.realtime("/v2/accounts/mtls1/balance").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Without it the server hangs up during the handshake: that start must not look healthy.
    let without = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[store]\n{base}\n{TIMEOUT}"))
        .try_start()
        .await;
    if let Ok(p) = without {
        assert_ne!(
            p.store_state().await,
            "ok",
            "connected without a client certificate"
        );
    }
}

#[tokio::test]
async fn acl_users_and_password_files_work_and_a_wrong_password_is_refused_without_printing_it() {
    let redis = AclRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();

    // A user and password in the URL.
    let in_url = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{p}\"",
        redis.url_with_user()
    );
    let a = replica(&sb, &in_url, "").await;
    assert_eq!(a.store_state().await, "ok");

    // The password from a file, the URL without one (the default user).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{}\n", redis.default_password)).unwrap();
    let from_file = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\npassword_file = \"{}\"\nprefix = \"{p}\"",
        redis.url_without_password(),
        toml_path(&file)
    );
    let b = replica(&sb, &from_file, "").await;
    assert_eq!(b.store_state().await, "ok");
    let replies = realtime_burst(&[&a, &b], 1, 20, "acl").await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);

    // The password from the environment.
    let env_store = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{p}\"",
        redis.url_without_password()
    );
    let c = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[store]\n{env_store}\n{TIMEOUT}"))
        .env("MONO_PROXY_REDIS_PASSWORD", &redis.default_password)
        .start()
        .await;
    assert_eq!(c.store_state().await, "ok");

    // A wrong password: a clear refusal that never shows the password.
    let wrong_pw = "not-the-password-5f3a";
    let wrong = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[store]\n{env_store}\n{TIMEOUT}"))
        .env("MONO_PROXY_REDIS_PASSWORD", wrong_pw)
        .try_start()
        .await;
    let Err(e) = wrong else {
        panic!("a proxy with a wrong redis password started");
    };
    assert!(e.contains("[store]"), "{e}");
    assert!(e.contains("password"), "{e}");
    assert!(!e.contains(wrong_pw), "the password leaked: {e}");

    // `check` names what it connects to and redacts the password.
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nbase_url = \"{}\"\n[store]\n{in_url}\n",
            sb.base_url(false)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", config.to_str().unwrap()])
        .env("MONO_SEC_KEY", "test_sk_check")
        .output()
        .expect("check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{}", redis.port)),
        "{stdout}"
    );
    assert!(stdout.contains("***"), "{stdout}");
    assert!(!stdout.contains(&redis.password), "{stdout}");
    assert!(!stderr.contains(&redis.password), "{stderr}");
}

#[tokio::test]
async fn a_cluster_collapses_realtime_calls_per_account_and_broadcasts_invalidations() {
    let cluster = RedisCluster::start(3);
    let sb = slow_jobs().await;
    let p = prefix();
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!("backend = \"redis\"\ncluster_nodes = [{nodes}]\nprefix = \"{p}\"");
    let a = replica(&sb, &store, "[jobs]\npoll = false").await;
    let b = replica(&sb, &store, "[jobs]\npoll = false").await;
    assert_eq!(a.store_state().await, "ok");

    let replies = realtime_burst(&[&a, &b], 20, 200, "cl").await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-job-id").is_some());
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 20);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
    // The accounts' keys are spread over the masters: the layout really runs on a cluster.
    let holders = cluster
        .ports
        .iter()
        .filter(|port| {
            let keys = redis_cli(&["-p", &port.to_string(), "KEYS", &format!("{p}:*")]);
            !keys.stdout.trim().is_empty()
        })
        .count();
    assert!(holders >= 2, "all keys on one node");

    // A webhook to A drops B's cached balance (pub/sub across the cluster bus).
    let path = "/v2/accounts/cl0/balance";
    let job_id = replies[0].header("x-job-id").unwrap().to_string();
    assert_eq!(b.get(path, &[]).await.status, 200);
    assert_eq!(b.get(path, &[]).await.header("x-cache"), Some("HIT"));
    let hook = a
        .webhook(&json!({
            "event": "mono.accounts.jobs.update",
            "data": {"id": job_id, "status": "finished"}
        }))
        .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
    let dropped = eventually(Duration::from_secs(10), || async {
        b.get(path, &[]).await.header("x-cache") != Some("HIT")
    })
    .await;
    assert!(dropped, "B kept its cached balance after A's webhook");
    let after = b.realtime(path).await;
    assert_eq!(after.header("x-job-status"), Some("finished"));
}

#[tokio::test]
async fn sentinel_failover_is_followed_and_windows_survive_it() {
    let mut set = SentinelSet::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let sentinels = set
        .sentinel_urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!(
        "backend = \"redis\"\nsentinels = [{sentinels}]\nsentinel_master = \"{}\"\nprefix = \"{p}\"",
        set.master_name
    );
    let a = replica(&sb, &store, "").await;
    let b = replica(&sb, &store, "").await;
    assert_eq!(a.store_state().await, "ok");
    assert_eq!(b.store_state().await, "ok");
    let before = realtime_burst(&[&a, &b], 10, 100, "sen").await;
    assert!(before.iter().all(|r| r.status == 200));
    assert_eq!(sb.sandbox.count("balance_realtime"), 10);

    set.kill_master();
    let promoted = set.wait_for_failover();
    assert_eq!(promoted, set.replica_port);

    // Both replicas keep answering through the failover and end up on the new master.
    for proxy in [&a, &b] {
        let reply = proxy.get("/v2/accounts/sen1/balance", &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let back = eventually(Duration::from_secs(20), || async {
            proxy.store_state().await == "ok"
        })
        .await;
        assert!(back, "a replica did not follow the promoted master");
    }
    // The windows opened before the failover still hold: the promoted replica had them, or
    // the proxies put them back. Duplicates are at most the claims in flight (none here).
    let after = realtime_burst(&[&a, &b], 10, 100, "sen").await;
    assert!(after.iter().all(|r| r.status == 200));
    let duplicates = sb.sandbox.count("balance_realtime") - 10;
    println!("duplicate realtime calls across the failover: {duplicates}");
    assert_eq!(duplicates, 0);
    // And new windows are shared again.
    let fresh = realtime_burst(&[&a, &b], 5, 50, "post").await;
    assert!(fresh.iter().all(|r| r.status == 200));
    assert_eq!(sb.sandbox.count("balance_realtime"), 15);
}

#[tokio::test]
async fn four_replicas_reading_1000_cold_accounts_make_1000_upstream_calls() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let store = redis_store(&r.url, &p);
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(replica(&sb, &store, "").await);
    }
    let urls: Vec<Vec<String>> = (0..1000)
        .map(|i| {
            replicas
                .iter()
                .map(|p| p.url(&format!("/v2/accounts/cold{i}/balance")))
                .collect()
        })
        .collect();
    // Each account is read once through every replica, the four reads at once, 250 accounts at
    // a time (1,000 requests in flight), with the default 50 ms Redis operation timeout.
    let mut shared_hits = 0;
    let mut collapsed = 0;
    for chunk in urls.chunks(250) {
        let tasks: Vec<_> = chunk
            .iter()
            .flatten()
            .cloned()
            .map(|url| tokio::spawn(async move { get(&url, &[]).await }))
            .collect();
        for t in tasks {
            let reply = t.await.expect("read");
            assert_eq!(reply.status, 200, "{}", reply.text());
            let status = reply.header("cache-status").unwrap_or_default().to_string();
            if status.contains("detail=shared") {
                shared_hits += 1;
                assert_eq!(reply.header("x-cache"), Some("HIT"));
                assert!(reply.header("age").is_some(), "{:?}", reply.headers);
            }
            if status.contains("collapsed") {
                collapsed += 1;
            }
        }
    }
    println!("shared-tier hits {shared_hits}, fleet-collapsed {collapsed}");
    assert_eq!(sb.sandbox.count("balance"), 1000);
    assert!(
        shared_hits + collapsed >= 3000 - 50,
        "{shared_hits} + {collapsed}"
    );

    // A second round is served from each replica's own memory.
    let again = replicas[3].get("/v2/accounts/cold7/balance", &[]).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert!(!again
        .header("cache-status")
        .unwrap_or_default()
        .contains("shared"));
    assert_eq!(sb.sandbox.count("balance"), 1000);
}

#[tokio::test]
async fn a_finished_sync_drops_the_shared_entry_too() {
    let r = TestRedis::start();
    let sb = slow_jobs().await;
    let p = prefix();
    let store = redis_store(&r.url, &p);
    let a = replica(&sb, &store, "[jobs]\npoll = false").await;
    let b = replica(&sb, &store, "[jobs]\npoll = false").await;
    let path = "/v2/accounts/inv1/balance";
    assert_eq!(a.get(path, &[]).await.header("x-cache"), Some("MISS"));
    let on_b = b.get(path, &[]).await;
    assert!(on_b
        .header("cache-status")
        .unwrap_or_default()
        .contains("detail=shared"));
    let started = a.realtime(path).await;
    let job_id = started.header("x-job-id").expect("job").to_string();
    let hook = b
        .webhook(&json!({
            "event": "mono.accounts.jobs.update",
            "data": {"id": job_id, "status": "finished"}
        }))
        .await;
    assert_eq!(hook.status, 200);
    let before = sb.sandbox.count("balance");
    // A new replica (nothing in memory) must not find the pre-sync body in Redis.
    let c = replica(&sb, &store, "[jobs]\npoll = false").await;
    let fresh = c.get(path, &[]).await;
    assert_eq!(fresh.header("x-cache"), Some("MISS"), "{:?}", fresh.headers);
    assert_eq!(sb.sandbox.count("balance"), before + 1);
}

#[tokio::test]
async fn a_webhook_retry_on_another_replica_is_applied_and_relayed_once() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let app = Receiver::start().await;
    let target = app.url();
    let store = redis_store(&r.url, &p);
    let more = format!("[webhook]\nforward_to = [\"{target}\"]");
    let a = replica(&sb, &store, &more).await;
    let b = replica(&sb, &store, &more).await;
    let event = json!({
        "event": "mono.accounts.jobs.update",
        "event_id": format!("evt-{p}"),
        "data": {"id": "job-none", "status": "finished"}
    });
    assert_eq!(a.webhook(&event).await.status, 200);
    assert_eq!(b.webhook(&event).await.status, 200);
    assert_eq!(a.webhook(&event).await.status, 200);
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn the_shared_tier_steps_aside_when_redis_is_slow_or_down() {
    let mut r = TestRedis::private();
    let sb = sandbox(sandbox_config()).await;
    // The default 50 ms operation timeout: a frozen Redis is slow, not down, at first.
    let store = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{}\"",
        r.url,
        prefix()
    );
    let a = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!("[store]\n{store}"))
        .start()
        .await;
    assert_eq!(a.get("/v2/accounts/slow0/balance", &[]).await.status, 200);

    r.pause();
    let started = std::time::Instant::now();
    let reply = a.get("/v2/accounts/slow1/balance", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-cache"), Some("MISS"));
    // Bounded by the lookup's retry budget (1 s), not by the fill lease (the upstream timeout).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    r.resume();

    r.stop();
    let down = eventually(Duration::from_secs(10), || async {
        a.store_state().await != "ok"
    })
    .await;
    assert!(down, "the store never noticed Redis was gone");
    let reply = a.get("/v2/accounts/slow2/balance", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        a.get("/v2/accounts/slow2/balance", &[])
            .await
            .header("x-cache"),
        Some("HIT")
    );
    let metrics = a.metrics().await;
    assert!(
        metric(
            &metrics,
            "mono_proxy_shared_cache_total{outcome=\"skipped\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(sb.sandbox.count("balance"), 3);
}

#[tokio::test]
async fn account_details_hold_a_bvn_and_never_reach_redis() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let store = redis_store(&r.url, &p);
    let a = replica(&sb, &store, "").await;
    let b = replica(&sb, &store, "").await;
    assert_eq!(
        a.get("/v2/accounts/pii1", &[]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        a.get("/v2/accounts/pii1", &[]).await.header("x-cache"),
        Some("HIT")
    );
    // B fetches its own copy: nothing of it was written to the shared tier.
    assert_eq!(
        b.get("/v2/accounts/pii1", &[]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(sb.sandbox.count("details"), 2);
    // Balances are shared as before.
    a.get("/v2/accounts/pii1/balance", &[]).await;
    let shared = b.get("/v2/accounts/pii1/balance", &[]).await;
    assert!(shared
        .header("cache-status")
        .unwrap()
        .contains("detail=shared"));
}

#[tokio::test]
async fn a_master_with_a_password_behind_a_sentinel_without_one() {
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let set = SentinelSet::start_with_password(Some(&password));
    let sb = sandbox(sandbox_config()).await;
    let store = format!(
        "[store]\nbackend = \"redis\"\nsentinels = [\"{}\"]\nsentinel_master = \"{}\"\nprefix = \"{}\"\n{TIMEOUT}",
        set.sentinel_urls[0],
        set.master_name,
        prefix()
    );
    let a = ProxyBuilder::for_sandbox(&sb)
        .toml(&store)
        .env("MONO_PROXY_REDIS_PASSWORD", &password)
        .start()
        .await;
    assert_eq!(a.store_state().await, "ok");
    let r = a.realtime("/v2/accounts/sp1/balance").await;
    assert_eq!(r.status, 200, "{}", r.text());
}
