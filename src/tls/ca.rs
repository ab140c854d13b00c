//! The mesh certificate authority: created once in a data directory for
//! development (`devcycle up`), and the issuer of every workload's SVID.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::TlsError;
use crate::identity::{Kind, SpiffeId};

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl CertificateAuthority {
    /// A new self-signed CA for a trust domain.
    pub fn generate(trust_domain: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::issue)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("devcycle mesh CA {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(TlsError::issue)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cert_pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| TlsError::Parse {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::Parse {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self { cert_pem, issuer })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`, creating them on first use.
    /// The key file is written with mode 0600.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() && key_path.exists() {
            return Self::load(dir);
        }
        let ca = Self::generate(trust_domain)?;
        fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())?;
        fs::write(&cert_path, &ca.cert_pem).map_err(|e| TlsError::io(&cert_path, e))?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// An SVID for `id`. Services and workers (which serve a control plane)
    /// also get server names (`hosts`: DNS names or IP addresses) and the
    /// serverAuth usage; everyone gets clientAuth.
    pub fn issue(
        &self,
        id: &SpiffeId,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCert, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, id.path());
        params.subject_alt_names = svid_sans(id, hosts)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if matches!(id.kind(), Kind::Service | Kind::Worker) {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        set_validity(&mut params, lifetime);
        self.issue_params(params)
    }

    /// Signs arbitrary parameters with a fresh key. Callers that need an SVID
    /// use [`Self::issue`]; this exists for tests of malformed certificates.
    pub fn issue_params(&self, mut params: CertificateParams) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::issue)?;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::issue)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Whether `csr_pem` is a PKCS#10 request this CA could sign.
    pub fn check_csr(csr_pem: &str) -> Result<(), TlsError> {
        CertificateSigningRequestParams::from_pem(csr_pem)
            .map(|_| ())
            .map_err(|e| TlsError::Csr(e.to_string()))
    }

    /// Signs a PKCS#10 request into a client SVID for `id`, ignoring whatever
    /// names the request asked for. Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, id.path());
        params.subject_alt_names = svid_sans(id, &[])?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, lifetime);
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(TlsError::issue)?;
        Ok(cert.pem())
    }

    /// Makes sure `dir` holds a certificate for `id` that is valid for at
    /// least a third of `lifetime` more; issues a new one otherwise.
    pub fn ensure_identity(
        &self,
        dir: &Path,
        id: &SpiffeId,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<IdentityFiles, TlsError> {
        let files = IdentityFiles::in_dir(dir, id);
        if !files.expires_within(lifetime / 3) {
            return Ok(files);
        }
        let issued = self.issue(id, hosts, lifetime)?;
        write_private(&files.key, &issued.key_pem)?;
        fs::write(&files.cert, &issued.cert_pem).map_err(|e| TlsError::io(&files.cert, e))?;
        Ok(files)
    }
}

/// Where one workload's certificate, key and trust bundle live.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    /// `<dir>/ca.pem`, `<dir>/<kind>-<name>.pem` and `.key`.
    pub fn in_dir(dir: &Path, id: &SpiffeId) -> Self {
        let stem = format!("{}-{}", id.kind().as_str(), id.name());
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    fn expires_within(&self, margin: Duration) -> bool {
        let Ok(pem) = fs::read_to_string(&self.cert) else {
            return true;
        };
        if !self.key.exists() {
            return true;
        }
        let Ok(params) = parse_not_after(&pem) else {
            return true;
        };
        params <= OffsetDateTime::now_utc() + margin
    }
}

fn parse_not_after(pem: &str) -> Result<OffsetDateTime, ()> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| ())?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| ())?;
    Ok(x509.validity().not_after.to_datetime())
}

fn svid_sans(id: &SpiffeId, hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans = vec![SanType::URI(
        id.to_string().try_into().map_err(TlsError::issue)?,
    )];
    for host in hosts {
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(TlsError::issue)?),
        });
    }
    Ok(sans)
}

/// How far before its issue a certificate's validity starts, so that small
/// clock skew between hosts is harmless. Issue time = notBefore + this.
pub const BACKDATE: Duration = Duration::from_secs(300);

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| TlsError::io(path, e))
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| TlsError::io(parent, e))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| TlsError::io(path, e))
}
