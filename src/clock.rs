//! Wall-clock milliseconds that follow tokio's clock, so tests on paused time move windows too.
//!
//! Realtime windows are shared between replicas, so they are anchored in wall-clock time. Reading
//! `SystemTime` directly would make them the one thing a paused tokio clock cannot advance; this
//! clock reads the wall once and then advances with `tokio::time::Instant`.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The wall clock (unix µs) and tokio's clock read together once.
static ANCHOR: LazyLock<(u64, std::time::Instant)> = LazyLock::new(|| {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    (wall, Instant::now().into_std())
});

/// Milliseconds since the unix epoch, advanced by tokio's clock since the anchor was read.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the unix epoch, on the same clock as [`now_ms`].
pub fn now_us() -> u64 {
    let (wall, at) = *ANCHOR;
    let now = Instant::now().into_std();
    // A paused test runtime may start its clock just before the anchor was read. Offsets are
    // taken in microseconds and rounded once, so the clock advances by exactly what tokio's
    // does whichever side of the anchor it starts.
    match now.checked_duration_since(at) {
        Some(ahead) => wall + ahead.as_micros() as u64,
        None => wall.saturating_sub(at.duration_since(now).as_micros() as u64),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn advancing_tokio_time_advances_the_clock() {
        let before = now_ms();
        tokio::time::advance(Duration::from_secs(301)).await;
        let after = now_ms();
        assert!(after - before >= 301_000, "{before} → {after}");
    }

    #[test]
    fn the_clock_is_near_the_wall() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now_ms().abs_diff(wall) < 60_000);
    }
}
