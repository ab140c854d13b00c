//! The Auth service: logins, sessions, tokens, TOTP, users, and the
//! conversion of a token into a short-lived mTLS client certificate. The
//! handlers, one module per concern, answer [`Error`]; the gRPC trait below
//! turns it into a `Status`.

mod certificates;
mod sessions;
mod two_factor;
mod users;

use std::sync::Arc;
use std::time::Duration;

use devcycle::proto::auth::v1 as pb;
use devcycle::tls::CertificateAuthority;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use crate::cache::{Bucket, Cache};
use crate::error::{Error, Result};
use crate::jwt::{Claims, Verifier};
use crate::revocation::{Revocations, session_entry};
use crate::store::{Store, UserRow};
use crate::tokens::Minter;

/// Login attempts per user name: a burst of 5, then one every 12 s.
const LOGIN_BURST: u32 = 5;
const LOGIN_INTERVAL: Duration = Duration::from_secs(12);
/// User certificates live at most 15 minutes.
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

impl AuthService {
    fn now_s() -> i64 {
        devcycle::time::now_ms() / 1000
    }

    /// The stored user behind a token of this gateway's own issuer.
    async fn local_user(&self, c: &Claims) -> Result<UserRow> {
        if c.issuer != self.minter.issuer {
            return Err(Error::failed_precondition(
                "users of external issuers are managed by their issuer",
            ));
        }
        self.store
            .user(&c.subject)
            .await?
            .ok_or(Error::unauthenticated("user no longer exists"))
    }

    /// Counts a password or code guess for `user` against the login limit.
    async fn charge_guess(&self, user: &str) -> Result<()> {
        let bucket = Bucket {
            key: format!("login:{user}"),
            interval_us: LOGIN_INTERVAL.as_micros() as i64,
            burst: LOGIN_BURST,
        };
        let d = self
            .cache
            .rate(&[bucket], devcycle::time::now_ms() * 1000)
            .await?;
        if d.allowed {
            Ok(())
        } else {
            Err(Error::RateLimited {
                what: "attempts for this user",
                wait_us: d.retry_after_us,
            })
        }
    }

    /// Ends a session and revokes it in every replica; whether it existed.
    async fn end_session(&self, id: &str) -> Result<bool> {
        let until = devcycle::time::now_ms() + (self.minter.life.access_s + 60) * 1000;
        self.cache.revoke(&session_entry(id), until).await?;
        self.revocations.insert(session_entry(id), until);
        Ok(self.cache.end_session(id).await?.is_some())
    }

    /// Ends every session of `name` and revokes its certificates.
    async fn end_user(&self, name: &str) -> Result<()> {
        for s in self.cache.sessions_of(name).await? {
            self.end_session(&s.id).await?;
        }
        self.revoke_certificates(name).await
    }

    async fn revoke_certificates(&self, name: &str) -> Result<()> {
        let longest = Duration::from_secs(u64::from(MAX_USER_CERT_S));
        Ok(self
            .store
            .revoke_certificates(&format!("user/{name}"), longest)
            .await?)
    }
}

/// The gRPC trait over the handlers of the same names (inherent methods,
/// which take precedence in `AuthService::$method`).
macro_rules! auth_rpcs {
    ($($method:ident: $req:ident -> $res:ident,)*) => {
        #[tonic::async_trait]
        impl pb::auth_server::Auth for AuthService {
            $(
                async fn $method(
                    &self,
                    req: Request<pb::$req>,
                ) -> Result<Response<pb::$res>, Status> {
                    Ok(Response::new(AuthService::$method(self, req).await?))
                }
            )*
        }
    };
}

auth_rpcs! {
    login: LoginRequest -> LoginResponse,
    refresh: RefreshRequest -> RefreshResponse,
    logout: LogoutRequest -> LogoutResponse,
    who_am_i: WhoAmIRequest -> WhoAmIResponse,
    list_sessions: ListSessionsRequest -> ListSessionsResponse,
    revoke_session: RevokeSessionRequest -> RevokeSessionResponse,
    revoke_all_sessions: RevokeAllSessionsRequest -> RevokeAllSessionsResponse,
    enroll_totp: EnrollTotpRequest -> EnrollTotpResponse,
    verify_totp: VerifyTotpRequest -> VerifyTotpResponse,
    disable_totp: DisableTotpRequest -> DisableTotpResponse,
    get_jwks: GetJwksRequest -> GetJwksResponse,
    issue_certificate: IssueCertificateRequest -> IssueCertificateResponse,
    create_worker_join_token: CreateWorkerJoinTokenRequest -> CreateWorkerJoinTokenResponse,
    create_user: CreateUserRequest -> CreateUserResponse,
    list_users: ListUsersRequest -> ListUsersResponse,
    set_user_roles: SetUserRolesRequest -> SetUserRolesResponse,
    delete_user: DeleteUserRequest -> DeleteUserResponse,
    change_password: ChangePasswordRequest -> ChangePasswordResponse,
}
