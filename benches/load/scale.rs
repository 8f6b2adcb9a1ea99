//! Hits over many cached accounts: the same load over 100, 10,000 and 100,000 warmed balances
//! (`LOAD_SCALE`), against a 0 ms sandbox so warming is quick, with the proxy's RSS per balance.

use super::*;

/// One level of the scale table.
pub struct Level {
    accounts: usize,
    row: Row,
    /// Proxy RSS once the level was warmed.
    rss_kib: Option<u64>,
}

/// The account levels from `LOAD_SCALE` (comma-separated), ascending.
fn levels() -> Vec<usize> {
    let mut levels: Vec<usize> = std::env::var("LOAD_SCALE")
        .unwrap_or_else(|_| "100,10000,100000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|n| (1..=1_000_000).contains(n))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    levels
}

/// Warms each level in turn (only the accounts it adds) and measures hits over all of them.
pub fn run(
    rt: &tokio::runtime::Runtime,
    secs: Duration,
    conns: usize,
    max_reqs: u64,
) -> Result<Vec<Level>, BoxError> {
    let levels = levels();
    let Some(&most) = levels.last() else {
        return Ok(Vec::new());
    };
    let mut children = Children(Vec::new());
    let sandbox = spawn_sandbox(&mut children, "scale sandbox", 0)?;
    let (proxy, pid, _config) = spawn_proxy(&mut children, "scale proxy", sandbox, "")?;
    let via = Target::new(proxy, &[]);
    let paths: Vec<String> = (0..most)
        .map(|k| format!("/v2/accounts/666b16{k:09}/balance"))
        .collect();
    let mut out = Vec::with_capacity(levels.len());
    let mut warmed = 0;
    for n in levels {
        rt.block_on(async {
            let fresh = Arc::new(paths[warmed..n].to_vec());
            let warm = cover(&via, fresh, 256, Duration::from_secs(120)).await;
            eprintln!(
                "load: scale: warmed {} more accounts ({} ok) in {:.1}s",
                n - warmed,
                warm.ok,
                warm.elapsed.as_secs_f64()
            );
        });
        warmed = n;
        std::thread::sleep(Duration::from_millis(300));
        let rss_kib = rss_kib(pid);
        let name: &'static str = Box::leak(format!("hits over {n} accounts").into_boxed_str());
        let over = Arc::new(paths[..n].to_vec());
        let row = rt.block_on(measure(name, sandbox, Some(pid), async {
            drive(&via, over, conns, secs, max_reqs).await
        }))?;
        out.push(Level {
            accounts: n,
            row,
            rss_kib,
        });
    }
    Ok(out)
}

/// The scale table: req/s against the smallest level, and RSS per balance the levels added.
pub fn print(levels: &[Level]) {
    let Some(first) = levels.first() else {
        return;
    };
    println!("\nhits at scale (0 ms sandbox, every account warmed first; RSS after warming)\n");
    println!(
        "| {:>8} | {:>9} | {:>7} | {:>8} | {:>8} | {:>12} | {:>8} | {:>13} | {:>8} |",
        "accounts",
        "req/s",
        "vs first",
        "p50 ms",
        "p99 ms",
        "proxy µs/req",
        "RSS MiB",
        "B per balance",
        "upstream"
    );
    println!(
        "|{:->10}|{:->11}|{:->10}|{:->10}|{:->10}|{:->14}|{:->10}|{:->15}|{:->10}|",
        "", "", "", "", "", "", "", "", ""
    );
    for l in levels {
        let per_balance = match (first.rss_kib, l.rss_kib) {
            (Some(a), Some(b)) if l.accounts > first.accounts => format!(
                "{:.0}",
                (b.saturating_sub(a) * 1024) as f64 / (l.accounts - first.accounts) as f64
            ),
            _ => "-".into(),
        };
        println!(
            "| {:>8} | {:>9.0} | {:>7.2}x | {:>8.2} | {:>8.2} | {:>12} | {:>8} | {:>13} | {:>8} |",
            l.accounts,
            l.row.rps,
            l.row.rps / first.row.rps.max(1e-9),
            ms(l.row.p50_us),
            ms(l.row.p99_us),
            l.row
                .cpu_us_per_req
                .map_or_else(|| "-".to_string(), |c| format!("{c:.1}")),
            l.rss_kib
                .map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0)),
            per_balance,
            l.row.upstream
        );
    }
}
