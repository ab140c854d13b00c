//! Every known attack on tokens, each answered with UNAUTHENTICATED (or
//! PERMISSION_DENIED / INVALID_ARGUMENT), never INTERNAL and never success.

mod common;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use devcycle::proto::auth::v1 as pb;
use devcycle_gateway::cache::MemoryCache;
use devcycle_gateway::jwt::Signer;
use serde_json::{Value, json};
use tonic::Code;

const ISS: &str = "https://devcycle.test";

fn now() -> i64 {
    devcycle::time::now_ms() / 1000
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "devcycle", "sub": "admin", "roles": ["admin"], "sid": "s1",
           "jti": uuid::Uuid::new_v4().to_string(), "iat": now(), "nbf": now(), "exp": now() + 300})
}

fn header(gw: &Gateway) -> Value {
    json!({"alg": "EdDSA", "kid": gw.signer.public().kid, "typ": "at+jwt"})
}

fn signed(gw: &Gateway, header: &Value, claims: &Value) -> String {
    gw.signer
        .sign_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
}

async fn refused(gw: &Gateway, token: &str, why: &str) {
    let e = gw.whoami(token).await.expect_err(why);
    assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
}

async fn gateway() -> Gateway {
    let (s, dir) = setup(Arc::new(MemoryCache::default()));
    start(s, Some(dir)).await
}

#[tokio::test]
async fn well_formed_tokens_pass_and_every_malformed_one_is_refused() {
    let gw = gateway().await;
    let h = header(&gw);
    // The control: a correct token is accepted.
    let me = gw.whoami(&signed(&gw, &h, &claims())).await.unwrap();
    assert_eq!(me.subject, "admin");

    // alg none, unsigned.
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "kid": h["kid"], "typ": "at+jwt"}).to_string()),
        B64.encode(claims().to_string())
    );
    refused(&gw, &none, "alg none").await;

    // HS256 with the public key as the HMAC secret, in its usual encodings.
    let public = gw.signer.public().bytes.clone();
    let hs_header = json!({"alg": "HS256", "kid": h["kid"], "typ": "at+jwt"});
    for secret in [public.clone(), B64.encode(&public).into_bytes()] {
        let signing_input = format!(
            "{}.{}",
            B64.encode(hs_header.to_string()),
            B64.encode(claims().to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        refused(
            &gw,
            &format!("{signing_input}.{}", B64.encode(tag.as_ref())),
            "HS256 with the public key",
        )
        .await;
    }

    // Algorithms outside the allow-list, even correctly formatted.
    for alg in ["RS256", "PS256", "ES512", "HS512", "EdDSA2"] {
        let mut hh = h.clone();
        hh["alg"] = json!(alg);
        refused(&gw, &signed(&gw, &hh, &claims()), alg).await;
    }
    // ES256 in the header over an Ed25519 key: the key's algorithm binds.
    let mut hh = h.clone();
    hh["alg"] = json!("ES256");
    refused(&gw, &signed(&gw, &hh, &claims()), "alg/key mismatch").await;

    // Unknown kid.
    let mut hh = h.clone();
    hh["kid"] = json!("no-such-key");
    refused(&gw, &signed(&gw, &hh, &claims()), "unknown kid").await;

    // Key-carrying headers, even with a valid signature.
    for (k, v) in [
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        (
            "jwk",
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public)}),
        ),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut hh = h.clone();
        hh[k] = v;
        refused(&gw, &signed(&gw, &hh, &claims()), k).await;
    }

    // Issuer.
    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    refused(&gw, &signed(&gw, &h, &c), "wrong iss").await;
    let mut c = claims();
    c.as_object_mut().unwrap().remove("iss");
    refused(&gw, &signed(&gw, &h, &c), "missing iss").await;

    // Audience: wrong, missing, multi-valued (even when it includes ours).
    for aud in [
        json!("other"),
        json!(["devcycle", "other"]),
        json!(["devcycle"]),
    ] {
        let mut c = claims();
        c["aud"] = aud.clone();
        refused(&gw, &signed(&gw, &h, &c), &format!("aud {aud}")).await;
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    refused(&gw, &signed(&gw, &h, &c), "missing aud").await;

    // Expiry: beyond the leeway, missing, years ahead.
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    refused(&gw, &signed(&gw, &h, &c), "expired").await;
    let mut c = claims();
    c["exp"] = json!(now() - 10);
    assert!(
        gw.whoami(&signed(&gw, &h, &c)).await.is_ok(),
        "within the leeway"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    refused(&gw, &signed(&gw, &h, &c), "missing exp").await;
    let mut c = claims();
    c["exp"] = json!(now() + 5 * 365 * 24 * 3600);
    refused(&gw, &signed(&gw, &h, &c), "exp years ahead").await;

    // Not valid yet.
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    refused(&gw, &signed(&gw, &h, &c), "nbf in the future").await;

    // A refresh token as an access token.
    let login = gw.admin().await;
    refused(&gw, &login.refresh_token, "refresh token as access").await;
    let mut hh = h.clone();
    hh["typ"] = json!("rt+jwt");
    refused(&gw, &signed(&gw, &hh, &claims()), "typ rt+jwt").await;

    // Shape: four segments, 64 KiB, duplicate keys, unknown crit.
    let good = signed(&gw, &h, &claims());
    refused(&gw, &format!("{good}.AAAA"), "four segments").await;
    let mut c = claims();
    c["pad"] = json!("x".repeat(64 * 1024));
    refused(&gw, &signed(&gw, &h, &c), "64 KiB").await;
    let dup_header = format!(
        r#"{{"alg":"EdDSA","kid":"{}","typ":"at+jwt","alg":"none"}}"#,
        gw.signer.public().kid
    );
    refused(
        &gw,
        &gw.signer
            .sign_raw(dup_header.as_bytes(), claims().to_string().as_bytes()),
        "duplicate header key",
    )
    .await;
    let c = claims();
    let dup_payload = format!(
        r#"{{"iss":"{ISS}","aud":"devcycle","sub":"viewer","sub":"admin","roles":["admin"],"sid":"s1","jti":"j1","exp":{}}}"#,
        c["exp"]
    );
    refused(
        &gw,
        &gw.signer
            .sign_raw(h.to_string().as_bytes(), dup_payload.as_bytes()),
        "duplicate claim",
    )
    .await;
    let mut hh = h.clone();
    hh["crit"] = json!(["exp-ext"]);
    hh["exp-ext"] = json!(1);
    refused(&gw, &signed(&gw, &hh, &claims()), "unknown crit").await;

    // Another key signing a token with our kid.
    let other = Signer::generate().unwrap();
    let forged = other.sign_raw(h.to_string().as_bytes(), claims().to_string().as_bytes());
    refused(&gw, &forged, "foreign key").await;
}

#[tokio::test]
async fn credentials_in_the_url_and_client_identity_metadata_are_refused() {
    let gw = gateway().await;
    let login = gw.admin().await;
    let path = format!(
        "/devcycle.auth.v1.Auth/WhoAmI?access_token={}",
        login.access_token
    );
    let r = gw
        .grpc_web::<_, pb::WhoAmIResponse>(&path, &pb::WhoAmIRequest {}, &[])
        .await;
    assert_eq!(r.status, Some(Code::Unauthenticated as i32), "{r:?}");
    assert!(r.body.is_none());

    let mut req = bearer(pb::WhoAmIRequest {}, &login.access_token);
    req.metadata_mut()
        .insert("x-devcycle-subject", "someone-else".parse().unwrap());
    let e = gw.auth().who_am_i(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("x-devcycle-subject"), "{e:?}");

    let mut req = tonic::Request::new(pb::WhoAmIRequest {});
    req.metadata_mut()
        .insert("x-devcycle-roles", "admin".parse().unwrap());
    let e = gw.auth().who_am_i(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // No credentials at all, and a scheme other than Bearer.
    let e = gw.auth().who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::WhoAmIRequest {});
    req.metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    assert_eq!(
        gw.auth().who_am_i(req).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn logout_revokes_the_token_and_refresh_rotates_with_reuse_detection() {
    let gw = gateway().await;
    let login = gw.admin().await;
    assert!(gw.whoami(&login.access_token).await.is_ok());
    gw.auth()
        .logout(bearer(pb::LogoutRequest {}, &login.access_token))
        .await
        .unwrap();
    refused(&gw, &login.access_token, "replayed after logout").await;
    let e = gw
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "session ended: {e:?}");

    // Rotation: each refresh token works once.
    let login = gw.admin().await;
    let first = gw
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.refresh_token, login.refresh_token);
    assert!(gw.whoami(&first.access_token).await.is_ok());
    // Reusing the rotated token revokes the whole session.
    let e = gw
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("revoked"), "{e:?}");
    refused(&gw, &first.access_token, "session revoked by reuse").await;
    refused(&gw, &login.access_token, "session revoked by reuse").await;
    let e = gw
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Garbage is UNAUTHENTICATED, an empty token INVALID_ARGUMENT.
    let e = gw
        .auth()
        .refresh(pb::RefreshRequest {
            refresh_token: "x.y.z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = gw
        .auth()
        .refresh(pb::RefreshRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("refresh_token"));
}

#[tokio::test]
async fn brute_force_on_login_is_locked_out() {
    let gw = gateway().await;
    let mut codes = Vec::new();
    for _ in 0..7 {
        let r = gw
            .auth()
            .login(pb::LoginRequest {
                username: "admin".into(),
                password: "wrong password!".into(),
                ..Default::default()
            })
            .await;
        codes.push(r.unwrap_err());
    }
    assert!(
        codes[..5].iter().all(|e| e.code() == Code::Unauthenticated),
        "{codes:?}"
    );
    let last = codes.last().unwrap();
    assert_eq!(last.code(), Code::ResourceExhausted, "{last:?}");
    assert!(last.metadata().get("retry-after-ms").is_some());
    // Locked out even with the right password, until the bucket drains.
    let e = gw
        .auth()
        .login(pb::LoginRequest {
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Other users are unaffected.
    let e = gw
        .auth()
        .login(pb::LoginRequest {
            username: "nobody".into(),
            password: "whatever whatever".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Bad fields name themselves.
    let e = gw
        .auth()
        .login(pb::LoginRequest {
            username: "Not Valid".into(),
            password: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("username"), "{e:?}");
}

#[tokio::test]
async fn grpc_web_from_a_foreign_origin_is_refused_and_allowed_origins_work() {
    let gw = gateway().await;
    let login = gw.admin().await;
    let auth = format!("Bearer {}", login.access_token);
    let r = gw
        .grpc_web::<_, pb::WhoAmIResponse>(
            "/devcycle.auth.v1.Auth/WhoAmI",
            &pb::WhoAmIRequest {},
            &[("origin", "https://evil.example"), ("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, Some(Code::PermissionDenied as i32), "{r:?}");
    assert!(r.headers.get("access-control-allow-origin").is_none());

    let r = gw
        .grpc_web::<_, pb::WhoAmIResponse>(
            "/devcycle.auth.v1.Auth/WhoAmI",
            &pb::WhoAmIRequest {},
            &[
                ("origin", "https://app.example.com"),
                ("authorization", &auth),
            ],
        )
        .await;
    assert_eq!(r.status, Some(0), "{r:?}");
    assert_eq!(r.body.unwrap().subject, "admin");
    assert_eq!(
        r.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );

    // Preflight: allowed origin gets the CORS answer, others and null none.
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.example", false),
        ("null", false),
    ] {
        let res = gw
            .http()
            .request(
                reqwest::Method::OPTIONS,
                format!(
                    "https://127.0.0.1:{}/devcycle.auth.v1.Auth/WhoAmI",
                    gw.addr.port()
                ),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization,x-grpc-web",
            )
            .send()
            .await
            .unwrap();
        let acao = res.headers().get("access-control-allow-origin");
        assert_eq!(acao.is_some(), allowed, "{origin}: {:?}", res.headers());
        if let Some(v) = acao {
            assert_eq!(v, origin);
            assert!(
                res.headers()
                    .get("access-control-allow-credentials")
                    .is_none()
            );
        }
    }
}
