//! Triggers over the wire: runs started from messages, once per message
//! however often it is delivered, filters, dead letters and bad input.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use devcycle::proto::messages::v1 as pb;
use devcycle::proto::messages::v1::messages_client::MessagesClient;
use devcycle::proto::scheduler::v1 as spb;
use devcycle::testkit::expect_err;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::mesh::{Db, Mesh};
use crate::common::schedule::put_workflow;

type Client = MessagesClient<Channel>;

fn on_push(name: &str) -> pb::Trigger {
    pb::Trigger {
        name: name.into(),
        topic: "pushes".into(),
        workflow_name: "ci".into(),
        header_filter: HashMap::from([("event".into(), "push".into())]),
        payload_filter: HashMap::from([("ref".into(), "\"main\"".into())]),
        inputs: HashMap::from([(
            "note".into(),
            "\"${message.payload.repo} by ${message.key}\"".into(),
        )]),
        ..Default::default()
    }
}

async fn setup(m: &Mesh) -> Client {
    put_workflow(&mut m.client(), "ci", "echo").await;
    let mut c = m.messages();
    c.create_topic(pb::CreateTopicRequest {
        topic: Some(pb::Topic {
            name: "pushes".into(),
            max_deliveries: 3,
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    c
}

async fn push(c: &mut Client, id: &str, event: &str, payload: &str) {
    c.publish(pb::PublishRequest {
        topic: "pushes".into(),
        id: id.into(),
        key: "ana".into(),
        payload: payload.as_bytes().to_vec(),
        headers: HashMap::from([("event".into(), event.into())]),
    })
    .await
    .unwrap();
}

/// Polls the trigger until `done` holds, for at most 20 s.
async fn until(c: &mut Client, name: &str, done: impl Fn(&pb::Trigger) -> bool) -> pb::Trigger {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let t = c
            .list_triggers(pb::ListTriggersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .triggers
            .into_iter()
            .find(|t| t.name == name)
            .expect("the trigger exists");
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < end, "trigger never got there: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runs_of(m: &Mesh, workflow: &str) -> Vec<spb::Run> {
    m.client()
        .list_runs(spb::ListRunsRequest {
            workflow: workflow.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

async fn a_message_delivered_twice_starts_one_run(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = setup(&m).await;
    let t = c
        .create_trigger(pb::CreateTriggerRequest {
            trigger: Some(on_push("ci-on-push")),
        })
        .await
        .unwrap()
        .into_inner()
        .trigger
        .unwrap();
    assert_eq!(t.owner, "user/tester");
    assert!(t.group.starts_with("trigger.ci-on-push."), "{}", t.group);

    push(&mut c, "p1", "push", r#"{"ref": "main", "repo": "web"}"#).await;
    push(&mut c, "p2", "tag", r#"{"ref": "main", "repo": "web"}"#).await;
    push(&mut c, "p3", "push", r#"{"ref": "dev", "repo": "web"}"#).await;
    let t = until(&mut c, "ci-on-push", |t| t.fired == 1 && t.skipped == 2).await;
    let runs = runs_of(&m, "ci").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, t.last_run_id);
    let inputs: serde_json::Value = serde_json::from_str(&runs[0].inputs).unwrap();
    assert_eq!(inputs["note"], "web by ana");

    // Replaying the trigger's group delivers every message again: the
    // filters skip two again, and p1 finds the run it started.
    let replay = c
        .subscribe(pb::SubscribeRequest {
            topic: "pushes".into(),
            group: t.group.clone(),
            start: Some(pb::StartPosition {
                at: Some(pb::start_position::At::Earliest(true)),
            }),
            replay: true,
            max_in_flight: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(replay);
    let t = until(&mut c, "ci-on-push", |t| t.skipped == 4).await;
    assert_eq!(t.fired, 1);
    assert_eq!(runs_of(&m, "ci").await.len(), 1, "one run per message");

    push(&mut c, "p4", "push", r#"{"ref": "main", "repo": "api"}"#).await;
    until(&mut c, "ci-on-push", |t| t.fired == 2).await;
    assert_eq!(runs_of(&m, "ci").await.len(), 2);

    // Deleted, it is gone.
    c.delete_trigger(pb::DeleteTriggerRequest {
        name: "ci-on-push".into(),
    })
    .await
    .unwrap();
    let gone = c
        .delete_trigger(pb::DeleteTriggerRequest {
            name: "ci-on-push".into(),
        })
        .await;
    expect_err(gone, Code::NotFound, "ci-on-push");
}

async fn a_message_that_cannot_start_a_run_is_a_dead_letter_with_the_reason(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = setup(&m).await;
    let t = c
        .create_trigger(pb::CreateTriggerRequest {
            trigger: Some(on_push("strict")),
        })
        .await
        .unwrap()
        .into_inner()
        .trigger
        .unwrap();
    // No `repo` in the payload: the input cannot render.
    push(&mut c, "bad", "push", r#"{"ref": "main"}"#).await;
    let t2 = until(&mut c, "strict", |t| !t.last_error.is_empty()).await;
    assert!(
        t2.last_error.contains("${message.payload.repo}"),
        "{}",
        t2.last_error
    );
    let dead = c
        .list_dead_letters(pb::ListDeadLettersRequest {
            topic: "pushes".into(),
            group: t.group.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.as_ref().unwrap().id, "bad");
    assert!(
        dead[0].reason.contains("inputs[note]"),
        "{}",
        dead[0].reason
    );
    assert!(runs_of(&m, "ci").await.is_empty());
}

async fn bad_triggers_are_refused_naming_the_field(db: Db) {
    let m = Mesh::start(db).await;
    let mut c = setup(&m).await;
    let create = |t: pb::Trigger| pb::CreateTriggerRequest { trigger: Some(t) };
    let mut bad = on_push("t");
    bad.payload_filter.insert("ref".into(), "main".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.payload_filter[\"ref\"]",
    );
    let mut bad = on_push("t");
    bad.payload_filter.insert("a..b".into(), "1".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.payload_filter",
    );
    let mut bad = on_push("t");
    bad.header_filter.insert("Bad Name".into(), "x".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.header_filter",
    );
    let mut bad = on_push("t");
    bad.inputs.insert("nope".into(), "1".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.inputs[nope]",
    );
    let mut bad = on_push("t");
    bad.inputs
        .insert("note".into(), "\"${inputs.note}\"".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.inputs[note]",
    );
    let mut bad = on_push("t");
    bad.inputs
        .insert("note".into(), "\"${message.offset}\"".into());
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.inputs[note]",
    );
    let mut bad = on_push("t");
    bad.topic = "missing".into();
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::NotFound,
        "trigger.topic",
    );
    let mut bad = on_push("t");
    bad.workflow_name = "missing".into();
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::NotFound,
        "trigger.workflow_name",
    );
    let mut bad = on_push("t");
    bad.name = "Not A Label".into();
    expect_err(
        c.create_trigger(create(bad)).await,
        Code::InvalidArgument,
        "trigger.name",
    );
    c.create_trigger(create(on_push("t"))).await.unwrap();
    expect_err(
        c.create_trigger(create(on_push("t"))).await,
        Code::AlreadyExists,
        "trigger.name",
    );
}

crate::on_both_logs!(
    a_message_delivered_twice_starts_one_run,
    a_message_that_cannot_start_a_run_is_a_dead_letter_with_the_reason,
    bad_triggers_are_refused_naming_the_field,
);
