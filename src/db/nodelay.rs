//! TCP_NODELAY for PostgreSQL connections.
//!
//! sqlx 0.9.0 leaves Nagle's algorithm on for its TCP sockets. A statement
//! whose message spans more than one segment (a scheduler batch binds tens
//! of kilobytes) then holds its last segment until the server's delayed ACK,
//! about 40 ms: measured as 45 ms gaps before every large INSERT, which
//! capped a scheduler on PostgreSQL at ~1.3k tasks/s. sqlx gives no handle on
//! the socket, so each new connection asks the server for its client port
//! and finds its own socket among the process's descriptors. Remove this
//! when sqlx sets the option itself.

use sqlx::PgConnection;

/// Sets TCP_NODELAY on the socket of `conn`, a connection to a server on
/// `server_port`. Unix-socket connections (no client port) are left alone.
pub(super) async fn set(conn: &mut PgConnection, server_port: u16) -> Result<(), sqlx::Error> {
    let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(&mut *conn)
        .await?;
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
        return Ok(());
    };
    if !find_and_set(port, server_port) {
        tracing::warn!(
            port,
            "no socket found for a PostgreSQL connection; large statements may wait on delayed ACKs"
        );
    }
    Ok(())
}

#[cfg(unix)]
fn find_and_set(local_port: u16, server_port: u16) -> bool {
    use std::os::fd::{BorrowedFd, RawFd};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"))
    else {
        return false;
    };
    let port_of = |a: std::io::Result<socket2::SockAddr>| {
        a.ok().and_then(|a| a.as_socket()).map(|s| s.port())
    };
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for the calls below. If it
        // is closed and its number reused meanwhile, the calls fail or see
        // another socket, whose (local port, server port) pair does not
        // match: the pair names one TCP connection.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        if port_of(sock.local_addr()) == Some(local_port)
            && port_of(sock.peer_addr()) == Some(server_port)
        {
            return sock.set_tcp_nodelay(true).is_ok();
        }
    }
    false
}

#[cfg(not(unix))]
fn find_and_set(_local_port: u16, _server_port: u16) -> bool {
    false
}
