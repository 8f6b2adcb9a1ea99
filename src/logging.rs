//! Log setup: `tracing` with a `RUST_LOG`-style filter, as text or one JSON object per line.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};
use crate::telemetry::SPANS;

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

/// Swaps the installed log layer's filter.
pub type Apply = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The filter in force and how to change it, once a subscriber is installed.
static CONTROL: OnceLock<(Mutex<String>, Apply)> = OnceLock::new();

/// Why the filter could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The text is not a filter.
    #[error("invalid log filter: {0}")]
    Invalid(#[from] tracing_subscriber::filter::ParseError),
    /// No reloadable subscriber in this process (a library user, or tests in process).
    #[error("the log filter cannot be changed in this process")]
    NotReloadable,
    /// The subscriber refused the new filter.
    #[error("log filter: {0}")]
    Reload(String),
}

/// Installs the global subscriber: log lines to stderr under a filter that can be changed at
/// run time ([`set_filter`]), and, with a `tracer`, the phase spans exported through it. Each
/// has its own filter, so the log filter never decides which spans are exported.
pub fn init(
    cfg: &LogConfig,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Result<(), LogSetupError> {
    let (subscriber, apply) = build(cfg, tracer)?;
    subscriber
        .try_init()
        .map_err(|e| LogSetupError::Install(e.to_string()))?;
    let _ = CONTROL.set((Mutex::new(cfg.filter.clone()), apply));
    Ok(())
}

/// The subscriber [`init`] installs, and how to change its log filter (benches use it
/// without installing it globally).
pub fn build(
    cfg: &LogConfig,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> Result<(Box<dyn tracing::Subscriber + Send + Sync>, Apply), LogSetupError> {
    let (filter, handle) = reload::Layer::new(EnvFilter::try_new(&cfg.filter)?);
    // Colour only for a person at a terminal: container runtimes and log shippers store
    // stderr as-is, and escape codes there make lines unreadable and ungreppable.
    let ansi = std::io::stderr().is_terminal();
    let lines = match cfg.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
    };
    let logged = tracing_subscriber::registry().with(lines.with_filter(filter));
    // Two shapes rather than an `Option` layer: an absent `Option` layer answers "always" for
    // every callsite, which would make every disabled span and event pay to be built.
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = match tracer {
        Some(t) => Box::new(
            logged.with(
                tracing_opentelemetry::layer()
                    .with_tracer(t)
                    .with_filter(Targets::new().with_target(SPANS, Level::TRACE)),
            ),
        ),
        None => Box::new(logged),
    };
    let apply: Apply = Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
    Ok((subscriber, apply))
}

/// The filter in force, when this process installed a reloadable subscriber.
pub fn filter() -> Option<String> {
    let (current, _) = CONTROL.get()?;
    Some(
        current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

/// Replaces the filter for every later event; the old one stays on any error.
pub fn set_filter(text: &str) -> Result<(), FilterError> {
    let filter = EnvFilter::try_new(text.trim())?;
    let (current, apply) = CONTROL.get().ok_or(FilterError::NotReloadable)?;
    let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
    apply(filter).map_err(FilterError::Reload)?;
    *current = text.trim().to_string();
    tracing::info!(filter = %current, "log filter changed");
    Ok(())
}
