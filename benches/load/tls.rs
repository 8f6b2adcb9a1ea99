//! The upstream over TLS: passthrough and misses against a sandbox speaking HTTPS (h2 by ALPN),
//! beside the same rows over plain HTTP, and how many TLS handshakes the misses cost. Both
//! sandboxes run in this process (0 ms) so their counters are read directly.

use super::*;
use mono_proxy::sandbox::{self_signed_cert, RunningSandbox, Sandbox, SandboxConfig};

const PLAIN_PASS: &str = "passthrough, plain upstream";
const TLS_PASS: &str = "passthrough, TLS upstream";
const PLAIN_MISS: &str = "misses, plain upstream";
const TLS_MISS: &str = "misses, TLS upstream";

/// What the TLS section measured.
pub struct Report {
    rows: Vec<Row>,
    /// TLS handshakes the sandbox completed during the misses row, and since the proxy started.
    handshakes: (u64, u64),
    /// TCP connections the TLS and the plain sandbox accepted since their proxies started.
    connections: (u64, u64),
}

/// Starts both sandboxes and a proxy in front of each, then runs the four rows.
pub fn run(
    rt: &tokio::runtime::Runtime,
    secs: Duration,
    conns: usize,
    max_reqs: u64,
) -> Result<Report, BoxError> {
    let misses = env_u64("LOAD_TLS_MISSES", 100_000).clamp(1, 1_000_000) as usize;
    let config = || SandboxConfig {
        secret_key: SANDBOX_KEY.into(),
        ..SandboxConfig::default()
    };
    let (cert, key) = self_signed_cert(&["localhost", "127.0.0.1"]);
    let (plain, tls): (RunningSandbox, RunningSandbox) = rt.block_on(async {
        Ok::<_, BoxError>((
            Sandbox::new(config()).spawn().await?,
            Sandbox::new(config()).spawn_tls(&cert, &key).await?,
        ))
    })?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("sandbox.pem");
    std::fs::write(&ca, &cert)?;
    let mut children = Children(Vec::new());
    let (plain_proxy, plain_pid, _plain_config) =
        spawn_proxy(&mut children, "plain proxy", plain.addr, "")?;
    let upstream = format!(
        "base_url = \"{}\"\nca_file = \"{}\"\n",
        tls.base_url(true),
        ca.display()
    );
    let (tls_proxy, tls_pid, _tls_config) =
        spawn_proxy(&mut children, "tls proxy", tls.addr, &upstream)?;
    let identity: Arc<Vec<String>> = Arc::new(
        (0..100)
            .map(|k| format!("/v2/accounts/666b166ce06b{k:03}/identity"))
            .collect(),
    );
    let miss_paths = |tag: &str| -> Arc<Vec<String>> {
        Arc::new(
            (0..misses)
                .map(|k| format!("/v2/accounts/{tag}{k:09}/balance"))
                .collect(),
        )
    };
    let sides = [
        (
            plain_proxy,
            plain_pid,
            &plain.sandbox,
            PLAIN_PASS,
            PLAIN_MISS,
            "plain",
        ),
        (tls_proxy, tls_pid, &tls.sandbox, TLS_PASS, TLS_MISS, "tls"),
    ];
    let mut rows = Vec::new();
    let mut before_misses = 0;
    rt.block_on(async {
        for (addr, pid, sandbox, pass, _, _) in sides {
            let via = Target::new(addr, &[]);
            let ids = Arc::clone(&identity);
            rows.push(
                measure_with(pass, &Counts::Local(sandbox), Some(pid), async {
                    drive(&via, ids, conns, secs, max_reqs).await
                })
                .await?,
            );
        }
        before_misses = tls.sandbox.count("tls_handshakes");
        for (addr, pid, sandbox, _, miss, tag) in sides {
            let via = Target::new(addr, &[]);
            let paths = miss_paths(tag);
            rows.push(
                measure_with(miss, &Counts::Local(sandbox), Some(pid), async {
                    cover(&via, paths, conns, Duration::from_secs(120)).await
                })
                .await?,
            );
        }
        Ok::<_, BoxError>(())
    })?;
    let handshakes = tls.sandbox.count("tls_handshakes");
    let report = Report {
        rows,
        handshakes: (handshakes - before_misses, handshakes),
        connections: (
            tls.sandbox.count("connections"),
            plain.sandbox.count("connections"),
        ),
    };
    drop(children);
    rt.block_on(async {
        let _ = plain.stop().await;
        let _ = tls.stop().await;
    });
    Ok(report)
}

/// The TLS table, its handshake count and its CPU ratios.
pub fn print(report: &Report) {
    print_table(
        &report.rows,
        "upstream over TLS (h2 by ALPN) beside plain HTTP/1.1: sandboxes in the bench process, 0 ms",
    );
    let (during, total) = report.handshakes;
    if let Some(m) = find(&report.rows, TLS_MISS) {
        println!(
            "\nTLS misses: {} reached the sandbox with {during} TLS handshake(s) during the row, \
             {total} since the proxy started, over {} TCP connection(s) (plain side: {})",
            m.upstream, report.connections.0, report.connections.1
        );
    }
    for (tls, plain) in [(TLS_PASS, PLAIN_PASS), (TLS_MISS, PLAIN_MISS)] {
        if let (Some(t), Some(p)) = (find(&report.rows, tls), find(&report.rows, plain)) {
            if let (Some(tc), Some(pc)) = (t.cpu_us_per_req, p.cpu_us_per_req) {
                println!(
                    "{tls}: {tc:.1} proxy µs/req vs {pc:.1} plain ({:.2}x), {:.0} vs {:.0} req/s",
                    tc / pc.max(1e-9),
                    t.rps,
                    p.rps
                );
            }
        }
    }
}
