//! Least privilege (R20): who may call which people endpoint. The rule is
//! data in the endpoint table (`console/endpoints.rs`); this file says what
//! each kind of access admits, as pure functions a test walks whole.

use kakehashi_interfaces::people::{Role, SessionStage};

/// Who may call a console endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, readiness, metrics, the published keys, the login.
    Public,
    /// A session at any stage of its login (password change, TOTP
    /// enrolment, TOTP): the steps that finish a login, and logout.
    LoggingIn,
    /// A fully logged-in person holding one of these roles.
    Roles(&'static [Role]),
}

/// Why a session may not call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The login is not finished (password change or TOTP still due).
    LoginUnfinished,
    /// None of the person's roles is one the endpoint admits.
    Role,
}

impl Access {
    /// Whether a session at `stage` holding `roles` may call the endpoint.
    pub fn admits(self, stage: SessionStage, roles: &[Role]) -> Result<(), Denied> {
        match self {
            Access::Public | Access::LoggingIn => Ok(()),
            Access::Roles(_) if stage != SessionStage::Full => Err(Denied::LoginUnfinished),
            Access::Roles(allowed) if roles.iter().any(|r| allowed.contains(r)) => Ok(()),
            Access::Roles(_) => Err(Denied::Role),
        }
    }

    /// Whether the endpoint needs a session at all.
    pub fn needs_session(self) -> bool {
        self != Access::Public
    }
}

/// Operators of the provider org decide sensitive answers.
pub const OPERATORS: &[Role] = &[Role::Operator];
/// Auditors read records and the operation log.
pub const AUDITORS: &[Role] = &[Role::Auditor];
/// Administrators manage orgs, users and the flow list.
pub const ADMINISTRATORS: &[Role] = &[Role::Administrator];
/// Any role: what every logged-in person may read about themselves.
pub const ANY_ROLE: &[Role] = &[Role::Operator, Role::Auditor, Role::Administrator];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_endpoint_admits_only_its_roles_and_only_after_login() {
        let access = Access::Roles(OPERATORS);
        assert_eq!(access.admits(SessionStage::Full, &[Role::Operator]), Ok(()));
        assert_eq!(
            access.admits(SessionStage::Full, &[Role::Auditor, Role::Administrator]),
            Err(Denied::Role)
        );
        for stage in [
            SessionStage::PasswordChange,
            SessionStage::TotpEnrolment,
            SessionStage::Totp,
        ] {
            assert_eq!(
                access.admits(stage, &[Role::Operator]),
                Err(Denied::LoginUnfinished)
            );
        }
        assert_eq!(
            Access::LoggingIn.admits(SessionStage::PasswordChange, &[]),
            Ok(())
        );
        assert!(!Access::Public.needs_session());
        assert!(Access::LoggingIn.needs_session());
    }
}
