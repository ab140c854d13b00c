//! Triggers in the embedded log's file.

use rusqlite::{Connection, Transaction, params};

use super::{pairs_json, parse_pairs};
use crate::error::{Error, Result};
use crate::messages::{Outcome, TriggerRow};
use crate::store::sqlite::conn::{all, first};

const COLUMNS: &str = "name, id, topic, workflow, header_filter, payload_filter, inputs, owner, \
                       create_time, fired, skipped, last_run_id, last_error";

fn row(r: &rusqlite::Row<'_>) -> Result<TriggerRow> {
    Ok(TriggerRow {
        name: r.get(0)?,
        id: r.get(1)?,
        topic: r.get(2)?,
        workflow: r.get(3)?,
        header_filter: parse_pairs(&r.get::<_, String>(4)?)?,
        payload_filter: parse_pairs(&r.get::<_, String>(5)?)?,
        inputs: parse_pairs(&r.get::<_, String>(6)?)?,
        owner: r.get(7)?,
        create_time: r.get(8)?,
        fired: r.get::<_, i64>(9)? as u64,
        skipped: r.get::<_, i64>(10)? as u64,
        last_run_id: r.get(11)?,
        last_error: r.get(12)?,
    })
}

pub(super) fn insert(tx: &Transaction<'_>, t: &TriggerRow) -> Result<()> {
    let n = tx.execute(
        "INSERT INTO triggers (name, id, topic, workflow, header_filter, payload_filter, inputs,
                               owner, create_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (name) DO NOTHING",
        params![
            t.name,
            t.id,
            t.topic,
            t.workflow,
            pairs_json(&t.header_filter),
            pairs_json(&t.payload_filter),
            pairs_json(&t.inputs),
            t.owner,
            t.create_time
        ],
    )?;
    if n == 0 {
        return Err(Error::AlreadyExists(format!(
            "trigger.name: trigger {} exists",
            t.name
        )));
    }
    Ok(())
}

pub(super) fn get(c: &Connection, name: &str) -> Result<Option<TriggerRow>> {
    first(
        c,
        &format!("SELECT {COLUMNS} FROM triggers WHERE name = ?1"),
        [name],
        row,
    )
}

pub(super) fn list(
    c: &Connection,
    topic: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<TriggerRow>> {
    all(
        c,
        &format!(
            "SELECT {COLUMNS} FROM triggers WHERE (?1 = '' OR topic = ?1) AND name > ?2
             ORDER BY name LIMIT ?3"
        ),
        params![topic, after, limit as i64],
        row,
    )
}

/// Deletes the trigger and forgets its group: its cursors, what it held,
/// and its dead letters.
pub(super) fn delete(tx: &Transaction<'_>, name: &str, id: &str) -> Result<bool> {
    let Some(t) = get(tx, name)?.filter(|t| t.id == id) else {
        return Ok(false);
    };
    let group = t.group();
    for table in ["cursors", "held", "dead"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE topic = ?1 AND grp = ?2"),
            params![t.topic, group],
        )?;
    }
    tx.execute("DELETE FROM triggers WHERE name = ?1", [name])?;
    Ok(true)
}

pub(super) fn record(tx: &Transaction<'_>, name: &str, id: &str, o: &Outcome) -> Result<()> {
    match o {
        Outcome::Fired { run_id } => tx.execute(
            "UPDATE triggers SET fired = fired + 1, last_run_id = ?3, last_error = ''
             WHERE name = ?1 AND id = ?2",
            params![name, id, run_id],
        )?,
        Outcome::Repeated => 0,
        Outcome::Skipped => tx.execute(
            "UPDATE triggers SET skipped = skipped + 1 WHERE name = ?1 AND id = ?2",
            params![name, id],
        )?,
        Outcome::Failed { error } => tx.execute(
            "UPDATE triggers SET last_error = ?3 WHERE name = ?1 AND id = ?2",
            params![name, id, error],
        )?,
    };
    Ok(())
}
