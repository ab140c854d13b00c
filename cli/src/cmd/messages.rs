//! `devcycle topic|publish|subscribe|trigger`: messages between agents,
//! and triggers that start runs from them.

use std::io::Read;

use clap::{Args, Subcommand};
use devcycle::proto::messages::v1 as pb;
use devcycle_scheduler::spec_file;
use serde_json::{Value, json};

use crate::connect::Clients;
use crate::output::{self, Render, print_list, time};
use crate::page;

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create a topic.
    Create {
        name: String,
        /// 1-64; default 1.
        #[arg(long)]
        partitions: Option<u32>,
        /// How long messages are kept, in seconds; default 7 days.
        #[arg(long)]
        retention: Option<u64>,
        /// Deliveries before a message is dead-lettered; default 5.
        #[arg(long)]
        max_deliveries: Option<u32>,
        /// Who else may publish: user/<name> or role/<role>; repeatable.
        /// None means every developer.
        #[arg(long = "publisher")]
        publishers: Vec<String>,
        /// Who else may subscribe, in the same form.
        #[arg(long = "subscriber")]
        subscribers: Vec<String>,
    },
    /// List topics.
    List,
    /// Messages a group gave up on.
    DeadLetters {
        topic: String,
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
    },
    /// Deliver a dead letter to its group again.
    Requeue {
        topic: String,
        id: String,
        #[arg(long)]
        group: String,
    },
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    topic: String,
    /// The payload; read from stdin when absent or `-`.
    payload: Option<String>,
    /// Messages with one key keep their order.
    #[arg(long, default_value = "")]
    key: String,
    /// name=value; repeatable.
    #[arg(long = "header", value_parser = pair)]
    headers: Vec<(String, String)>,
    /// Publishing the same id again stores nothing new.
    #[arg(long, default_value = "")]
    id: String,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    topic: String,
    /// The consumer group: each message goes to one of its members.
    #[arg(long)]
    group: String,
    /// Where a new group starts (or, with --replay, this one):
    /// earliest, latest, an offset, or an RFC 3339 time.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Move the group to --from even if it has read before.
    #[arg(long)]
    replay: bool,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Print without acking: the messages return after the ack deadline.
    #[arg(long)]
    no_ack: bool,
    /// Unacked messages in flight; default 64.
    #[arg(long, default_value_t = 0)]
    max_in_flight: u32,
    /// Redelivery after this many ms without an ack; default 30000.
    #[arg(long, default_value_t = 0)]
    ack_deadline_ms: u32,
}

#[derive(Debug, Subcommand)]
pub enum TriggerCmd {
    /// Start a run of a stored workflow for each message that passes the filters.
    Create {
        name: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        workflow: String,
        /// Only messages with this header: name=value; repeatable.
        #[arg(long = "header", value_parser = pair)]
        header_filter: Vec<(String, String)>,
        /// Only messages whose JSON payload holds this value at this path:
        /// path=value (JSON, or a string); repeatable.
        #[arg(long = "where", value_parser = spec_file::input_arg)]
        payload_filter: Vec<(String, String)>,
        /// A run input: name=value (JSON, or a string), with
        /// ${message.payload.PATH}, ${message.headers.NAME}, ${message.id}.
        #[arg(long = "input", value_parser = spec_file::input_arg)]
        inputs: Vec<(String, String)>,
    },
    /// List triggers.
    List {
        #[arg(long)]
        topic: Option<String>,
    },
    /// Delete a trigger; the runs it started are kept.
    Delete { name: String },
}

fn pair(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{arg:?} is not name=value"))
}

impl Render for pb::Topic {
    fn columns() -> &'static [&'static str] {
        &["NAME", "PARTITIONS", "RETENTION", "MAX DELIVERIES", "OWNER"]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.partitions.to_string(),
            format!("{}s", self.retention_s),
            self.max_deliveries.to_string(),
            self.owner.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "partitions": self.partitions, "retention_s": self.retention_s,
            "max_deliveries": self.max_deliveries, "owner": self.owner,
            "publishers": self.publishers, "subscribers": self.subscribers,
            "create_time": time(&self.create_time),
        })
    }
}

fn message_json(m: &pb::Message) -> Value {
    let payload = String::from_utf8_lossy(&m.payload);
    json!({
        "id": m.id, "topic": m.topic, "partition": m.partition, "offset": m.offset,
        "key": m.key, "headers": m.headers, "payload": payload,
        "publish_time": time(&m.publish_time), "delivery": m.delivery,
    })
}

impl Render for pb::DeadLetter {
    fn columns() -> &'static [&'static str] {
        &["ID", "GROUP", "DELIVERIES", "DEAD", "REASON"]
    }
    fn row(&self) -> Vec<String> {
        let m = self.message.clone().unwrap_or_default();
        vec![
            m.id,
            self.group.clone(),
            m.delivery.to_string(),
            time(&self.dead_time),
            self.reason.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "message": message_json(&self.message.clone().unwrap_or_default()),
            "group": self.group, "reason": self.reason, "dead_time": time(&self.dead_time),
        })
    }
}

impl Render for pb::Trigger {
    fn columns() -> &'static [&'static str] {
        &[
            "NAME",
            "TOPIC",
            "WORKFLOW",
            "FIRED",
            "SKIPPED",
            "LAST RUN",
            "LAST ERROR",
        ]
    }
    fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.topic.clone(),
            self.workflow_name.clone(),
            self.fired.to_string(),
            self.skipped.to_string(),
            output::or_dash(&self.last_run_id),
            output::or_dash(&self.last_error),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "topic": self.topic, "workflow": self.workflow_name,
            "header_filter": self.header_filter, "payload_filter": self.payload_filter,
            "inputs": self.inputs, "owner": self.owner, "group": self.group,
            "create_time": time(&self.create_time), "fired": self.fired,
            "skipped": self.skipped, "last_run_id": self.last_run_id,
            "last_error": self.last_error,
        })
    }
}

/// One created item: its JSON form, or a one-row table.
fn show<T: Render>(item: &T, as_json: bool) {
    if as_json {
        output::json(&item.json());
    } else {
        output::print_table(std::slice::from_ref(item));
    }
}

pub async fn topic(cmd: TopicCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.messages()?;
    match cmd {
        TopicCmd::Create {
            name,
            partitions,
            retention,
            max_deliveries,
            publishers,
            subscribers,
        } => {
            let topic = pb::Topic {
                name,
                partitions: partitions.unwrap_or(0),
                retention_s: retention.unwrap_or(0),
                max_deliveries: max_deliveries.unwrap_or(0),
                publishers,
                subscribers,
                ..Default::default()
            };
            let req = pb::CreateTopicRequest { topic: Some(topic) };
            let t = c
                .create_topic(req)
                .await?
                .into_inner()
                .topic
                .unwrap_or_default();
            show(&t, as_json);
        }
        TopicCmd::List => {
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListTopicsRequest {
                    page_size,
                    page_token,
                };
                c.list_topics(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        TopicCmd::DeadLetters { topic, group } => {
            let group = group.unwrap_or_default();
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListDeadLettersRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                    page_size,
                    page_token,
                };
                c.list_dead_letters(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        TopicCmd::Requeue { topic, id, group } => {
            let req = pb::RequeueDeadLetterRequest {
                topic,
                group,
                id: id.clone(),
            };
            c.requeue_dead_letter(req).await?;
            if as_json {
                output::json(&json!({ "requeued": id }));
            } else {
                println!("message {id} requeued");
            }
        }
    }
    Ok(())
}

pub async fn publish(args: PublishArgs, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let payload = match args.payload.as_deref() {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        Some(p) => p.as_bytes().to_vec(),
    };
    let req = pb::PublishRequest {
        topic: args.topic,
        key: args.key,
        payload,
        headers: args.headers.into_iter().collect(),
        id: args.id,
    };
    let r = clients.messages()?.publish(req).await?.into_inner();
    if as_json {
        output::json(&json!({
            "id": r.id, "partition": r.partition, "offset": r.offset, "duplicate": r.duplicate,
        }));
    } else if r.duplicate {
        println!(
            "{} was published before ({}/{})",
            r.id, r.partition, r.offset
        );
    } else {
        println!("{} published ({}/{})", r.id, r.partition, r.offset);
    }
    Ok(())
}

fn start(from: &str) -> anyhow::Result<pb::StartPosition> {
    use pb::start_position::At;
    let at = match from {
        "earliest" => At::Earliest(true),
        "latest" => At::Latest(true),
        s => match s.parse::<i64>() {
            Ok(offset) => At::Offset(offset),
            Err(_) => {
                let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
                    anyhow::anyhow!("--from {s:?}: earliest, latest, an offset or an RFC 3339 time")
                })?;
                At::Time(prost_types::Timestamp::from(t))
            }
        },
    };
    Ok(pb::StartPosition { at: Some(at) })
}

/// Prints messages as they come (a JSON object per line with --json) and
/// acks each after printing it.
pub async fn subscribe(
    args: SubscribeArgs,
    clients: &Clients,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut c = clients.messages()?;
    let req = pb::SubscribeRequest {
        topic: args.topic.clone(),
        group: args.group.clone(),
        start: Some(start(&args.from)?),
        replay: args.replay,
        // Credits beyond --count would be delivered, released unread and
        // counted as deliveries.
        max_in_flight: match (args.max_in_flight, args.count) {
            (0, Some(n)) => n.clamp(1, 64) as u32,
            (n, _) => n,
        },
        ack_deadline_ms: args.ack_deadline_ms,
    };
    let mut stream = c.subscribe(req).await?.into_inner();
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let Some(resp) = stream.message().await? else {
            anyhow::bail!("the subscription ended");
        };
        let Some(m) = resp.message else { continue };
        if as_json {
            println!("{}", message_json(&m));
        } else {
            println!(
                "{} {}/{} delivery {}: {}",
                m.id,
                m.partition,
                m.offset,
                m.delivery,
                String::from_utf8_lossy(&m.payload)
            );
        }
        if !args.no_ack {
            let req = pb::AckRequest {
                topic: args.topic.clone(),
                group: args.group.clone(),
                ids: vec![m.id],
            };
            c.ack(req).await?;
        }
        seen += 1;
    }
    Ok(())
}

pub async fn trigger(cmd: TriggerCmd, clients: &Clients, as_json: bool) -> anyhow::Result<()> {
    let mut c = clients.messages()?;
    match cmd {
        TriggerCmd::Create {
            name,
            topic,
            workflow,
            header_filter,
            payload_filter,
            inputs,
        } => {
            let t = pb::Trigger {
                name,
                topic,
                workflow_name: workflow,
                header_filter: header_filter.into_iter().collect(),
                payload_filter: payload_filter.into_iter().collect(),
                inputs: inputs.into_iter().collect(),
                ..Default::default()
            };
            let req = pb::CreateTriggerRequest { trigger: Some(t) };
            let t = c
                .create_trigger(req)
                .await?
                .into_inner()
                .trigger
                .unwrap_or_default();
            show(&t, as_json);
        }
        TriggerCmd::List { topic } => {
            let topic = topic.unwrap_or_default();
            let all = page::all(None, async |page_token, page_size| {
                let req = pb::ListTriggersRequest {
                    topic: topic.clone(),
                    page_size,
                    page_token,
                };
                c.list_triggers(req).await
            })
            .await?;
            print_list(&all, as_json);
        }
        TriggerCmd::Delete { name } => {
            c.delete_trigger(pb::DeleteTriggerRequest { name: name.clone() })
                .await?;
            if as_json {
                output::json(&json!({ "deleted": name }));
            } else {
                println!("trigger {name} deleted");
            }
        }
    }
    Ok(())
}
