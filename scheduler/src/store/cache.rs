//! Runs kept between batches by a store with a single writer (SQLite), so
//! that a claim or a result does not read back a run this process wrote.
//!
//! Entries are moved out when a batch loads them and put back, as written,
//! once the batch's statements have all succeeded; the store empties the
//! cache when a transaction then fails to commit. So an entry is never newer
//! or older than the database. Every write still compares revisions: a
//! stale entry would fail its batch, never overwrite a row.
//!
//! Only unfinished runs are kept, up to [`MAX_BYTES`] (estimated): past it,
//! runs are read from the database as if there were no cache.

use hashbrown::HashMap;

use crate::model::{RunRow, TaskRow};

/// A whole run: the row and every one of its tasks.
pub type WholeRun = (RunRow, Vec<TaskRow>);

/// Estimated memory the kept runs may take.
pub const MAX_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct RunCache {
    runs: HashMap<String, (WholeRun, usize)>,
    /// Task id → run id, for the kept runs.
    run_of: HashMap<String, String>,
    bytes: usize,
}

impl RunCache {
    /// Moves run `id` out, if kept.
    pub fn take(&mut self, id: &str) -> Option<WholeRun> {
        let ((run, tasks), bytes) = self.runs.remove(id)?;
        self.bytes -= bytes;
        for t in &tasks {
            self.run_of.remove(&t.id);
        }
        Some((run, tasks))
    }

    /// The run of a kept task.
    pub fn run_of(&self, task_id: &str) -> Option<&str> {
        self.run_of.get(task_id).map(String::as_str)
    }

    /// Keeps runs as a batch wrote them; finished ones are dropped.
    pub fn keep(&mut self, runs: Vec<WholeRun>) {
        for (run, tasks) in runs {
            let bytes = size(&run, &tasks);
            if run.state.is_terminal() || self.bytes + bytes > MAX_BYTES {
                continue;
            }
            self.take(&run.id);
            for t in &tasks {
                self.run_of.insert(t.id.clone(), run.id.clone());
            }
            self.bytes += bytes;
            self.runs.insert(run.id.clone(), ((run, tasks), bytes));
        }
    }

    pub fn clear(&mut self) {
        self.runs.clear();
        self.run_of.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// Rough heap and inline size of a run: fixed parts plus its JSON texts.
fn size(run: &RunRow, tasks: &[TaskRow]) -> usize {
    let task = |t: &TaskRow| {
        1024 + t.input.len()
            + t.output.as_ref().map_or(0, String::len)
            + t.error.as_ref().map_or(0, |e| e.message.len())
    };
    512 + run.inputs.len() + tasks.iter().map(task).sum::<usize>()
}
