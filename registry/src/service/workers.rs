//! Worker identity and registration checks.

use devcycle::authz::Caller;
use devcycle::proto::registry::v1 as pb;
use devcycle::validate::{self, FieldError};

use super::Registry;
use crate::error::{Error, Result};
use crate::model::*;

impl Registry {
    pub(super) fn own_worker(caller: &Caller, field: &str, id: &str) -> Result<()> {
        use devcycle::identity::Kind;
        if caller.peer.kind() == Kind::Worker && caller.peer.name() != id {
            return Err(Error::PermissionDenied(format!(
                "{field}: {id} is not your identity {}",
                caller.peer
            )));
        }
        Ok(())
    }
}

pub(super) fn worker_from_pb(w: pb::Worker, now: i64) -> Result<Worker> {
    validate::dns_label("worker.id", &w.id)?;
    validate::max_items("worker.agents", w.agents.len(), 256)?;
    for (i, a) in w.agents.iter().enumerate() {
        validate::dns_label(&format!("worker.agents[{i}]"), a)?;
    }
    if !(1..=10_000).contains(&w.capacity) {
        return Err(FieldError::new("worker.capacity", "must be between 1 and 10000").into());
    }
    if !w.address.is_empty() && w.address.parse::<http::uri::Authority>().is_err() {
        return Err(FieldError::new("worker.address", "must be host:port").into());
    }
    validate::labels("worker.labels", &w.labels)?;
    let mut agents = w.agents;
    agents.sort();
    agents.dedup();
    Ok(Worker {
        id: w.id,
        agents,
        capacity: w.capacity,
        in_flight: 0,
        address: w.address,
        labels: w.labels.into_iter().collect(),
        state: WorkerState::Up,
        register_time: now,
        last_heartbeat: now,
    })
}
