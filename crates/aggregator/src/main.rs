//! `aggregator`: folds events into event-time buckets in `event_aggregates` and
//! `order_aggregates`.

use std::process::ExitCode;

use aggregator::AggregatorSink;
use eventpipe_stores::MongoConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<MongoConfig, _, _>("aggregator", |ctx| async move {
        let sink = AggregatorSink::connect(&ctx.config.sink).await?;
        eventpipe_runtime::consumer::run(&ctx, sink).await?;
        Ok(())
    })
}
