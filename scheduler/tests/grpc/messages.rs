//! Messages over the wire on the embedded log: publish, consumer groups
//! with acks, redelivery, dead letters, replay, access lists and bad input.

use std::collections::HashMap;
use std::time::Duration;

use devcycle::proto::messages::v1 as pb;
use devcycle::proto::messages::v1::messages_client::MessagesClient;
use devcycle::testkit::expect_err;
use pb::start_position::At;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::mesh::{AsUser, Db, Mesh};

type Client = MessagesClient<Channel>;

async fn create(c: &mut Client, name: &str, max_deliveries: u32) -> pb::Topic {
    c.create_topic(pb::CreateTopicRequest {
        topic: Some(pb::Topic {
            name: name.into(),
            partitions: 3,
            max_deliveries,
            ..Default::default()
        }),
    })
    .await
    .unwrap()
    .into_inner()
    .topic
    .unwrap()
}

fn msg(topic: &str, id: &str, key: &str, payload: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        id: id.into(),
        key: key.into(),
        payload: payload.as_bytes().to_vec(),
        headers: HashMap::from([("traceparent".into(), format!("00-{id}"))]),
    }
}

async fn publish(c: &mut Client, topic: &str, id: &str) -> pb::PublishResponse {
    c.publish(msg(topic, id, "", id))
        .await
        .unwrap()
        .into_inner()
}

async fn subscribe(
    c: &mut Client,
    topic: &str,
    group: &str,
    at: At,
    in_flight: u32,
    deadline_ms: u32,
) -> tonic::Streaming<pb::SubscribeResponse> {
    c.subscribe(pb::SubscribeRequest {
        topic: topic.into(),
        group: group.into(),
        start: Some(pb::StartPosition { at: Some(at) }),
        replay: false,
        max_in_flight: in_flight,
        ack_deadline_ms: deadline_ms,
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next delivery, within a bound far above any real wait.
async fn next(s: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::Message {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a delivery within 20 s")
        .unwrap()
        .expect("the stream is open")
        .message
        .unwrap()
}

async fn ack(c: &mut Client, topic: &str, group: &str, ids: &[&str]) {
    c.ack(pb::AckRequest {
        topic: topic.into(),
        group: group.into(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .unwrap();
}

async fn published_messages_reach_a_group_once_and_repeats_are_not_stored(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    let t = create(&mut c, "builds", 0).await;
    assert_eq!((t.partitions, t.max_deliveries), (3, 5));
    assert_eq!(t.retention_s, 7 * 24 * 3600);
    assert_eq!(t.owner, "user/tester");

    let first = c
        .publish(msg("builds", "m-1", "repo-a", "one"))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .publish(msg("builds", "m-1", "repo-a", "one"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(
        (first.partition, first.offset),
        (again.partition, again.offset)
    );
    let batch = c
        .publish_batch(pb::PublishBatchRequest {
            topic: "builds".into(),
            messages: vec![
                msg("", "m-2", "repo-a", "two"),
                msg("", "m-3", "repo-a", "three"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    // One key, one partition, consecutive offsets.
    assert_eq!(batch[0].partition, first.partition);
    assert_eq!(
        (batch[0].offset, batch[1].offset),
        (first.offset + 1, first.offset + 2)
    );

    let mut s = subscribe(&mut c, "builds", "ci", At::Earliest(true), 0, 0).await;
    let got: Vec<pb::Message> = vec![next(&mut s).await, next(&mut s).await, next(&mut s).await];
    let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m-1", "m-2", "m-3"]);
    assert_eq!(got[1].payload, b"two");
    assert_eq!(got[1].headers["traceparent"], "00-m-2");
    assert!(got.iter().all(|m| m.delivery == 1 && m.topic == "builds"));
    ack(&mut c, "builds", "ci", &ids).await;
    drop(s);

    // Acked messages are not delivered to the group again: the next one
    // it sees is the next published.
    let mut s = subscribe(&mut c, "builds", "ci", At::Earliest(true), 0, 0).await;
    publish(&mut c, "builds", "m-4").await;
    assert_eq!(next(&mut s).await.id, "m-4");
    // Another group reads the whole topic from where it asks.
    let mut other = subscribe(
        &mut c,
        "builds",
        "audit",
        At::Offset(first.offset + 2),
        0,
        0,
    )
    .await;
    assert_eq!(next(&mut other).await.id, "m-3");
}

async fn what_a_departed_subscriber_held_goes_to_the_rest_of_its_group(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "jobs", 0).await;
    for i in 0..6 {
        publish(&mut c, "jobs", &format!("j{i}")).await;
    }
    // Credits: the first subscriber holds at most 4 unacked.
    let mut a = subscribe(&mut c, "jobs", "workers", At::Earliest(true), 4, 0).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut a).await.id);
    }
    ack(&mut c, "jobs", "workers", &[held[0].as_str()]).await;
    // Its ack freed one credit.
    let fifth = next(&mut a).await;
    assert_eq!(fifth.delivery, 1);
    drop(a);

    // The other member gets every unacked message: 3 again, 1 new.
    let mut b = subscribe(&mut c, "jobs", "workers", At::Earliest(true), 0, 0).await;
    let mut seen = HashMap::new();
    for _ in 0..5 {
        let m = next(&mut b).await;
        seen.insert(m.id.clone(), m.delivery);
    }
    for id in &held[1..] {
        assert_eq!(seen[id], 2, "{id} was delivered again, counted");
    }
    assert_eq!(seen[&fifth.id], 2);
    assert_eq!(seen.values().filter(|d| **d == 1).count(), 1);
    assert!(
        !seen.contains_key(&held[0]),
        "an acked message never returns"
    );
}

async fn unacked_messages_return_after_the_deadline_and_poison_is_dead_lettered(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "reviews", 3).await;
    let mut s = subscribe(&mut c, "reviews", "timers", At::Latest(true), 0, 300).await;
    publish(&mut c, "reviews", "slow").await;
    assert_eq!(next(&mut s).await.delivery, 1);
    // Not acked within its deadline: delivered again, counted.
    let again = next(&mut s).await;
    assert_eq!((again.id.as_str(), again.delivery), ("slow", 2));
    drop(s);

    let mut s = subscribe(&mut c, "reviews", "bots", At::Latest(true), 0, 0).await;
    publish(&mut c, "reviews", "poison").await;
    for delivery in 1..=3 {
        let p = next(&mut s).await;
        assert_eq!((p.id.as_str(), p.delivery), ("poison", delivery));
        c.nack(pb::NackRequest {
            topic: "reviews".into(),
            group: "bots".into(),
            id: "poison".into(),
            delay_ms: 0,
            reason: "cannot parse".into(),
        })
        .await
        .unwrap();
    }
    let dead = c
        .list_dead_letters(pb::ListDeadLettersRequest {
            topic: "reviews".into(),
            group: "bots".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.message.as_ref().unwrap().id, "poison");
    assert_eq!(d.message.as_ref().unwrap().delivery, 3);
    assert_eq!(d.reason, "nacked on delivery 3: cannot parse");

    // Requeued, it is delivered afresh; acked, it is gone.
    c.requeue_dead_letter(pb::RequeueDeadLetterRequest {
        topic: "reviews".into(),
        group: "bots".into(),
        id: "poison".into(),
    })
    .await
    .unwrap();
    let back = next(&mut s).await;
    assert_eq!((back.id.as_str(), back.delivery), ("poison", 1));
    ack(&mut c, "reviews", "bots", &["poison"]).await;
    let err = c
        .requeue_dead_letter(pb::RequeueDeadLetterRequest {
            topic: "reviews".into(),
            group: "bots".into(),
            id: "poison".into(),
        })
        .await;
    expect_err(err, Code::NotFound, "id");
}

async fn groups_replay_from_a_time_or_an_offset(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "events", 0).await;
    publish(&mut c, "events", "e1").await;
    // The next message must carry a later millisecond than e1.
    let mut s = subscribe(&mut c, "events", "probe", At::Earliest(true), 0, 0).await;
    let e1 = next(&mut s).await;
    let t1 = devcycle::time::from_timestamp(e1.publish_time.as_ref()).unwrap();
    for _ in 0..1000 {
        if devcycle::time::now_ms() > t1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    publish(&mut c, "events", "e2").await;
    publish(&mut c, "events", "e3").await;
    drop(s);

    let mut s = subscribe(&mut c, "events", "late", At::Latest(true), 0, 0).await;
    publish(&mut c, "events", "e4").await;
    assert_eq!(next(&mut s).await.id, "e4");
    ack(&mut c, "events", "late", &["e4"]).await;
    drop(s);

    // The same group, replayed from after e1's time: e2, e3, e4 again,
    // acked or not.
    let after_e1 = devcycle::time::to_timestamp(t1 + 1);
    let mut s = c
        .subscribe(pb::SubscribeRequest {
            topic: "events".into(),
            group: "late".into(),
            start: Some(pb::StartPosition {
                at: Some(At::Time(after_e1)),
            }),
            replay: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids = vec![
        next(&mut s).await.id,
        next(&mut s).await.id,
        next(&mut s).await.id,
    ];
    ids.sort();
    assert_eq!(ids, ["e2", "e3", "e4"]);
}

fn as_user(m: &Mesh, subject: &str, roles: &str) -> MessagesClient<AsUser> {
    MessagesClient::new(m.as_user(subject, roles))
}

async fn a_topics_lists_say_who_may_publish_and_read(db: Db) {
    let m = Mesh::start(db).await;
    let mut owner = as_user(&m, "ana", "developer");
    owner
        .create_topic(pb::CreateTopicRequest {
            topic: Some(pb::Topic {
                name: "deploys".into(),
                publishers: vec!["user/bob".into()],
                subscribers: vec!["user/vic".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut bob = as_user(&m, "bob", "developer");
    let mut eve = as_user(&m, "eve", "developer");
    let mut vic = as_user(&m, "vic", "developer");
    for c in [&mut owner, &mut bob] {
        c.publish(msg("deploys", "", "", "{}")).await.unwrap();
    }
    let denied = eve.publish(msg("deploys", "", "", "{}")).await;
    expect_err(denied, Code::PermissionDenied, "only user/ana, user/bob");

    let sub = |group: &str| pb::SubscribeRequest {
        topic: "deploys".into(),
        group: group.into(),
        start: Some(pb::StartPosition {
            at: Some(At::Earliest(true)),
        }),
        ..Default::default()
    };
    expect_err(
        bob.subscribe(sub("b")).await,
        Code::PermissionDenied,
        "deploys",
    );
    let mut s = vic.subscribe(sub("v")).await.unwrap().into_inner();
    assert_eq!(next(&mut s).await.delivery, 1);
}

async fn bad_input_is_refused_naming_the_field(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "ok", 0).await;
    let topic = |name: &str| pb::CreateTopicRequest {
        topic: Some(pb::Topic {
            name: name.into(),
            ..Default::default()
        }),
    };
    expect_err(
        c.create_topic(topic("Bad Name")).await,
        Code::InvalidArgument,
        "topic.name",
    );
    expect_err(c.create_topic(topic("ok")).await, Code::AlreadyExists, "ok");
    let mut big = topic("big");
    big.topic.as_mut().unwrap().partitions = 65;
    expect_err(
        c.create_topic(big).await,
        Code::InvalidArgument,
        "topic.partitions",
    );
    let mut acl = topic("acl");
    acl.topic.as_mut().unwrap().publishers = vec!["team/x".into()];
    expect_err(
        c.create_topic(acl).await,
        Code::InvalidArgument,
        "topic.publishers[0]",
    );

    expect_err(
        c.publish(msg("nope", "", "", "{}")).await,
        Code::NotFound,
        "topic",
    );
    let mut huge = msg("ok", "", "", "");
    huge.payload = vec![b'x'; 1024 * 1024 + 1];
    expect_err(c.publish(huge).await, Code::InvalidArgument, "payload");
    // The largest payload accepted is stored (Kafka's default limit is
    // below it: the log's producer makes room).
    let mut largest = msg("ok", "largest", "", "");
    largest.payload = vec![b'x'; 1024 * 1024];
    assert!(!c.publish(largest).await.unwrap().into_inner().duplicate);
    let mut header = msg("ok", "", "", "{}");
    header.headers.insert("Bad Header".into(), "v".into());
    expect_err(c.publish(header).await, Code::InvalidArgument, "headers");
    let mut key = msg("ok", "", "", "{}");
    key.key = "k".repeat(257);
    expect_err(c.publish(key).await, Code::InvalidArgument, "key");
    let empty = pb::PublishBatchRequest {
        topic: "ok".into(),
        messages: vec![],
    };
    expect_err(
        c.publish_batch(empty).await,
        Code::InvalidArgument,
        "messages",
    );
    let mut bad_second = msg("", "", "", "{}");
    bad_second.id = "Not An Id".into();
    let batch = pb::PublishBatchRequest {
        topic: "ok".into(),
        messages: vec![msg("", "fine", "", "{}"), bad_second],
    };
    expect_err(
        c.publish_batch(batch).await,
        Code::InvalidArgument,
        "messages[1].id",
    );
    // The whole batch is checked first: the valid message was not stored.
    let again = c
        .publish(msg("ok", "fine", "", "{}"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.duplicate);

    let sub = |group: &str, in_flight: u32| pb::SubscribeRequest {
        topic: "ok".into(),
        group: group.into(),
        max_in_flight: in_flight,
        ..Default::default()
    };
    expect_err(
        c.subscribe(sub("", 0)).await,
        Code::InvalidArgument,
        "group",
    );
    expect_err(
        c.subscribe(sub("g", 1025)).await,
        Code::InvalidArgument,
        "max_in_flight",
    );
    let mut neg = sub("g", 0);
    neg.start = Some(pb::StartPosition {
        at: Some(At::Offset(-1)),
    });
    expect_err(
        c.subscribe(neg).await,
        Code::InvalidArgument,
        "start.offset",
    );
    let nack = pb::NackRequest {
        topic: "ok".into(),
        group: "g".into(),
        id: "fine".into(),
        ..Default::default()
    };
    expect_err(c.nack(nack).await, Code::FailedPrecondition, "id");
    let no_ids = pb::AckRequest {
        topic: "ok".into(),
        group: "g".into(),
        ids: vec![],
    };
    expect_err(c.ack(no_ids).await, Code::InvalidArgument, "ids");
    let page = pb::ListTopicsRequest {
        page_size: 0,
        page_token: "forged".into(),
    };
    expect_err(
        c.list_topics(page).await,
        Code::InvalidArgument,
        "page_token",
    );
}

async fn topics_are_listed_by_name_in_pages(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    for name in ["c", "a", "b"] {
        create(&mut c, name, 0).await;
    }
    let page = c
        .list_topics(pb::ListTopicsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = page.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let rest = c
        .list_topics(pb::ListTopicsRequest {
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.topics[0].name, "c");
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn a_scheduler_on_postgresql_without_kafka_says_where_messages_live() {
    let m = Mesh::start(Db::Postgres).await;
    let mut c = m.messages();
    let err = c
        .create_topic(pb::CreateTopicRequest {
            topic: Some(pb::Topic {
                name: "t".into(),
                ..Default::default()
            }),
        })
        .await;
    expect_err(err, Code::FailedPrecondition, "configure kafka.brokers");
    let err = c.publish(msg("t", "", "", "{}")).await;
    expect_err(err, Code::FailedPrecondition, "without Kafka");
}

async fn a_replay_keeps_held_what_lies_before_its_start(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "jobs", 0).await;
    publish(&mut c, "jobs", "old").await;
    let mut a = subscribe(&mut c, "jobs", "r", At::Earliest(true), 0, 0).await;
    assert_eq!(next(&mut a).await.id, "old");
    // Moved to the end, the group still holds "old": when its holder
    // leaves, the group's other member gets it.
    let mut b = c
        .subscribe(pb::SubscribeRequest {
            topic: "jobs".into(),
            group: "r".into(),
            start: Some(pb::StartPosition {
                at: Some(At::Latest(true)),
            }),
            replay: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    drop(a);
    let back = next(&mut b).await;
    assert_eq!((back.id.as_str(), back.delivery), ("old", 2));
}

async fn nacked_messages_wait_their_delay_and_unacked_ones_die_at_the_limit(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = m.messages();
    create(&mut c, "slow", 2).await;
    let mut s = subscribe(&mut c, "slow", "g", At::Latest(true), 0, 1000).await;
    publish(&mut c, "slow", "n").await;
    assert_eq!(next(&mut s).await.delivery, 1);
    c.nack(pb::NackRequest {
        topic: "slow".into(),
        group: "g".into(),
        id: "n".into(),
        delay_ms: 200,
        reason: String::new(),
    })
    .await
    .unwrap();
    let again = next(&mut s).await;
    assert_eq!((again.id.as_str(), again.delivery), ("n", 2));
    // Never acked: after its second deadline it is dead, not delivered.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let dead = c
            .list_dead_letters(pb::ListDeadLettersRequest {
                topic: "slow".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if !dead.is_empty() {
            break dead;
        }
        assert!(std::time::Instant::now() < end, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead[0].reason, "not acked after 2 deliveries");
    assert_eq!(dead[0].group, "g");
}

async fn only_maintainers_use_a_triggers_group_and_readers_see_dead_letters(db: Db) {
    let m = Mesh::start(db).await;
    let mut owner = as_user(&m, "ana", "developer");
    owner
        .create_topic(pb::CreateTopicRequest {
            topic: Some(pb::Topic {
                name: "closed".into(),
                subscribers: vec!["user/ana".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let sub = pb::SubscribeRequest {
        topic: "closed".into(),
        group: "trigger.x.1".into(),
        ..Default::default()
    };
    expect_err(owner.subscribe(sub).await, Code::PermissionDenied, "group");
    let list = pb::ListDeadLettersRequest {
        topic: "closed".into(),
        ..Default::default()
    };
    let mut eve = as_user(&m, "eve", "viewer");
    expect_err(
        eve.list_dead_letters(list.clone()).await,
        Code::PermissionDenied,
        "closed",
    );
    owner.list_dead_letters(list).await.unwrap();
}

/// On Kafka a group's members may be served by different schedulers:
/// each reads ahead, and a message becomes the group's through the one
/// compare-and-set that moves its cursor, so nothing is delivered twice or
/// skipped; an ack on either scheduler counts.
#[tokio::test]
async fn a_group_spans_schedulers_on_kafka() {
    let m = Mesh::start(Db::Kafka).await;
    let other = m.replica().await;
    let mut a = m.messages();
    let mut b = m.messages_of(&other);
    create(&mut a, "shared", 0).await;
    // Both join the new group at once: it is placed once.
    let (sa, sb) = {
        let (mut a, mut b) = (a.clone(), b.clone());
        tokio::join!(
            async move { subscribe(&mut a, "shared", "g", At::Earliest(true), 10, 30_000).await },
            async move { subscribe(&mut b, "shared", "g", At::Earliest(true), 10, 30_000).await },
        )
    };
    let (mut sa, mut sb) = (sa, sb);
    const N: usize = 60;
    for i in 0..N {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        publish(c, "shared", &format!("s{i}")).await;
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut by = [0usize; 2];
    let mut unacked: Vec<(String, usize)> = Vec::new();
    while seen.len() < N {
        let (got, from) = tokio::select! {
            m = next(&mut sa) => (m, 0),
            m = next(&mut sb) => (m, 1),
        };
        by[from] += 1;
        *seen.entry(got.id.clone()).or_default() += 1;
        unacked.push((got.id, from));
        // Nothing is acked until both schedulers delivered: one holding
        // its 10 credits leaves the rest to the other. Then each message
        // is acked on the scheduler that did not deliver it.
        if by[0] > 0 && by[1] > 0 {
            for (id, from) in unacked.drain(..) {
                let c = if from == 0 { &mut b } else { &mut a };
                ack(c, "shared", "g", &[id.as_str()]).await;
            }
        }
    }
    assert!(by[0] > 0 && by[1] > 0, "both schedulers delivered: {by:?}");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    assert!((0..N).all(|i| seen.contains_key(&format!("s{i}"))));
    // Nothing more is due: a late message reaches the group once, and
    // nothing else follows it.
    publish(&mut b, "shared", "late").await;
    let got = tokio::select! {
        m = next(&mut sa) => m,
        m = next(&mut sb) => m,
    };
    assert_eq!((got.id.as_str(), got.delivery), ("late", 1));
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        tokio::select! {
            m = sa.message() => m,
            m = sb.message() => m,
        }
    })
    .await;
    assert!(quiet.is_err(), "nothing else is delivered: {quiet:?}");
}

crate::on_both_logs!(
    published_messages_reach_a_group_once_and_repeats_are_not_stored,
    what_a_departed_subscriber_held_goes_to_the_rest_of_its_group,
    unacked_messages_return_after_the_deadline_and_poison_is_dead_lettered,
    groups_replay_from_a_time_or_an_offset,
    a_topics_lists_say_who_may_publish_and_read,
    bad_input_is_refused_naming_the_field,
    topics_are_listed_by_name_in_pages,
    a_replay_keeps_held_what_lies_before_its_start,
    nacked_messages_wait_their_delay_and_unacked_ones_die_at_the_limit,
    only_maintainers_use_a_triggers_group_and_readers_see_dead_letters,
);
