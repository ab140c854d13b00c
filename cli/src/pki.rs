//! `devcycle pki`: the mesh CA and workload certificates, for running
//! services as separate processes (Kubernetes mounts the same files).

use clap::Subcommand;
use devcycle::config::Config;
use devcycle::identity::SpiffeId;
use devcycle::mesh::DEV_CERT_LIFETIME;
use devcycle::tls::CertificateAuthority;

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// Issue (or renew) a certificate, creating the CA in tls.dir if missing.
    Issue {
        /// `svc/<name>`, `worker/<id>` or `user/<name>`.
        identity: String,
        /// DNS names or IP addresses a service certificate is valid for.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

pub fn run(cmd: &PkiCmd, config: &Config) -> anyhow::Result<()> {
    devcycle::tls::install_default_provider();
    match cmd {
        PkiCmd::Issue { identity, hosts } => {
            let id = SpiffeId::parse(&format!("spiffe://{}/{identity}", config.trust_domain))
                .map_err(|e| anyhow::anyhow!("identity {identity:?}: {e}"))?;
            let dir = config.tls_dir();
            let ca = CertificateAuthority::load_or_create(&dir, &config.trust_domain)?;
            let mut hosts = hosts.clone();
            if hosts.is_empty() {
                hosts = devcycle::mesh::dev_hosts();
            }
            let files = ca.ensure_identity(&dir, &id, &hosts, DEV_CERT_LIFETIME)?;
            println!("{id}: {} {}", files.cert.display(), files.key.display());
        }
    }
    Ok(())
}
