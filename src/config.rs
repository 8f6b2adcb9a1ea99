//! Configuration: `proxy.toml` plus environment overrides, loaded, parsed and validated once.
//!
//! Every problem is collected and reported together, unknown keys included, so an operator fixes
//! a config in one pass instead of one restart per typo.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use toml::{Table, Value};

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
/// Redis URL used when the backend is redis and none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Key prefix in the shared store.
pub const DEFAULT_STORE_PREFIX: &str = "mono-proxy";
/// Redis operations give up after this long: Redis is a local hop, not worth waiting on.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

/// A secret value whose `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from: a value given by the environment, or a file re-read on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Not configured.
    None,
    /// A value from the environment.
    Value(Secret),
    /// A file holding the secret (trailing whitespace trimmed), re-read on SIGHUP or change.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret now; `Ok(None)` when none is configured.
    pub fn read(&self) -> Result<Option<Secret>, String> {
        match self {
            SecretSource::None => Ok(None),
            SecretSource::Value(s) => Ok(Some(s.clone())),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Some(Secret::new(value)))
            }
        }
    }

    /// The file behind the secret, if any (watched for rotation).
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretSource::File(p) => Some(p),
            _ => None,
        }
    }
}

/// What to do with a `mono-sec-key` an app sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKeyPolicy {
    /// Remove it and inject the configured key (default).
    Strip,
    /// Refuse the request with 400.
    Reject,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which store holds the realtime window and job records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In process (one replica).
    Memory,
    /// Shared between replicas through Redis.
    Redis,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
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
    /// Client tokens; empty means any local client is trusted.
    pub clients: Vec<ClientConfig>,
}

/// Client-facing server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Time allowed to send request headers.
    pub header_read_timeout: Duration,
    /// A connection with no request for this long (none in flight) is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections accepted; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time in-flight requests get after SIGTERM.
    pub drain_timeout: Duration,
    /// Largest request header block.
    pub max_header_bytes: usize,
    /// Largest request body forwarded.
    pub max_request_body: usize,
}

/// The Mono origin and how to reach it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme + authority of the upstream, e.g. `https://api.withmono.com`.
    pub base_url: Uri,
    /// Where the secret key comes from.
    pub secret_key: SecretSource,
    /// Response timeout of ordinary calls.
    pub timeout: Duration,
    /// Connect timeout (TCP + TLS).
    pub connect_timeout: Duration,
    /// Response timeout of realtime calls.
    pub realtime_timeout: Duration,
    /// Extra trust roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// Authorities accepted in absolute-form targets (lowercase `host` or `host:port`).
    pub accept_hosts: Vec<String>,
    /// Idle time of pooled connections.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections per host.
    pub pool_max_idle_per_host: usize,
    /// What to do with an app's own `mono-sec-key`.
    pub client_key: ClientKeyPolicy,
    /// Largest upstream body buffered for the cache.
    pub max_response_bytes: usize,
}

/// Realtime window settings.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Mono's realtime window per account and endpoint.
    pub window: Duration,
    /// Estimated cost of one realtime call, to report savings.
    pub cost_per_call: Option<f64>,
}

/// Response cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Freshness lifetime of a cached response.
    pub ttl: Duration,
    /// How long past `ttl` an entry may be served when the upstream fails.
    pub max_stale: Duration,
    /// Memory bound in bytes.
    pub max_bytes: u64,
    /// Fetch the balance once when a sync finishes so the next read is a hit.
    pub refresh_ahead: bool,
}

/// Job poller settings.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Poll processing jobs when no webhook tells us first.
    pub poll: bool,
    /// First delay between polls.
    pub poll_interval: Duration,
    /// Give up polling a job after this long.
    pub poll_deadline: Duration,
    /// Jobs polled at once.
    pub poll_concurrency: usize,
}

/// Webhook receiver and relay settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Path Mono delivers to.
    pub path: String,
    /// Where the webhook secret comes from.
    pub secret: SecretSource,
    /// Targets the webhook is relayed to.
    pub forward_to: Vec<Uri>,
    /// Per-target relay timeout.
    pub timeout: Duration,
    /// Body limit.
    pub max_body: usize,
}

/// Shared-state settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Memory or Redis.
    pub backend: Backend,
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix.
    pub prefix: String,
    /// Timeout of one Redis operation.
    pub timeout: Duration,
    /// Serve from local state when Redis is down (true) or answer 503 (false).
    pub fail_open: bool,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Text or JSON.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub filter: String,
}

/// One app allowed to use the proxy when it listens beyond loopback.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// The token the app presents.
    pub token: SecretSource,
    /// A Mono secret key of its own (a separate tenant); the default key when absent.
    pub secret_key: SecretSource,
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
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("invalid TOML: {e}")]))?;
        let mut errors = Vec::new();
        let config = build(&root, env, &mut errors);
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

    /// The `host[:port]` of the upstream, as sent in `Host`.
    pub fn upstream_authority(&self) -> &str {
        self.upstream
            .base_url
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("")
    }
}

/// Reads typed fields out of one TOML table, collecting problems and flagging unknown keys.
struct Fields<'t, 'e> {
    prefix: String,
    table: Option<&'t Table>,
    known: Vec<&'static str>,
    errors: &'e mut Vec<String>,
}

impl<'t, 'e> Fields<'t, 'e> {
    fn new(prefix: &str, table: Option<&'t Table>, errors: &'e mut Vec<String>) -> Self {
        Fields {
            prefix: prefix.to_string(),
            table,
            known: Vec::new(),
            errors,
        }
    }

    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'t Value> {
        self.known.push(key);
        self.table.and_then(|t| t.get(key))
    }

    fn problem(&mut self, key: &str, msg: impl fmt::Display) {
        let name = self.name(key);
        self.errors.push(format!("{name}: {msg}"));
    }

    fn string(&mut self, key: &'static str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.problem(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        let Some(text) = self.string(key) else {
            return default;
        };
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Err(e) => {
                self.problem(
                    key,
                    format!("invalid duration {text:?} ({e}); use e.g. \"300s\" or \"5m\""),
                );
                default
            }
        }
    }

    fn size(&mut self, key: &'static str, default: u64) -> u64 {
        let Some(text) = self.string(key) else {
            return default;
        };
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => b.as_u64(),
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid size {text:?}; use e.g. \"256MiB\" or \"1MB\""),
                );
                default
            }
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                let t = other.type_str();
                self.problem(key, format!("expected true or false, found {t}"));
                default
            }
        }
    }

    fn count(&mut self, key: &'static str, default: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n > 0 => *n as u64,
            Some(other) => {
                let t = other.to_string();
                self.problem(key, format!("expected a whole number above 0, found {t}"));
                default
            }
        }
    }

    fn float(&mut self, key: &'static str) -> Option<f64> {
        match self.get(key)? {
            Value::Float(f) if *f >= 0.0 => Some(*f),
            Value::Integer(n) if *n >= 0 => Some(*n as f64),
            other => {
                let t = other.to_string();
                self.problem(key, format!("expected a number of at least 0, found {t}"));
                None
            }
        }
    }

    fn strings(&mut self, key: &'static str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            let t = other.type_str();
                            self.problem(key, format!("expected strings, found {t}"));
                        }
                    }
                }
                Some(out)
            }
            other => {
                let t = other.type_str();
                self.problem(key, format!("expected an array of strings, found {t}"));
                None
            }
        }
    }

    /// The environment's value when set, else the file's. The file's key is read either way:
    /// skipping it would leave it "unknown" and refuse a valid file whenever the env overrides it.
    fn env_or_string(&mut self, key: &'static str, env: Option<String>) -> Option<String> {
        let file = self.string(key);
        env.or(file)
    }

    fn addr(&mut self, key: &'static str, env: Option<String>, default: &str) -> SocketAddr {
        let text = self
            .env_or_string(key, env)
            .unwrap_or_else(|| default.to_string());
        match text.parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid socket address {text:?}; use e.g. \"127.0.0.1:8080\""),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    /// A secret given either by an environment variable or by `<key>` naming a file.
    fn secret(&mut self, file_key: &'static str, env_value: Option<String>) -> SecretSource {
        let file = self.string(file_key);
        match (env_value, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    file_key,
                    "both the environment variable and the file are set; choose one",
                );
                SecretSource::None
            }
            (Some(v), None) => SecretSource::Value(Secret::new(v)),
            (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
            (None, None) => SecretSource::None,
        }
    }

    fn finish(self) {
        if let Some(table) = self.table {
            for key in table.keys() {
                if !self.known.contains(&key.as_str()) {
                    let name = if self.prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{}.{key}", self.prefix)
                    };
                    self.errors.push(format!("{name}: unknown key"));
                }
            }
        }
    }
}

fn section<'t>(root: &'t Table, name: &str, errors: &mut Vec<String>) -> Option<&'t Table> {
    match root.get(name)? {
        Value::Table(t) => Some(t),
        other => {
            errors.push(format!(
                "[{name}]: expected a table, found {}",
                other.type_str()
            ));
            None
        }
    }
}

const SECTIONS: [&str; 10] = [
    "server", "upstream", "realtime", "cache", "jobs", "webhook", "store", "log", "clients", "",
];

fn build(root: &Table, env: &dyn Env, errors: &mut Vec<String>) -> Config {
    let mut top = Fields::new("", Some(root), errors);
    let listen = top.addr("listen", env.var("MONO_PROXY_LISTEN"), DEFAULT_LISTEN);
    let admin_listen = top.addr(
        "admin_listen",
        env.var("MONO_PROXY_ADMIN_LISTEN"),
        DEFAULT_ADMIN_LISTEN,
    );
    let public_base_url = top
        .env_or_string("public_base_url", env.var("MONO_PROXY_PUBLIC_BASE_URL"))
        .unwrap_or_else(|| format!("http://{listen}"));
    top.known.extend(SECTIONS.iter().filter(|s| !s.is_empty()));
    top.finish();
    let public_base_url = match parse_origin(&public_base_url) {
        Ok(u) => u.to_string().trim_end_matches('/').to_string(),
        Err(e) => {
            errors.push(format!("public_base_url: {e}"));
            DEFAULT_PUBLIC_BASE_URL.to_string()
        }
    };

    let server = {
        let mut f = Fields::new("server", section(root, "server", errors), errors);
        let s = ServerConfig {
            header_read_timeout: f.duration("header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT),
            idle_timeout: f.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT),
            max_connections: f.count("max_connections", DEFAULT_MAX_CONNECTIONS) as usize,
            drain_timeout: f.duration("drain_timeout", DEFAULT_DRAIN_TIMEOUT),
            max_header_bytes: f.size("max_header_bytes", DEFAULT_MAX_HEADER_BYTES) as usize,
            max_request_body: f.size("max_request_body", DEFAULT_MAX_REQUEST_BODY) as usize,
        };
        f.finish();
        s
    };
    if server.max_header_bytes < 8192 {
        errors.push("server.max_header_bytes: must be at least 8KiB".into());
    }

    let upstream = {
        let mut f = Fields::new("upstream", section(root, "upstream", errors), errors);
        let base_text = f
            .env_or_string("base_url", env.var("MONO_PROXY_UPSTREAM_URL"))
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let base_url = match parse_origin(&base_text) {
            Ok(u) => u,
            Err(e) => {
                f.problem("base_url", e);
                Uri::from_static(DEFAULT_BASE_URL)
            }
        };
        let secret_key = f.secret("secret_key_file", env.var("MONO_SEC_KEY"));
        let timeout = f.duration("timeout", DEFAULT_TIMEOUT);
        let connect_timeout = f.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT);
        let realtime_timeout = f.duration("realtime_timeout", DEFAULT_REALTIME_TIMEOUT);
        let ca_file = f.string("ca_file").map(PathBuf::from);
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                f.problem(
                    "ca_file",
                    format!("{} is not a readable file", ca.display()),
                );
            }
        }
        let mut accept_hosts: Vec<String> = f
            .strings("accept_hosts")
            .unwrap_or_else(|| vec!["api.withmono.com".to_string()])
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Some(a) = base_url.authority() {
            for h in [
                a.as_str().to_ascii_lowercase(),
                a.host().to_ascii_lowercase(),
            ] {
                if !accept_hosts.contains(&h) {
                    accept_hosts.push(h);
                }
            }
        }
        let client_key = match f.string("client_key").as_deref() {
            None | Some("strip") => ClientKeyPolicy::Strip,
            Some("reject") => ClientKeyPolicy::Reject,
            Some(other) => {
                f.problem(
                    "client_key",
                    format!("expected \"strip\" or \"reject\", found {other:?}"),
                );
                ClientKeyPolicy::Strip
            }
        };
        let u = UpstreamConfig {
            base_url,
            secret_key,
            timeout,
            connect_timeout,
            realtime_timeout,
            ca_file,
            accept_hosts,
            pool_idle_timeout: f.duration("pool_idle_timeout", DEFAULT_POOL_IDLE_TIMEOUT),
            pool_max_idle_per_host: f.count("pool_max_idle_per_host", DEFAULT_POOL_MAX_IDLE)
                as usize,
            client_key,
            max_response_bytes: f.size("max_response_bytes", DEFAULT_MAX_ENTRY_BYTES) as usize,
        };
        f.finish();
        u
    };

    let realtime = {
        let mut f = Fields::new("realtime", section(root, "realtime", errors), errors);
        let r = RealtimeConfig {
            window: f.duration("window", DEFAULT_WINDOW),
            cost_per_call: f.float("cost_per_call"),
        };
        f.finish();
        r
    };

    let cache = {
        let mut f = Fields::new("cache", section(root, "cache", errors), errors);
        let c = CacheConfig {
            ttl: f.duration("ttl", realtime.window),
            max_stale: f.duration("max_stale", DEFAULT_MAX_STALE),
            max_bytes: f.size("max_bytes", DEFAULT_CACHE_MAX_BYTES),
            refresh_ahead: f.bool("refresh_ahead", false),
        };
        f.finish();
        c
    };

    let jobs = {
        let mut f = Fields::new("jobs", section(root, "jobs", errors), errors);
        let j = JobsConfig {
            poll: f.bool("poll", true),
            poll_interval: f.duration("poll_interval", DEFAULT_POLL_INTERVAL),
            poll_deadline: f.duration("poll_deadline", DEFAULT_POLL_DEADLINE),
            poll_concurrency: f.count("poll_concurrency", DEFAULT_POLL_CONCURRENCY) as usize,
        };
        f.finish();
        j
    };

    let webhook = {
        let mut f = Fields::new("webhook", section(root, "webhook", errors), errors);
        let path = f
            .string("path")
            .unwrap_or_else(|| DEFAULT_WEBHOOK_PATH.to_string());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            f.problem(
                "path",
                format!("{path:?} must be a plain path starting with /"),
            );
        }
        let secret = f.secret("secret_file", env.var("MONO_WEBHOOK_SECRET"));
        let mut forward_to = Vec::new();
        for target in f.strings("forward_to").unwrap_or_default() {
            match parse_url(&target) {
                Ok(u) => forward_to.push(u),
                Err(e) => f.problem("forward_to", e),
            }
        }
        let w = WebhookConfig {
            path,
            secret,
            forward_to,
            timeout: f.duration("timeout", DEFAULT_WEBHOOK_TIMEOUT),
            max_body: f.size("max_body", DEFAULT_WEBHOOK_MAX_BODY) as usize,
        };
        f.finish();
        w
    };

    let store = {
        let mut f = Fields::new("store", section(root, "store", errors), errors);
        let backend = match f.string("backend").as_deref() {
            None | Some("memory") => Backend::Memory,
            Some("redis") => Backend::Redis,
            Some(other) => {
                f.problem(
                    "backend",
                    format!("expected \"memory\" or \"redis\", found {other:?}"),
                );
                Backend::Memory
            }
        };
        let redis_url = f
            .env_or_string("redis_url", env.var("MONO_PROXY_REDIS_URL"))
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
        if !(redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://")
            || redis_url.starts_with("redis+unix://")
            || redis_url.starts_with("unix://"))
        {
            f.problem(
                "redis_url",
                format!("{redis_url:?} is not a redis:// or rediss:// URL"),
            );
        }
        let prefix = f
            .string("prefix")
            .unwrap_or_else(|| DEFAULT_STORE_PREFIX.to_string());
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            f.problem("prefix", "must be non-empty without spaces");
        }
        let s = StoreConfig {
            backend,
            redis_url,
            prefix,
            timeout: f.duration("timeout", DEFAULT_STORE_TIMEOUT),
            fail_open: f.bool("fail_open", true),
        };
        f.finish();
        s
    };

    let log = {
        let mut f = Fields::new("log", section(root, "log", errors), errors);
        let format = match f
            .env_or_string("format", env.var("MONO_PROXY_LOG_FORMAT"))
            .as_deref()
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                f.problem(
                    "format",
                    format!("expected \"text\" or \"json\", found {other:?}"),
                );
                LogFormat::Text
            }
        };
        let filter = f
            .env_or_string("filter", env.var("RUST_LOG"))
            .unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&filter).is_err() {
            f.problem("filter", format!("invalid log filter {filter:?}"));
        }
        f.finish();
        LogConfig { format, filter }
    };

    let clients = build_clients(root, env, errors);

    Config {
        listen,
        admin_listen,
        public_base_url,
        server,
        upstream,
        realtime,
        cache,
        jobs,
        webhook,
        store,
        log,
        clients,
    }
}

fn build_clients(root: &Table, env: &dyn Env, errors: &mut Vec<String>) -> Vec<ClientConfig> {
    let items = match root.get("clients") {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(format!(
                "[[clients]]: expected an array of tables, found {}",
                other.type_str()
            ));
            return Vec::new();
        }
    };
    let mut out: Vec<ClientConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Table(t) = item else {
            errors.push(format!("clients[{i}]: expected a table"));
            continue;
        };
        let mut f = Fields::new(&format!("clients[{i}]"), Some(t), errors);
        let name = f.string("name").unwrap_or_else(|| format!("client{i}"));
        let token = match (f.string("token_env"), f.string("token_file")) {
            (Some(var), None) => match env.var(&var) {
                Some(v) => SecretSource::Value(Secret::new(v)),
                None => {
                    f.problem(
                        "token_env",
                        format!("environment variable {var} is not set"),
                    );
                    SecretSource::None
                }
            },
            (None, Some(file)) => SecretSource::File(PathBuf::from(file)),
            _ => {
                f.problem("token_env", "set exactly one of token_env or token_file");
                SecretSource::None
            }
        };
        let secret_key = match f.string("secret_key_env") {
            Some(var) => match env.var(&var) {
                Some(v) => SecretSource::Value(Secret::new(v)),
                None => {
                    f.problem(
                        "secret_key_env",
                        format!("environment variable {var} is not set"),
                    );
                    SecretSource::None
                }
            },
            None => SecretSource::None,
        };
        f.finish();
        if out.iter().any(|c| c.name == name) {
            errors.push(format!("clients[{i}]: duplicate name {name:?}"));
        }
        out.push(ClientConfig {
            name,
            token,
            secret_key,
        });
    }
    out
}

/// Parses an `http(s)://host[:port]` origin with no path, query or credentials.
fn parse_origin(text: &str) -> Result<Uri, String> {
    let uri = parse_url(text)?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{text:?} must not have a path"));
    }
    Ok(uri)
}

/// Parses an absolute `http(s)://` URL with a host and no credentials.
fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{text:?} must not carry credentials"));
    }
    if uri.query().is_some() {
        return Err(format!("{text:?} must not have a query"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = Config::parse("", &NO_ENV).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.realtime.window, DEFAULT_WINDOW);
        assert_eq!(c.cache.ttl, DEFAULT_WINDOW);
        assert_eq!(c.cache.max_bytes, 256 * 1024 * 1024);
        assert_eq!(c.upstream_authority(), "api.withmono.com");
        assert!(c.upstream.accept_hosts.contains(&"api.withmono.com".into()));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            listen = "nope"
            bogus = 1
            [upstream]
            timeout = "soon"
            base_url = "ftp://x"
            [cache]
            max_bytes = "lots"
            colour = "red"
        "#;
        let errs = Config::parse(text, &NO_ENV).unwrap_err().0;
        for needle in [
            "listen:",
            "bogus: unknown key",
            "upstream.timeout",
            "upstream.base_url",
            "cache.max_bytes",
            "cache.colour: unknown key",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(needle)),
                "{needle} in {errs:?}"
            );
        }
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::parse(
            "[cache]\nmax_bytes = \"1MiB\"\nttl = \"5m\"\n[realtime]\nwindow = \"2s\"",
            &NO_ENV,
        )
        .unwrap();
        assert_eq!(c.cache.max_bytes, 1024 * 1024);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert_eq!(c.realtime.window, Duration::from_secs(2));
    }

    #[test]
    fn missing_secret_refuses_to_run() {
        let err = Config::parse_runnable("", &NO_ENV).unwrap_err();
        assert!(err.to_string().contains("MONO_SEC_KEY"));
        assert!(Config::parse_runnable("", &[("MONO_SEC_KEY", "k")]).is_ok());
    }

    #[test]
    fn secret_never_prints() {
        let c = Config::parse("", &[("MONO_SEC_KEY", "live_sk_topsecret")]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    #[test]
    fn environment_overrides_a_key_the_file_also_sets() {
        let text = r#"
            listen = "127.0.0.1:1111"
            [upstream]
            base_url = "https://api.withmono.com"
            [log]
            filter = "info"
        "#;
        let env = [
            ("MONO_PROXY_LISTEN", "127.0.0.1:2222"),
            ("MONO_PROXY_UPSTREAM_URL", "http://127.0.0.1:3333"),
            ("RUST_LOG", "debug"),
        ];
        let c = Config::parse(text, &env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.upstream_authority(), "127.0.0.1:3333");
        assert_eq!(c.log.filter, "debug");
    }

    #[test]
    fn env_and_file_secret_together_is_a_problem() {
        let errs = Config::parse(
            "[upstream]\nsecret_key_file = \"/tmp/k\"",
            &[("MONO_SEC_KEY", "k")],
        )
        .unwrap_err();
        assert!(errs.to_string().contains("choose one"));
    }
}
