//! mTLS for every hop of the mesh: SVIDs loaded from files and reloaded when
//! the files change, rustls configs that require and verify them, and the
//! network glue (`net`) that hands the verified peer identity to services.

mod ca;
mod net;
mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, client::ResolvesClientCert};
use tokio_util::sync::CancellationToken;

pub use ca::{CertificateAuthority, IdentityFiles, IssuedCert};
pub use net::{MeshConnectInfo, MeshConnector, MeshStream, incoming};
pub use verify::{SvidError, svid_of};

use crate::identity::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("issuing a certificate: {0}")]
    Issue(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error("CA bundle: {0}")]
    Bundle(String),
    #[error("{path}: not a mesh identity: {source}")]
    Svid { path: PathBuf, source: SvidError },
}

impl TlsError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }
    fn issue(e: impl std::fmt::Display) -> Self {
        Self::Issue(e.to_string())
    }
}

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// The one crypto provider of the mesh (ring).
pub fn provider() -> &'static Arc<CryptoProvider> {
    &PROVIDER
}

/// Makes ring the process default for libraries that build their own
/// rustls configs. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a workload holds at one moment: its SVID and key, and the trust
/// bundle it verifies peers with. Swapped whole on reload.
pub(crate) struct Material {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    id: Arc<SpiffeId>,
    /// When the certificate was issued, presented in process
    /// ([`crate::inproc`]) as an mTLS peer's would be.
    issued_ms: i64,
}

/// Where the material comes from, for reloads.
#[derive(Debug, Clone)]
enum Source {
    Files(IdentityFiles),
    Memory,
}

/// A workload's mesh identity: its SVID, key and trust bundle, reloadable.
pub struct MeshTls {
    trust_domain: String,
    source: Source,
    current: ArcSwap<Material>,
    stamps: ArcSwap<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("id", &self.material().id.to_string())
            .field("source", &self.source)
            .finish()
    }
}

impl MeshTls {
    /// Loads an identity from PEM files; see [`Self::spawn_reloader`].
    pub fn from_files(files: IdentityFiles, trust_domain: &str) -> Result<Arc<Self>, TlsError> {
        let read = |p: &Path| fs::read(p).map_err(|e| TlsError::io(p, e));
        let material = build_material(
            &read(&files.ca)?,
            &read(&files.cert)?,
            &read(&files.key)?,
            trust_domain,
            &files.cert,
        )?;
        let stamps = stamps_of(&files);
        Ok(Arc::new(Self {
            trust_domain: trust_domain.to_owned(),
            source: Source::Files(files),
            current: ArcSwap::from_pointee(material),
            stamps: ArcSwap::from_pointee(stamps),
        }))
    }

    /// An identity held only in memory (tests, in-process clients).
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
    ) -> Result<Arc<Self>, TlsError> {
        let material = build_material(
            ca_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            trust_domain,
            Path::new("<memory>"),
        )?;
        Ok(Arc::new(Self {
            trust_domain: trust_domain.to_owned(),
            source: Source::Memory,
            current: ArcSwap::from_pointee(material),
            stamps: ArcSwap::from_pointee(Vec::new()),
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// This workload's own SPIFFE ID.
    pub fn id(&self) -> SpiffeId {
        SpiffeId::clone(&self.material().id)
    }

    /// Who this workload is to a service it calls in process: what an
    /// mTLS handshake would have established.
    pub fn connect_info(&self, remote: std::net::SocketAddr) -> MeshConnectInfo {
        let m = self.material();
        MeshConnectInfo {
            remote,
            peer: Some(Arc::clone(&m.id)),
            issued_ms: m.issued_ms,
        }
    }

    pub(crate) fn material(&self) -> arc_swap::Guard<Arc<Material>> {
        self.current.load()
    }

    /// Reloads the files if any changed since the last load. A reload that
    /// fails (a half-written file, a foreign certificate) keeps the current
    /// material and reports the error; the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let Source::Files(files) = &self.source else {
            return Ok(false);
        };
        let now = stamps_of(files);
        if **self.stamps.load() == now {
            return Ok(false);
        }
        let read = |p: &Path| fs::read(p).map_err(|e| TlsError::io(p, e));
        let material = build_material(
            &read(&files.ca)?,
            &read(&files.cert)?,
            &read(&files.key)?,
            &self.trust_domain,
            &files.cert,
        )?;
        self.current.store(Arc::new(material));
        self.stamps.store(Arc::new(now));
        Ok(true)
    }

    /// Polls the files every `every` until `cancel`, swapping in new material
    /// when they change. New connections use it; open ones keep theirs.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration, cancel: CancellationToken) {
        if matches!(self.source, Source::Memory) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.reload_if_changed() {
                    Ok(true) => tracing::info!(id = %this.id(), "reloaded mesh certificates"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "mesh certificate reload failed; keeping the current ones")
                    }
                }
            }
        });
    }

    /// A server config that requires a client SVID of this trust domain.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let verifier = Arc::new(verify::MeshClientVerifier {
            mesh: Arc::clone(self),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server config for clients outside the mesh (the gateway's public
    /// port): this identity's certificate, no client certificate requested.
    pub fn public_server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client config presenting this SVID and requiring the server's to be
    /// `expect` (any mesh identity when `None`).
    pub fn client_config(self: &Arc<Self>, expect: Option<SpiffeId>) -> Arc<rustls::ClientConfig> {
        let verifier = Arc::new(verify::MeshServerVerifier {
            mesh: Arc::clone(self),
            expect,
        });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

#[derive(Debug)]
struct Resolver(Arc<MeshTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.material().key))
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.material().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn stamps_of(files: &IdentityFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn build_material(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    trust_domain: &str,
    cert_path: &Path,
) -> Result<Material, TlsError> {
    let parse_err = |what: &str, e: &dyn std::fmt::Display| TlsError::Parse {
        path: cert_path.to_owned(),
        reason: format!("{what}: {e}"),
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| parse_err("trust bundle", &e))?;
        roots.add(cert).map_err(|e| parse_err("trust bundle", &e))?;
    }
    if roots.is_empty() {
        return Err(parse_err("trust bundle", &"no certificates"));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| parse_err("certificate", &e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| parse_err("certificate", &"no certificates"))?;
    let id = svid_of(leaf, trust_domain).map_err(|source| TlsError::Svid {
        path: cert_path.to_owned(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| parse_err("private key", &e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| parse_err("private key", &e))?;
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider()))
            .build()
            .map_err(|e| parse_err("trust bundle", &e))?;
    let issued_ms = verify::issued_ms(leaf);
    Ok(Material {
        key: Arc::new(CertifiedKey::new(chain, signing_key)),
        roots,
        client_verifier,
        id: Arc::new(id),
        issued_ms,
    })
}

/// A client config for a public TLS server (the gateway) whose certificate
/// chains to `ca_pem`, verified by host name; no client certificate.
pub fn public_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Bundle(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
