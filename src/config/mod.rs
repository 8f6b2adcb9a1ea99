//! Configuration: `proxy.toml` plus environment overrides, loaded, parsed and validated once.
//!
//! Every problem is collected and reported together, unknown keys included, so an operator fixes
//! a config in one pass instead of one restart per typo.
//!
//! This file holds the shape of the config and its entry points; `sections` builds each section
//! from its table, `fields` reads typed values out of a table, `secret` keeps secrets unprinted.

mod admin;
mod fields;
mod limits;
mod origin;
mod routes;
mod secret;
mod sections;
mod show;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Serialize;
use toml::Table;

pub use admin::AdminConfig;
pub use limits::{ClientLimits, Quota, QuotaPeriod, RateLimit};
pub use origin::Origin;
pub use routes::{check_template, RouteConfig};
pub use secret::{redact_url, url_password, Secret, SecretError, SecretSource};
pub use show::{to_json, to_toml};

/// Default proxy listen address: loopback only, as a sidecar.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listen address (`/healthz`, `/readyz`, `/metrics`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default public base URL, used to rewrite pagination links.
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://127.0.0.1:8080";
/// Mono's API origin.
pub const DEFAULT_BASE_URL: &str = "https://api.withmono.com";
/// Default upstream response timeout for ordinary calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Mono may take ~30 s on a realtime call, so its timeout sits above that.
pub const DEFAULT_REALTIME_TIMEOUT: Duration = Duration::from_secs(45);
/// Mono's realtime rule: one realtime session per account per 5 minutes.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// How long an expired cache entry may still be served when the upstream fails.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Memory bound of the response cache.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Largest single upstream body the proxy buffers for the cache.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
/// Time allowed for a client to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections idle this long are closed (clients' pools reconnect).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Cap on concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header block accepted (HTTP/1 read buffer).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Largest client request body forwarded.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 10 * 1024 * 1024;
/// Idle keep-alive time of pooled upstream connections.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle pooled upstream connections kept per host.
pub const DEFAULT_POOL_MAX_IDLE: u64 = 64;
/// First delay between job polls (then backs off).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// A processing job is polled for at most this long.
pub const DEFAULT_POLL_DEADLINE: Duration = Duration::from_secs(600);
/// Jobs polled at once.
pub const DEFAULT_POLL_CONCURRENCY: u64 = 32;
/// Default webhook path.
pub const DEFAULT_WEBHOOK_PATH: &str = "/webhooks/mono";
/// Per-target relay timeout.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhook body limit.
pub const DEFAULT_WEBHOOK_MAX_BODY: u64 = 1024 * 1024;
/// Memory for remembering webhook deliveries (event ids and per-target progress), in bytes.
pub const DEFAULT_WEBHOOK_MEMORY: u64 = 16 * 1024 * 1024;
/// Redis URL used when the backend is redis and none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `service.name` of exported spans.
pub const DEFAULT_SERVICE_NAME: &str = "mono-proxy";
/// How often finished spans are exported.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Time one span export may take.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Key prefix in the shared store.
pub const DEFAULT_STORE_PREFIX: &str = "mono-proxy";
/// Redis operations give up after this long: Redis is a local hop, not worth waiting on.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
/// Cooldown after a Mono 429 that names no `Retry-After`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest cooldown a 429's `Retry-After` may impose.
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(300);
/// Largest body kept in the shared (Redis) cache tier.
pub const DEFAULT_SHARED_MAX_ENTRY: u64 = 1024 * 1024;

/// What to do with a `mono-sec-key` an app sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKeyPolicy {
    /// Remove it and inject the configured key (default).
    Strip,
    /// Refuse the request with 400.
    Reject,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which store holds the realtime window and job records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In process (one replica).
    Memory,
    /// Shared between replicas through Redis.
    Redis,
}

/// The whole validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Who may use the admin listener.
    pub admin: AdminConfig,
    /// The proxy's URL as apps reach it, without a trailing slash.
    pub public_base_url: String,
    /// Client-facing server limits.
    pub server: ServerConfig,
    /// The Mono origin and how to reach it.
    pub upstream: UpstreamConfig,
    /// Realtime window settings.
    pub realtime: RealtimeConfig,
    /// Response cache settings.
    pub cache: CacheConfig,
    /// Job poller settings.
    pub jobs: JobsConfig,
    /// Webhook receiver and relay settings.
    pub webhook: WebhookConfig,
    /// Shared-state settings.
    pub store: StoreConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Client tokens; empty means any local client is trusted.
    pub clients: Vec<ClientConfig>,
    /// `[[route]]` tables, before the built-in routes.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// Client-facing server limits.
#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    /// Time allowed to send request headers.
    #[serde(serialize_with = "show::duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request for this long (none in flight) is closed.
    #[serde(serialize_with = "show::duration")]
    pub idle_timeout: Duration,
    /// Concurrent connections accepted; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time in-flight requests get after SIGTERM.
    #[serde(serialize_with = "show::duration")]
    pub drain_timeout: Duration,
    /// Largest request header block.
    pub max_header_bytes: usize,
    /// Largest request body forwarded.
    pub max_request_body: usize,
}

/// The Mono origin and how to reach it.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Scheme + authority of the upstream, e.g. `https://api.withmono.com`.
    #[serde(serialize_with = "show::uri")]
    pub base_url: Uri,
    /// Where the secret key comes from.
    pub secret_key: SecretSource,
    /// Response timeout of ordinary calls.
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
    /// Connect timeout (TCP + TLS).
    #[serde(serialize_with = "show::duration")]
    pub connect_timeout: Duration,
    /// Response timeout of realtime calls.
    #[serde(serialize_with = "show::duration")]
    pub realtime_timeout: Duration,
    /// Extra trust roots (PEM).
    #[serde(serialize_with = "show::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// Authorities accepted in absolute-form targets (lowercase `host` or `host:port`).
    pub accept_hosts: Vec<String>,
    /// Idle time of pooled connections.
    #[serde(serialize_with = "show::duration")]
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections per host.
    pub pool_max_idle_per_host: usize,
    /// What to do with an app's own `mono-sec-key`.
    pub client_key: ClientKeyPolicy,
    /// Largest upstream body buffered for the cache.
    pub max_response_bytes: usize,
    /// After a Mono 429 on a route, calls for that tenant, route and account are answered 429
    /// locally for this long when Mono gives no `Retry-After`.
    #[serde(serialize_with = "show::duration")]
    pub cooldown: Duration,
    /// The longest cooldown a `Retry-After` may impose.
    #[serde(serialize_with = "show::duration")]
    pub max_cooldown: Duration,
}

/// Realtime window settings.
#[derive(Debug, Clone, Serialize)]
pub struct RealtimeConfig {
    /// Mono's realtime window per account and endpoint.
    #[serde(serialize_with = "show::duration")]
    pub window: Duration,
    /// Estimated cost of one realtime call, to report savings.
    pub cost_per_call: Option<f64>,
    /// Longest hold a Mono 429's `Retry-After` may impose (default: the window), so a hostile
    /// or broken value cannot block an account's refreshes for a year.
    #[serde(serialize_with = "show::duration")]
    pub max_retry_after: Duration,
}

/// Response cache settings.
#[derive(Debug, Clone, Serialize)]
pub struct CacheConfig {
    /// Freshness lifetime of a cached response.
    #[serde(serialize_with = "show::duration")]
    pub ttl: Duration,
    /// How long past `ttl` an entry may be served when the upstream fails.
    #[serde(serialize_with = "show::duration")]
    pub max_stale: Duration,
    /// Memory bound in bytes.
    pub max_bytes: u64,
    /// Fetch the balance once when a sync finishes so the next read is a hit.
    pub refresh_ahead: bool,
    /// Keep bodies in Redis too (the fleet's shared tier), behind the in-process cache.
    pub shared: bool,
    /// Bodies larger than this stay out of the shared tier.
    pub shared_max_entry: u64,
    /// Honour the app's own `Cache-Control` / `Pragma` (`no-cache`, `no-store`, `max-age`,
    /// `only-if-cached`); off, every app gets the cache as configured.
    pub request_directives: bool,
}

/// Job poller settings.
#[derive(Debug, Clone, Serialize)]
pub struct JobsConfig {
    /// Poll processing jobs when no webhook tells us first.
    pub poll: bool,
    /// First delay between polls.
    #[serde(serialize_with = "show::duration")]
    pub poll_interval: Duration,
    /// Give up polling a job after this long.
    #[serde(serialize_with = "show::duration")]
    pub poll_deadline: Duration,
    /// Jobs polled at once.
    pub poll_concurrency: usize,
}

/// Webhook receiver and relay settings.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookConfig {
    /// Path Mono delivers to.
    pub path: String,
    /// Where the webhook secret comes from.
    pub secret: SecretSource,
    /// Targets the webhook is relayed to.
    #[serde(serialize_with = "show::uris")]
    pub forward_to: Vec<Uri>,
    /// Per-target relay timeout.
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
    /// Body limit.
    pub max_body: usize,
    /// Bytes for remembering deliveries (idempotence across Mono's retries); the oldest go first.
    pub memory: u64,
}

/// Shared-state settings.
#[derive(Clone, Serialize)]
pub struct StoreConfig {
    /// Memory or Redis.
    pub backend: Backend,
    /// Redis URL.
    #[serde(serialize_with = "show::url")]
    pub redis_url: String,
    /// Key prefix.
    pub prefix: String,
    /// Timeout of one Redis operation.
    #[serde(serialize_with = "show::duration")]
    pub timeout: Duration,
    /// Serve from local state when Redis is down (true) or answer 503 (false).
    pub fail_open: bool,
    /// Extra trusted CA certificates (PEM) for `rediss://`; replaces the built-in web roots.
    #[serde(serialize_with = "show::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(serialize_with = "show::opt_path")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(serialize_with = "show::opt_path")]
    pub client_key: Option<PathBuf>,
    /// The Redis password when not in the URL: `password_file` or `MONO_PROXY_REDIS_PASSWORD`.
    pub password: SecretSource,
    /// Redis Cluster seed nodes; when set, `redis_url` is not used.
    #[serde(serialize_with = "show::urls")]
    pub cluster_nodes: Vec<String>,
    /// Sentinel addresses; when set, the master named `sentinel_master` is followed.
    #[serde(serialize_with = "show::urls")]
    pub sentinels: Vec<String>,
    /// The master name the sentinels monitor.
    pub sentinel_master: Option<String>,
}

/// How the proxy reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Topology {
    /// One server (or a managed endpoint that looks like one).
    Single,
    /// Redis Cluster, from seed nodes.
    Cluster,
    /// A master found through Sentinel.
    Sentinel,
}

impl StoreConfig {
    /// Which form of Redis the config names.
    pub fn topology(&self) -> Topology {
        if !self.cluster_nodes.is_empty() {
            Topology::Cluster
        } else if !self.sentinels.is_empty() {
            Topology::Sentinel
        } else {
            Topology::Single
        }
    }

    /// The data-node URLs this config connects to (the sentinels' own for Sentinel).
    pub fn urls(&self) -> Vec<&str> {
        match self.topology() {
            Topology::Single => vec![self.redis_url.as_str()],
            Topology::Cluster => self.cluster_nodes.iter().map(String::as_str).collect(),
            Topology::Sentinel => self.sentinels.iter().map(String::as_str).collect(),
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(&self) -> bool {
        self.urls().iter().any(|u| u.starts_with("rediss://"))
    }

    /// One line saying what the store connects to, passwords redacted (for `check` and logs).
    pub fn describe(&self) -> String {
        if self.backend == Backend::Memory {
            return "memory (this process only)".to_string();
        }
        let urls: Vec<String> = self.urls().iter().map(|u| redact_url(u)).collect();
        let mut line = match self.topology() {
            Topology::Single => format!("redis {}", urls.join(", ")),
            Topology::Cluster => format!("redis cluster, seeds {}", urls.join(", ")),
            Topology::Sentinel => format!(
                "redis sentinel, master {:?} via {}",
                self.sentinel_master.as_deref().unwrap_or_default(),
                urls.join(", ")
            ),
        };
        if self.tls() {
            match &self.ca_file {
                Some(ca) => line.push_str(&format!("; TLS, CA {}", ca.display())),
                None => line.push_str("; TLS, web PKI roots"),
            }
            if let Some(cert) = &self.client_cert {
                line.push_str(&format!(", client certificate {}", cert.display()));
            }
        }
        match &self.password {
            SecretSource::File(p) => {
                line.push_str(&format!("; password from {}", p.display()));
            }
            SecretSource::Value(_) => line.push_str("; password from MONO_PROXY_REDIS_PASSWORD"),
            SecretSource::None => {}
        }
        line.push_str(&format!("; prefix {:?}", self.prefix));
        line
    }
}

// By hand: the Redis URL may carry a password, and `Debug` output ends up in logs.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("password", &self.password)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("sentinel_master", &self.sentinel_master)
            .finish()
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// Text or JSON.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub filter: String,
}

/// Trace export (OpenTelemetry over OTLP/HTTP); off unless an endpoint is set.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    #[serde(serialize_with = "show::opt_url")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled (0–1); a caller's sampled flag is followed.
    pub sampling_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// How often finished spans are sent.
    #[serde(serialize_with = "show::duration")]
    pub export_interval: Duration,
    /// Time one export may take.
    #[serde(serialize_with = "show::duration")]
    pub export_timeout: Duration,
}

/// One app allowed to use the proxy when it listens beyond loopback.
#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// The token the app presents.
    pub token: SecretSource,
    /// A Mono secret key of its own (a separate tenant); the default key when absent.
    pub secret_key: SecretSource,
    /// With its own key, the webhook secret its Mono app sends.
    pub webhook_secret: SecretSource,
    /// With its own key, where its webhooks are relayed.
    #[serde(serialize_with = "show::uris")]
    pub forward_to: Vec<Uri>,
    /// Its rate, concurrency and billable-call limits.
    pub limits: ClientLimits,
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where environment values come from: the process, or a map in tests.
pub trait Env {
    /// The value of `name`, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl Env for Vec<(String, String)> {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

/// The config file to use: `--config`, else `MONO_PROXY_CONFIG`, else `proxy.toml` if present.
pub fn config_path(flag: Option<&Path>, env: &dyn Env) -> Option<(PathBuf, bool)> {
    if let Some(p) = flag {
        return Some((p.to_path_buf(), true));
    }
    if let Some(p) = env.var("MONO_PROXY_CONFIG") {
        return Some((PathBuf::from(p), true));
    }
    let default = PathBuf::from("proxy.toml");
    default.exists().then_some((default, false))
}

/// A TOML syntax error by line and column, without the source line `Display` quotes: the line
/// may hold a secret (a token, a URL with a password) and problems are logged and answered.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

impl Config {
    /// Loads, parses and validates the config named by `flag` / the environment.
    pub fn load(flag: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let text = match config_path(flag, env) {
            Some((path, _)) => std::fs::read_to_string(&path)
                .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?,
            None => String::new(),
        };
        Config::parse(&text, env)
    }

    /// Parses and validates config text, applying environment overrides.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let root: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![toml_problem(text, &e)]))?;
        let mut errors = Vec::new();
        let config = sections::build_config(&root, env, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Like [`Config::parse`], and also requires the secret key to be readable (to run).
    pub fn parse_runnable(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let config = Config::parse(text, env)?;
        config.require_secret()?;
        Ok(config)
    }

    /// Fails with a clear message when no secret key can be read.
    pub fn require_secret(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        match self.upstream.secret_key.read() {
            Ok(Some(_)) => {}
            Ok(None) => errors.push(
                "no Mono secret key: set MONO_SEC_KEY or upstream.secret_key_file".to_string(),
            ),
            Err(e) => errors.push(format!("upstream.secret_key_file: {e}")),
        }
        if let Err(e) = self.webhook.secret.read() {
            errors.push(format!("webhook.secret_file: {e}"));
        }
        if let Err(e) = self.admin.token.read() {
            errors.push(format!("admin.token_file: {e}"));
        }
        for c in &self.clients {
            if let Err(e) = c.token.read() {
                errors.push(format!("clients.{}: token: {e}", c.name));
            }
            if let Err(e) = c.secret_key.read() {
                errors.push(format!("clients.{}: secret key: {e}", c.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
