//! One process per SQLite database. Embedded mode is one process: the
//! scheduler numbers events in memory and owns the write path, so a second
//! process on the same file would reuse event ids and lose outbox events.
//! The first process to open a file holds an exclusive lock on
//! `<file>.lock` (which also records its pid) until it exits; a second
//! process is refused at start with an error naming the holder. Opens
//! within one process share the lock (`devcycle up` opens the file once
//! per service).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

/// Locks this process holds, kept until it exits.
static HELD: LazyLock<Mutex<HashMap<PathBuf, Arc<File>>>> = LazyLock::new(Default::default);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "database {db} is in use by another devcycle process{holder}: embedded mode (SQLite) is one process; stop the other one, give this one another data directory, or use PostgreSQL to run several"
    )]
    InUse { db: String, holder: String },
    #[error("locking database {db}: {source}")]
    Io {
        db: String,
        #[source]
        source: std::io::Error,
    },
}

/// Takes (or confirms this process holds) the lock of the database `db`.
pub fn acquire(db: &Path) -> Result<(), LockError> {
    let key = std::path::absolute(db).unwrap_or_else(|_| db.to_owned());
    let mut held = HELD.lock();
    if held.contains_key(&key) {
        return Ok(());
    }
    let io = |source| LockError::Io {
        db: db.display().to_string(),
        source,
    };
    let mut path = key.clone().into_os_string();
    path.push(".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::InUse {
                db: db.display().to_string(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    held.insert(key, Arc::new(file));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_shares_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        acquire(&db).unwrap();
        acquire(&db).unwrap();
        let pid = std::fs::read_to_string(dir.path().join("a.db.lock")).unwrap();
        assert_eq!(pid, std::process::id().to_string());
        // Another open file description (as another process would have)
        // cannot take it.
        let other = File::open(dir.path().join("a.db.lock")).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    }
}
