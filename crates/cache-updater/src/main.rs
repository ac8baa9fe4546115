//! `cache-updater`: keeps counters, timelines, unique users, sessions and order state in a
//! Redis Cluster.

use std::process::ExitCode;

use cache_updater::CacheSink;
use eventpipe_stores::RedisConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<RedisConfig, _, _>("cache-updater", |ctx| async move {
        let sink = CacheSink::connect(&ctx.config.sink).await?;
        eventpipe_runtime::consumer::run(&ctx, sink).await?;
        Ok(())
    })
}
