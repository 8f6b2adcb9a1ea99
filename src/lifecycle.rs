//! Process signals: SIGTERM/SIGINT start the drain; SIGHUP reloads the whole config (secrets
//! only for a proxy started without a config source); a changed secret file reloads secrets.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::state::State;

/// How often secret files are checked for changes.
const SECRET_FILE_CHECK: Duration = Duration::from_secs(2);

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the config on SIGHUP, and secrets whenever a configured secret file changes.
///
/// The SIGHUP handler is registered before this returns, so a SIGHUP sent once the caller has
/// moved on reloads instead of killing the process (SIGHUP's default action).
pub fn watch(state: &Arc<State>) {
    let weak = Arc::downgrade(state);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let weak = weak.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let Some(state) = weak.upgrade() else { return };
                        if state.origin.is_some() {
                            // Logged by the reload itself, either way.
                            let _ = crate::reload::reload(&state, "SIGHUP");
                        } else {
                            reload(&state, "SIGHUP");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; secret files are still watched");
            }
        }
    }
    tokio::spawn(watch_files(weak));
}

fn secret_files(state: &State) -> Vec<PathBuf> {
    let c = state.config.load();
    // Every secret Secrets::load reads, so a rotated file of any of them reloads.
    let mut files: Vec<PathBuf> = [
        c.upstream.secret_key.file(),
        c.webhook.secret.file(),
        c.admin.token.file(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::from)
    .collect();
    for client in &c.clients {
        files.extend(client.token.file().map(PathBuf::from));
        files.extend(client.webhook_secret.file().map(PathBuf::from));
    }
    files
}

/// A digest of each file's content (`None` when unreadable). Content, not mtime and size: a
/// rotation that keeps the length and lands within the filesystem's timestamp granularity must
/// still be seen, and a `touch` alone must not reload. Secret files are tiny, so reading them
/// every few seconds costs nothing.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    use sha2::{Digest, Sha256};
    files
        .iter()
        .map(|f| std::fs::read(f).ok().map(|b| Sha256::digest(&b).into()))
        .collect()
}

async fn watch_files(weak: Weak<State>) {
    let Some(state) = weak.upgrade() else { return };
    let mut files = secret_files(&state);
    let mut last = fingerprint(&files);
    drop(state);
    loop {
        tokio::time::sleep(SECRET_FILE_CHECK).await;
        let Some(state) = weak.upgrade() else { return };
        // A config reload may name other files: those are watched from now on.
        let named = secret_files(&state);
        if named != files {
            // Read now: a file rotated just after the reload named it must not be missed.
            files = named;
            last = fingerprint(&files);
            reload(&state, "secret files renamed by a reload");
            continue;
        }
        let now = fingerprint(&files);
        if now != last {
            last = now;
            reload(&state, "secret file changed");
        }
    }
}

fn reload(state: &State, why: &str) {
    match state.reload_secrets() {
        Ok(()) => tracing::info!(reason = why, "secrets reloaded"),
        Err(e) => {
            tracing::error!(reason = why, error = %e, "secret reload failed; keeping the previous secrets");
        }
    }
}
