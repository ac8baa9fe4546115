//! The schema registry stand-in behaves like Confluent's: `schema_registry_converter` registers,
//! fetches, encodes and decodes through it; raw HTTP cases from Confluent's API documentation
//! get Confluent's JSON shapes and error codes; its state survives a restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use eventpipe_tests::{stack, topic, unique, wait_for};
use reqwest::StatusCode;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use schema_registry_standin::journal::{Journal, KafkaJournal};
use schema_registry_standin::Registry;
use serde_json::{json, Value as Json};
use tokio_util::sync::CancellationToken;

const CT: &str = "application/vnd.schemaregistry.v1+json";
const V1: &str = r#"{"type":"record","name":"Ping","namespace":"eventpipe.test","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"Ping","namespace":"eventpipe.test","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"},{"name":"tag","type":"string","default":"none"}]}"#;
const V2_NO_DEFAULT: &str = r#"{"type":"record","name":"Ping","namespace":"eventpipe.test","fields":[{"name":"id","type":"string"},{"name":"n","type":"long"},{"name":"tag","type":"string"}]}"#;

#[tokio::test]
async fn converter_registers_encodes_and_decodes() {
    let url = stack().schema_registry_url;
    let topic = topic();
    let settings = SrSettings::new(url.clone());
    let encoder = AvroEncoder::new(settings.clone());
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        SuppliedSchema::new(
            Some("eventpipe.test.Ping".into()),
            SchemaType::Avro,
            V1.into(),
        ),
    );
    let bytes = encoder
        .encode(
            vec![("id", Value::String("a-1".into())), ("n", Value::Long(42))],
            strategy,
        )
        .await
        .expect("encoded through the registry");

    // Confluent wire format: magic 0, the id the registry assigned, then the Avro body.
    let latest: Json = reqwest::get(format!("{url}/subjects/{topic}-value/versions/latest"))
        .await
        .expect("GET latest")
        .json()
        .await
        .expect("json");
    let id = latest["id"].as_u64().expect("id") as u32;
    assert_eq!(latest["version"], 1);
    assert_eq!(bytes[0], 0);
    assert_eq!(
        u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
        id
    );

    let decoded = AvroDecoder::new(settings)
        .decode(Some(&bytes))
        .await
        .expect("decoded with the writer schema fetched by id");
    assert_eq!(
        decoded.value,
        Value::Record(vec![
            ("id".into(), Value::String("a-1".into())),
            ("n".into(), Value::Long(42)),
        ])
    );
}

/// A registry of its own on an ephemeral port, journalled to `journal_topic` on the stack's
/// broker, so it can be restarted without touching the shared one.
async fn own_registry(
    journal_topic: &str,
) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let bootstrap = stack().kafka_bootstrap;
    let (journal, replayed) = KafkaJournal::open(&bootstrap, journal_topic)
        .await
        .expect("journal opens");
    let registry = Arc::new(Registry::new(Journal::Kafka(journal), replayed));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        schema_registry_standin::serve(listener, registry, stop)
            .await
            .expect("serves");
    });
    (url, shutdown, task)
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Json>,
    ) -> (StatusCode, Json) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Accept", CT);
        if let Some(b) = body {
            req = req.header("Content-Type", CT).body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Json::String(text));
        if json.is_object() || json.is_array() {
            assert_eq!(ct, CT, "{path}: content type");
        }
        (status, json)
    }

    async fn get(&self, path: &str) -> (StatusCode, Json) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Json) -> (StatusCode, Json) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Json) -> (StatusCode, Json) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Json) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

fn error_code(body: &Json) -> u64 {
    body["error_code"].as_u64().unwrap_or_default()
}

#[tokio::test]
async fn confluent_api_cases_and_durable_state() {
    let journal_topic = unique("_schemas-test");
    let (base, shutdown, task) = own_registry(&journal_topic).await;
    let http = Http {
        client: reqwest::Client::new(),
        base,
    };
    let s = "orders-value";

    // Empty registry.
    assert_eq!(http.get("/subjects").await, (StatusCode::OK, json!([])));
    assert_eq!(
        http.get("/config").await,
        (StatusCode::OK, json!({"compatibilityLevel": "BACKWARD"}))
    );

    // Register v1; the same schema again (whitespace aside) is the same id and version.
    let (st, body) = http
        .post(&format!("/subjects/{s}/versions"), json!({"schema": V1}))
        .await;
    assert_eq!((st, body.clone()), (StatusCode::OK, json!({"id": 1})));
    let spaced = V1.replace(',', ", ");
    let (_, again) = http
        .post(
            &format!("/subjects/{s}/versions"),
            json!({"schema": spaced}),
        )
        .await;
    assert_eq!(again, json!({"id": 1}));
    assert_eq!(
        http.get(&format!("/subjects/{s}/versions")).await.1,
        json!([1])
    );

    // Invalid schema: 422 with 42201, not a 500.
    let (st, body) = http
        .post(
            &format!("/subjects/{s}/versions"),
            json!({"schema": "{\"type\":\"record\",\"name\":\"X\"}"}),
        )
        .await;
    assert_eq!(
        (st, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42201),
        "{body}"
    );
    let (st, body) = http
        .post(
            &format!("/subjects/{s}/versions"),
            json!({"schema": "not json at all"}),
        )
        .await;
    assert_eq!(
        (st, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42201),
        "{body}"
    );

    // Incompatible under BACKWARD: 409; the compatibility endpoint agrees.
    let (st, body) = http
        .post(
            &format!("/subjects/{s}/versions"),
            json!({"schema": V2_NO_DEFAULT}),
        )
        .await;
    assert_eq!(
        (st, error_code(&body)),
        (StatusCode::CONFLICT, 409),
        "{body}"
    );
    let (st, body) = http
        .post(
            &format!("/compatibility/subjects/{s}/versions/latest?verbose=true"),
            json!({"schema": V2_NO_DEFAULT}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["is_compatible"], false);
    assert!(!body["messages"].as_array().expect("messages").is_empty());
    let (_, body) = http
        .post(
            &format!("/compatibility/subjects/{s}/versions/1"),
            json!({"schema": V2}),
        )
        .await;
    assert_eq!(body, json!({"is_compatible": true}));

    // v2 with a default is fine: id 2, version 2; latest reflects it.
    let (_, body) = http
        .post(&format!("/subjects/{s}/versions"), json!({"schema": V2}))
        .await;
    assert_eq!(body, json!({"id": 2}));
    let (_, latest) = http.get(&format!("/subjects/{s}/versions/latest")).await;
    assert_eq!(
        (
            latest["subject"].clone(),
            latest["version"].clone(),
            latest["id"].clone()
        ),
        (json!(s), json!(2), json!(2))
    );
    assert_eq!(
        http.get(&format!("/subjects/{s}/versions/-1")).await.1["version"],
        2
    );

    // Lookup under a subject.
    let (st, body) = http
        .post(&format!("/subjects/{s}"), json!({"schema": V1}))
        .await;
    assert_eq!(
        (st, body["version"].clone(), body["id"].clone()),
        (StatusCode::OK, json!(1), json!(1))
    );
    let (st, body) = http
        .post(&format!("/subjects/{s}"), json!({"schema": V2_NO_DEFAULT}))
        .await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40403));

    // Not found cases.
    let (st, body) = http.get("/subjects/nope-value/versions").await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40401));
    let (st, body) = http.get(&format!("/subjects/{s}/versions/9")).await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40402));
    let (st, body) = http.get("/schemas/ids/999").await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40403));
    let (st, body) = http.get(&format!("/subjects/{s}/versions/zero")).await;
    assert_eq!(
        (st, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42202)
    );

    // Ids are global: the same schema under another subject keeps its id.
    let (_, body) = http
        .post("/subjects/other-value/versions", json!({"schema": V1}))
        .await;
    assert_eq!(body, json!({"id": 1}));
    assert_eq!(
        http.get("/schemas/ids/1/subjects").await.1,
        json!(["orders-value", "other-value"])
    );
    assert_eq!(
        http.get("/schemas/ids/1/versions").await.1,
        json!([{"subject": "orders-value", "version": 1}, {"subject": "other-value", "version": 1}])
    );
    assert_eq!(http.get("/schemas/ids/2").await.1, json!({"schema": V2}));

    // Config: per subject, every level, bad levels rejected.
    let (st, body) = http.get(&format!("/config/{s}")).await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40408));
    for level in [
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    ] {
        let (st, body) = http
            .put(&format!("/config/{s}"), json!({"compatibility": level}))
            .await;
        assert_eq!(
            (st, body),
            (StatusCode::OK, json!({"compatibility": level}))
        );
    }
    let (st, body) = http
        .put("/config", json!({"compatibility": "SIDEWAYS"}))
        .await;
    assert_eq!(
        (st, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42203)
    );
    http.put(&format!("/config/{s}"), json!({"compatibility": "NONE"}))
        .await;
    let (st, _) = http
        .post(
            &format!("/subjects/{s}/versions"),
            json!({"schema": V2_NO_DEFAULT}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "NONE accepts anything");
    assert_eq!(
        http.get(&format!("/config/{s}")).await.1,
        json!({"compatibilityLevel": "NONE"})
    );

    // Deletes: permanent needs a soft delete first.
    let (st, body) = http.delete("/subjects/other-value?permanent=true").await;
    assert_eq!((st, error_code(&body)), (StatusCode::NOT_FOUND, 40405));
    assert_eq!(
        http.delete("/subjects/other-value").await,
        (StatusCode::OK, json!([1]))
    );
    assert_eq!(http.get("/subjects").await.1, json!(["orders-value"]));
    assert_eq!(
        http.get("/subjects?deleted=true").await.1,
        json!(["orders-value", "other-value"])
    );

    // Restart: a new instance replays the journal and answers the same.
    let before = (
        http.get("/subjects?deleted=true").await,
        http.get(&format!("/subjects/{s}/versions")).await,
        http.get(&format!("/config/{s}")).await,
        http.get("/schemas/ids/3").await,
    );
    shutdown.cancel();
    task.await.expect("registry task");
    let (base, shutdown, task) = own_registry(&journal_topic).await;
    let http = Http {
        client: reqwest::Client::new(),
        base,
    };
    let after = wait_for(
        "the restarted registry",
        Duration::from_secs(20),
        || async {
            Some((
                http.get("/subjects?deleted=true").await,
                http.get(&format!("/subjects/{s}/versions")).await,
                http.get(&format!("/config/{s}")).await,
                http.get("/schemas/ids/3").await,
            ))
        },
    )
    .await;
    assert_eq!(after, before);
    assert_eq!(before.1 .1, json!([1, 2, 3]));
    // The next id continues after the replayed ones.
    let v4 = V2.replace("\"none\"", "\"other\"");
    assert_eq!(
        http.post(&format!("/subjects/{s}/versions"), json!({"schema": v4}))
            .await
            .1,
        json!({"id": 4})
    );
    shutdown.cancel();
    task.await.expect("registry task");
}
