//! Test helpers shared by every crate's tests: a throwaway CA, and a fresh
//! database per test on either engine so tests run in parallel.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use crate::identity::{Kind, SpiffeId};
use crate::tls::{CertificateAuthority, MeshTls};

pub const TRUST_DOMAIN: &str = "test.devcycle";

/// A CA made at test time, issuing identities in [`TRUST_DOMAIN`].
pub struct TestPki {
    pub ca: CertificateAuthority,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> Self {
        crate::tls::install_default_provider();
        Self {
            ca: CertificateAuthority::generate(TRUST_DOMAIN).expect("generate test CA"),
        }
    }

    pub fn id(kind: Kind, name: &str) -> SpiffeId {
        SpiffeId::new(TRUST_DOMAIN, kind, name).expect("valid test identity")
    }

    /// An in-memory identity signed by this CA.
    pub fn identity(&self, kind: Kind, name: &str) -> Arc<MeshTls> {
        let id = Self::id(kind, name);
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let issued = self
            .ca
            .issue(&id, &hosts, Duration::from_secs(3600))
            .expect("issue test identity");
        MeshTls::from_pem(
            self.ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            TRUST_DOMAIN,
        )
        .expect("load test identity")
    }
}

/// The PostgreSQL server tests use: `DEVCYCLE_TEST_DATABASE_URL`, or the
/// local default.
pub fn postgres_admin_url() -> String {
    std::env::var("DEVCYCLE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A new, empty PostgreSQL database for one test. Panics with a hint when the
/// server is unreachable: the test command starts one.
pub async fn fresh_postgres() -> String {
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {admin} is unreachable ({e}); run scripts/test.sh, which starts one"
            )
        });
    let name = format!("dc_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// A new SQLite database file for one test, in a directory removed on drop.
pub fn fresh_sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    (dir, url)
}

/// Asserts the status code and that the message names `field`.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, field: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(field),
                "message {:?} should name {field}",
                s.message()
            );
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// One suite, every implementation: a module per backend with a
/// `#[tokio::test]` per test. Each backend's block builds a fresh fixture
/// and passes it to `$run`, the test function (items of the calling module
/// are in scope):
///
/// ```ignore
/// devcycle::conformance! {
///     tests: [puts_and_gets, expires],
///     memory(run) => { run(Arc::new(MemoryCache::default())).await },
///     redis(run) => { run(redis().await).await },
/// }
/// ```
#[macro_export]
macro_rules! conformance {
    (tests: $tests:tt, $($backend:ident($run:ident) => $setup:block),+ $(,)?) => {
        $( $crate::conformance!(@backend $backend $run $setup $tests); )+
    };
    (@backend $backend:ident $run:ident $setup:block [$($name:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                #[allow(unused_braces)]
                async fn $name() {
                    let $run = super::$name;
                    $setup
                }
            )*
        }
    };
}

/// An address nothing listens on.
pub fn closed_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

/// A stand-in for mesh service `service`, to serve in memory: its own
/// authorization layer lets `allowed` call `method` (the gateway, as usual,
/// acting for users), and every call it lets through is answered NOT_FOUND
/// with `seen(caller)`, so a test can tell whom the service saw.
pub fn stand_in(
    service: &str,
    method: &str,
    allowed: &SpiffeId,
    seen: fn(&crate::authz::Caller) -> String,
) -> crate::inproc::LocalService {
    use crate::authz::{AuthzLayer, Caller, Policy};
    let policy = Policy::for_service(&format!("/{service}/"), &[(method, &[&allowed.path()])]);
    let gateway = TestPki::id(Kind::Service, "gateway");
    let stack = tower::ServiceBuilder::new()
        .layer(AuthzLayer::new(policy, gateway, None))
        .service(tower::service_fn(
            move |req: http::Request<tonic::body::Body>| {
                let caller = req.extensions().get::<Caller>().expect("authorized");
                let status = tonic::Status::not_found(seen(caller));
                async move { Ok::<_, std::convert::Infallible>(status.into_http()) }
            },
        ));
    crate::inproc::LocalService::new(stack)
}
