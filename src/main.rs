//! The `mono-proxy` binary: parse the CLI, load config, start logging, run, map failure to an exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mono_proxy::config::{Config, Origin, ProcessEnv};
use mono_proxy::sandbox::{Sandbox, SandboxConfig};
use mono_proxy::telemetry::Exporter;

/// jemalloc keeps RSS per cached entry lowest among the allocators measured (glibc malloc,
/// mimalloc, jemalloc) and returns memory freed by request buffers well (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "mono-proxy",
    version,
    about = "A local caching reverse proxy for Mono's open-banking API"
)]
struct Cli {
    /// Config file (default: MONO_PROXY_CONFIG, else ./proxy.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override `listen` from the config.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print every problem; exit non-zero if any.
    Check {
        /// Also print the effective config (defaults and environment applied, secrets
        /// redacted), like `nginx -T`.
        #[arg(long)]
        print: bool,
    },
    /// Probe the admin listener the config names: `/healthz` (or `/readyz` with `--ready`);
    /// exit 0 when it answers 200, else 1. For container HEALTHCHECKs and exec probes.
    Healthcheck {
        /// Probe `/readyz` (ready for traffic) instead of `/healthz` (alive).
        #[arg(long)]
        ready: bool,
    },
    /// Run the Mono simulator alone.
    Sandbox(SandboxArgs),
    /// Run the proxy and the sandbox together with a built-in config, and print commands to try.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Args)]
struct SandboxArgs {
    /// Listen address (loopback recommended).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// URL the sandbox POSTs webhooks to when jobs end.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Sent as `mono-webhook-secret` with each webhook.
    #[arg(long, env = "MONO_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// How long a realtime job runs, e.g. "2s".
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    job_delay: Duration,
    /// Mono's realtime window.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Latency added to every API response, e.g. "50ms".
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// The only mono-sec-key accepted.
    #[arg(long, env = "MONO_SANDBOX_KEY", default_value = mono_proxy::sandbox::DEFAULT_SECRET_KEY, hide_env_values = true)]
    key: String,
    /// Every finished sync changes the balance (so x-has-new-data turns true).
    #[arg(long)]
    sync_changes_data: bool,
    /// Serve HTTPS with a fresh self-signed certificate, written (PEM) to this path.
    #[arg(long, value_name = "CERT_PATH")]
    tls_cert_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mono-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check { print }) => check(cli.config, print),
        Some(Command::Healthcheck { ready }) => healthcheck(cli.config, ready),
        Some(Command::Sandbox(args)) => runtime.block_on(sandbox(args)),
        Some(Command::Demo { listen }) => {
            init_plain_logging();
            report(runtime.block_on(mono_proxy::demo::run(listen)))
        }
        None => runtime.block_on(run(cli.config, cli.listen)),
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, mono_proxy::config::ConfigErrors> {
    let config = Config::load(path.as_deref(), &ProcessEnv)?;
    config.require_secret()?;
    Ok(config)
}

fn check(path: Option<PathBuf>, print: bool) -> ExitCode {
    match load(path) {
        Ok(c) if print => {
            // Only the TOML on stdout, so it can be piped; the summary goes to stderr.
            eprintln!(
                "config ok: listen {}, upstream {}",
                c.listen, c.upstream.base_url
            );
            print!("{}", mono_proxy::config::to_toml(&c));
            ExitCode::SUCCESS
        }
        Ok(c) => {
            println!(
                "config ok: listen {}, upstream {}",
                c.listen, c.upstream.base_url
            );
            println!("store: {}", c.store.describe());
            if c.cache.shared {
                println!(
                    "cache: shared tier in redis, entries up to {}",
                    bytesize::ByteSize(c.cache.shared_max_entry)
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(2)
        }
    }
}

/// One probe of the admin listener, printing one line. It needs no secret: a probe must not
/// depend on the key being readable, only on the proxy answering.
fn healthcheck(path: Option<PathBuf>, ready: bool) -> ExitCode {
    let route = if ready { "/readyz" } else { "/healthz" };
    let config = match Config::load(path.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            println!("unhealthy: cannot read the config: {}", e.0.join("; "));
            return ExitCode::FAILURE;
        }
    };
    match mono_proxy::healthcheck::probe(config.admin_listen, route, HEALTHCHECK_TIMEOUT) {
        Ok(200) => {
            println!("healthy: {route} answered 200 on {}", config.admin_listen);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!(
                "unhealthy: {route} answered {status} on {}",
                config.admin_listen
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {route} on {}: {e}", config.admin_listen);
            ExitCode::FAILURE
        }
    }
}

/// A probe that takes longer than this counts as failed (container runtimes allow ~30 s).
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

async fn run(path: Option<PathBuf>, listen: Option<SocketAddr>) -> ExitCode {
    let origin = Origin::resolve(path.as_deref(), listen, &ProcessEnv);
    let config = match origin.load(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprint!("mono-proxy: refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    let (exporter, tracer) = match config.telemetry.otlp_endpoint {
        None => (None, None),
        Some(_) => match Exporter::new(&config.telemetry) {
            Ok((exporter, tracer)) => (Some(exporter), Some(tracer)),
            Err(e) => {
                eprintln!("mono-proxy: refusing to start: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if let Err(e) = mono_proxy::logging::init(&config.log, tracer) {
        eprintln!("mono-proxy: {e}");
        return ExitCode::from(2);
    }
    if let Some(endpoint) = &config.telemetry.otlp_endpoint {
        let endpoint = mono_proxy::config::redact_url(endpoint);
        tracing::info!(endpoint = %endpoint, sampling_ratio = config.telemetry.sampling_ratio, "exporting spans over OTLP/HTTP");
    }
    // Install the SIGTERM/SIGINT handlers (on the future's first poll) before binding, so that
    // once the port answers a signal always drains instead of killing the process outright.
    let terminated = mono_proxy::lifecycle::terminated();
    tokio::pin!(terminated);
    let signalled = tokio::select! {
        biased;
        _ = &mut terminated => true,
        _ = std::future::ready(()) => false,
    };
    if signalled {
        return ExitCode::SUCCESS;
    }
    let running = match mono_proxy::app::bind_and_start(config, Some(origin)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    terminated.await;
    tracing::info!("shutting down: not ready, draining in-flight requests");
    let stopped = running.stop().await;
    if let Some(exporter) = exporter {
        // Sends the last spans; it waits on the export, which runs on this runtime.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    report(stopped)
}

async fn sandbox(args: SandboxArgs) -> ExitCode {
    init_plain_logging();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "mono-proxy sandbox: warning: listening on {} (not loopback)",
            args.listen
        );
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mono-proxy sandbox: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let sandbox = Sandbox::new(SandboxConfig {
        secret_key: args.key,
        job_delay: args.job_delay,
        window: args.window,
        latency: args.latency,
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        sync_changes_data: args.sync_changes_data,
        extra_keys: Vec::new(),
    });
    let shutdown = mono_proxy::lifecycle::terminated();
    let result = match args.tls_cert_out {
        Some(path) => {
            let (cert, key) = mono_proxy::sandbox::self_signed_cert(&["localhost", "127.0.0.1"]);
            if let Err(e) = std::fs::write(&path, &cert) {
                eprintln!("mono-proxy sandbox: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!(
                "sandbox: https://{} (certificate in {})",
                args.listen,
                path.display()
            );
            sandbox.serve_tls(listener, &cert, &key, shutdown).await
        }
        None => {
            println!("sandbox: http://{}", args.listen);
            sandbox.serve(listener, shutdown).await
        }
    };
    report(result)
}

fn init_plain_logging() {
    let cfg = mono_proxy::config::LogConfig {
        format: mono_proxy::config::LogFormat::Text,
        filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    };
    if let Err(e) = mono_proxy::logging::init(&cfg, None) {
        eprintln!("mono-proxy: {e}");
    }
}

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mono-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
