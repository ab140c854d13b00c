//! Short-lived mTLS client certificates: for local admins and maintainers
//! in exchange for their token, for workers in exchange for a one-time join
//! token.

use std::time::Duration;

use devcycle::authz::Roles;
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::auth::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use devcycle::tls::CertificateAuthority;
use devcycle::validate;
use tonic::Request;

use super::{AuthService, MAX_USER_CERT_S};
use crate::error::{Error, Result};
use crate::principal::{Authenticated, caller};
use crate::tokens::{digest, random_id};

const MAX_CSR_BYTES: usize = 16 * 1024;
/// User certificates: 10 minutes unless asked for less, at most
/// [`MAX_USER_CERT_S`]. Worker certificates (join tokens) live up to a day.
const USER_CERT_S: u32 = 600;

impl AuthService {
    pub(super) async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<pb::IssueCertificateResponse> {
        let claims = req
            .extensions()
            .get::<Authenticated>()
            .map(|a| a.0.claims.clone());
        let r = req.into_inner();
        validate::required("csr_pem", &r.csr_pem)?;
        validate::max_bytes("csr_pem", &r.csr_pem, MAX_CSR_BYTES)?;
        let worker = !r.worker_join_token.is_empty();
        let ttl = match r.ttl_s {
            0 if worker => 3600,
            0 => USER_CERT_S,
            n if n > 86_400 => return Err(Error::invalid("ttl_s", "at most 86400")),
            n if !worker && n > MAX_USER_CERT_S => {
                return Err(Error::invalid(
                    "ttl_s",
                    "at most 900 for a user certificate",
                ));
            }
            n => n,
        };
        let Some(ca) = &self.ca else {
            return Err(Error::failed_precondition(
                "this gateway holds no CA key (gateway.ca_key), so it cannot issue certificates",
            ));
        };
        // A bad CSR must not burn a one-time join token.
        CertificateAuthority::check_csr(&r.csr_pem)
            .map_err(|e| Error::invalid("csr_pem", e.to_string()))?;
        let id = if !r.worker_join_token.is_empty() {
            validate::max_bytes("worker_join_token", &r.worker_join_token, 128)?;
            let worker = self
                .store
                .take_join_token(&digest(&r.worker_join_token), now_ms())
                .await?
                .ok_or(Error::unauthenticated(
                    "worker_join_token: unknown, used or expired",
                ))?;
            SpiffeId::new(&self.trust_domain, Kind::Worker, &worker)
        } else {
            let c = claims.ok_or(Error::unauthenticated(
                "authorization: a bearer token or worker_join_token is required",
            ))?;
            // Services let any `user/*` peer write directly over mTLS, with no
            // gateway principal to scope it: only roles that may make every
            // such write through the gateway get a certificate — as the
            // store has them now, not as the token says (it may predate a
            // demotion).
            let stored = if c.issuer == self.minter.issuer {
                self.store.user(&c.subject).await?
            } else {
                None
            };
            let trusted = stored
                .is_some_and(|u| u.roles.intersects(Roles::ADMIN.or(Roles::MAINTAINER)));
            if !trusted {
                return Err(Error::permission_denied(
                    "user certificates are for local admins and maintainers; other roles use the gateway",
                ));
            }
            SpiffeId::new(&self.trust_domain, Kind::User, &c.subject)
        }
        .map_err(|e| Error::invalid("identity", e.to_string()))?;
        // Issue times have one-second granularity and services refuse a
        // certificate issued in the second of a revocation: one asked for in
        // that second waits for the next.
        if !worker && let Some(before) = self.store.revoked_before(&id.path()).await? {
            let now = now_ms();
            if now / 1000 <= before / 1000 {
                let wait = 1000 - now.rem_euclid(1000) + 1;
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        let pem = ca
            .sign_csr(&r.csr_pem, &id, Duration::from_secs(u64::from(ttl)))
            .map_err(|e| Error::invalid("csr_pem", e.to_string()))?;
        Ok(pb::IssueCertificateResponse {
            certificate_pem: pem,
            ca_pem: ca.cert_pem().to_owned(),
            spiffe_id: id.to_string(),
            expire_time: Some(to_timestamp(now_ms() + i64::from(ttl) * 1000)),
        })
    }

    pub(super) async fn create_worker_join_token(
        &self,
        req: Request<pb::CreateWorkerJoinTokenRequest>,
    ) -> Result<pb::CreateWorkerJoinTokenResponse> {
        let by = caller(&req)?.subject.clone();
        let r = req.into_inner();
        validate::dns_label("worker_id", &r.worker_id)?;
        let ttl = match r.ttl_s {
            0 => 900,
            n if n > 86_400 => return Err(Error::invalid("ttl_s", "at most 86400")),
            n => n,
        };
        let token = format!("dcj_{}{}", random_id(), random_id());
        let expire = now_ms() + i64::from(ttl) * 1000;
        self.store
            .create_join_token(&digest(&token), &r.worker_id, expire, &by)
            .await?;
        Ok(pb::CreateWorkerJoinTokenResponse {
            token,
            expire_time: Some(to_timestamp(expire)),
        })
    }
}
