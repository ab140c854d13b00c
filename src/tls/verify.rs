//! Certificate verification for the mesh: a chain to the mesh CA, and a leaf
//! that is an X.509-SVID — not a CA, exactly one URI SAN, a SPIFFE ID of the
//! mesh's trust domain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::{MeshTls, provider};
use crate::identity::SpiffeId;

/// The handshake-signature methods both verifiers share: the provider's
/// algorithms, nothing mesh-specific.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &provider().signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &provider().signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Why a certificate is not a valid SVID of this mesh.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SvidError {
    #[error("certificate does not parse")]
    Malformed,
    #[error("leaf certificate is a CA")]
    LeafIsCa,
    #[error("certificate has {0} URI SANs, exactly one is required")]
    UriSanCount(usize),
    #[error("URI SAN is not a mesh SPIFFE ID: {0}")]
    NotSpiffe(String),
    #[error("trust domain {found} is not {expected}")]
    ForeignTrustDomain { found: String, expected: String },
    #[error("peer is {found}, expected {expected}")]
    UnexpectedPeer { found: String, expected: String },
}

/// When the mesh CA issued `cert` (its notBefore plus the CA's back-dating),
/// in milliseconds since the epoch; 0 if it cannot be read.
pub fn issued_ms(cert: &CertificateDer<'_>) -> i64 {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, x)| x.validity().not_before.timestamp() * 1000)
        .map(|nb| nb + super::ca::BACKDATE.as_millis() as i64)
        .unwrap_or(0)
}

/// Extracts the SPIFFE ID of a leaf certificate, enforcing the SVID rules.
pub fn svid_of(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<SpiffeId, SvidError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| SvidError::Malformed)?;
    let bc = x509.basic_constraints().map_err(|_| SvidError::Malformed)?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let uris: Vec<&str> = match x509
        .subject_alternative_name()
        .map_err(|_| SvidError::Malformed)?
    {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriSanCount(uris.len()));
    };
    let id = SpiffeId::parse(uri).map_err(|_| SvidError::NotSpiffe((*uri).to_owned()))?;
    if id.trust_domain() != trust_domain {
        return Err(SvidError::ForeignTrustDomain {
            found: id.trust_domain().to_owned(),
            expected: trust_domain.to_owned(),
        });
    }
    Ok(id)
}

fn reject(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Server side: requires a client certificate chained to the (reloadable)
/// mesh CA that is a valid SVID.
#[derive(Debug)]
pub(super) struct MeshClientVerifier {
    pub(super) mesh: Arc<MeshTls>,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.mesh.material();
        material
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        svid_of(end_entity, self.mesh.trust_domain()).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Client side: the server must present a mesh SVID, and the expected one
/// when the caller names it. Host names are not checked: in the mesh a
/// workload is named by its SPIFFE ID, not by the address it was reached at.
#[derive(Debug)]
pub(super) struct MeshServerVerifier {
    pub(super) mesh: Arc<MeshTls>,
    pub(super) expect: Option<SpiffeId>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.mesh.material();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &material.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let id = svid_of(end_entity, self.mesh.trust_domain()).map_err(reject)?;
        if let Some(expect) = &self.expect
            && &id != expect
        {
            return Err(reject(SvidError::UnexpectedPeer {
                found: id.to_string(),
                expected: expect.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
