//! The Auth and Audit services through the front door: RBAC, users, TOTP,
//! sessions, certificates, rate limits and the audit log.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use devcycle::proto::auth::v1 as pb;
use devcycle_gateway::cache::MemoryCache;
use tonic::Code;

async fn gateway() -> Gateway {
    let (s, dir) = setup(Arc::new(MemoryCache::default()));
    start(s, Some(dir)).await
}

#[tokio::test]
async fn roles_decide_and_unknown_or_mesh_only_methods_are_denied() {
    let gw = gateway().await;
    let viewer = gw.user("vera", &[pb::Role::Viewer]).await;
    let e = gw
        .auth()
        .list_users(bearer(
            pb::ListUsersRequest::default(),
            &viewer.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = gw
        .auth()
        .create_worker_join_token(bearer(
            pb::CreateWorkerJoinTokenRequest {
                worker_id: "w1".into(),
                ttl_s: 0,
            },
            &viewer.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let me = gw
        .auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &viewer.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.roles, vec![pb::Role::Viewer as i32]);

    // A method the policy table does not know, and one only for mTLS peers.
    let admin = gw.admin().await;
    let mut grpc = tonic::client::Grpc::new(gw.channel());
    grpc.ready().await.unwrap();
    let req = bearer(pb::WhoAmIRequest {}, &admin.access_token);
    let codec = tonic_prost::ProstCodec::<pb::WhoAmIRequest, pb::WhoAmIResponse>::default();
    let e = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static("/devcycle.auth.v1.Auth/Backdoor"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut grpc = tonic::client::Grpc::new(gw.channel());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<pb::WhoAmIRequest, pb::WhoAmIResponse>::default();
    let e = grpc
        .unary(
            bearer(pb::WhoAmIRequest {}, &admin.access_token),
            http::uri::PathAndQuery::from_static(
                "/devcycle.registry.v1.AgentRegistry/RegisterWorker",
            ),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("mTLS"), "{e:?}");
}

#[tokio::test]
async fn users_are_managed_by_admins_and_bad_fields_are_named() {
    let gw = gateway().await;
    let admin = gw.admin().await;
    let t = &admin.access_token;
    for (req, field) in [
        (
            pb::CreateUserRequest {
                name: "Bad Name".into(),
                password: ADMIN_PASSWORD.into(),
                roles: vec![pb::Role::Viewer as i32],
            },
            "name",
        ),
        (
            pb::CreateUserRequest {
                name: "ok".into(),
                password: "short".into(),
                roles: vec![pb::Role::Viewer as i32],
            },
            "password",
        ),
        (
            pb::CreateUserRequest {
                name: "ok".into(),
                password: ADMIN_PASSWORD.into(),
                roles: vec![],
            },
            "roles",
        ),
        (
            pb::CreateUserRequest {
                name: "ok".into(),
                password: ADMIN_PASSWORD.into(),
                roles: vec![99],
            },
            "roles[0]",
        ),
    ] {
        let e = gw.auth().create_user(bearer(req, t)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    gw.user("dev", &[pb::Role::Developer]).await;
    let e = gw
        .auth()
        .create_user(bearer(
            pb::CreateUserRequest {
                name: "dev".into(),
                password: ADMIN_PASSWORD.into(),
                roles: vec![pb::Role::Viewer as i32],
            },
            t,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let users = gw
        .auth()
        .list_users(bearer(
            pb::ListUsersRequest {
                page_size: 1,
                ..Default::default()
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.users.len(), 1);
    assert!(!users.next_page_token.is_empty());
    let u = gw
        .auth()
        .set_user_roles(bearer(
            pb::SetUserRolesRequest {
                name: "dev".into(),
                roles: vec![pb::Role::Maintainer as i32],
            },
            t,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(u.roles, vec![pb::Role::Maintainer as i32]);
    // Deleting a user ends their sessions at once.
    let dev = gw.login("dev", ADMIN_PASSWORD).await;
    gw.auth()
        .delete_user(bearer(pb::DeleteUserRequest { name: "dev".into() }, t))
        .await
        .unwrap();
    let e = gw
        .auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &dev.access_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = gw
        .auth()
        .delete_user(bearer(pb::DeleteUserRequest { name: "dev".into() }, t))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn the_bootstrap_token_creates_the_first_admin_once() {
    let (mut s, dir) = setup(Arc::new(MemoryCache::default()));
    s.admin_password = None;
    let gw = start(s, Some(dir)).await;
    let token = gw.bootstrap.clone().expect("no users: a bootstrap token");
    let create = |auth: &str, name: &str| {
        let mut r = tonic::Request::new(pb::CreateUserRequest {
            name: name.into(),
            password: ADMIN_PASSWORD.into(),
            roles: vec![pb::Role::Admin as i32],
        });
        r.metadata_mut()
            .insert("authorization", auth.parse().unwrap());
        r
    };
    let e = gw
        .auth()
        .create_user(create("Bootstrap wrong-token", "root"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    gw.auth()
        .create_user(create(&format!("Bootstrap {token}"), "root"))
        .await
        .unwrap();
    let e = gw
        .auth()
        .create_user(create(&format!("Bootstrap {token}"), "root2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "used once");
    gw.login("root", ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn totp_enrolment_then_login_needs_the_code() {
    let gw = gateway().await;
    let admin = gw.admin().await;
    let t = &admin.access_token;
    let enrol = gw
        .auth()
        .enroll_totp(bearer(pb::EnrollTotpRequest {}, t))
        .await
        .unwrap()
        .into_inner();
    assert!(enrol.otpauth_uri.starts_with("otpauth://totp/"));
    let now = devcycle::time::now_ms() / 1000;
    let e = gw
        .auth()
        .verify_totp(bearer(
            pb::VerifyTotpRequest {
                code: "000000".into(),
            },
            t,
        ))
        .await;
    if let Err(e) = e {
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    // Codes of three steps in a row (one step of skew is allowed each way);
    // far enough from a step boundary that the three stay valid.
    let mut now = now;
    if now % 30 >= 25 {
        tokio::time::sleep(std::time::Duration::from_secs((31 - now % 30) as u64)).await;
        now = devcycle::time::now_ms() / 1000;
    }
    let at = |dt: i64| devcycle_gateway::totp::code_at(&enrol.secret, now + dt).unwrap();
    let (enrol_code, code, disable_code) = (at(-30), at(0), at(30));
    gw.auth()
        .verify_totp(bearer(
            pb::VerifyTotpRequest {
                code: enrol_code.clone(),
            },
            t,
        ))
        .await
        .unwrap();
    let e = gw
        .auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("totp_code"), "{e:?}");
    gw.auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            totp_code: code.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Defect: a code could be replayed within its window. Each is good
    // once. (Logins and TOTP checks share a budget of five per user name.)
    let e = gw
        .auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            totp_code: code,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{e:?}");
    gw.auth()
        .disable_totp(bearer(pb::DisableTotpRequest { code: disable_code }, t))
        .await
        .unwrap();
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_per_device() {
    let gw = gateway().await;
    let a = gw.admin().await;
    let b = gw.admin().await;
    let list = gw
        .auth()
        .list_sessions(bearer(pb::ListSessionsRequest {}, &a.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 2);
    assert_eq!(list.sessions.iter().filter(|s| s.current).count(), 1);
    gw.auth()
        .revoke_session(bearer(
            pb::RevokeSessionRequest {
                session_id: b.session_id.clone(),
            },
            &a.access_token,
        ))
        .await
        .unwrap();
    let e = gw
        .auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &b.access_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Another user's session is not theirs to see.
    let v = gw.user("vic", &[pb::Role::Viewer]).await;
    let e = gw
        .auth()
        .revoke_session(bearer(
            pb::RevokeSessionRequest {
                session_id: a.session_id.clone(),
            },
            &v.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let _c = gw.admin().await;
    let n = gw
        .auth()
        .revoke_all_sessions(bearer(
            pb::RevokeAllSessionsRequest { keep_current: true },
            &a.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .revoked;
    assert!(n >= 2, "{n}");
    gw.auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &a.access_token))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_and_a_csr_become_a_client_certificate() {
    let gw = gateway().await;
    let admin = gw.admin().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["ignored.example".into()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let issued = gw
        .auth()
        .issue_certificate(bearer(
            pb::IssueCertificateRequest {
                csr_pem: csr.clone(),
                ttl_s: 600,
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.spiffe_id, "spiffe://test.devcycle/user/admin");
    let tls = devcycle::tls::MeshTls::from_pem(
        &issued.ca_pem,
        &issued.certificate_pem,
        &key.serialize_pem(),
        devcycle::testkit::TRUST_DOMAIN,
    )
    .unwrap();
    assert_eq!(tls.id().to_string(), issued.spiffe_id);

    // Only admins and maintainers get user certificates: services let any
    // user/* peer write directly.
    let viewer = gw.user("vee", &[pb::Role::Viewer]).await;
    let e = gw
        .auth()
        .issue_certificate(bearer(
            pb::IssueCertificateRequest {
                csr_pem: csr.clone(),
                ..Default::default()
            },
            &viewer.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Without a token: refused. With a worker join token: a worker identity, once.
    let e = gw
        .auth()
        .issue_certificate(pb::IssueCertificateRequest {
            csr_pem: csr.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let join = gw
        .auth()
        .create_worker_join_token(bearer(
            pb::CreateWorkerJoinTokenRequest {
                worker_id: "builder-7".into(),
                ttl_s: 60,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let req = || pb::IssueCertificateRequest {
        csr_pem: csr.clone(),
        worker_join_token: join.token.clone(),
        ..Default::default()
    };
    // A bad CSR does not burn the join token.
    let e = gw
        .auth()
        .issue_certificate(pb::IssueCertificateRequest {
            csr_pem: "not a csr".into(),
            worker_join_token: join.token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let w = gw
        .auth()
        .issue_certificate(req())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.spiffe_id, "spiffe://test.devcycle/worker/builder-7");
    let e = gw.auth().issue_certificate(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "a join token works once");
    // Bad input names its field.
    for (r, field) in [
        (
            pb::IssueCertificateRequest {
                csr_pem: "not a csr".into(),
                ..Default::default()
            },
            "csr_pem",
        ),
        (
            pb::IssueCertificateRequest {
                csr_pem: csr.clone(),
                ttl_s: 999_999,
                ..Default::default()
            },
            "ttl_s",
        ),
    ] {
        let e = gw
            .auth()
            .issue_certificate(bearer(r, &admin.access_token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{e:?}");
    }
}

#[tokio::test]
async fn rate_limits_per_principal_answer_with_the_delay() {
    let (mut s, dir) = setup(Arc::new(MemoryCache::default()));
    s.per_principal = (1.0, 3);
    let gw = start(s, Some(dir)).await;
    let admin = gw.admin().await;
    let mut last = None;
    for _ in 0..5 {
        if let Err(e) = gw
            .auth()
            .who_am_i(bearer(pb::WhoAmIRequest {}, &admin.access_token))
            .await
        {
            last = Some(e);
        }
    }
    let e = last.expect("the fourth call within a second is limited");
    assert_eq!(e.code(), Code::ResourceExhausted);
    let ms: u64 = e
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    tokio::time::sleep(Duration::from_millis(ms + 20)).await;
    gw.auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &admin.access_token))
        .await
        .unwrap();
}

#[tokio::test]
async fn mutating_calls_are_audited_stored_and_published() {
    let gw = gateway().await;
    let mut events = gw.bus.subscribe();
    let admin = gw.admin().await;
    let _ = gw
        .auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: "wrong password!".into(),
            ..Default::default()
        })
        .await;
    gw.user("auditee", &[pb::Role::Viewer]).await;
    // Reads are not audited.
    gw.auth()
        .who_am_i(bearer(pb::WhoAmIRequest {}, &admin.access_token))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let list = loop {
        let l = gw
            .audit()
            .list_audit_events(bearer(
                pb::ListAuditEventsRequest::default(),
                &admin.access_token,
            ))
            .await;
        let l = match l {
            Ok(l) => l.into_inner(),
            Err(e) => panic!("{e:?}"),
        };
        if l.events.iter().any(|e| e.method.ends_with("/CreateUser")) {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "{l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let create = list
        .events
        .iter()
        .find(|e| e.method == "/devcycle.auth.v1.Auth/CreateUser")
        .unwrap();
    assert_eq!(create.actor, "admin");
    assert_eq!(create.target, "auditee");
    assert_eq!(create.status_code, "OK");
    assert_eq!(create.outcome, pb::AuditOutcome::Ok as i32);
    assert_eq!(create.client_address, "127.0.0.1");
    let failed = list
        .events
        .iter()
        .find(|e| e.method.ends_with("/Login") && e.status_code == "UNAUTHENTICATED")
        .expect("a failed login is audited");
    assert_eq!(failed.target, "admin");
    assert_eq!(failed.outcome, pb::AuditOutcome::Denied as i32);
    assert!(!list.events.iter().any(|e| e.method.ends_with("/WhoAmI")));
    // Newest first.
    assert!(list.events.windows(2).all(|w| w[0].id > w[1].id));
    // And on the bus.
    let mut seen = false;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        if m.topic == "test.audit" {
            use prost::Message;
            let e = pb::AuditEvent::decode(m.payload.as_slice()).unwrap();
            if e.method.ends_with("/CreateUser") {
                seen = true;
                break;
            }
        }
    }
    assert!(seen, "audit events are published");
    // Viewers may not read the log.
    let v = gw.login("auditee", ADMIN_PASSWORD).await;
    let e = gw
        .audit()
        .list_audit_events(bearer(
            pb::ListAuditEventsRequest::default(),
            &v.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn oversized_requests_are_refused_by_size() {
    let gw = gateway().await;
    let admin = gw.admin().await;
    // The harness allows 64 KiB messages.
    let e = gw
        .auth()
        .create_user(bearer(
            pb::CreateUserRequest {
                name: "big".into(),
                password: "x".repeat(100 * 1024),
                roles: vec![pb::Role::Viewer as i32],
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("request"), "{e:?}");
}

#[tokio::test]
async fn the_jwks_is_served_over_plain_https_too() {
    let gw = gateway().await;
    let res = gw
        .http()
        .get(format!(
            "https://127.0.0.1:{}/.well-known/jwks.json",
            gw.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    let key = &v["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["kid"], gw.signer.public().kid.as_str());
    let parsed = devcycle_gateway::jwt::PublicKey::from_jwk(key).unwrap();
    assert_eq!(&parsed, gw.signer.public());
}
