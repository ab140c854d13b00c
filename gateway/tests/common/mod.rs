//! A gateway in the test process: SQLite store, a throwaway CA, the cache
//! the test chooses, and clients for gRPC (tonic) and raw grpc-web.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use devcycle::identity::Kind;
use devcycle::proto::auth::v1 as pb;
use devcycle::proto::auth::v1::auth_client::AuthClient;
use devcycle::testkit::{TRUST_DOMAIN, TestPki};
use devcycle::tls::{CertificateAuthority, MeshConnector, MeshTls};
use devcycle_gateway::cache::Cache;
use devcycle_gateway::jwt::Signer;
use devcycle_gateway::tokens::Lifetimes;
use devcycle_gateway::{Options, Route, rate};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

pub const ADMIN_PASSWORD: &str = "correct horse battery";

pub struct Setup {
    pub cache: Arc<dyn Cache>,
    pub db_url: String,
    pub signer: Arc<Signer>,
    pub ca: Arc<CertificateAuthority>,
    pub admin_password: Option<String>,
    pub external: Vec<Arc<devcycle_gateway::jwks::ExternalIssuer>>,
    pub origins: Vec<String>,
    pub per_principal: (f64, u32),
    pub per_address: (f64, u32),
    pub routes: Vec<Route>,
    pub in_process_calls: bool,
    pub bus: Arc<devcycle::bus::InProcessBus>,
    pub access_s: i64,
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub signer: Arc<Signer>,
    pub bootstrap: Option<String>,
    pub bus: Arc<devcycle::bus::InProcessBus>,
    pub ca: Arc<CertificateAuthority>,
    stop: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A CA and a SQLite database for one test.
pub fn setup(cache: Arc<dyn Cache>) -> (Setup, tempfile::TempDir) {
    let TestPki { ca } = TestPki::new();
    let (dir, db_url) = devcycle::testkit::fresh_sqlite();
    (
        Setup {
            cache,
            db_url,
            signer: Arc::new(Signer::generate().unwrap()),
            ca: Arc::new(ca),
            admin_password: Some(ADMIN_PASSWORD.into()),
            external: Vec::new(),
            origins: vec!["https://app.example.com".into()],
            per_principal: (1000.0, 2000),
            per_address: (1000.0, 2000),
            routes: Vec::new(),
            in_process_calls: true,
            bus: Arc::new(devcycle::bus::InProcessBus::default()),
            access_s: 600,
        },
        dir,
    )
}

pub fn identity(ca: &CertificateAuthority, kind: Kind, name: &str) -> Arc<MeshTls> {
    let id = TestPki::id(kind, name);
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let issued = ca.issue(&id, &hosts, Duration::from_secs(3600)).unwrap();
    MeshTls::from_pem(
        ca.cert_pem(),
        &issued.cert_pem,
        &issued.key_pem,
        TRUST_DOMAIN,
    )
    .unwrap()
}

pub async fn start(s: Setup, dir: Option<tempfile::TempDir>) -> Gateway {
    start_on(s, dir, "127.0.0.1:0").await
}

pub async fn start_on(s: Setup, dir: Option<tempfile::TempDir>, addr: &str) -> Gateway {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let opts = Options {
        listener,
        tls: identity(&s.ca, Kind::Service, "gateway"),
        db: devcycle::db::Database::open(&s.db_url).await.unwrap(),
        cache: s.cache,
        bus: s.bus.clone(),
        audit_topic: "test.audit".into(),
        signer: Arc::clone(&s.signer),
        issuer: "https://devcycle.test".into(),
        audience: "devcycle".into(),
        life: Lifetimes {
            access_s: s.access_s,
            idle_s: 3600,
            absolute_s: 7200,
        },
        external: s.external,
        ca: Some(Arc::clone(&s.ca)),
        routes: s.routes,
        in_process_calls: s.in_process_calls,
        origins: s.origins,
        max_message_bytes: 64 * 1024,
        per_principal: rate(s.per_principal.0, s.per_principal.1),
        per_address: rate(s.per_address.0, s.per_address.1),
        max_concurrent_streams: 64,
        admin_password: s.admin_password,
        revocation_sync: Duration::from_millis(100),
        rate_sync: Duration::from_millis(10),
        drain: Duration::from_secs(1),
    };
    let running = devcycle_gateway::start(opts, stop.clone()).await.unwrap();
    Gateway {
        addr: running.addr,
        ca_pem: s.ca.cert_pem().to_owned(),
        signer: s.signer,
        bootstrap: running.extra,
        bus: s.bus,
        ca: s.ca,
        stop,
        _dir: dir,
    }
}

impl Gateway {
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn channel(&self) -> Channel {
        let config = devcycle::tls::public_client_config(&self.ca_pem).unwrap();
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_with_connector_lazy(MeshConnector::with_config(config))
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel())
    }

    pub fn audit(&self) -> devcycle::proto::auth::v1::audit_client::AuditClient<Channel> {
        devcycle::proto::auth::v1::audit_client::AuditClient::new(self.channel())
    }

    pub async fn whoami(&self, token: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
        self.auth()
            .who_am_i(bearer(pb::WhoAmIRequest {}, token))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn login(&self, user: &str, password: &str) -> pb::LoginResponse {
        self.auth()
            .login(pb::LoginRequest {
                username: user.into(),
                password: password.into(),
                device: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("login {user}: {e}"))
            .into_inner()
    }

    pub async fn admin(&self) -> pb::LoginResponse {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Creates a user with `roles` as the admin and logs them in.
    pub async fn user(&self, name: &str, roles: &[pb::Role]) -> pb::LoginResponse {
        let admin = self.admin().await;
        self.auth()
            .create_user(bearer(
                pb::CreateUserRequest {
                    name: name.into(),
                    password: ADMIN_PASSWORD.into(),
                    roles: roles.iter().map(|r| *r as i32).collect(),
                },
                &admin.access_token,
            ))
            .await
            .unwrap();
        self.login(name, ADMIN_PASSWORD).await
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .http1_only()
            .build()
            .unwrap()
    }

    /// A raw grpc-web call over HTTP/1.1: `path` may carry a query string.
    pub async fn grpc_web<M: Message, R: Message + Default>(
        &self,
        path: &str,
        msg: &M,
        headers: &[(&str, &str)],
    ) -> GrpcWebReply<R> {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut body).unwrap();
        let mut req = self
            .http()
            .post(format!("https://127.0.0.1:{}{path}", self.addr.port()))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body.freeze());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let http_status = res.status().as_u16();
        let resp_headers = res.headers().clone();
        let mut bytes: Bytes = res.bytes().await.unwrap();
        let mut reply = GrpcWebReply {
            http_status,
            headers: resp_headers.clone(),
            status: resp_headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            message: resp_headers
                .get("grpc-message")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
                .unwrap_or_default(),
            body: None,
        };
        while bytes.remaining() >= 5 {
            let flag = bytes.get_u8();
            let len = bytes.get_u32() as usize;
            let frame = bytes.split_to(len);
            if flag & 0x80 != 0 {
                for line in String::from_utf8_lossy(&frame).split("\r\n") {
                    if let Some((k, v)) = line.split_once(':') {
                        match k.trim().to_ascii_lowercase().as_str() {
                            "grpc-status" => reply.status = v.trim().parse().ok(),
                            "grpc-message" => reply.message = v.trim().to_owned(),
                            _ => {}
                        }
                    }
                }
            } else {
                reply.body = Some(R::decode(frame).unwrap());
            }
        }
        reply
    }
}

#[derive(Debug)]
pub struct GrpcWebReply<R> {
    pub http_status: u16,
    pub headers: http::HeaderMap,
    pub status: Option<i32>,
    pub message: String,
    pub body: Option<R>,
}

/// A request carrying `token` as a bearer token.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}
