//! Local users: creation (the first one with the bootstrap token), roles,
//! deletion and passwords. Taking away roles or the user ends what was
//! granted under them.

use devcycle::authz::{Role, Roles};
use devcycle::proto::auth::v1 as pb;
use devcycle::time::{now_ms, to_timestamp};
use devcycle::validate::{self, FieldError};
use tonic::Request;

use super::AuthService;
use crate::error::{Error, Result};
use crate::password;
use crate::principal::{BootstrapCredential, caller};
use crate::store::{StoreError, UserRow};

/// The roles of a request, in order, without duplicates; at least one.
fn roles_of(field: &str, roles: &[i32]) -> Result<Roles> {
    if roles.is_empty() {
        return Err(Error::invalid(field, "at least one role is required"));
    }
    roles
        .iter()
        .enumerate()
        .try_fold(Roles::NONE, |set, (i, r)| {
            Role::from_proto(*r)
                .map(|r| set.or(r.into()))
                .ok_or_else(|| Error::invalid(format!("{field}[{i}]"), "not a role"))
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

fn check_password(field: &str, p: &str) -> Result<(), FieldError> {
    if p.chars().count() < password::MIN_LEN || p.len() > password::MAX_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "must be {} to {} characters",
                password::MIN_LEN,
                password::MAX_LEN
            ),
        ));
    }
    Ok(())
}

impl AuthService {
    async fn insert_user(
        &self,
        name: String,
        password: String,
        roles: Roles,
    ) -> Result<pb::CreateUserResponse> {
        let row = UserRow {
            name: name.clone(),
            password_hash: password::hash(password)
                .await
                .map_err(|e| Error::internal("password hashing", e))?,
            roles,
            totp_secret: None,
            totp_pending: None,
            create_ms: now_ms(),
        };
        self.store.create_user(&row).await.map_err(|e| match e {
            StoreError::Exists => {
                Error::AlreadyExists(format!("name: user {name:?} exists").into())
            }
            e => e.into(),
        })?;
        *self.bootstrap.lock() = None;
        Ok(pb::CreateUserResponse {
            user: Some(user_pb(&row)),
        })
    }

    pub(super) async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<pb::CreateUserResponse> {
        let bootstrap = req.extensions().get::<BootstrapCredential>().cloned();
        let r = req.into_inner();
        validate::user_name("name", &r.name)?;
        // External users are `<prefix><sub>`: a local user of that shape
        // would share their identity (runs, ownership, limits).
        if let Some(p) = self
            .verifier
            .external_prefixes()
            .find(|p| r.name.starts_with(p))
        {
            return Err(Error::invalid(
                "name",
                format!("names starting with {p:?} belong to an external issuer's users"),
            ));
        }
        check_password("password", &r.password)?;
        let roles = roles_of("roles", &r.roles)?;
        // The bootstrap token is taken out before any await, so concurrent
        // requests with it cannot each create an admin; it is put back if
        // this one fails.
        let mut taken = None;
        if let Some(BootstrapCredential(presented)) = bootstrap {
            if !roles.contains(Role::Admin) {
                return Err(Error::invalid("roles", "the first user must be an admin"));
            }
            let denied = || {
                Error::permission_denied(
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
                return Err(users.map_or_else(Error::from, |_| denied()));
            }
        }
        let result = self.insert_user(r.name, r.password, roles).await;
        if result.is_err() && taken.is_some() {
            *self.bootstrap.lock() = taken;
        }
        result
    }

    pub(super) async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<pb::ListUsersResponse> {
        let r = req.into_inner();
        let size = devcycle::page::page_size(r.page_size)?;
        let after = devcycle::page::decode_token(&r.page_token)?.unwrap_or_default();
        let mut rows = self.store.users(&after, size + 1).await?;
        let next = devcycle::page::finish(&mut rows, size, |u| u.name.clone());
        Ok(pb::ListUsersResponse {
            users: rows.iter().map(user_pb).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn set_user_roles(
        &self,
        req: Request<pb::SetUserRolesRequest>,
    ) -> Result<pb::SetUserRolesResponse> {
        let r = req.into_inner();
        validate::user_name("name", &r.name)?;
        let roles = roles_of("roles", &r.roles)?;
        let before = self.store.user(&r.name).await?;
        if !self.store.set_roles(&r.name, roles).await? {
            return Err(Error::not_found(format!("name: no user {:?}", r.name)));
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
            .ok_or(Error::not_found("user deleted meanwhile"))?;
        Ok(pb::SetUserRolesResponse {
            user: Some(user_pb(&user)),
        })
    }

    pub(super) async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Result<pb::DeleteUserResponse> {
        let name = req.into_inner().name;
        validate::user_name("name", &name)?;
        if !self.store.delete_user(&name).await? {
            return Err(Error::not_found(format!("name: no user {name:?}")));
        }
        self.end_user(&name).await?;
        Ok(pb::DeleteUserResponse {})
    }

    pub(super) async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<pb::ChangePasswordResponse> {
        let c = caller(&req)?.clone();
        let user = self.local_user(&c).await?;
        let r = req.into_inner();
        check_password("new_password", &r.new_password)?;
        self.charge_guess(&user.name).await?;
        if !password::verify(r.current_password, Some(user.password_hash.clone())).await {
            return Err(Error::permission_denied("current_password: wrong password"));
        }
        let hash = password::hash(r.new_password)
            .await
            .map_err(|e| Error::internal("password hashing", e))?;
        self.store.set_password(&user.name, &hash).await?;
        // Every other device signs in again with the new password.
        for s in self.cache.sessions_of(&user.name).await? {
            if s.id != c.session {
                self.end_session(&s.id).await?;
            }
        }
        Ok(pb::ChangePasswordResponse {})
    }
}
