//! SVID rules, reloads, and what a mesh listener refuses on the wire.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::authz::Policy;
use crate::identity::Kind;
use crate::server::MeshServer;

const TD: &str = "test.devcycle";

fn ca() -> CertificateAuthority {
    install_default_provider();
    CertificateAuthority::generate(TD).unwrap()
}

fn uri_san(s: &str) -> SanType {
    SanType::URI(s.to_owned().try_into().unwrap())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn svid_rules() {
    let ca = ca();
    let good = ca
        .issue(
            &SpiffeId::service(TD, "registry").unwrap(),
            &[],
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        svid_of(&der(&good.cert_pem), TD).unwrap().to_string(),
        "spiffe://test.devcycle/svc/registry"
    );
    assert!(matches!(
        svid_of(&der(&good.cert_pem), "other.td"),
        Err(SvidError::ForeignTrustDomain { .. })
    ));

    let mut two = CertificateParams::default();
    two.subject_alt_names = vec![
        uri_san("spiffe://test.devcycle/svc/a"),
        uri_san("spiffe://test.devcycle/svc/b"),
    ];
    let two = ca.issue_params(two).unwrap();
    assert_eq!(
        svid_of(&der(&two.cert_pem), TD),
        Err(SvidError::UriSanCount(2))
    );

    let none = ca.issue_params(CertificateParams::default()).unwrap();
    assert_eq!(
        svid_of(&der(&none.cert_pem), TD),
        Err(SvidError::UriSanCount(0))
    );

    let mut leaf_ca = CertificateParams::default();
    leaf_ca.subject_alt_names = vec![uri_san("spiffe://test.devcycle/svc/a")];
    leaf_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let leaf_ca = ca.issue_params(leaf_ca).unwrap();
    assert_eq!(
        svid_of(&der(&leaf_ca.cert_pem), TD),
        Err(SvidError::LeafIsCa)
    );

    let mut https = CertificateParams::default();
    https.subject_alt_names = vec![uri_san("https://example.test/svc/a")];
    let https = ca.issue_params(https).unwrap();
    assert!(matches!(
        svid_of(&der(&https.cert_pem), TD),
        Err(SvidError::NotSpiffe(_))
    ));
}

#[test]
fn files_are_reloaded_when_they_change() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let first = SpiffeId::service(TD, "registry").unwrap();
    let files = ca
        .ensure_identity(dir.path(), &first, &[], Duration::from_secs(3600))
        .unwrap();
    let tls = MeshTls::from_files(files.clone(), TD).unwrap();
    assert_eq!(tls.id(), first);
    assert!(!tls.reload_if_changed().unwrap());

    // A half-written file keeps the current material.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    assert!(tls.reload_if_changed().is_err());
    assert_eq!(tls.id(), first);

    // Rotated to a new identity (same paths): picked up.
    let second = SpiffeId::service(TD, "scheduler").unwrap();
    let issued = ca.issue(&second, &[], Duration::from_secs(3600)).unwrap();
    std::fs::write(&files.key, &issued.key_pem).unwrap();
    std::fs::write(&files.cert, &issued.cert_pem).unwrap();
    assert!(tls.reload_if_changed().unwrap());
    assert_eq!(tls.id(), second);
}

#[test]
fn ensure_identity_keeps_a_fresh_certificate() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let id = SpiffeId::new(TD, Kind::User, "admin").unwrap();
    let files = ca
        .ensure_identity(dir.path(), &id, &[], Duration::from_secs(3600))
        .unwrap();
    let before = std::fs::read_to_string(&files.cert).unwrap();
    ca.ensure_identity(dir.path(), &id, &[], Duration::from_secs(3600))
        .unwrap();
    assert_eq!(before, std::fs::read_to_string(&files.cert).unwrap());
}

/// A mesh server exposing only health, as `svc/registry`.
async fn server(ca: &CertificateAuthority) -> (std::net::SocketAddr, CancellationToken) {
    let id = SpiffeId::service(TD, "registry").unwrap();
    let issued = ca
        .issue(&id, &["127.0.0.1".into()], Duration::from_secs(60))
        .unwrap();
    let tls = MeshTls::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem, TD).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let srv = MeshServer {
        denylist: None,
        name: "test",
        listener,
        tls,
        policy: Policy::new(&[]),
        gateway: SpiffeId::service(TD, "gateway").unwrap(),
        health_names: vec![],
        health_grace: Duration::ZERO,
        drain: Duration::from_secs(1),
        reflection: false,
    };
    tokio::spawn(srv.serve(tonic::service::Routes::default(), stop.clone()));
    (addr, stop)
}

/// A channel presenting an arbitrary certificate, trusting `ca_pem`.
fn raw_channel(addr: std::net::SocketAddr, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Channel {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    let chain = vec![der(cert_pem)];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
}

async fn check(channel: Channel) -> Result<(), tonic::Status> {
    tokio::time::timeout(
        Duration::from_secs(5),
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("timed out"))?
    .map(|_| ())
}

#[tokio::test]
async fn mesh_listener_accepts_svids_and_refuses_everything_else() {
    let ca = ca();
    let (addr, stop) = server(&ca).await;

    // A valid SVID from the mesh CA.
    let me = SpiffeId::new(TD, Kind::Worker, "w1").unwrap();
    let good = ca.issue(&me, &[], Duration::from_secs(60)).unwrap();
    let tls = MeshTls::from_pem(ca.cert_pem(), &good.cert_pem, &good.key_pem, TD).unwrap();
    let expect = SpiffeId::service(TD, "registry").unwrap();
    let ch = crate::client::channel(&tls, &addr.to_string(), expect).unwrap();
    check(ch).await.expect("valid SVID is served");

    // Expecting another service than the one that answers.
    let wrong = SpiffeId::service(TD, "scheduler").unwrap();
    let ch = crate::client::channel(&tls, &addr.to_string(), wrong).unwrap();
    assert!(check(ch).await.is_err(), "server identity is verified");

    // Plaintext HTTP/2 to the mTLS port.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    assert!(check(plain).await.is_err(), "plaintext refused");

    // A certificate from another CA (trusting our CA for the server side).
    let other = CertificateAuthority::generate(TD).unwrap();
    let foreign = other.issue(&me, &[], Duration::from_secs(60)).unwrap();
    let ch = raw_channel(addr, ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem);
    assert!(check(ch).await.is_err(), "foreign CA refused");

    // Two URI SANs, from our CA.
    let mut two = CertificateParams::default();
    two.subject_alt_names = vec![
        uri_san("spiffe://test.devcycle/worker/a"),
        uri_san("spiffe://test.devcycle/worker/b"),
    ];
    two.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let two = ca.issue_params(two).unwrap();
    let ch = raw_channel(addr, ca.cert_pem(), &two.cert_pem, &two.key_pem);
    assert!(check(ch).await.is_err(), "two URI SANs refused");

    // A leaf that is a CA, from our CA.
    let mut leaf_ca = CertificateParams::default();
    leaf_ca.subject_alt_names = vec![uri_san("spiffe://test.devcycle/worker/a")];
    leaf_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let leaf_ca = ca.issue_params(leaf_ca).unwrap();
    let ch = raw_channel(addr, ca.cert_pem(), &leaf_ca.cert_pem, &leaf_ca.key_pem);
    assert!(check(ch).await.is_err(), "CA leaf refused");

    // The valid identity still works after all of that.
    let ch = crate::client::channel(
        &tls,
        &addr.to_string(),
        SpiffeId::service(TD, "registry").unwrap(),
    )
    .unwrap();
    check(ch).await.expect("listener still serving");
    stop.cancel();
}

#[tokio::test]
async fn health_turns_not_serving_before_the_listener_closes() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let ca = ca();
    let id = SpiffeId::service(TD, "registry").unwrap();
    let issued = ca.issue(&id, &[], Duration::from_secs(60)).unwrap();
    let tls = MeshTls::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem, TD).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let srv = MeshServer {
        denylist: None,
        name: "test",
        listener,
        tls,
        policy: Policy::new(&[]),
        gateway: SpiffeId::service(TD, "gateway").unwrap(),
        health_names: vec!["test.Svc"],
        health_grace: Duration::from_millis(800),
        drain: Duration::from_secs(1),
        reflection: false,
    };
    let task = tokio::spawn(srv.serve(tonic::service::Routes::default(), stop.clone()));

    let me = SpiffeId::new(TD, Kind::Worker, "probe").unwrap();
    let cert = ca.issue(&me, &[], Duration::from_secs(60)).unwrap();
    let client = MeshTls::from_pem(ca.cert_pem(), &cert.cert_pem, &cert.key_pem, TD).unwrap();
    let ch = crate::client::channel(&client, &addr.to_string(), id).unwrap();
    let mut health = HealthClient::new(ch);
    let status = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let got = health
        .check(status("test.Svc"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(got, ServingStatus::Serving as i32);

    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = health
        .check(status("test.Svc"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        got,
        ServingStatus::NotServing as i32,
        "NOT_SERVING during the grace period"
    );
    let got = health.check(status("")).await.unwrap().into_inner().status;
    assert_eq!(got, ServingStatus::NotServing as i32);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops after grace and drain")
        .unwrap()
        .unwrap();
}
