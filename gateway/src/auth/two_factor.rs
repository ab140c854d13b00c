//! TOTP: enrolment (a pending secret confirmed by a first code) and
//! disabling, which takes a current code.

use devcycle::proto::auth::v1 as pb;
use tonic::Request;

use super::AuthService;
use crate::error::{Error, Result};
use crate::principal::caller;
use crate::totp;

impl AuthService {
    pub(super) async fn enroll_totp(
        &self,
        req: Request<pb::EnrollTotpRequest>,
    ) -> Result<pb::EnrollTotpResponse> {
        let user = self.local_user(caller(&req)?).await?;
        if user.totp_secret.is_some() {
            return Err(Error::failed_precondition(
                "TOTP is already enabled; disable it first",
            ));
        }
        let secret = totp::new_secret();
        self.store.set_totp_pending(&user.name, &secret).await?;
        Ok(pb::EnrollTotpResponse {
            otpauth_uri: totp::otpauth_uri("devcycle", &user.name, &secret),
            secret,
        })
    }

    pub(super) async fn verify_totp(
        &self,
        req: Request<pb::VerifyTotpRequest>,
    ) -> Result<pb::VerifyTotpResponse> {
        let user = self.local_user(caller(&req)?).await?;
        let code = req.into_inner().code;
        let Some(pending) = user.totp_pending else {
            return Err(Error::failed_precondition("no TOTP enrolment in progress"));
        };
        let Some(step) = totp::verify(&pending, &code, Self::now_s()) else {
            return Err(Error::invalid("code", "wrong code"));
        };
        self.store.enable_totp(&user.name).await?;
        // The code that enabled TOTP cannot also log in.
        self.store.use_totp_step(&user.name, step).await?;
        Ok(pb::VerifyTotpResponse {})
    }

    pub(super) async fn disable_totp(
        &self,
        req: Request<pb::DisableTotpRequest>,
    ) -> Result<pb::DisableTotpResponse> {
        let user = self.local_user(caller(&req)?).await?;
        let code = req.into_inner().code;
        let Some(secret) = user.totp_secret else {
            return Err(Error::failed_precondition("TOTP is not enabled"));
        };
        self.charge_guess(&user.name).await?;
        let Some(step) = totp::verify(&secret, &code, Self::now_s()) else {
            return Err(Error::invalid("code", "wrong code"));
        };
        if !self.store.use_totp_step(&user.name, step).await? {
            return Err(Error::invalid(
                "code",
                "already used; wait for the next code",
            ));
        }
        self.store.disable_totp(&user.name).await?;
        Ok(pb::DisableTotpResponse {})
    }
}
