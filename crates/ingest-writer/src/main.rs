//! `ingest-writer`: writes every event once to MongoDB `events` and keeps `orders` at their
//! newest version.

use std::process::ExitCode;

use eventpipe_stores::MongoConfig;
use ingest_writer::IngestSink;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<MongoConfig, _, _>("ingest-writer", |ctx| async move {
        let sink = IngestSink::connect(&ctx.config.sink).await?;
        eventpipe_runtime::consumer::run(&ctx, sink).await?;
        Ok(())
    })
}
