//! Messages through the scheduler's `Messages` service over mTLS, on the
//! embedded (SQLite) log: publish → deliver → ack, every change committed.
//!
//!   cargo bench -p devcycle-scheduler --bench messages
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

async fn throughput(c: &Client) {
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
        "throughput: {BURST} messages in {secs:.3} s = {:.0} messages/s (publish → deliver → ack)",
        BURST as f64 / secs
    );
}

async fn latency(c: &Client) {
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
        "latency (publish → delivered, {SEQUENTIAL} one at a time): p50 {:.3} ms, p99 {:.3} ms; \
         mean publish call {:.3} ms, ack call {:.3} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(pubs / SEQUENTIAL as u32),
        ms(acks / SEQUENTIAL as u32)
    );
}

#[tokio::main]
async fn main() {
    devcycle::tls::install_default_provider();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
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
            db: Database::open(&url).await.unwrap(),
            // Messages never call the registry.
            registry: "127.0.0.1:9".into(),
            bus: Arc::new(devcycle::bus::InProcessBus::default()),
            topic_prefix: "devcycle".into(),
            kafka_brokers: String::new(),
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
    throughput(&c).await;
    latency(&c).await;
    stop.cancel();
}
