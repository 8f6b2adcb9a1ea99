//! Load bench of the whole proxy: the real binary, the sandbox as upstream, real sockets.
//!
//! `cargo bench --bench load` starts `mono-proxy sandbox` and `mono-proxy --config <tmp>` as child
//! processes on free loopback ports, drives keep-alive HTTP/1 connections at them from this
//! process, and prints one table from one run: direct-to-sandbox, proxy cache hit, proxy
//! passthrough miss (and the same path direct), and a realtime burst. It also draws the
//! throughput and p99 of each row into `<target dir>/load-bench.svg`. Then two more tables:
//! hits at scale (100, 10,000 and 100,000 cached accounts, with RSS per balance; `scale.rs`)
//! and the upstream over TLS (passthrough and misses over h2 beside plain, with the TLS
//! handshakes the misses cost; `tls.rs`).
//!
//! Every row is bounded by time AND request count. Environment knobs (defaults):
//! `LOAD_LATENCY_MS=50` (sandbox latency), `LOAD_SECS=5` (per row), `LOAD_CONNS=64`,
//! `LOAD_IDS=100`, `LOAD_BURST=200`, `LOAD_MAX_REQS=1000000` (per row),
//! `LOAD_SCALE=100,10000,100000` (account levels), `LOAD_TLS_MISSES=100000`.
//! Loopback only; the children are killed on exit and on panic (a Drop guard).

#[path = "load/scale.rs"]
mod scale;
mod support;
#[path = "load/tls.rs"]
mod tls;

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use support::{
    cpu_ticks, env_u64, rss_kib, spawn_proxy, spawn_sandbox, target_dir, BoxError, Children,
    SANDBOX_KEY,
};

/// Linux reports process CPU in ticks of 1/100 s.
const CLK_TCK: f64 = 100.0;

/// What one load run saw.
#[derive(Default)]
struct Sample {
    lat_us: Vec<u32>,
    ok: u64,
    non2xx: u64,
    errors: u64,
    elapsed: Duration,
    /// When each burst request completed (empty for sustained runs).
    finished: Vec<Instant>,
}

impl Sample {
    /// Notes one answered request.
    fn note(&mut self, ok: bool, lat: Duration) {
        self.lat_us
            .push(lat.as_micros().min(u32::MAX as u128) as u32);
        if ok {
            self.ok += 1;
        } else {
            self.non2xx += 1;
        }
    }

    fn merge(&mut self, other: Sample) {
        self.lat_us.extend(other.lat_us);
        self.ok += other.ok;
        self.non2xx += other.non2xx;
        self.errors += other.errors;
        self.finished.extend(other.finished);
    }
}

/// One target: where, and the headers every request carries.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl Target {
    fn new(addr: SocketAddr, extra: &[(&'static str, &str)]) -> Target {
        let mut headers = vec![(HOST, HeaderValue::from_str(&addr.to_string()).unwrap())];
        for (n, v) in extra {
            headers.push((
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap(),
            ));
        }
        Target {
            addr,
            headers: Arc::new(headers),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("load: client connection: {e}");
        }
    });
    Ok(sender)
}

/// One request on a ready connection: (status is 2xx, latency).
async fn call(
    sender: &mut Sender,
    target: &Target,
    path: &str,
) -> Result<(bool, Duration), BoxError> {
    sender.ready().await?;
    let mut req = Request::get(path).body(Empty::new())?;
    for (n, v) in target.headers.iter() {
        req.headers_mut().insert(n.clone(), v.clone());
    }
    let started = Instant::now();
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    Ok((ok, started.elapsed()))
}

/// `conns` keep-alive connections, round-robin over `paths`, until `secs` or `max_reqs`.
async fn drive(
    target: &Target,
    paths: Arc<Vec<String>>,
    conns: usize,
    secs: Duration,
    max_reqs: u64,
) -> Sample {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + secs;
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let (target, paths, issued) = (target.clone(), Arc::clone(&paths), Arc::clone(&issued));
        tasks.push(tokio::spawn(async move {
            let mut s = Sample {
                lat_us: Vec::with_capacity(4096),
                ..Sample::default()
            };
            let Ok(mut sender) = connect(target.addr).await else {
                s.errors += 1;
                return s;
            };
            let mut i = c;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_reqs {
                match call(&mut sender, &target, &paths[i % paths.len()]).await {
                    Ok((ok, lat)) => s.note(ok, lat),
                    Err(_) => {
                        s.errors += 1;
                        break;
                    }
                }
                i += conns;
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all.elapsed = started.elapsed();
    all
}

/// Every path requested once (misses, warming), striped over `conns` keep-alive connections,
/// until done or `limit`.
async fn cover(target: &Target, paths: Arc<Vec<String>>, conns: usize, limit: Duration) -> Sample {
    let started = Instant::now();
    let deadline = started + limit;
    let conns = conns.clamp(1, paths.len().max(1));
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let (target, paths) = (target.clone(), Arc::clone(&paths));
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            let Ok(mut sender) = connect(target.addr).await else {
                s.errors += 1;
                return s;
            };
            for path in paths.iter().skip(c).step_by(conns) {
                if Instant::now() >= deadline {
                    break;
                }
                match call(&mut sender, &target, path).await {
                    Ok((ok, lat)) => s.note(ok, lat),
                    Err(_) => {
                        s.errors += 1;
                        break;
                    }
                }
            }
            s
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all.elapsed = started.elapsed();
    all
}

/// `n` connections opened first, then one request each, released together.
async fn burst(target: &Target, path: &str, n: usize) -> Sample {
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (target, barrier, path) = (target.clone(), Arc::clone(&barrier), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut s = Sample::default();
            let sender = connect(target.addr).await;
            barrier.wait().await;
            let result = match sender {
                Ok(mut sender) => call(&mut sender, &target, &path).await,
                Err(e) => Err(e),
            };
            match result {
                Ok((ok, lat)) => {
                    s.finished.push(Instant::now());
                    s.note(ok, lat);
                }
                Err(_) => s.errors += 1,
            }
            s
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all = Sample::default();
    for t in tasks {
        if let Ok(s) = t.await {
            all.merge(s);
        }
    }
    all.elapsed = started.elapsed();
    all
}

/// The sandbox's `total` counter (API calls that reached "Mono").
async fn upstream_total(sandbox: SocketAddr) -> Result<u64, BoxError> {
    sandbox_count(sandbox, "total").await
}

/// One of the sandbox's counters (`/__sandbox/counts`), read over plain HTTP.
async fn sandbox_count(sandbox: SocketAddr, name: &str) -> Result<u64, BoxError> {
    let target = Target::new(sandbox, &[]);
    let mut sender = connect(sandbox).await?;
    sender.ready().await?;
    let mut req = Request::get("/__sandbox/counts").body(Empty::new())?;
    req.headers_mut().insert(HOST, target.headers[0].1.clone());
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body.to_bytes())?;
    v[name]
        .as_u64()
        .ok_or_else(|| format!("no {name} in /__sandbox/counts").into())
}

/// One row of the table.
struct Row {
    name: &'static str,
    reqs: u64,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    p999_us: u32,
    cpu_us_per_req: Option<f64>,
    upstream: u64,
    bad: u64,
    /// Burst only: last completion minus first completion (how long the fan-out took).
    spread_ms: Option<f64>,
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Where a row reads the calls that reached the sandbox.
enum Counts<'a> {
    /// A sandbox process, over HTTP.
    Remote(SocketAddr),
    /// A sandbox in this process (the TLS one).
    Local(&'a mono_proxy::sandbox::Sandbox),
}

impl Counts<'_> {
    async fn total(&self) -> Result<u64, BoxError> {
        match self {
            Counts::Remote(addr) => upstream_total(*addr).await,
            Counts::Local(sandbox) => Ok(sandbox.count("total")),
        }
    }
}

/// Runs one measurement, recording proxy CPU (when `proxy_pid`) and upstream calls around it.
async fn measure<F>(
    name: &'static str,
    sandbox: SocketAddr,
    proxy_pid: Option<u32>,
    run: F,
) -> Result<Row, BoxError>
where
    F: std::future::Future<Output = Sample>,
{
    measure_with(name, &Counts::Remote(sandbox), proxy_pid, run).await
}

/// [`measure`], with the sandbox's counts read from `counts`.
async fn measure_with<F>(
    name: &'static str,
    counts: &Counts<'_>,
    proxy_pid: Option<u32>,
    run: F,
) -> Result<Row, BoxError>
where
    F: std::future::Future<Output = Sample>,
{
    let up0 = counts.total().await?;
    let cpu0 = proxy_pid.and_then(cpu_ticks);
    let mut s = run.await;
    let cpu1 = proxy_pid.and_then(cpu_ticks);
    let up1 = counts.total().await?;
    s.lat_us.sort_unstable();
    let reqs = s.ok + s.non2xx;
    let cpu_us_per_req = match (cpu0, cpu1) {
        (Some(a), Some(b)) if reqs > 0 => Some((b - a) as f64 / CLK_TCK * 1e6 / reqs as f64),
        _ => None,
    };
    let row = Row {
        name,
        reqs,
        rps: reqs as f64 / s.elapsed.as_secs_f64().max(1e-9),
        p50_us: percentile(&s.lat_us, 0.50),
        p99_us: percentile(&s.lat_us, 0.99),
        p999_us: percentile(&s.lat_us, 0.999),
        cpu_us_per_req,
        upstream: up1 - up0,
        bad: s.non2xx + s.errors,
        spread_ms: match (s.finished.iter().min(), s.finished.iter().max()) {
            (Some(first), Some(last)) => Some((*last - *first).as_secs_f64() * 1000.0),
            _ => None,
        },
    };
    eprintln!(
        "load: {name}: {} req in {:.2}s, {} non-2xx/errors",
        row.reqs,
        s.elapsed.as_secs_f64(),
        row.bad
    );
    Ok(row)
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

fn print_table(rows: &[Row], header: &str) {
    println!("\n{header}\n");
    println!(
        "| {:<28} | {:>9} | {:>9} | {:>8} | {:>8} | {:>9} | {:>12} | {:>9} | {:>6} |",
        "row",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "proxy µs/req",
        "upstream",
        "errors"
    );
    println!(
        "|{:-<30}|{:->11}|{:->11}|{:->10}|{:->10}|{:->11}|{:->14}|{:->11}|{:->8}|",
        "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        let cpu = r
            .cpu_us_per_req
            .map_or_else(|| "-".to_string(), |c| format!("{c:.1}"));
        println!(
            "| {:<28} | {:>9} | {:>9.0} | {:>8.2} | {:>8.2} | {:>9.2} | {:>12} | {:>9} | {:>6} |",
            r.name,
            r.reqs,
            r.rps,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            cpu,
            r.upstream,
            r.bad
        );
    }
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

fn print_ratios(rows: &[Row]) {
    println!();
    if let (Some(d), Some(h)) = (find(rows, DIRECT_BALANCE), find(rows, PROXY_HIT)) {
        println!(
            "hit vs direct: {:.1}x req/s, p50 {:.2} ms vs {:.2} ms ({:.1}x lower), p99 {:.2} ms vs {:.2} ms",
            h.rps / d.rps.max(1e-9),
            ms(h.p50_us),
            ms(d.p50_us),
            f64::from(d.p50_us) / f64::from(h.p50_us.max(1)),
            ms(h.p99_us),
            ms(d.p99_us),
        );
    }
    if let (Some(d), Some(p)) = (find(rows, DIRECT_IDENTITY), find(rows, PROXY_PASSTHROUGH)) {
        println!(
            "passthrough miss overhead: p50 {:+.2} ms, p99 {:+.2} ms, req/s {:.2}x of direct",
            ms(p.p50_us) - ms(d.p50_us),
            ms(p.p99_us) - ms(d.p99_us),
            p.rps / d.rps.max(1e-9),
        );
    }
    if let Some(b) = find(rows, REALTIME_BURST) {
        println!(
            "realtime burst: {} calls -> {} upstream call(s), latency p50 {:.2} ms, p99.9 {:.2} ms, \
             first to last answer {:.2} ms",
            b.reqs,
            b.upstream,
            ms(b.p50_us),
            ms(b.p999_us),
            b.spread_ms.unwrap_or(0.0)
        );
    }
}

const DIRECT_BALANCE: &str = "direct balance";
const PROXY_HIT: &str = "proxy cache hit (balance)";
const DIRECT_IDENTITY: &str = "direct identity";
const PROXY_PASSTHROUGH: &str = "proxy passthrough identity";
const REALTIME_BURST: &str = "proxy realtime burst";

/// Throughput and p99 of each row, side by side, as SVG.
fn draw_chart(path: &Path, rows: &[Row], caption: &str) -> Result<(), Box<dyn Error>> {
    if rows.is_empty() {
        return Err("no rows to draw".into());
    }
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 18))?;
    let (left, right) = root.split_horizontally(600);
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| match r.name {
            DIRECT_BALANCE => "direct balance",
            PROXY_HIT => "proxy hit",
            DIRECT_IDENTITY => "direct identity",
            PROXY_PASSTHROUGH => "proxy passthrough",
            REALTIME_BURST => "realtime burst (one-shot)",
            other => other,
        })
        .collect();
    let panels: [(&DrawingArea<SVGBackend<'_>, _>, &str, Vec<f64>, RGBColor); 2] = [
        (
            &left,
            "throughput (req/s)",
            rows.iter().map(|r| r.rps).collect(),
            RGBColor(52, 101, 164),
        ),
        (
            &right,
            "p99 latency (ms)",
            rows.iter().map(|r| ms(r.p99_us)).collect(),
            RGBColor(204, 102, 0),
        ),
    ];
    for (area, title, values, color) in panels {
        let top = values.iter().copied().fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // A segmented 0..n-1 has exactly n slots.
            .build_cartesian_2d((0..values.len() - 1).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(values.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    labels.get(*i).copied().unwrap_or("").to_string()
                }
                SegmentValue::Last => String::new(),
            })
            .x_label_style(("sans-serif", 11))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(color.filled())
                .margin(18)
                .data(values.iter().enumerate().map(|(i, v)| (i, *v))),
        )?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            let text = if *v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            };
            Text::new(
                text,
                (SegmentValue::CenterOf(i), *v + top * 0.01),
                ("sans-serif", 12)
                    .into_font()
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

fn machine() -> String {
    format!(
        "{}; load generator, proxy and sandbox share them",
        support::machine()
    )
}

fn main() {
    support::bench_main("load", run);
}

fn run() -> Result<(), BoxError> {
    let latency_ms = env_u64("LOAD_LATENCY_MS", 50);
    let secs = Duration::from_secs(env_u64("LOAD_SECS", 5).clamp(1, 20));
    let conns = env_u64("LOAD_CONNS", 64).clamp(1, 1024) as usize;
    let ids = env_u64("LOAD_IDS", 100).clamp(1, 1000) as usize;
    let burst_n = env_u64("LOAD_BURST", 200).clamp(1, 1000) as usize;
    let max_reqs = env_u64("LOAD_MAX_REQS", 1_000_000);

    let mut children = Children(Vec::new());
    let sandbox = spawn_sandbox(&mut children, "sandbox", latency_ms)?;
    let (proxy, proxy_pid, _config) = spawn_proxy(&mut children, "proxy", sandbox, "")?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(proxy_pid);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let direct = Target::new(sandbox, &[("mono-sec-key", SANDBOX_KEY)]);
        let via = Target::new(proxy, &[]);
        let id = |k: usize| format!("666b166ce06b{k:03}");
        let balance: Arc<Vec<String>> = Arc::new(
            (0..ids)
                .map(|k| format!("/v2/accounts/{}/balance", id(k)))
                .collect(),
        );
        let identity: Arc<Vec<String>> = Arc::new(
            (0..ids)
                .map(|k| format!("/v2/accounts/{}/identity", id(k)))
                .collect(),
        );
        let mut rows = Vec::new();

        rows.push(
            measure(DIRECT_BALANCE, sandbox, None, async {
                drive(&direct, Arc::clone(&balance), conns, secs, max_reqs).await
            })
            .await?,
        );

        // Warm every id (one request per id, all at once), then check a second pass is all hits.
        let warm = drive(&via, Arc::clone(&balance), ids, secs, ids as u64).await;
        let before = upstream_total(sandbox).await?;
        let verify = drive(&via, Arc::clone(&balance), ids, secs, ids as u64).await;
        let reached = upstream_total(sandbox).await? - before;
        eprintln!(
            "load: warmed {} ids ({} ok); verify pass: {} ok, {} reached upstream",
            ids, warm.ok, verify.ok, reached
        );

        rows.push(
            measure(PROXY_HIT, sandbox, Some(proxy_pid), async {
                drive(&via, Arc::clone(&balance), conns, secs, max_reqs).await
            })
            .await?,
        );
        rows.push(
            measure(DIRECT_IDENTITY, sandbox, None, async {
                drive(&direct, Arc::clone(&identity), conns, secs, max_reqs).await
            })
            .await?,
        );
        rows.push(
            measure(PROXY_PASSTHROUGH, sandbox, Some(proxy_pid), async {
                drive(&via, Arc::clone(&identity), conns, secs, max_reqs).await
            })
            .await?,
        );

        let fresh = format!(
            "burst{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        let realtime = Target::new(proxy, &[("x-realtime", "true")]);
        let path = format!("/v2/accounts/{fresh}/balance");
        rows.push(
            measure(REALTIME_BURST, sandbox, Some(proxy_pid), async {
                burst(&realtime, &path, burst_n).await
            })
            .await?,
        );
        Ok::<_, BoxError>(rows)
    })?;
    let loaded_rss = rss_kib(proxy_pid);
    drop(rt);
    drop(children);

    let header = format!(
        "mono-proxy load bench: {} | sandbox latency {latency_ms} ms | {conns} keep-alive HTTP/1 \
         connections, {:?} or {max_reqs} requests per row, {ids} ids round-robin | burst {burst_n} \
         concurrent realtime calls, one fresh account | proxy RSS idle {} KiB, after load {} KiB",
        machine(),
        secs,
        idle_rss.map_or("-".into(), |v| v.to_string()),
        loaded_rss.map_or("-".into(), |v| v.to_string()),
    );
    print_table(&rows, &header);
    print_ratios(&rows);

    let svg = target_dir().join("load-bench.svg");
    if let Some(dir) = svg.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let caption = format!(
        "mono-proxy load bench ({conns} conns, sandbox latency {latency_ms} ms, {} cores)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    draw_chart(&svg, &rows, &caption).map_err(|e| format!("drawing {}: {e}", svg.display()))?;
    println!("chart: {}", svg.display());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let levels = scale::run(&rt, secs, conns, max_reqs)?;
    scale::print(&levels);
    let tls = tls::run(&rt, secs, conns, max_reqs)?;
    tls::print(&tls);
    Ok(())
}
