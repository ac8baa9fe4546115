//! `audit-writer`: appends audit events to the tamper-evident MongoDB `audit_logs`.

use std::process::ExitCode;

use audit_writer::AuditSink;
use eventpipe_stores::MongoConfig;

fn main() -> ExitCode {
    eventpipe_runtime::app::main::<MongoConfig, _, _>("audit-writer", |ctx| async move {
        let sink = AuditSink::connect(&ctx.config.sink).await?;
        eventpipe_runtime::consumer::run(&ctx, sink).await?;
        Ok(())
    })
}
