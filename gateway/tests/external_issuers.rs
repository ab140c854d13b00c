//! Tokens of external issuers: their keys fetched from a JWKS endpoint,
//! refreshed, removed kids dropped, roles mapped, and unknown kids causing
//! no refetch storm.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use devcycle::proto::auth::v1 as pb;
use devcycle_gateway::cache::MemoryCache;
use devcycle_gateway::jwks::ExternalIssuer;
use devcycle_gateway::jwt::Signer;
use serde_json::{Value, json};
use tonic::Code;

fn now() -> i64 {
    devcycle::time::now_ms() / 1000
}

async fn refused(gw: &Gateway, token: &str, why: &str) {
    let e = gw.whoami(token).await.expect_err(why);
    assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
}

#[tokio::test]
async fn unknown_kids_of_an_external_issuer_cause_no_refetch_storm() {
    // A JWKS endpoint that counts its fetches.
    let issuer_key = Signer::generate().unwrap();
    let jwk = issuer_key.public().to_jwk();
    let jwks = JwksServer::start(&[&issuer_key], None).await;
    let hits = Arc::clone(&jwks.hits);
    let url = jwks.url.clone();
    let (mut s, dir) = setup(Arc::new(MemoryCache::default()));
    s.external =
        vec![ExternalIssuer::new(&issuer_config(&url, 300), Duration::from_secs(30)).unwrap()];
    let gw = start(s, Some(dir)).await;
    let ext_claims = |sub: &str| {
        json!({"iss": "https://idp.example", "aud": "devcycle-api", "sub": sub, "groups": ["eng"],
               "jti": uuid::Uuid::new_v4().to_string(), "exp": now() + 300})
    };
    let h = json!({"alg": "EdDSA", "kid": jwk.kid, "typ": "JWT"});
    let token = issuer_key.sign_raw(
        h.to_string().as_bytes(),
        ext_claims("alice").to_string().as_bytes(),
    );
    let me = gw.whoami(&token).await.unwrap();
    assert_eq!(me.subject, "idp-alice");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Fifty tokens with made-up kids, concurrently: at most one refetch.
    let mut calls = Vec::new();
    for i in 0..50 {
        let h = json!({"alg": "EdDSA", "kid": format!("made-up-{i}"), "typ": "JWT"});
        let t = issuer_key.sign_raw(
            h.to_string().as_bytes(),
            ext_claims("alice").to_string().as_bytes(),
        );
        let gw_auth = gw.auth();
        calls.push(tokio::spawn(async move {
            let mut a = gw_auth;
            a.who_am_i(bearer(pb::WhoAmIRequest {}, &t)).await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap_err().code(), Code::Unauthenticated);
    }
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "fetches: {}",
        hits.load(Ordering::SeqCst)
    );
    // External tokens cannot be refresh tokens, and need the issuer's audience.
    let mut c = ext_claims("alice");
    c["aud"] = json!("devcycle");
    let t = issuer_key.sign_raw(h.to_string().as_bytes(), c.to_string().as_bytes());
    refused(&gw, &t, "external token with our audience").await;
}

/// A JWKS endpoint whose key set the test replaces, counting its fetches.
struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    body: Arc<arc_swap::ArcSwap<String>>,
}

fn jwks_of(keys: &[&Signer]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let j = k.public().to_jwk();
            json!({"kty": j.kty, "crv": j.crv, "kid": j.kid, "alg": j.alg, "x": j.x, "use": "sig"})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

impl JwksServer {
    async fn start(keys: &[&Signer], max_age_s: Option<u32>) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(arc_swap::ArcSwap::from_pointee(jwks_of(keys)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let cache = max_age_s
            .map(|s| format!("cache-control: max-age={s}\r\n"))
            .unwrap_or_default();
        let (h, b) = (Arc::clone(&hits), Arc::clone(&body));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.load().to_string();
                let cache = cache.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{cache}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self { url, hits, body }
    }

    fn serve(&self, keys: &[&Signer]) {
        self.body.store(Arc::new(jwks_of(keys)));
    }
}

fn issuer_config(url: &str, refresh_s: u32) -> devcycle::config::ExternalIssuerConfig {
    devcycle::config::ExternalIssuerConfig {
        issuer: "https://idp.example".into(),
        audience: "devcycle-api".into(),
        jwks_url: url.into(),
        subject_prefix: "idp-".into(),
        jwks_refresh: Duration::from_secs(refresh_s.into()),
        roles_claim: "groups".into(),
        role_map: [
            ("eng".to_string(), vec!["developer".to_string()]),
            (
                "leads".to_string(),
                vec!["maintainer".to_string(), "developer".to_string()],
            ),
        ]
        .into(),
    }
}

#[tokio::test]
async fn external_keys_are_refreshed_removed_kids_dropped_and_roles_mapped() {
    let (old, new) = (Signer::generate().unwrap(), Signer::generate().unwrap());
    // max-age 1 s: the issuer asks for a refresh sooner than the configured 60.
    let jwks = JwksServer::start(&[&old], Some(1)).await;
    let (mut s, dir) = setup(Arc::new(MemoryCache::default()));
    s.external = vec![
        ExternalIssuer::new(&issuer_config(&jwks.url, 60), Duration::from_millis(200)).unwrap(),
    ];
    let gw = start(s, Some(dir)).await;
    let token = |key: &Signer, claims: Value| {
        let h = json!({"alg": "EdDSA", "kid": key.public().kid, "typ": "JWT"});
        let mut c = json!({"iss": "https://idp.example", "aud": "devcycle-api", "sub": "carol",
            "jti": uuid::Uuid::new_v4().to_string(), "exp": now() + 300});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        key.sign_raw(h.to_string().as_bytes(), c.to_string().as_bytes())
    };

    // Roles come from the mapping, never from the token's own role names.
    let me = gw
        .whoami(&token(
            &old,
            json!({"groups": ["eng", "leads", "unknown"], "roles": ["admin"]}),
        ))
        .await
        .unwrap();
    assert_eq!(me.subject, "idp-carol");
    let mut roles = me.roles.clone();
    roles.sort();
    let mut want = vec![pb::Role::Maintainer as i32, pb::Role::Developer as i32];
    want.sort();
    assert_eq!(roles, want);
    // Unmapped values grant nothing, not even WhoAmI.
    let e = gw
        .whoami(&token(&old, json!({"roles": ["admin"], "groups": "ops"})))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A local user cannot take an external user's name.
    let admin = gw.admin().await.access_token;
    let e = gw
        .auth()
        .create_user(bearer(
            pb::CreateUserRequest {
                name: "idp-carol".into(),
                password: "a long enough password".into(),
                roles: vec![pb::Role::Viewer as i32],
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("name"), "{e:?}");

    // The issuer rotates: the old key is gone from its JWKS. A token signed
    // with it, whose kid stays cached, is refused within a few refreshes.
    jwks.serve(&[&new]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match gw.whoami(&token(&old, json!({"groups": ["eng"]}))).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            Err(e) => panic!("{e:?}"),
            Ok(_) => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a removed key still verifies after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.whoami(&token(&new, json!({"groups": ["eng"]})))
        .await
        .expect("the new key verifies");
}
