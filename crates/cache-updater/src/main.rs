//! `cache-updater`: Keeps counters, timelines, unique users, sessions and order state in Redis Cluster.

use std::process::ExitCode;

use eventpipe_stores::RedisConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<RedisConfig, _, _>("cache-updater", |ctx| async move {
        tracing::warn!("record consumption is not part of this build yet; serving admin endpoints until shutdown");
        ctx.readiness.set(false);
        ctx.shutdown.cancelled().await;
        Ok(())
    })
}
