//! The `Messages` gRPC service over a [`MessageLog`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::{Caller, Policy};
use devcycle::proto::messages::v1 as pb;
use devcycle::proto::messages::v1::messages_server::Messages;
use devcycle::time::{now_ms, to_timestamp};
use devcycle::validate::FieldError;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::access::{Use, check, check_group, manages};
use super::check::{self as input, DEFAULT_IN_FLIGHT, MAX_BATCH};
use super::{
    DeadRow, Lease, MessageLog, NewMessage, Placed, Stored, TopicRow, TriggerRow, Wakes, triggers,
};
use crate::error::{Error, Result, respond};
use crate::service::SchedulerService;

const M: &str = "/devcycle.messages.v1.Messages/";

/// People (directly or through the gateway) use topics; the topic's own
/// lists say who may do what (see [`super::access`]).
pub fn policy() -> Policy {
    const READ: &[&str] = &["*"];
    const USE: &[&str] = &["user/*", "svc/gateway"];
    Policy::for_service(
        M,
        &[
            ("CreateTopic", USE),
            ("ListTopics", READ),
            ("Publish", USE),
            ("PublishBatch", USE),
            ("Subscribe", USE),
            ("Ack", USE),
            ("Nack", USE),
            ("ListDeadLetters", READ),
            ("RequeueDeadLetter", USE),
            ("CreateTrigger", USE),
            ("ListTriggers", READ),
            ("DeleteTrigger", USE),
        ],
    )
}

/// The service; cheap to share with the streams it serves.
pub struct MessagesService(Arc<Inner>);

impl std::ops::Deref for MessagesService {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Opens the message log: on first use, so that a mesh without topics
/// pays nothing for them.
pub type Opener = Box<dyn Fn(Wakes) -> Result<Arc<dyn MessageLog>> + Send + Sync>;

pub struct Inner {
    /// `None` where no message log is configured: every call then says so.
    opener: Option<Opener>,
    log: tokio::sync::OnceCell<Arc<dyn MessageLog>>,
    /// Where triggers start runs.
    runs: Arc<SchedulerService>,
    /// Wakes the trigger readers' keeper when a trigger is created or deleted.
    pub(super) triggers_changed: Notify,
    /// Woken when a topic gets messages or a group's held set changes.
    wake: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    shutdown: CancellationToken,
}

impl MessagesService {
    pub fn new(
        opener: Option<Opener>,
        runs: Arc<SchedulerService>,
        shutdown: CancellationToken,
    ) -> Self {
        Self(Arc::new(Inner {
            opener,
            log: Default::default(),
            runs,
            triggers_changed: Notify::new(),
            wake: Arc::default(),
            shutdown,
        }))
    }

    /// Opens the log now.
    pub async fn open(&self) -> Result<()> {
        self.0.log().await.map(|_| ())
    }

    /// Runs the stored triggers, and drops expired messages once a minute,
    /// until `stop`.
    pub fn run(&self, stop: CancellationToken) {
        let runs = Arc::clone(&self.0.runs);
        tokio::spawn(Arc::clone(&self.0).run_triggers(runs, stop.clone()));
        tokio::spawn(run_retention(Arc::clone(&self.0), stop));
    }
}

impl Inner {
    pub(super) async fn log(&self) -> Result<&Arc<dyn MessageLog>> {
        let Some(open) = &self.opener else {
            return Err(Error::FailedPrecondition(
                "this scheduler runs on PostgreSQL without Kafka, where its messages live: \
                 configure kafka.brokers to use topics"
                    .into(),
            ));
        };
        let wake = Arc::clone(&self.wake);
        let wakes: Wakes = Arc::new(move |topic: &str| {
            Arc::clone(wake.lock().entry(topic.to_owned()).or_default())
        });
        self.log.get_or_try_init(|| async { open(wakes) }).await
    }

    pub(super) fn opener_absent(&self) -> bool {
        self.opener.is_none()
    }

    /// The log if it is open.
    pub(super) fn opened(&self) -> Option<&Arc<dyn MessageLog>> {
        self.log.get()
    }

    pub(super) fn notify(&self, topic: &str) -> Arc<Notify> {
        Arc::clone(self.wake.lock().entry(topic.to_owned()).or_default())
    }

    async fn topic(&self, name: &str, field: &str) -> Result<TopicRow> {
        input::name(field, name)?;
        self.log()
            .await?
            .get_topic(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{field}: topic {name} does not exist")))
    }

    async fn publish_all(
        &self,
        caller: &Caller,
        topic: &str,
        msgs: Vec<NewMessage>,
    ) -> Result<Vec<pb::PublishResponse>> {
        let t = self.topic(topic, "topic").await?;
        check(caller, &t, Use::Publish)?;
        let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
        let placed = self.log().await?.publish(&t, msgs).await?;
        self.notify(topic).notify_waiters();
        Ok(ids.into_iter().zip(placed).map(response).collect())
    }

    /// Delivers to one subscriber until it leaves: as many messages as its
    /// credits allow, waiting for publishes, acks and ack deadlines.
    pub(super) async fn deliver_loop(
        self: Arc<Self>,
        t: TopicRow,
        group: String,
        credits: usize,
        deadline_ms: i64,
        tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    ) {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let Ok(log) = self.log().await.cloned() else {
            return;
        };
        let wake = self.notify(&t.name);
        let lease = Lease {
            group: &group,
            holder: &holder,
            deadline_ms,
        };
        // The database or the broker briefly away, or a concurrent
        // delivery that won: the subscriber stays and tries again.
        macro_rules! or_retry {
            ($call:expr) => {
                match $call {
                    Ok(v) => v,
                    Err(Error::Unavailable(why)) => {
                        tracing::warn!(topic = %t.name, group, why, "delivery failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                            _ = tx.closed() => return Ok(()),
                            _ = self.shutdown.cancelled() => return Ok(()),
                        }
                    }
                    Err(e) => return Err(e),
                }
            };
        }
        let outcome: Result<()> = async {
            loop {
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let room =
                    credits.saturating_sub(or_retry!(log.held(&t.name, &group, &holder).await));
                if room > 0 {
                    let batch = or_retry!(log.deliver(&t, lease, room).await);
                    if !batch.is_empty() {
                        // Other members sleeping past these deadlines
                        // learn of them.
                        wake.notify_waiters();
                        for m in batch {
                            let msg = to_pb(&t.name, m);
                            if tx
                                .send(Ok(pb::SubscribeResponse { message: Some(msg) }))
                                .await
                                .is_err()
                            {
                                return Ok(());
                            }
                        }
                        continue;
                    }
                }
                // Sleep until the next held message that this subscriber
                // could take may be due: any of the group's while it has
                // credits, else one of its own (which frees a credit).
                let mine = (room == 0).then_some(holder.as_str());
                let wait = match or_retry!(log.next_redelivery(&t.name, &group, mine).await) {
                    Some(at) => (at - now_ms()).clamp(5, 60_000),
                    None => 60_000,
                };
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = tx.closed() => return Ok(()),
                    _ = self.shutdown.cancelled() => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            let _ = tx.send(Err(e.into())).await;
        }
        // What it held goes to the group's other members now, not at its
        // ack deadline.
        if let Err(e) = log.release(&t.name, &group, &holder).await {
            tracing::warn!(error = %e, topic = %t.name, group, "cannot release a subscriber's messages");
        }
        wake.notify_waiters();
    }
}

fn response((id, p): (String, Placed)) -> pb::PublishResponse {
    pb::PublishResponse {
        id,
        partition: p.partition,
        offset: p.offset,
        duplicate: p.duplicate,
    }
}

fn to_pb(topic: &str, m: Stored) -> pb::Message {
    pb::Message {
        topic: topic.to_owned(),
        partition: m.partition,
        offset: m.offset,
        key: m.key,
        payload: m.payload,
        headers: m.headers.into_iter().collect(),
        publish_time: Some(to_timestamp(m.publish_time)),
        id: m.id,
        delivery: m.delivery,
    }
}

fn topic_pb(t: TopicRow) -> pb::Topic {
    pb::Topic {
        name: t.name,
        partitions: t.partitions,
        retention_s: t.retention_s,
        max_deliveries: t.max_deliveries,
        owner: t.owner,
        publishers: t.publishers,
        subscribers: t.subscribers,
        create_time: Some(to_timestamp(t.create_time)),
    }
}

fn dead_pb(topic: &str, d: DeadRow) -> pb::DeadLetter {
    pb::DeadLetter {
        message: Some(to_pb(topic, d.message)),
        group: d.group,
        reason: d.reason,
        dead_time: Some(to_timestamp(d.dead_time)),
    }
}

fn caller<T>(req: &Request<T>) -> std::result::Result<Caller, Status> {
    Caller::of(req).cloned()
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        let who = caller(&req)?.actor();
        respond(
            async {
                let t = input::topic(req.get_ref().topic.as_ref())?;
                let row = TopicRow {
                    name: t.name,
                    partitions: t.partitions,
                    retention_s: t.retention_s,
                    max_deliveries: t.max_deliveries,
                    owner: who,
                    publishers: t.publishers,
                    subscribers: t.subscribers,
                    create_time: now_ms(),
                };
                let row = self.log().await?.create_topic(row).await?;
                Ok(pb::CreateTopicResponse {
                    topic: Some(topic_pb(row)),
                })
            }
            .await,
        )
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        respond(
            async {
                let r = req.get_ref();
                let size = devcycle::page::page_size(r.page_size)?;
                let after = devcycle::page::decode_token(&r.page_token)?.unwrap_or_default();
                let mut rows = self.log().await?.list_topics(&after, size + 1).await?;
                let next = devcycle::page::finish(&mut rows, size, |t| t.name.clone());
                Ok(pb::ListTopicsResponse {
                    topics: rows.into_iter().map(topic_pb).collect(),
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                let m = input::message("", &r.id, &r.key, &r.payload, &r.headers)?;
                let mut out = self.publish_all(&who, &r.topic, vec![m]).await?;
                Ok(out.remove(0))
            }
            .await,
        )
    }

    async fn publish_batch(
        &self,
        req: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                if r.messages.is_empty() || r.messages.len() > MAX_BATCH {
                    return Err(FieldError::new(
                        "messages",
                        format!("must hold 1-{MAX_BATCH} messages"),
                    )
                    .into());
                }
                let msgs = r
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        input::message(
                            &format!("messages[{i}]."),
                            &m.id,
                            &m.key,
                            &m.payload,
                            &m.headers,
                        )
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let results = self.publish_all(&who, &r.topic, msgs).await?;
                Ok(pb::PublishBatchResponse { results })
            }
            .await,
        )
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let setup = async {
            let t = self.topic(&r.topic, "topic").await?;
            input::name("group", &r.group)?;
            let start = input::start(r.start.as_ref())?;
            let credits = input::bounded(
                "max_in_flight",
                r.max_in_flight,
                DEFAULT_IN_FLIGHT,
                input::MAX_IN_FLIGHT,
            )?;
            let deadline = input::ack_deadline(r.ack_deadline_ms)?;
            check(&who, &t, Use::Subscribe)?;
            check_group(&who, &r.group)?;
            self.log()
                .await?
                .join(&t, &r.group, start, r.replay)
                .await?;
            if r.replay {
                // Other members of the group read from the new position now.
                self.notify(&t.name).notify_waiters();
            }
            Ok::<_, Error>((t, credits as usize, i64::from(deadline)))
        };
        let (t, credits, deadline) = setup.await.map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(credits);
        tokio::spawn(Arc::clone(&self.0).deliver_loop(t, r.group, credits, deadline, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                let t = self.topic(&r.topic, "topic").await?;
                input::name("group", &r.group)?;
                input::ack_ids(&r.ids)?;
                check(&who, &t, Use::Subscribe)?;
                check_group(&who, &r.group)?;
                self.log().await?.ack(&t.name, &r.group, &r.ids).await?;
                self.notify(&t.name).notify_waiters();
                Ok(pb::AckResponse {})
            }
            .await,
        )
    }

    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                let t = self.topic(&r.topic, "topic").await?;
                input::name("group", &r.group)?;
                input::ack_ids(std::slice::from_ref(&r.id))
                    .map_err(|e| FieldError::new("id", e.reason))?;
                if r.delay_ms > input::MAX_WAIT_MS {
                    return Err(FieldError::new(
                        "delay_ms",
                        format!("must be at most {}", input::MAX_WAIT_MS),
                    )
                    .into());
                }
                devcycle::validate::max_bytes("reason", &r.reason, 1024)?;
                check(&who, &t, Use::Subscribe)?;
                check_group(&who, &r.group)?;
                let held = self
                    .log()
                    .await?
                    .nack(&t, &r.group, &r.id, i64::from(r.delay_ms), &r.reason)
                    .await?;
                if !held {
                    return Err(Error::FailedPrecondition(format!(
                        "id: message {} is not held by group {} (acked, dead, or never delivered)",
                        r.id, r.group
                    )));
                }
                self.notify(&t.name).notify_waiters();
                Ok(pb::NackResponse {})
            }
            .await,
        )
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                let t = self.topic(&r.topic, "topic").await?;
                // Dead letters carry payloads: only the topic's readers.
                check(&who, &t, Use::Subscribe)?;
                if !r.group.is_empty() {
                    input::name("group", &r.group)?;
                }
                let size = devcycle::page::page_size(r.page_size)?;
                let after = devcycle::page::decode_token(&r.page_token)?.unwrap_or_default();
                let mut rows = self
                    .log()
                    .await?
                    .dead_letters(&t.name, &r.group, &after, size + 1)
                    .await?;
                let next =
                    devcycle::page::finish(&mut rows, size, |d| format!("{}/{}", d.seq, d.group));
                Ok(pb::ListDeadLettersResponse {
                    dead_letters: rows.into_iter().map(|d| dead_pb(&t.name, d)).collect(),
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn requeue_dead_letter(
        &self,
        req: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let r = req.get_ref();
                let t = self.topic(&r.topic, "topic").await?;
                input::name("group", &r.group)?;
                input::ack_ids(std::slice::from_ref(&r.id))
                    .map_err(|e| FieldError::new("id", e.reason))?;
                check(&who, &t, Use::Subscribe)?;
                if !self.log().await?.requeue(&t.name, &r.group, &r.id).await? {
                    return Err(Error::NotFound(format!(
                        "id: message {} is not a dead letter of group {}",
                        r.id, r.group
                    )));
                }
                self.notify(&t.name).notify_waiters();
                Ok(pb::RequeueDeadLetterResponse {})
            }
            .await,
        )
    }

    async fn create_trigger(
        &self,
        req: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::CreateTriggerResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let t = devcycle::validate::present("trigger", req.get_ref().trigger.as_ref())?;
                let (header_filter, payload_filter, inputs) =
                    triggers::check(&self.runs, t).await?;
                let topic = self.topic(&t.topic, "trigger.topic").await?;
                // A trigger reads its topic for its owner.
                check(&who, &topic, Use::Subscribe)?;
                let row = TriggerRow {
                    name: t.name.clone(),
                    id: uuid::Uuid::new_v4().simple().to_string(),
                    topic: topic.name,
                    workflow: t.workflow_name.clone(),
                    header_filter,
                    payload_filter,
                    inputs,
                    owner: who.actor(),
                    create_time: now_ms(),
                    fired: 0,
                    skipped: 0,
                    last_run_id: String::new(),
                    last_error: String::new(),
                };
                let row = self.log().await?.create_trigger(row).await?;
                self.triggers_changed.notify_one();
                Ok(pb::CreateTriggerResponse {
                    trigger: Some(trigger_pb(row)),
                })
            }
            .await,
        )
    }

    async fn list_triggers(
        &self,
        req: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        respond(
            async {
                let r = req.get_ref();
                if !r.topic.is_empty() {
                    input::name("topic", &r.topic)?;
                }
                let size = devcycle::page::page_size(r.page_size)?;
                let after = devcycle::page::decode_token(&r.page_token)?.unwrap_or_default();
                let mut rows = self
                    .log()
                    .await?
                    .list_triggers(&r.topic, &after, size + 1)
                    .await?;
                let next = devcycle::page::finish(&mut rows, size, |t| t.name.clone());
                Ok(pb::ListTriggersResponse {
                    triggers: rows.into_iter().map(trigger_pb).collect(),
                    next_page_token: next,
                })
            }
            .await,
        )
    }

    async fn delete_trigger(
        &self,
        req: Request<pb::DeleteTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        let who = caller(&req)?;
        respond(
            async {
                let name = &req.get_ref().name;
                devcycle::validate::dns_label("name", name)?;
                let gone = || Error::NotFound(format!("name: trigger {name} does not exist"));
                let t = self.log().await?.get_trigger(name).await?.ok_or_else(gone)?;
                if !manages(&who) && who.actor() != t.owner {
                    return Err(Error::PermissionDenied(format!(
                        "trigger {name} belongs to {}; only its owner, maintainers and admins may delete it",
                        t.owner
                    )));
                }
                if !self.log().await?.delete_trigger(name, &t.id).await? {
                    return Err(gone());
                }
                self.triggers_changed.notify_one();
                Ok(pb::DeleteTriggerResponse {})
            }
            .await,
        )
    }
}

fn trigger_pb(t: TriggerRow) -> pb::Trigger {
    let group = t.group();
    pb::Trigger {
        name: t.name,
        topic: t.topic,
        workflow_name: t.workflow,
        header_filter: t.header_filter.into_iter().collect(),
        create_time: Some(to_timestamp(t.create_time)),
        payload_filter: t.payload_filter.into_iter().collect(),
        inputs: t.inputs.into_iter().collect(),
        owner: t.owner,
        group,
        fired: t.fired,
        skipped: t.skipped,
        last_run_id: t.last_run_id,
        last_error: t.last_error,
    }
}

/// Drops expired messages every minute.
async fn run_retention(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let Some(log) = inner.opened() else { continue };
        match log.expire(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "messages past their retention dropped"),
            Err(e) => tracing::warn!(error = %e, "cannot drop expired messages"),
        }
    }
}
