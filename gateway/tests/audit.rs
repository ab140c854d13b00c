//! Rate limits, request sizes and the audit log of mutating calls, through
//! the front door.

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
