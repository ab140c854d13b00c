//! Messages through the scheduler's `Messages` service over mTLS: publish →
//! deliver → ack, every change committed, on the embedded (SQLite) log and,
//! in the same run, on the Kafka log (PostgreSQL + Kafka), with the raw
//! rdkafka producer and consumer on the same broker as the floor.
//!
//!   cargo bench -p devcycle-scheduler --bench messages
//!
//! The Kafka runs use `DEVCYCLE_TEST_KAFKA_BROKERS` (default 127.0.0.1:9092)
//! and a fresh database on `DEVCYCLE_TEST_DATABASE_URL`; they are skipped,
//! saying so, where no broker answers.
//!
//! Prints throughput (20,000 messages published in batches of 100 while one
//! subscriber with 1,024 credits acks them in batches) and latency (2,000
//! messages one at a time: publish to delivery, then ack).

use std::sync::Arc;
use std::time::{Duration, Instant};

use devcycle::db::Database;
use devcycle::identity::Kind;
use devcycle::proto::messages::v1 as pb;
use devcycle::proto::messages::v1::messages_client::MessagesClient;
use devcycle::testkit::TestPki;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const BURST: usize = 20_000;
const BATCH: usize = 100;
const SEQUENTIAL: usize = 2_000;

type Client = MessagesClient<Channel>;

fn message(i: usize) -> pb::PublishRequest {
    pb::PublishRequest {
        key: format!("k{}", i % 16),
        payload: br#"{"n": 1}"#.to_vec(),
        ..Default::default()
    }
}

async fn subscribe(c: &mut Client, group: &str) -> tonic::Streaming<pb::SubscribeResponse> {
    c.subscribe(pb::SubscribeRequest {
        topic: "bench".into(),
        group: group.into(),
        max_in_flight: 1024,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn ack(c: &mut Client, group: &str, ids: Vec<String>) {
    c.ack(pb::AckRequest {
        topic: "bench".into(),
        group: group.into(),
        ids,
    })
    .await
    .unwrap();
}

async fn throughput(label: &str, c: &Client) {
    let mut sub = c.clone();
    let mut stream = subscribe(&mut sub, "burst").await;
    let start = Instant::now();
    let mut publisher = c.clone();
    let publish = tokio::spawn(async move {
        for b in 0..BURST / BATCH {
            let messages = (0..BATCH).map(|i| message(b * BATCH + i)).collect();
            publisher
                .publish_batch(pb::PublishBatchRequest {
                    topic: "bench".into(),
                    messages,
                })
                .await
                .unwrap();
        }
    });
    let mut got = 0;
    let mut pending = Vec::new();
    while got < BURST {
        let m = stream.message().await.unwrap().unwrap().message.unwrap();
        pending.push(m.id);
        got += 1;
        if pending.len() == 256 || got == BURST {
            ack(&mut sub, "burst", std::mem::take(&mut pending)).await;
        }
    }
    publish.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label} throughput: {BURST} messages in {secs:.3} s = {:.0} messages/s (publish → deliver → ack)",
        BURST as f64 / secs
    );
}

async fn latency(label: &str, c: &Client) {
    let mut sub = c.clone();
    let mut stream = subscribe(&mut sub, "one-by-one").await;
    let mut publisher = c.clone();
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let (mut pubs, mut acks) = (Duration::ZERO, Duration::ZERO);
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        publisher
            .publish(pb::PublishRequest {
                topic: "bench".into(),
                ..message(i)
            })
            .await
            .unwrap();
        pubs += t.elapsed();
        let m = stream.message().await.unwrap().unwrap().message.unwrap();
        samples.push(t.elapsed());
        let a = Instant::now();
        ack(&mut sub, "one-by-one", vec![m.id]).await;
        acks += a.elapsed();
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label} latency (publish → delivered, {SEQUENTIAL} one at a time): p50 {:.3} ms, p99 {:.3} ms; \
         mean publish call {:.3} ms, ack call {:.3} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(pubs / SEQUENTIAL as u32),
        ms(acks / SEQUENTIAL as u32)
    );
}

/// Runs both measurements on a fresh scheduler over `url`, with messages
/// in Kafka at `brokers` if not empty.
async fn measure(label: &str, url: &str, brokers: &str) {
    let pki = TestPki::new();
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sched = devcycle_scheduler::start(
        devcycle_scheduler::Options {
            endpoint: devcycle::server::Endpoint {
                listener,
                tls: pki.identity(Kind::Service, "scheduler"),
                gateway: TestPki::id(Kind::Service, "gateway"),
                health_grace: Duration::ZERO,
                drain: Duration::from_millis(200),
            },
            db: Database::open(url).await.unwrap(),
            // Messages never call the registry.
            registry: "127.0.0.1:9".into(),
            bus: Arc::new(devcycle::bus::InProcessBus::default()),
            topic_prefix: format!("bench{}", uuid::Uuid::new_v4().simple()),
            kafka_brokers: brokers.into(),
            heartbeat_interval: Duration::from_secs(5),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let ch = devcycle::client::channel(
        &pki.identity(Kind::User, "bench"),
        &sched.addr.to_string(),
        TestPki::id(Kind::Service, "scheduler"),
    )
    .unwrap();
    let mut c = MessagesClient::new(ch);
    c.create_topic(pb::CreateTopicRequest {
        topic: Some(pb::Topic {
            name: "bench".into(),
            partitions: 4,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    throughput(label, &c).await;
    latency(label, &c).await;
    stop.cancel();
}

/// The floor: rdkafka's producer and an assigned consumer on one topic of
/// the same broker, nothing else (no ids, no PostgreSQL, no gRPC).
async fn raw(brokers: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let topic = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    admin
        .create_topics(
            [&NewTopic::new(&topic, 4, TopicReplication::Fixed(-1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("queue.buffering.max.ms", "1")
        .create()
        .unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let send = |i: usize| {
        let key = format!("k{}", i % 16);
        producer
            .send_result(
                FutureRecord::to(&topic)
                    .key(&key)
                    .payload(br#"{"n": 1}"#.as_slice()),
            )
            .map_err(|(e, _)| e)
            .unwrap()
    };
    let start = Instant::now();
    let publish = async {
        for b in 0..BURST / BATCH {
            let sent: Vec<_> = (0..BATCH).map(|i| send(b * BATCH + i)).collect();
            for d in sent {
                d.await.unwrap().unwrap();
            }
        }
    };
    let consume = async {
        for _ in 0..BURST {
            consumer.recv().await.unwrap();
        }
    };
    tokio::join!(publish, consume);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raw rdkafka throughput: {BURST} messages in {secs:.3} s = {:.0} messages/s (produce → consume)",
        BURST as f64 / secs
    );
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        send(i).await.unwrap().unwrap();
        consumer.recv().await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "raw rdkafka latency (produce → consumed, {SEQUENTIAL} one at a time): p50 {:.3} ms, p99 {:.3} ms",
        at(0.50).as_secs_f64() * 1000.0,
        at(0.99).as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    devcycle::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    measure("embedded", &url, "").await;
    let brokers =
        std::env::var("DEVCYCLE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let answers = std::net::TcpStream::connect_timeout(
        &brokers
            .split(',')
            .next()
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| "127.0.0.1:9092".parse().unwrap()),
        Duration::from_secs(1),
    )
    .is_ok();
    if !answers {
        println!("kafka: no broker answers at {brokers}; the Kafka runs are skipped");
        return;
    }
    let pg = devcycle::testkit::fresh_postgres().await;
    measure("kafka", &pg, &brokers).await;
    raw(&brokers).await;
}
