//! `ingest-writer`: Writes every event once to MongoDB `events` and keeps `orders` at their newest version.

use std::process::ExitCode;

use eventpipe_stores::MongoConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<MongoConfig, _, _>("ingest-writer", |ctx| async move {
        tracing::warn!("record consumption is not part of this build yet; serving admin endpoints until shutdown");
        ctx.readiness.set(false);
        ctx.shutdown.cancelled().await;
        Ok(())
    })
}
