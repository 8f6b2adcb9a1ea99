//! Log setup: `tracing` with a `RUST_LOG`-style filter, as text or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&cfg.filter).map_err(|e| format!("log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("log setup: {e}"))
}
