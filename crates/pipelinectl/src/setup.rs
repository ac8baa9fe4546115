//! Creating the topics and registering the schemas, idempotently.

use std::time::Duration;

use eventpipe_events::schemas::{value_subject, ORDER_EVENT, PLATFORM_EVENT};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use schema_registry_converter::async_impl::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

/// A schema that looks like a `PlatformEvent` but cannot be read as one (`tenant_id` is an
/// int): registered under its own subject so poison records can carry a real, incompatible id.
pub const INCOMPATIBLE_PLATFORM_EVENT: &str = r#"{"type":"record","name":"PlatformEvent","namespace":"eventpipe.events","fields":[{"name":"tenant_id","type":"int"},{"name":"event_id","type":"string"}]}"#;

/// The registry ids of every version the producer writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaIds {
    pub platform: [u32; 2],
    pub order: [u32; 2],
    pub incompatible: u32,
}

/// Creates each topic with `partitions` partitions unless it exists.
pub async fn create_topics(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| format!("cannot create an admin client for {bootstrap}: {e}"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| format!("cannot create topics on {bootstrap}: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("cannot create topic {t}: {code}")),
        }
    }
    Ok(())
}

async fn register(settings: &SrSettings, subject: &str, schema: &str) -> Result<u32, String> {
    post_schema(
        settings,
        subject.to_owned(),
        SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned()),
    )
    .await
    .map(|r| r.id)
    .map_err(|e| format!("registering under {subject}: {e}"))
}

/// Registers every version of both events under `<topic>-value` (oldest first, so the
/// registry's BACKWARD check sees them in order) and the incompatible poison schema.
pub async fn register_schemas(
    registry_url: &str,
    platform_topic: &str,
    orders_topic: &str,
) -> Result<SchemaIds, String> {
    let settings = SrSettings::new(registry_url.to_owned());
    let platform_subject = value_subject(platform_topic);
    let order_subject = value_subject(orders_topic);
    let mut platform = [0; 2];
    for (i, schema) in PLATFORM_EVENT.iter().enumerate() {
        platform[i] = register(&settings, &platform_subject, schema).await?;
    }
    let mut order = [0; 2];
    for (i, schema) in ORDER_EVENT.iter().enumerate() {
        order[i] = register(&settings, &order_subject, schema).await?;
    }
    let incompatible = register(
        &settings,
        &format!("{platform_topic}-poison-value"),
        INCOMPATIBLE_PLATFORM_EVENT,
    )
    .await?;
    Ok(SchemaIds {
        platform,
        order,
        incompatible,
    })
}
