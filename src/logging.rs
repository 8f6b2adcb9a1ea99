//! Log setup: `tracing` with a `RUST_LOG`-style filter, as text or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    /// The filter does not parse.
    #[error("log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber is already installed.
    #[error("log setup: {0}")]
    Install(String),
}

/// Installs the global subscriber, writing to stderr.
pub fn init(cfg: &LogConfig) -> Result<(), LogSetupError> {
    let filter = EnvFilter::try_new(&cfg.filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: container runtimes and log shippers store
        // stderr as-is, and escape codes there make lines unreadable and ungreppable.
        .with_ansi(std::io::stderr().is_terminal());
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| LogSetupError::Install(e.to_string()))
}
