//! Shared helpers for the integration tests in `tests/`.
//!
//! The tests run against the local stack that `make test` starts (see `testcontainers/`); each
//! test uses fresh topic, group and database names, so they run in parallel and re-run cleanly.

use std::future::Future;
use std::time::{Duration, Instant};

pub mod kafka;
pub mod mongo;
pub mod pipeline;
pub mod records;
pub mod redis;

pub use local_stack::testing::{database, group, stack, topic, unique};

/// Polls `check` until it yields `Some`, failing the test with `what` after `timeout`. Tests wait
/// for conditions with this, never with fixed sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
