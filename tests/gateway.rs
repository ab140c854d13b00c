//! The mesh through its front door: a plain gRPC client, a browser-style
//! grpc-web client and the CLI each log in at the gateway and run a
//! workflow; ownership keeps developers to their own runs.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use devcycle::proto::auth::v1 as auth;
use devcycle::proto::scheduler::v1 as pb;
use devcycle::tls::{MeshConnector, MeshTls};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const PASSWORD: &str = "a long enough password";

struct Front {
    addr: String,
    ca_pem: String,
    _stop: StopOnDrop,
}

struct StopOnDrop(CancellationToken);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn gateway(cluster: &Cluster) -> Front {
    let mut config = cluster.config.clone();
    config.gateway.registry = cluster.registry.clone();
    config.gateway.scheduler = cluster.scheduler.clone();
    config.gateway.admin_password = PASSWORD.into();
    config.gateway.allowed_origins = vec!["https://ci.example.com".into()];
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = Arc::new(devcycle::bus::InProcessBus::default());
    let opts = devcycle_gateway::Options::from_config(&config, listener, bus, &stop)
        .await
        .unwrap();
    let running = devcycle_gateway::start(opts, stop.clone()).await.unwrap();
    Front {
        addr: running.addr.to_string(),
        ca_pem: std::fs::read_to_string(config.tls_dir().join("ca.pem")).unwrap(),
        _stop: StopOnDrop(stop),
    }
}

impl Front {
    fn channel(&self) -> Channel {
        let tls = devcycle::tls::public_client_config(&self.ca_pem).unwrap();
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_with_connector_lazy(MeshConnector::with_config(tls))
    }

    async fn login(&self, user: &str) -> String {
        auth::auth_client::AuthClient::new(self.channel())
            .login(auth::LoginRequest {
                username: user.into(),
                password: PASSWORD.into(),
                device: "e2e".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .access_token
    }

    async fn create_user(&self, admin: &str, name: &str, role: auth::Role) {
        auth::auth_client::AuthClient::new(self.channel())
            .create_user(bearer(
                auth::CreateUserRequest {
                    name: name.into(),
                    password: PASSWORD.into(),
                    roles: vec![role as i32],
                },
                admin,
            ))
            .await
            .unwrap();
    }

    fn scheduler(&self) -> pb::scheduler_client::SchedulerClient<Channel> {
        pb::scheduler_client::SchedulerClient::new(self.channel())
    }

    /// One grpc-web unary call over HTTP/1.1, as a browser makes it.
    async fn grpc_web<M: Message, R: Message + Default>(
        &self,
        method: &str,
        msg: &M,
        token: Option<&str>,
    ) -> Result<R, (i32, String)> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .http1_only()
            .build()
            .unwrap();
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut body).unwrap();
        let port = self.addr.rsplit(':').next().unwrap();
        let mut req = http
            .post(format!("https://127.0.0.1:{port}{method}"))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("origin", "https://ci.example.com")
            .body(body.freeze());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = req.send().await.unwrap();
        assert_eq!(
            res.headers().get("access-control-allow-origin").unwrap(),
            "https://ci.example.com"
        );
        let mut status = res
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap());
        let mut message = String::new();
        let mut bytes: Bytes = res.bytes().await.unwrap();
        let mut reply = None;
        while bytes.remaining() >= 5 {
            let flag = bytes.get_u8();
            let len = bytes.get_u32() as usize;
            let frame = bytes.split_to(len);
            if flag & 0x80 == 0 {
                reply = Some(R::decode(frame).unwrap());
                continue;
            }
            for line in String::from_utf8_lossy(&frame).split("\r\n") {
                match line.split_once(':') {
                    Some(("grpc-status", v)) => status = v.trim().parse().ok(),
                    Some(("grpc-message", v)) => message = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        match (status, reply) {
            (Some(0), Some(r)) => Ok(r),
            (s, _) => Err((s.unwrap_or(-1), message)),
        }
    }
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn hello(who: &str) -> pb::SubmitRunRequest {
    let text = std::fs::read_to_string(repo().join("examples/workflows/hello.yaml")).unwrap();
    pb::SubmitRunRequest {
        workflow: Some(pb::submit_run_request::Workflow::Spec(
            devcycle_scheduler::spec_file::parse(&text).unwrap(),
        )),
        inputs: [("who".to_owned(), format!("\"{who}\""))].into(),
        wait: true,
        wait_timeout_ms: 60_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_grpc_web_and_cli_clients_log_in_and_run_a_workflow_through_the_gateway() {
    let cluster = Cluster::start(true).await;
    cluster.apply("examples/agents/echo.yaml");
    cluster.apply("examples/agents/noop.yaml");
    let _executor = cluster.spawn_executor("gw-1", 4);
    let front = gateway(&cluster).await;

    // gRPC: log in, then run as a developer.
    let admin = front.login("admin").await;
    front
        .create_user(&admin, "dana", auth::Role::Developer)
        .await;
    front
        .create_user(&admin, "eve", auth::Role::Developer)
        .await;
    front.create_user(&admin, "vic", auth::Role::Viewer).await;
    let dana = front.login("dana").await;
    let run = front
        .scheduler()
        .submit_run(bearer(hello("grpc"), &dana))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:#?}");
    assert_eq!(run.created_by, "user/dana");
    // Without a token the scheduler is out of reach.
    let e = front.scheduler().submit_run(hello("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Ownership: another developer neither sees nor cancels dana's run,
    // nor reaches it through its idempotency key: keys are per submitter.
    let mut keyed = hello("keyed");
    keyed.idempotency_key = "dana-key".into();
    let danas = front
        .scheduler()
        .submit_run(bearer(keyed.clone(), &dana))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let eve = front.login("eve").await;
    let eves = front
        .scheduler()
        .submit_run(bearer(keyed, &eve))
        .await
        .unwrap()
        .into_inner();
    assert!(eves.created, "{eves:?}");
    let eves = eves.run.unwrap();
    assert_ne!(eves.id, danas.id);
    assert_eq!(eves.created_by, "user/eve");
    let get = |t: &str| {
        bearer(
            pb::GetRunRequest {
                run_id: run.id.clone(),
            },
            t,
        )
    };
    let e = front.scheduler().get_run(get(&eve)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = front
        .scheduler()
        .cancel_run(bearer(
            pb::CancelRunRequest {
                run_id: run.id.clone(),
                reason: "mine now".into(),
            },
            &eve,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed = front
        .scheduler()
        .list_runs(bearer(pb::ListRunsRequest::default(), &eve))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.runs.iter().all(|r| r.created_by == "user/eve"),
        "{listed:?}"
    );
    let e = front
        .scheduler()
        .list_tasks(bearer(pb::ListTasksRequest::default(), &eve))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A viewer reads every run but changes none; the owner and admins read it.
    let vic = front.login("vic").await;
    front.scheduler().get_run(get(&vic)).await.unwrap();
    let e = front
        .scheduler()
        .submit_run(bearer(hello("viewer"), &vic))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    front.scheduler().get_run(get(&dana)).await.unwrap();
    front.scheduler().get_run(get(&admin)).await.unwrap();

    // grpc-web, as a browser: log in, run, read the run back.
    let login: auth::LoginResponse = front
        .grpc_web(
            "/devcycle.auth.v1.Auth/Login",
            &auth::LoginRequest {
                username: "dana".into(),
                password: PASSWORD.into(),
                device: "browser".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let submitted: pb::SubmitRunResponse = front
        .grpc_web(
            "/devcycle.scheduler.v1.Scheduler/SubmitRun",
            &hello("web"),
            Some(&login.access_token),
        )
        .await
        .unwrap();
    let web_run = submitted.run.unwrap();
    assert_eq!(
        web_run.state,
        pb::RunState::Succeeded as i32,
        "{web_run:#?}"
    );
    let got: pb::GetRunResponse = front
        .grpc_web(
            "/devcycle.scheduler.v1.Scheduler/GetRun",
            &pb::GetRunRequest {
                run_id: web_run.id.clone(),
            },
            Some(&login.access_token),
        )
        .await
        .unwrap();
    assert_eq!(got.run.unwrap().tasks.len(), 4);
    let denied = front
        .grpc_web::<_, pb::GetRunResponse>(
            "/devcycle.scheduler.v1.Scheduler/GetRun",
            &pb::GetRunRequest { run_id: web_run.id },
            Some(&eve),
        )
        .await
        .unwrap_err();
    assert_eq!(denied.0, Code::NotFound as i32, "{denied:?}");

    // The CLI, through the gateway by default: login, run, whoami, logout.
    let gw_cli = |args: &[&str], stdin: Option<&str>| {
        let (mut cmd, _) = cluster.command(&format!("gwcli-{}.log", uuid::Uuid::new_v4().simple()));
        cmd.env("DEVCYCLE_CLIENT__DIRECT", "false")
            .env("DEVCYCLE_CLIENT__GATEWAY", &front.addr)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };
    let out = gw_cli(&["whoami"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
    let out = gw_cli(
        &["login", "--username", "dana", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = cluster.data.path().join("credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = gw_cli(&["whoami"], None);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("dana (developer)"));
    let out = gw_cli(
        &[
            "workflow",
            "submit",
            "examples/workflows/hello.yaml",
            "--input",
            "who=cli",
            "--follow",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw_cli(&["sessions", "list"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("*"));
    let out = gw_cli(&["audit"], None);
    assert!(
        !out.status.success(),
        "developers may not read the audit log"
    );
    let out = gw_cli(&["logout"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!creds.exists());

    // The audit log saw it all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = auth::audit_client::AuditClient::new(front.channel())
        .list_audit_events(bearer(
            auth::ListAuditEventsRequest {
                actor: "dana".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.method.ends_with("/SubmitRun") && e.status_code == "OK"),
        "{events:#?}"
    );
}

/// A client certificate for `token`'s user, and the mesh identity made of it.
async fn certificate(
    front: &Front,
    trust_domain: &str,
    token: &str,
) -> Result<Arc<MeshTls>, tonic::Status> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = auth::auth_client::AuthClient::new(front.channel())
        .issue_certificate(bearer(
            auth::IssueCertificateRequest {
                csr_pem: csr,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner();
    let expires = devcycle::time::from_timestamp(issued.expire_time.as_ref()).unwrap();
    assert!(
        expires - devcycle::time::now_ms() <= 900_000,
        "user certificates live minutes"
    );
    Ok(MeshTls::from_pem(
        &issued.ca_pem,
        &issued.certificate_pem,
        &key.serialize_pem(),
        trust_domain,
    )
    .unwrap())
}

/// Writes directly to the registry over mTLS as `tls`'s identity.
async fn direct_write(
    cluster: &Cluster,
    tls: &Arc<MeshTls>,
    name: &str,
) -> Result<(), tonic::Status> {
    let ch = devcycle::client::channel(
        tls,
        &cluster.registry,
        cluster.config.service_id("registry"),
    )
    .unwrap();
    devcycle::proto::registry::v1::agent_registry_client::AgentRegistryClient::new(ch)
        .create_agent(devcycle::proto::registry::v1::CreateAgentRequest {
            agent: Some(devcycle::proto::registry::v1::Agent {
                name: name.into(),
                owner: "test".into(),
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

/// Polls until a direct write is refused as revoked, for at most 5 s.
async fn refused_soon(cluster: &Cluster, tls: &Arc<MeshTls>, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match direct_write(cluster, tls, name).await {
            Err(e) if e.code() == Code::Unauthenticated => {
                assert!(e.message().contains("revoked"), "{e:?}");
                return;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "still accepted: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Defect: user certificates outlived demotion, deletion and logout: the
/// gateway trusted the token's roles, ended no sessions on demotion, and
/// issued certificates could not be revoked. Now roles come from the
/// store, a demotion or deletion ends the user's sessions and revokes its
/// certificates on every service that shares the mesh database, a logout
/// revokes them too, and user certificates live at most 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoted_deleted_and_logged_out_users_lose_their_certificates() {
    let cluster = Cluster::start(true).await;
    let front = gateway(&cluster).await;
    let td = cluster.config.trust_domain.as_str();
    let admin = front.login("admin").await;
    let admin_client = || auth::auth_client::AuthClient::new(front.channel());
    for name in ["mo", "del", "out"] {
        front
            .create_user(&admin, name, auth::Role::Maintainer)
            .await;
    }

    // Demotion.
    let mo = front.login("mo").await;
    let cert = certificate(&front, td, &mo).await.unwrap();
    direct_write(&cluster, &cert, "by-mo").await.unwrap();
    admin_client()
        .set_user_roles(bearer(
            auth::SetUserRolesRequest {
                name: "mo".into(),
                roles: vec![auth::Role::Developer as i32],
            },
            &admin,
        ))
        .await
        .unwrap();
    refused_soon(&cluster, &cert, "by-mo-2").await;
    let e = certificate(&front, td, &mo).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "the old session ended: {e:?}"
    );
    let mo = front.login("mo").await;
    let e = certificate(&front, td, &mo).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "a developer gets none: {e:?}"
    );

    // Deletion.
    let del = front.login("del").await;
    let cert = certificate(&front, td, &del).await.unwrap();
    direct_write(&cluster, &cert, "by-del").await.unwrap();
    admin_client()
        .delete_user(bearer(
            auth::DeleteUserRequest { name: "del".into() },
            &admin,
        ))
        .await
        .unwrap();
    refused_soon(&cluster, &cert, "by-del-2").await;

    // Logout.
    let out = front.login("out").await;
    let cert = certificate(&front, td, &out).await.unwrap();
    direct_write(&cluster, &cert, "by-out").await.unwrap();
    admin_client()
        .logout(bearer(auth::LogoutRequest {}, &out))
        .await
        .unwrap();
    refused_soon(&cluster, &cert, "by-out-2").await;
    // A certificate issued after the revocation works.
    let out = front.login("out").await;
    let fresh = certificate(&front, td, &out).await.unwrap();
    direct_write(&cluster, &fresh, "by-out-3").await.unwrap();
}
