//! Logins, refreshes, logouts and the sessions they open and end.

use devcycle::authz::{Role, Roles};
use devcycle::proto::auth::v1 as pb;
use devcycle::time::to_timestamp;
use devcycle::validate::{self, FieldError};
use tonic::Request;

use super::AuthService;
use crate::cache::{Rotation, SessionRecord};
use crate::error::{Error, Result, bad_token};
use crate::jwt::REFRESH_TYP;
use crate::principal::{caller, client_addr};
use crate::revocation::{Revoked, jti_entry};
use crate::store::UserRow;
use crate::tokens::{digest, random_id};
use crate::{password, totp};

impl AuthService {
    async fn open_session(
        &self,
        user: &UserRow,
        device: &str,
        addr: String,
    ) -> Result<pb::LoginResponse> {
        let now = Self::now_s();
        let life = self.minter.life;
        let id = random_id();
        let end = now + life.absolute_s;
        let refresh = self.minter.refresh(&user.name, &id, now, end);
        let record = SessionRecord {
            id: id.clone(),
            user: user.name.clone(),
            device: device.to_owned(),
            client_address: addr,
            create_ms: now * 1000,
            last_used_ms: now * 1000,
            expire_ms: end * 1000,
            refresh: digest(&refresh.jti),
        };
        self.cache.put_session(&record, life.idle_s * 1000).await?;
        let access = self.minter.access(&user.name, user.roles, &id, now);
        Ok(pb::LoginResponse {
            access_token: access.token,
            refresh_token: refresh.token,
            access_expires_in_s: life.access_s as u32,
            session_id: id,
        })
    }

    pub(super) async fn login(&self, req: Request<pb::LoginRequest>) -> Result<pb::LoginResponse> {
        let addr = client_addr(&req);
        let r = req.into_inner();
        validate::user_name("username", &r.username)?;
        if r.password.is_empty() || r.password.len() > password::MAX_LEN {
            return Err(Error::invalid("password", "required, at most 1024 bytes"));
        }
        validate::max_bytes("device", &r.device, 128)?;
        self.charge_guess(&r.username).await?;
        let user = self.store.user(&r.username).await?;
        let ok = password::verify(r.password, user.as_ref().map(|u| u.password_hash.clone())).await;
        let (true, Some(user)) = (ok, user) else {
            crate::front::auth_failed("password");
            return Err(Error::unauthenticated("username or password is wrong"));
        };
        if let Some(secret) = &user.totp_secret {
            if r.totp_code.is_empty() {
                return Err(Error::unauthenticated("totp_code: required for this user"));
            }
            let Some(step) = totp::verify(secret, &r.totp_code, Self::now_s()) else {
                crate::front::auth_failed("totp");
                return Err(Error::unauthenticated("totp_code: wrong code"));
            };
            if !self.store.use_totp_step(&user.name, step).await? {
                return Err(Error::unauthenticated(
                    "totp_code: already used; wait for the next code",
                ));
            }
        }
        let device = if r.device.is_empty() {
            "unnamed"
        } else {
            &r.device
        };
        self.open_session(&user, device, addr).await
    }

    pub(super) async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<pb::RefreshResponse> {
        let r = req.into_inner();
        if r.refresh_token.is_empty() {
            return Err(FieldError::new("refresh_token", "required").into());
        }
        let now = Self::now_s();
        let claims = self
            .verifier
            .verify(&r.refresh_token, REFRESH_TYP, now)
            .await
            .map_err(|e| bad_token("refresh_token", e))?;
        match self.revocations.check("", &claims.session) {
            Ok(()) => {}
            Err(Revoked::Unknown) => {
                return Err(Error::unavailable("revocation list not loaded yet"));
            }
            Err(_) => return Err(Error::unauthenticated("refresh_token: session revoked")),
        }
        // Everything that can fail is done before the rotation: a failure
        // after it would leave the client holding a token that now counts
        // as reused.
        let user = self
            .store
            .user(&claims.subject)
            .await?
            .ok_or(Error::unauthenticated("user no longer exists"))?;
        let next = self
            .minter
            .refresh(&claims.subject, &claims.session, now, claims.exp);
        let rotation = self
            .cache
            .rotate(
                &claims.session,
                &digest(&claims.jti),
                &digest(&next.jti),
                now * 1000,
                self.minter.life.idle_s * 1000,
            )
            .await?;
        match rotation {
            Rotation::Rotated(_) => {}
            Rotation::Reused => {
                tracing::warn!(user = %claims.subject, session = %claims.session, "refresh token reused; session revoked");
                self.end_session(&claims.session).await?;
                return Err(Error::unauthenticated(
                    "refresh_token: already used; the session has been revoked",
                ));
            }
            Rotation::Unknown => {
                return Err(Error::unauthenticated(
                    "refresh_token: session ended or expired",
                ));
            }
        }
        let access = self
            .minter
            .access(&user.name, user.roles, &claims.session, now);
        Ok(pb::RefreshResponse {
            access_token: access.token,
            refresh_token: next.token,
            access_expires_in_s: self.minter.life.access_s as u32,
        })
    }

    pub(super) async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<pb::LogoutResponse> {
        let c = caller(&req)?.clone();
        let until = (c.exp + 60) * 1000;
        self.cache.revoke(&jti_entry(&c.jti), until).await?;
        self.revocations.insert(jti_entry(&c.jti), until);
        if !c.session.is_empty() {
            self.end_session(&c.session).await?;
        }
        if c.issuer == self.minter.issuer {
            self.revoke_certificates(&c.subject).await?;
        }
        Ok(pb::LogoutResponse {})
    }

    pub(super) async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<pb::WhoAmIResponse> {
        let c = caller(&req)?;
        Ok(pb::WhoAmIResponse {
            subject: c.subject.clone(),
            roles: Roles::of(&c.roles).iter().map(Role::to_proto).collect(),
            session_id: c.session.clone(),
            spiffe_id: String::new(),
            expire_time: Some(to_timestamp(c.exp * 1000)),
        })
    }

    pub(super) async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<pb::GetJwksResponse> {
        Ok(pb::GetJwksResponse {
            keys: self
                .verifier
                .own_keys()
                .iter()
                .map(|k| k.to_jwk())
                .collect(),
        })
    }

    pub(super) async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<pb::ListSessionsResponse> {
        let c = caller(&req)?;
        let sessions = self
            .cache
            .sessions_of(&c.subject)
            .await?
            .into_iter()
            .map(|s| pb::Session {
                current: s.id == c.session,
                id: s.id,
                device: s.device,
                client_address: s.client_address,
                create_time: Some(to_timestamp(s.create_ms)),
                last_used_time: Some(to_timestamp(s.last_used_ms)),
                expire_time: Some(to_timestamp(s.expire_ms)),
            })
            .collect();
        Ok(pb::ListSessionsResponse { sessions })
    }

    pub(super) async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<pb::RevokeSessionResponse> {
        let c = caller(&req)?.clone();
        let id = req.into_inner().session_id;
        validate::required("session_id", &id)?;
        validate::max_bytes("session_id", &id, 64)?;
        let s = self.cache.session(&id).await?;
        // Another user's session is reported as absent, not as forbidden.
        let mine =
            s.is_some_and(|s| s.user == c.subject || Roles::of(&c.roles).contains(Role::Admin));
        if !mine {
            return Err(Error::not_found(format!("session_id: no session {id:?}")));
        }
        self.end_session(&id).await?;
        Ok(pb::RevokeSessionResponse {})
    }

    pub(super) async fn revoke_all_sessions(
        &self,
        req: Request<pb::RevokeAllSessionsRequest>,
    ) -> Result<pb::RevokeAllSessionsResponse> {
        let c = caller(&req)?.clone();
        let keep = req.into_inner().keep_current;
        let sessions = self.cache.sessions_of(&c.subject).await?;
        let mut revoked = 0;
        for s in sessions {
            if keep && s.id == c.session {
                continue;
            }
            if self.end_session(&s.id).await? {
                revoked += 1;
            }
        }
        // Certificates are not tied to a device: signing out elsewhere ends
        // them all (the CLI asks for a new one when it needs it).
        if c.issuer == self.minter.issuer {
            self.revoke_certificates(&c.subject).await?;
        }
        Ok(pb::RevokeAllSessionsResponse { revoked })
    }
}
