//! Soak benchmark: the real binary under mixed traffic for minutes, sampling its memory.
//!
//! `cargo bench --bench soak` starts `mono-proxy sandbox` (finishing jobs and sending webhooks)
//! and `mono-proxy` with the default config (only addresses come from the environment), then
//! drives a fixed rate of mixed traffic at it: cache hits over 100 accounts, balance misses
//! cycling over 50,000 accounts, transaction pages cycling over 5,000, realtime calls over
//! 5,000, job status reads, and webhooks with unique event ids that invalidate accounts. The
//! working set (about 75 MiB of cached bodies) is reached in about 6 minutes at the default rate;
//! after that, entries expire and are fetched again under the same keys, so memory should stay
//! flat: that is the plateau the run looks for. Every 10 s it records the proxy's RSS and
//! open file descriptors, then prints the series, says whether it reached a plateau, and draws
//! `<target dir>/soak.svg`.
//!
//! Bounded in time and count. Environment knobs (defaults): `SOAK_SECS=600`, `SOAK_RPS=1000`,
//! `SOAK_WORKERS=32`, `SOAK_SAMPLE_SECS=10`, `SOAK_MAX_REQS=2000000`. Loopback only; children
//! are killed on exit and on panic.

mod support;

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use plotters::prelude::*;
use support::{env_u64, free_addr, open_fds, rss_kib, target_dir, BoxError, Children};

const SANDBOX_KEY: &str = "test_sk_sandbox";
const WEBHOOK_SECRET: &str = "soak-webhook-secret";
const HOT_IDS: u64 = 100;
const COLD_IDS: u64 = 50_000;
const REALTIME_IDS: u64 = 5_000;
const PAGED_IDS: u64 = 5_000;

/// A tiny deterministic generator (SplitMix64): the same run every time.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Shared counters: the cycling positions and what happened.
#[derive(Default)]
struct Counters {
    cold: AtomicU64,
    paged: AtomicU64,
    realtime: AtomicU64,
    events: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
}

/// One request of the mix: method, path, extra headers, body.
fn next_request(
    mix: &mut Mix,
    c: &Counters,
) -> (Method, String, Vec<(&'static str, String)>, String) {
    let roll = mix.next() % 100;
    let cold = || c.cold.fetch_add(1, Ordering::Relaxed) % COLD_IDS;
    match roll {
        0..=69 => (
            Method::GET,
            format!("/v2/accounts/hot{:03}/balance", mix.next() % HOT_IDS),
            vec![],
            String::new(),
        ),
        70..=84 => (
            Method::GET,
            format!("/v2/accounts/cold{:05}/balance", cold()),
            vec![],
            String::new(),
        ),
        85..=89 => (
            Method::GET,
            format!(
                "/v2/accounts/paged{:04}/transactions?page=1",
                c.paged.fetch_add(1, Ordering::Relaxed) % PAGED_IDS
            ),
            vec![],
            String::new(),
        ),
        90..=93 => {
            let n = c.realtime.fetch_add(1, Ordering::Relaxed) % REALTIME_IDS;
            (
                Method::GET,
                format!("/v2/accounts/rt{n:04}/balance"),
                vec![("x-realtime", "true".to_string())],
                String::new(),
            )
        }
        94..=96 => {
            let id = c.events.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({
                "event": "mono.events.account_updated",
                "event_id": format!("soak-{id}"),
                "data": {
                    "account": {"_id": format!("cold{:05}", id % COLD_IDS)},
                    "meta": {"sync_status": "SUCCESSFUL", "has_new_data": true}
                }
            });
            (
                Method::POST,
                "/webhooks/mono".to_string(),
                vec![("mono-webhook-secret", WEBHOOK_SECRET.to_string())],
                body.to_string(),
            )
        }
        _ => (
            Method::GET,
            format!(
                "/v2/accounts/rt{:04}/jobs/jobs.accounts_{:016x}",
                mix.next() % REALTIME_IDS,
                mix.next()
            ),
            vec![],
            String::new(),
        ),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One worker: its share of the rate on one keep-alive connection (reconnecting if it drops).
async fn worker(
    addr: SocketAddr,
    seed: u64,
    interval: Duration,
    until: Instant,
    max_reqs: u64,
    c: Arc<Counters>,
) {
    let mut mix = Mix(seed);
    let mut sender: Option<Sender> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until && c.sent.load(Ordering::Relaxed) < max_reqs {
        tick.tick().await;
        if sender.is_none() {
            sender = connect(addr).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            c.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (method, path, headers, body) = next_request(&mut mix, &c);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string());
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        for (n, v) in headers {
            req = req.header(n, v);
        }
        let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
            continue;
        };
        c.sent.fetch_add(1, Ordering::Relaxed);
        let ok = match s.ready().await {
            Ok(()) => match s.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.into_body().collect().await.is_ok() && status.as_u16() < 500
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if !ok {
            c.failed.fetch_add(1, Ordering::Relaxed);
            sender = None;
        }
    }
}

/// One memory sample.
struct Point {
    secs: u64,
    rss_kib: u64,
    fds: u64,
    sent: u64,
}

fn draw(path: &Path, points: &[Point]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_secs = points.last().map_or(1, |p| p.secs.max(1));
    let max_rss = points.iter().map(|p| p.rss_kib).max().unwrap_or(1) as f64 / 1024.0;
    let max_fds = points.iter().map(|p| p.fds).max().unwrap_or(1) as f64;
    let (left, right) = root.split_horizontally(450);
    for (area, caption, values, top, color) in [
        (
            &left,
            "proxy RSS (MiB)",
            points
                .iter()
                .map(|p| (p.secs, p.rss_kib as f64 / 1024.0))
                .collect::<Vec<_>>(),
            max_rss * 1.2,
            BLUE,
        ),
        (
            &right,
            "open file descriptors",
            points.iter().map(|p| (p.secs, p.fds as f64)).collect(),
            max_fds * 1.2,
            RED,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0u64..max_secs, 0f64..top.max(1.0))?;
        chart.configure_mesh().x_desc("seconds").draw()?;
        chart.draw_series(LineSeries::new(values, &color))?;
    }
    root.present()?;
    Ok(())
}

fn main() {
    support::bench_main("soak", run);
}

fn run() -> Result<(), BoxError> {
    let secs = env_u64("SOAK_SECS", 600).clamp(10, 3600);
    let rps = env_u64("SOAK_RPS", 1000).clamp(1, 20_000);
    let workers = env_u64("SOAK_WORKERS", 32).clamp(1, 512);
    let sample = Duration::from_secs(env_u64("SOAK_SAMPLE_SECS", 10).clamp(1, 60));
    let max_reqs = env_u64("SOAK_MAX_REQS", 2_000_000);
    let bin = env!("CARGO_BIN_EXE_mono-proxy");
    let dir = tempfile::tempdir()?;

    let sandbox = free_addr()?;
    let proxy = free_addr()?;
    let admin = free_addr()?;
    let mut children = Children(Vec::new());
    children.spawn_quiet(
        "sandbox",
        Command::new(bin)
            .args([
                "sandbox",
                "--listen",
                &sandbox.to_string(),
                "--job-delay",
                "2s",
            ])
            .arg("--webhook-url")
            .arg(format!("http://{proxy}/webhooks/mono"))
            .env("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("MONO_SANDBOX_KEY", SANDBOX_KEY)
            .env("RUST_LOG", "error"),
    )?;
    children.wait_listening("sandbox", sandbox)?;
    // The default config: no file (run in an empty directory), addresses from the environment.
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("MONO_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir.path())
        .env("MONO_SEC_KEY", SANDBOX_KEY)
        .env("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("MONO_PROXY_LISTEN", proxy.to_string())
        .env("MONO_PROXY_ADMIN_LISTEN", admin.to_string())
        .env("MONO_PROXY_PUBLIC_BASE_URL", format!("http://{proxy}"))
        .env("MONO_PROXY_UPSTREAM_URL", format!("http://{sandbox}"))
        // The access log at the default level, as shipped; its output is not what is measured.
        .env("RUST_LOG", "info");
    let pid = children.spawn_quiet("proxy", &mut cmd)?;
    children.wait_listening("proxy", proxy)?;

    println!(
        "soak: {secs} s of mixed traffic at {rps} req/s ({workers} connections), default config, proxy pid {pid}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let interval = Duration::from_micros(1_000_000 * workers / rps);
    let points = rt.block_on(async {
        for w in 0..workers {
            tokio::spawn(worker(
                proxy,
                0x5eed + w,
                interval,
                until,
                max_reqs,
                Arc::clone(&counters),
            ));
        }
        let mut points = Vec::new();
        let mut at = started;
        loop {
            let point = Point {
                secs: started.elapsed().as_secs(),
                rss_kib: rss_kib(pid).unwrap_or(0),
                fds: open_fds(pid).unwrap_or(0),
                sent: counters.sent.load(Ordering::Relaxed),
            };
            println!(
                "  t={:>4} s  rss={:>7.1} MiB  fds={:>4}  requests={:>8}  failed={}",
                point.secs,
                point.rss_kib as f64 / 1024.0,
                point.fds,
                point.sent,
                counters.failed.load(Ordering::Relaxed)
            );
            points.push(point);
            if Instant::now() >= until {
                break;
            }
            at += sample;
            tokio::time::sleep_until(at.into()).await;
        }
        points
    });

    let peak = points.iter().map(|p| p.rss_kib).max().unwrap_or(0);
    let fds_max = points.iter().map(|p| p.fds).max().unwrap_or(0);
    let last = points.last().map_or(0, |p| p.rss_kib);
    // Growth over the last third of the run, after the working set is in.
    let at_two_thirds = points[points.len() * 2 / 3].rss_kib;
    let growth = (last as f64 - at_two_thirds as f64) / at_two_thirds.max(1) as f64;
    println!("\n| t (s) | RSS (MiB) | open fds | requests |");
    println!("|---|---|---|---|");
    for p in &points {
        println!(
            "| {} | {:.1} | {} | {} |",
            p.secs,
            p.rss_kib as f64 / 1024.0,
            p.fds,
            p.sent
        );
    }
    println!(
        "\npeak RSS {:.1} MiB; at two thirds of the run {:.1} MiB, at the end {:.1} MiB ({:+.1}%); \
         peak fds {fds_max}; failed requests {}",
        peak as f64 / 1024.0,
        at_two_thirds as f64 / 1024.0,
        last as f64 / 1024.0,
        100.0 * growth,
        counters.failed.load(Ordering::Relaxed)
    );
    println!(
        "{}",
        if growth.abs() < 0.05 {
            "plateau: RSS moved less than 5% over the last third"
        } else {
            "no plateau yet: RSS moved 5% or more over the last third"
        }
    );
    let chart = target_dir().join("soak.svg");
    match draw(&chart, &points) {
        Ok(()) => println!("chart: {}", chart.display()),
        Err(e) => eprintln!("soak: chart: {e}"),
    }
    Ok(())
}
