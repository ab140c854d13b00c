//! The Auth service: logins, sessions, tokens, TOTP, users, and the
//! conversion of a token into a short-lived mTLS client certificate.

use std::sync::Arc;
use std::time::Duration;

use devcycle::authz::{Role, Roles};
use devcycle::identity::{Kind, SpiffeId};
use devcycle::proto::auth::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use devcycle::tls::CertificateAuthority;
use devcycle::validate::{self, FieldError};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::cache::{Bucket, Cache, Rotation, SessionRecord};
use crate::jwt::{Claims, REFRESH_TYP, Verifier};
use crate::principal::{BootstrapCredential, caller, client_addr, invalid, rate_limited};
use crate::revocation::{Revocations, Revoked, jti_entry, session_entry};
use crate::store::{Store, UserRow};
use crate::tokens::{Minter, digest, random_id};
use crate::{errors, password, totp};

/// Login attempts per user name: a burst of 5, then one every 12 s.
const LOGIN_BURST: u32 = 5;
const LOGIN_INTERVAL: Duration = Duration::from_secs(12);
const MAX_CSR_BYTES: usize = 16 * 1024;
/// User certificates: 10 minutes unless asked for less, at most 15. Worker
/// certificates (join tokens) live up to a day.
const USER_CERT_S: u32 = 600;
const MAX_USER_CERT_S: u32 = 900;

pub struct AuthService {
    pub store: Store,
    pub cache: Arc<dyn Cache>,
    pub revocations: Arc<Revocations>,
    pub minter: Minter,
    pub verifier: Arc<Verifier>,
    pub trust_domain: String,
    /// Signs client certificates; absent when this gateway holds no CA key.
    pub ca: Option<Arc<CertificateAuthority>>,
    /// The one-time token that may create the first admin.
    pub bootstrap: Mutex<Option<String>>,
}

/// The roles of a request, in order, without duplicates; at least one.
fn roles_of(field: &str, roles: &[i32]) -> Result<Roles, Status> {
    if roles.is_empty() {
        return Err(invalid(FieldError::new(
            field,
            "at least one role is required",
        )));
    }
    roles
        .iter()
        .enumerate()
        .try_fold(Roles::NONE, |set, (i, r)| {
            Role::from_proto(*r)
                .map(|r| set.or(r.into()))
                .ok_or_else(|| invalid(FieldError::new(format!("{field}[{i}]"), "not a role")))
        })
}

fn user_pb(u: &UserRow) -> pb::User {
    pb::User {
        name: u.name.clone(),
        roles: u.roles.iter().map(Role::to_proto).collect(),
        totp_enabled: u.totp_secret.is_some(),
        create_time: Some(to_timestamp(u.create_ms)),
    }
}

fn check_password(field: &str, p: &str) -> Result<(), Status> {
    if p.chars().count() < password::MIN_LEN || p.len() > password::MAX_LEN {
        return Err(invalid(FieldError::new(
            field,
            format!(
                "must be {} to {} characters",
                password::MIN_LEN,
                password::MAX_LEN
            ),
        )));
    }
    Ok(())
}

impl AuthService {
    fn now_s() -> i64 {
        now_ms() / 1000
    }

    async fn local_user(&self, c: &Claims) -> Result<UserRow, Status> {
        if c.issuer != self.minter.issuer {
            return Err(Status::failed_precondition(
                "users of external issuers are managed by their issuer",
            ));
        }
        self.store
            .user(&c.subject)
            .await?
            .ok_or_else(|| Status::unauthenticated("user no longer exists"))
    }

    /// Counts a password or code guess for `user` against the login limit.
    async fn charge_guess(&self, user: &str) -> Result<(), Status> {
        let bucket = Bucket {
            key: format!("login:{user}"),
            interval_us: LOGIN_INTERVAL.as_micros() as i64,
            burst: LOGIN_BURST,
        };
        let d = self
            .cache
            .rate(&[bucket], now_ms() * 1000)
            .await
            .map_err(errors::session_store)?;
        if d.allowed {
            Ok(())
        } else {
            Err(rate_limited("attempts for this user", d.retry_after_us))
        }
    }

    async fn insert_user(
        &self,
        name: String,
        password: String,
        roles: Roles,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let row = UserRow {
            name: name.clone(),
            password_hash: password::hash(password)
                .await
                .map_err(|e| errors::internal("password hashing", e))?,
            roles,
            totp_secret: None,
            totp_pending: None,
            create_ms: now_ms(),
        };
        self.store.create_user(&row).await.map_err(|e| match e {
            crate::store::StoreError::Exists => {
                Status::already_exists(format!("name: user {name:?} exists"))
            }
            e => e.into(),
        })?;
        *self.bootstrap.lock() = None;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_pb(&row)),
        }))
    }

    /// Ends a session and revokes it in every replica.
    /// Ends every session of `name` and revokes its certificates.
    async fn end_user(&self, name: &str) -> Result<(), Status> {
        for s in self
            .cache
            .sessions_of(name)
            .await
            .map_err(errors::session_store)?
        {
            self.end_session(&s.id).await?;
        }
        self.revoke_certificates(name).await
    }

    async fn revoke_certificates(&self, name: &str) -> Result<(), Status> {
        let longest = Duration::from_secs(u64::from(MAX_USER_CERT_S));
        Ok(self
            .store
            .revoke_certificates(&format!("user/{name}"), longest)
            .await?)
    }

    async fn end_session(&self, id: &str) -> Result<bool, Status> {
        let until = now_ms() + (self.minter.life.access_s + 60) * 1000;
        self.cache
            .revoke(&session_entry(id), until)
            .await
            .map_err(errors::session_store)?;
        self.revocations.insert(session_entry(id), until);
        Ok(self
            .cache
            .end_session(id)
            .await
            .map_err(errors::session_store)?
            .is_some())
    }

    async fn open_session(
        &self,
        user: &UserRow,
        device: &str,
        addr: String,
    ) -> Result<pb::LoginResponse, Status> {
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
        self.cache
            .put_session(&record, life.idle_s * 1000)
            .await
            .map_err(errors::session_store)?;
        let access = self.minter.access(&user.name, user.roles, &id, now);
        Ok(pb::LoginResponse {
            access_token: access.token,
            refresh_token: refresh.token,
            access_expires_in_s: life.access_s as u32,
            session_id: id,
        })
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let addr = client_addr(&req);
        let r = req.into_inner();
        validate::user_name("username", &r.username).map_err(invalid)?;
        if r.password.is_empty() || r.password.len() > password::MAX_LEN {
            return Err(invalid(FieldError::new(
                "password",
                "required, at most 1024 bytes",
            )));
        }
        validate::max_bytes("device", &r.device, 128).map_err(invalid)?;
        self.charge_guess(&r.username).await?;
        let user = self.store.user(&r.username).await?;
        let ok = password::verify(r.password, user.as_ref().map(|u| u.password_hash.clone())).await;
        let (true, Some(user)) = (ok, user) else {
            return Err(Status::unauthenticated("username or password is wrong"));
        };
        if let Some(secret) = &user.totp_secret {
            if r.totp_code.is_empty() {
                return Err(Status::unauthenticated("totp_code: required for this user"));
            }
            let Some(step) = totp::verify(secret, &r.totp_code, Self::now_s()) else {
                return Err(Status::unauthenticated("totp_code: wrong code"));
            };
            if !self.store.use_totp_step(&user.name, step).await? {
                return Err(Status::unauthenticated(
                    "totp_code: already used; wait for the next code",
                ));
            }
        }
        let device = if r.device.is_empty() {
            "unnamed"
        } else {
            &r.device
        };
        Ok(Response::new(self.open_session(&user, device, addr).await?))
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let r = req.into_inner();
        if r.refresh_token.is_empty() {
            return Err(invalid(FieldError::new("refresh_token", "required")));
        }
        let now = Self::now_s();
        let claims = self
            .verifier
            .verify(&r.refresh_token, REFRESH_TYP, now)
            .await
            .map_err(|e| Status::unauthenticated(format!("refresh_token: {}", e.0)))?;
        match self.revocations.check("", &claims.session) {
            Ok(()) => {}
            Err(Revoked::Unknown) => {
                return Err(Status::unavailable("revocation list not loaded yet"));
            }
            Err(_) => return Err(Status::unauthenticated("refresh_token: session revoked")),
        }
        // Everything that can fail is done before the rotation: a failure
        // after it would leave the client holding a token that now counts
        // as reused.
        let user = self
            .store
            .user(&claims.subject)
            .await?
            .ok_or_else(|| Status::unauthenticated("user no longer exists"))?;
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
            .await
            .map_err(errors::session_store)?;
        match rotation {
            Rotation::Rotated(_) => {}
            Rotation::Reused => {
                tracing::warn!(user = %claims.subject, session = %claims.session, "refresh token reused; session revoked");
                self.end_session(&claims.session).await?;
                return Err(Status::unauthenticated(
                    "refresh_token: already used; the session has been revoked",
                ));
            }
            Rotation::Unknown => {
                return Err(Status::unauthenticated(
                    "refresh_token: session ended or expired",
                ));
            }
        }
        let access = self
            .minter
            .access(&user.name, user.roles, &claims.session, now);
        Ok(Response::new(pb::RefreshResponse {
            access_token: access.token,
            refresh_token: next.token,
            access_expires_in_s: self.minter.life.access_s as u32,
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let c = caller(&req)?.clone();
        let until = (c.exp + 60) * 1000;
        self.cache
            .revoke(&jti_entry(&c.jti), until)
            .await
            .map_err(errors::session_store)?;
        self.revocations.insert(jti_entry(&c.jti), until);
        if !c.session.is_empty() {
            self.end_session(&c.session).await?;
        }
        if c.issuer == self.minter.issuer {
            self.revoke_certificates(&c.subject).await?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(pb::WhoAmIResponse {
            subject: c.subject.clone(),
            roles: Roles::of(&c.roles).iter().map(Role::to_proto).collect(),
            session_id: c.session.clone(),
            spiffe_id: String::new(),
            expire_time: Some(to_timestamp(c.exp * 1000)),
        }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let c = caller(&req)?;
        let sessions = self
            .cache
            .sessions_of(&c.subject)
            .await
            .map_err(errors::session_store)?
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
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn revoke_session(
        &self,
        req: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let c = caller(&req)?.clone();
        let id = req.into_inner().session_id;
        validate::required("session_id", &id).map_err(invalid)?;
        validate::max_bytes("session_id", &id, 64).map_err(invalid)?;
        let s = self
            .cache
            .session(&id)
            .await
            .map_err(errors::session_store)?;
        // Another user's session is reported as absent, not as forbidden.
        let mine =
            s.is_some_and(|s| s.user == c.subject || Roles::of(&c.roles).contains(Role::Admin));
        if !mine {
            return Err(Status::not_found(format!("session_id: no session {id:?}")));
        }
        self.end_session(&id).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn revoke_all_sessions(
        &self,
        req: Request<pb::RevokeAllSessionsRequest>,
    ) -> Result<Response<pb::RevokeAllSessionsResponse>, Status> {
        let c = caller(&req)?.clone();
        let keep = req.into_inner().keep_current;
        let sessions = self
            .cache
            .sessions_of(&c.subject)
            .await
            .map_err(errors::session_store)?;
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
        Ok(Response::new(pb::RevokeAllSessionsResponse { revoked }))
    }

    async fn enroll_totp(
        &self,
        req: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let user = self.local_user(caller(&req)?).await?;
        if user.totp_secret.is_some() {
            return Err(Status::failed_precondition(
                "TOTP is already enabled; disable it first",
            ));
        }
        let secret = totp::new_secret();
        self.store.set_totp_pending(&user.name, &secret).await?;
        Ok(Response::new(pb::EnrollTotpResponse {
            otpauth_uri: totp::otpauth_uri("devcycle", &user.name, &secret),
            secret,
        }))
    }

    async fn verify_totp(
        &self,
        req: Request<pb::VerifyTotpRequest>,
    ) -> Result<Response<pb::VerifyTotpResponse>, Status> {
        let user = self.local_user(caller(&req)?).await?;
        let code = req.into_inner().code;
        let Some(pending) = user.totp_pending else {
            return Err(Status::failed_precondition("no TOTP enrolment in progress"));
        };
        let Some(step) = totp::verify(&pending, &code, Self::now_s()) else {
            return Err(invalid(FieldError::new("code", "wrong code")));
        };
        self.store.enable_totp(&user.name).await?;
        // The code that enabled TOTP cannot also log in.
        self.store.use_totp_step(&user.name, step).await?;
        Ok(Response::new(pb::VerifyTotpResponse {}))
    }

    async fn disable_totp(
        &self,
        req: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let user = self.local_user(caller(&req)?).await?;
        let code = req.into_inner().code;
        let Some(secret) = user.totp_secret else {
            return Err(Status::failed_precondition("TOTP is not enabled"));
        };
        self.charge_guess(&user.name).await?;
        let Some(step) = totp::verify(&secret, &code, Self::now_s()) else {
            return Err(invalid(FieldError::new("code", "wrong code")));
        };
        if !self.store.use_totp_step(&user.name, step).await? {
            return Err(invalid(FieldError::new(
                "code",
                "already used; wait for the next code",
            )));
        }
        self.store.disable_totp(&user.name).await?;
        Ok(Response::new(pb::DisableTotpResponse {}))
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self
                .verifier
                .own_keys()
                .iter()
                .map(|k| k.to_jwk())
                .collect(),
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        let claims = req
            .extensions()
            .get::<crate::principal::Authenticated>()
            .map(|a| a.0.claims.clone());
        let r = req.into_inner();
        validate::required("csr_pem", &r.csr_pem).map_err(invalid)?;
        validate::max_bytes("csr_pem", &r.csr_pem, MAX_CSR_BYTES).map_err(invalid)?;
        let worker = !r.worker_join_token.is_empty();
        let ttl = match r.ttl_s {
            0 if worker => 3600,
            0 => USER_CERT_S,
            n if n > 86_400 => {
                return Err(invalid(FieldError::new("ttl_s", "at most 86400")));
            }
            n if !worker && n > MAX_USER_CERT_S => {
                return Err(invalid(FieldError::new(
                    "ttl_s",
                    "at most 900 for a user certificate",
                )));
            }
            n => n,
        };
        let Some(ca) = &self.ca else {
            return Err(Status::failed_precondition(
                "this gateway holds no CA key (gateway.ca_key), so it cannot issue certificates",
            ));
        };
        // A bad CSR must not burn a one-time join token.
        CertificateAuthority::check_csr(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let id = if !r.worker_join_token.is_empty() {
            validate::max_bytes("worker_join_token", &r.worker_join_token, 128).map_err(invalid)?;
            let worker = self
                .store
                .take_join_token(&digest(&r.worker_join_token), now_ms())
                .await?
                .ok_or_else(|| {
                    Status::unauthenticated("worker_join_token: unknown, used or expired")
                })?;
            SpiffeId::new(&self.trust_domain, Kind::Worker, &worker)
        } else {
            let c = claims.ok_or_else(|| {
                Status::unauthenticated(
                    "authorization: a bearer token or worker_join_token is required",
                )
            })?;
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
                return Err(Status::permission_denied(
                    "user certificates are for local admins and maintainers; other roles use the gateway",
                ));
            }
            SpiffeId::new(&self.trust_domain, Kind::User, &c.subject)
        }
        .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
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
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        Ok(Response::new(pb::IssueCertificateResponse {
            certificate_pem: pem,
            ca_pem: ca.cert_pem().to_owned(),
            spiffe_id: id.to_string(),
            expire_time: Some(to_timestamp(now_ms() + i64::from(ttl) * 1000)),
        }))
    }

    async fn create_worker_join_token(
        &self,
        req: Request<pb::CreateWorkerJoinTokenRequest>,
    ) -> Result<Response<pb::CreateWorkerJoinTokenResponse>, Status> {
        let by = caller(&req)?.subject.clone();
        let r = req.into_inner();
        validate::dns_label("worker_id", &r.worker_id).map_err(invalid)?;
        let ttl = match r.ttl_s {
            0 => 900,
            n if n > 86_400 => return Err(invalid(FieldError::new("ttl_s", "at most 86400"))),
            n => n,
        };
        let token = format!("dcj_{}{}", random_id(), random_id());
        let expire = now_ms() + i64::from(ttl) * 1000;
        self.store
            .create_join_token(&digest(&token), &r.worker_id, expire, &by)
            .await?;
        Ok(Response::new(pb::CreateWorkerJoinTokenResponse {
            token,
            expire_time: Some(to_timestamp(expire)),
        }))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let bootstrap = req.extensions().get::<BootstrapCredential>().cloned();
        let r = req.into_inner();
        validate::user_name("name", &r.name).map_err(invalid)?;
        // External users are `<prefix><sub>`: a local user of that shape
        // would share their identity (runs, ownership, limits).
        if let Some(p) = self
            .verifier
            .external_prefixes()
            .find(|p| r.name.starts_with(p))
        {
            return Err(invalid(FieldError::new(
                "name",
                format!("names starting with {p:?} belong to an external issuer's users"),
            )));
        }
        check_password("password", &r.password)?;
        let roles = roles_of("roles", &r.roles)?;
        // The bootstrap token is taken out before any await, so concurrent
        // requests with it cannot each create an admin; it is put back if
        // this one fails.
        let mut taken = None;
        if let Some(BootstrapCredential(presented)) = bootstrap {
            if !roles.contains(Role::Admin) {
                return Err(invalid(FieldError::new(
                    "roles",
                    "the first user must be an admin",
                )));
            }
            let denied = || {
                Status::permission_denied(
                    "authorization: the bootstrap token is wrong or already used",
                )
            };
            {
                let mut slot = self.bootstrap.lock();
                let matches = slot.as_ref().is_some_and(|e| {
                    crate::tokens::constant_time_eq(e.as_bytes(), presented.as_bytes())
                });
                if !matches {
                    return Err(denied());
                }
                taken = slot.take();
            }
            let users = self.store.user_count().await;
            if !matches!(users, Ok(0)) {
                *self.bootstrap.lock() = taken;
                return Err(users.map_or_else(Status::from, |_| denied()));
            }
        }
        let result = self.insert_user(r.name, r.password, roles).await;
        if result.is_err() && taken.is_some() {
            *self.bootstrap.lock() = taken;
        }
        result
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let size = devcycle::page::page_size(r.page_size).map_err(invalid)?;
        let after = devcycle::page::decode_token(&r.page_token)
            .map_err(invalid)?
            .unwrap_or_default();
        let mut rows = self.store.users(&after, size + 1).await?;
        let next = devcycle::page::finish(&mut rows, size, |u| u.name.clone());
        Ok(Response::new(pb::ListUsersResponse {
            users: rows.iter().map(user_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn set_user_roles(
        &self,
        req: Request<pb::SetUserRolesRequest>,
    ) -> Result<Response<pb::SetUserRolesResponse>, Status> {
        let r = req.into_inner();
        validate::user_name("name", &r.name).map_err(invalid)?;
        let roles = roles_of("roles", &r.roles)?;
        let before = self.store.user(&r.name).await?;
        if !self.store.set_roles(&r.name, roles).await? {
            return Err(Status::not_found(format!("name: no user {:?}", r.name)));
        }
        // Fewer roles: what was granted under the old ones ends — sessions
        // (their tokens carry the roles) and certificates.
        let shrunk = before.is_some_and(|b| b.roles.iter().any(|r| !roles.contains(r)));
        if shrunk {
            self.end_user(&r.name).await?;
        }
        let user = self
            .store
            .user(&r.name)
            .await?
            .ok_or_else(|| Status::not_found("user deleted meanwhile"))?;
        Ok(Response::new(pb::SetUserRolesResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let name = req.into_inner().name;
        validate::user_name("name", &name).map_err(invalid)?;
        if !self.store.delete_user(&name).await? {
            return Err(Status::not_found(format!("name: no user {name:?}")));
        }
        self.end_user(&name).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let c = caller(&req)?.clone();
        let user = self.local_user(&c).await?;
        let r = req.into_inner();
        check_password("new_password", &r.new_password)?;
        self.charge_guess(&user.name).await?;
        if !password::verify(r.current_password, Some(user.password_hash.clone())).await {
            return Err(Status::permission_denied(
                "current_password: wrong password",
            ));
        }
        let hash = password::hash(r.new_password)
            .await
            .map_err(|e| errors::internal("password hashing", e))?;
        self.store.set_password(&user.name, &hash).await?;
        // Every other device signs in again with the new password.
        for s in self
            .cache
            .sessions_of(&user.name)
            .await
            .map_err(errors::session_store)?
        {
            if s.id != c.session {
                self.end_session(&s.id).await?;
            }
        }
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }
}
