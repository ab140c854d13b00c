//! Client certificates for tokens and join tokens, and the JWKS, through
//! the front door.

mod common;

use std::sync::Arc;

use common::*;
use devcycle::proto::auth::v1 as pb;
use devcycle_gateway::cache::MemoryCache;
use tonic::Code;

async fn gateway() -> Gateway {
    let (s, dir) = setup(Arc::new(MemoryCache::default()));
    start(s, Some(dir)).await
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
