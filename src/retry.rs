//! The one backoff policy of K2: exponential with jitter, capped.
//!
//! Everything that waits for a service to come back (Kafka at start, the
//! catalog, a full disk, a failed commit) takes its delays from [`backoff`],
//! and logs the delay it is really about to wait.

use backon::BackoffBuilder;
use std::time::Duration;

/// Delays that double from `min` up to `max` (with jitter), forever.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `attempt` until it succeeds or `limit` has passed, waiting
/// [`backoff`] delays between tries and logging each failure with the real
/// wait; the last error is returned.
pub async fn retry_async<T, E, F, Fut>(what: &str, limit: Duration, attempt: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    retry_async_if(what, limit, |_| true, attempt).await
}

/// [`retry_async`], but an error for which `retryable` is false is returned
/// at once: a wrong config or an incompatible table does not get better by
/// waiting (see [`crate::error::Error::is_permanent`]).
pub async fn retry_async_if<T, E, F, Fut>(
    what: &str,
    limit: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = std::time::Instant::now() + limit;
    let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && std::time::Instant::now() < deadline => {
                let wait = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %e, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let d: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_secs(2))
            .take(12)
            .collect();
        assert!(
            d[0] >= Duration::from_millis(100) && d[0] < Duration::from_millis(250),
            "{d:?}"
        );
        assert!(d.iter().all(|x| *x <= Duration::from_secs(4)), "{d:?}");
        assert!(d[11] >= Duration::from_secs(2), "{d:?}");
    }
}
