//! From `[store]` to Redis connections: one server, a cluster, or the master that Sentinel
//! names; over TCP or TLS (rustls); with the password from the URL, a file or the environment.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, TlsMode, Value,
};

use super::StoreOpenError;
use crate::config::{redact_url, Secret, StoreConfig, Topology};

/// Connection timeouts, the same for every form.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// Giving up on one connection attempt.
    pub(super) connect: Duration,
    /// Giving up on one answer (operations bound themselves more tightly).
    pub(super) response: Duration,
}

/// A connection to the data: cheap to clone, reconnecting by itself.
#[derive(Clone)]
pub(super) enum Link {
    /// One server (also the current master under Sentinel).
    Single(ConnectionManager),
    /// A cluster: commands routed by the slot of their first key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes connections of the configured form.
pub(super) enum Connector {
    /// One server.
    Single(Client),
    /// A cluster, with a plain client per seed node for pub/sub (which spans the cluster).
    Cluster {
        /// The cluster client.
        client: ClusterClient,
        /// One client per seed node.
        nodes: Vec<Client>,
    },
    /// Sentinel: the master is looked up again whenever it may have moved.
    Sentinel {
        /// Asks the sentinels.
        sentinel: tokio::sync::Mutex<SentinelClient>,
        /// The master last found, as `host:port` (for logs and for noticing a failover).
        master: Mutex<Option<String>>,
    },
}

impl Connector {
    /// Builds the clients; reads the TLS files and the password. Nothing connects yet.
    pub(super) fn new(
        cfg: &StoreConfig,
        password: Option<&Secret>,
    ) -> Result<Connector, StoreOpenError> {
        let certs = certificates(cfg)?;
        // Sentinels keep the credentials of their own URLs: a sentinel often has no password
        // while the master has one, and AUTH to a server without one is refused.
        let sentinel = cfg.topology() == Topology::Sentinel;
        let infos = cfg
            .urls()
            .iter()
            .map(|url| connection_info(url, if sentinel { None } else { password }))
            .collect::<Result<Vec<_>, _>>()?;
        let shown = cfg.urls().iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        let bad = |source: redis::RedisError| StoreOpenError::BadUrl {
            url: shown.join(", "),
            source,
        };
        let client = |info: ConnectionInfo| match (&certs, is_tls(&info)) {
            (Some(c), true) => Client::build_with_tls(info, c.clone()),
            _ => Client::open(info),
        };
        Ok(match cfg.topology() {
            Topology::Single => {
                let info = infos.into_iter().next().expect("one url");
                Connector::Single(client(info).map_err(bad)?)
            }
            Topology::Cluster => {
                let mut builder = ClusterClientBuilder::new(infos.clone())
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(500);
                if let Some(first) = infos.first() {
                    let r = first.redis_settings();
                    if let Some(user) = r.username() {
                        builder = builder.username(user);
                    }
                    if let Some(pw) = r.password() {
                        builder = builder.password(pw);
                    }
                    if is_tls(first) {
                        builder = builder.tls(TlsMode::Secure);
                        if let Some(c) = &certs {
                            builder = builder.certs(c.clone());
                        }
                    }
                }
                let nodes = infos
                    .into_iter()
                    .map(client)
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(bad)?;
                Connector::Cluster {
                    client: builder.build().map_err(bad)?,
                    nodes,
                }
            }
            Topology::Sentinel => {
                let name = cfg.sentinel_master.clone().unwrap_or_default();
                let tls = infos.iter().any(is_tls);
                let addrs = infos.iter().map(|i| i.addr().clone());
                let mut b = SentinelClientBuilder::new(addrs, name, SentinelServerType::Master)
                    .map_err(bad)?;
                // The sentinels log in with their URLs' credentials. The master uses the
                // configured password (password_file, MONO_PROXY_REDIS_PASSWORD) or else the
                // sentinels' own, the usual deployment; TLS settings apply to both.
                if let Some(first) = infos.first() {
                    let r = first.redis_settings();
                    if let Some(user) = r.username() {
                        b = b
                            .set_client_to_redis_username(user)
                            .set_client_to_sentinel_username(user);
                    }
                    if let Some(pw) = r.password() {
                        b = b.set_client_to_sentinel_password(pw);
                    }
                    if let Some(pw) = password.map(Secret::expose).or(r.password()) {
                        b = b.set_client_to_redis_password(pw);
                    }
                }
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(c) = &certs {
                        b = b
                            .set_client_to_redis_certificates(c.clone())
                            .set_client_to_sentinel_certificates(c.clone());
                    }
                }
                Connector::Sentinel {
                    sentinel: tokio::sync::Mutex::new(b.build().map_err(bad)?),
                    master: Mutex::new(None),
                }
            }
        })
    }

    /// A connection to the data. One server and a cluster connect lazily (the first command
    /// connects, and they reconnect by themselves); Sentinel asks for the master first.
    pub(super) async fn connect(&self, t: Timeouts) -> RedisResult<Link> {
        match self {
            Connector::Single(client) => single(client, t),
            Connector::Cluster { client, .. } => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(t.connect)
                    .set_response_timeout(t.response);
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
            Connector::Sentinel { .. } => {
                let client = self.master_client(t).await?;
                single(&client, t)
            }
        }
    }

    /// Whether the master can move under us (Sentinel): then a failing connection is worth
    /// asking the sentinels about.
    pub(super) fn follows_master(&self) -> bool {
        matches!(self, Connector::Sentinel { .. })
    }

    /// The master the sentinels name now; logs when it moved.
    async fn master_client(&self, t: Timeouts) -> RedisResult<Client> {
        let Connector::Sentinel { sentinel, master } = self else {
            unreachable!("only under sentinel");
        };
        let lookup = async { sentinel.lock().await.async_get_client().await };
        let client = match tokio::time::timeout(t.connect.max(Duration::from_secs(1)), lookup).await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no sentinel answered in time",
                )))
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let mut last = master
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_deref() != Some(addr.as_str()) {
            match last.as_deref() {
                Some(old) => {
                    tracing::warn!(from = %old, to = %addr, "sentinel: the redis master moved; following it");
                }
                None => tracing::info!(master = %addr, "sentinel: redis master found"),
            }
            *last = Some(addr);
        }
        Ok(client)
    }

    /// A client for pub/sub; `attempt` rotates through a cluster's nodes after failures.
    pub(super) async fn pubsub_client(&self, attempt: usize, t: Timeouts) -> RedisResult<Client> {
        match self {
            Connector::Single(client) => Ok(client.clone()),
            // Classic pub/sub is broadcast across the cluster bus: any node hears every message.
            Connector::Cluster { nodes, .. } => Ok(nodes[attempt % nodes.len()].clone()),
            Connector::Sentinel { .. } => self.master_client(t).await,
        }
    }
}

/// A lazily connecting, self-reconnecting connection to one server.
fn single(client: &Client, t: Timeouts) -> RedisResult<Link> {
    let manager = ConnectionManagerConfig::new()
        .set_response_timeout(Some(t.response))
        .set_connection_timeout(Some(t.connect))
        .set_number_of_retries(3)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), manager).map(Link::Single)
}

/// The URL parsed, with the configured password (file or environment) put in.
fn connection_info(url: &str, password: Option<&Secret>) -> Result<ConnectionInfo, StoreOpenError> {
    let info = url
        .into_connection_info()
        .map_err(|source| StoreOpenError::BadUrl {
            url: redact_url(url),
            source,
        })?;
    Ok(match password {
        Some(p) => {
            let redis = info.redis_settings().clone().set_password(p.expose());
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// The CA and client certificate files, read now so a missing file fails at start with its name.
fn certificates(cfg: &StoreConfig) -> Result<Option<TlsCertificates>, StoreOpenError> {
    if !cfg.tls() || (cfg.ca_file.is_none() && cfg.client_cert.is_none()) {
        return Ok(None);
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| StoreOpenError::File {
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    let root_cert = match &cfg.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    let client_tls = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("client_cert", cert)?,
            client_key: read("client_key", key)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}
