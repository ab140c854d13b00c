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
    if with_socket(port, server_port, |s| s.set_tcp_nodelay(true).is_ok()) != Some(true) {
        tracing::warn!(
            port,
            "no socket found for a PostgreSQL connection; large statements may wait on delayed ACKs"
        );
    }
    Ok(())
}

/// Calls `f` on this process's TCP socket from `local_port` to `server_port`.
#[cfg(unix)]
fn with_socket<T>(
    local_port: u16,
    server_port: u16,
    f: impl FnOnce(socket2::SockRef<'_>) -> T,
) -> Option<T> {
    use std::os::fd::{BorrowedFd, RawFd};
    let dir = std::fs::read_dir("/proc/self/fd")
        .or_else(|_| std::fs::read_dir("/dev/fd"))
        .ok()?;
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
            return Some(f(sock));
        }
    }
    None
}

#[cfg(not(unix))]
fn with_socket<T>(_: u16, _: u16, _: impl FnOnce(socket2::SockRef<'_>) -> T) -> Option<T> {
    None
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;

    /// Runs against the test server (scripts/test.sh starts one).
    #[tokio::test]
    async fn pooled_connections_do_not_wait_for_delayed_acks() {
        let url = std::env::var("DEVCYCLE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let pool = super::super::connect_postgres(&url)
            .await
            .expect("PostgreSQL for tests; scripts/test.sh starts one");
        let server = PgConnectOptions::from_str(&url).unwrap().get_port();
        for _ in 0..2 {
            let mut conn = pool.acquire().await.unwrap();
            let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let port = u16::try_from(port.expect("a TCP connection")).unwrap();
            let nodelay = super::with_socket(port, server, |s| s.tcp_nodelay().unwrap());
            assert_eq!(nodelay, Some(true), "client port {port}");
            conn.detach();
        }
    }
}
