//! `aggregator`: Folds events into event-time buckets in `event_aggregates` and `order_aggregates`.

use std::process::ExitCode;

use eventpipe_stores::MongoConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<MongoConfig, _, _>("aggregator", |ctx| async move {
        tracing::warn!("record consumption is not part of this build yet; serving admin endpoints until shutdown");
        ctx.readiness.set(false);
        ctx.shutdown.cancelled().await;
        Ok(())
    })
}
