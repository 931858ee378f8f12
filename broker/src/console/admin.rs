//! What administrators change (R8, R20): users — `POST /api/users`,
//! `POST /api/users/{user_id}/reset|disable|enable|grant|revoke` — and orgs —
//! `GET /api/orgs`, `POST /api/orgs`, `POST /api/orgs/{org}/suspend|activate|pin`.
//!
//! Each change is one function here that checks the administrator's scope,
//! calls [`crate::people`] or the store (as the host CLI does) and writes
//! the operation-log entry the host CLI writes (R17); the JSON endpoints
//! below and the administrator's pages (`console/pages/admin.rs`) both call
//! them.
//!
//! Scope: an administrator of the union (an org of kind `union`) manages
//! every org and every user; an administrator of any other org manages the
//! users of their own org only, and no org.

use std::net::IpAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::people::{
    Grant, NewUserRequest, TemporaryPasswordAnswer, UserId, UserView,
};
use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind, OrgStatus};
use serde::Deserialize;

use crate::console::endpoints::Call;
use crate::console::Console;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::people::{NewUser, Role, SessionView, TemporaryPassword};
use crate::store::{NewOrg, OrgRecord};

/// The longest display name of an org.
pub const MAX_ORG_NAME_CHARS: usize = 100;

/// Who acts: the administrator's session and the address they act from.
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    /// The console.
    pub console: &'a Console,
    /// The administrator's session.
    pub session: &'a SessionView,
    /// Their address, for the operation log.
    pub source: IpAddr,
}

impl Admin<'_> {
    /// Whether this administrator belongs to the union and so manages
    /// every org and user.
    pub async fn is_union(&self) -> Result<bool, BrokerError> {
        let org = self.console.state.store.get_org(&self.session.org).await?;
        Ok(org.is_some_and(|o| o.kind == OrgKind::Union))
    }

    /// Flow-list versions (R8) are proposed and approved by administrators
    /// of the union only: the list governs every org's exchange.
    pub async fn may_change_flow_lists(&self) -> Result<(), BrokerError> {
        if self.is_union().await? {
            Ok(())
        } else {
            Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "連携先一覧を変更できるのは広域連合の管理者だけです / only an administrator of the union proposes or approves flow lists",
            ))
        }
    }

    /// Whether this administrator may approve `version`: besides the
    /// union-only rule, not when its proposer added this administrator's
    /// account or reset its password (the proposer then knew the temporary
    /// password, and two accounts could be one person).
    pub async fn may_approve_flow_list(&self, version: u64) -> Result<(), BrokerError> {
        self.may_change_flow_lists().await?;
        let proposer = crate::flow_changes::get(&self.console.state.store.pools(), version)
            .await?
            .view
            .proposed_by;
        for action in [OpAction::UserAdded, OpAction::UserReset] {
            let filter = crate::oplog::OpFilter {
                actor: Some(proposer.clone()),
                action: Some(action),
                result: Some(crate::oplog::OpResultFilter::Success),
                ..crate::oplog::OpFilter::default()
            };
            let made = self.console.oplog.search(&filter, 1000, None).await?;
            if made
                .iter()
                .any(|e| e.target.as_deref() == Some(self.session.user_id.as_str()))
            {
                return Err(BrokerError::refused(
                    ErrorCode::Forbidden,
                    "この版を提案した管理者があなたのアカウントを作成またはリセットしています。別の管理者が承認してください / the proposer of this version added your account or reset its password; another administrator must approve",
                ));
            }
        }
        Ok(())
    }

    async fn may_manage_orgs(&self) -> Result<(), BrokerError> {
        if self.is_union().await? {
            Ok(())
        } else {
            Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "団体を管理できるのは広域連合の管理者だけです / only an administrator of the union manages orgs",
            ))
        }
    }

    async fn may_manage_users_of(&self, org: &OrgId) -> Result<(), BrokerError> {
        if *org == self.session.org || self.is_union().await? {
            Ok(())
        } else {
            Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "他の団体の利用者は管理できません / you manage the users of your own org only",
            ))
        }
    }

    /// A user this administrator may manage, or why not (an unknown user
    /// and one of another org answer alike: `not_found`).
    pub async fn managed_user(&self, user_id: &UserId) -> Result<UserView, BrokerError> {
        let user = self.console.people.user(user_id).await?;
        match self.may_manage_users_of(&user.org).await {
            Ok(()) => Ok(user),
            Err(_) => Err(BrokerError::refused(
                ErrorCode::NotFound,
                format!("利用者 {user_id} は見つかりません / no user {user_id}"),
            )),
        }
    }

    async fn log<T>(
        &self,
        action: OpAction,
        target: Option<String>,
        detail: Option<String>,
        outcome: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let mut entry = OpEntry::new(
            self.session.user_id.as_str(),
            action,
            OpResult::of(&outcome),
        );
        entry.org = Some(self.session.org.clone());
        entry.source = Some(self.source.to_string());
        entry.target = target;
        entry.detail = detail;
        self.console.log(entry).await?;
        outcome
    }

    /// The users this administrator manages, ordered by id.
    pub async fn users(&self) -> Result<Vec<UserView>, BrokerError> {
        let users = self.console.people.list().await?;
        if self.is_union().await? {
            return Ok(users);
        }
        Ok(users
            .into_iter()
            .filter(|u| u.org == self.session.org)
            .collect())
    }

    /// Adds a user; the temporary password is returned to be shown once.
    pub async fn add_user(&self, new: NewUser) -> Result<TemporaryPassword, BrokerError> {
        let target = Some(new.user_id.to_string());
        let roles: Vec<&str> = new.roles.iter().map(|r| r.as_str()).collect();
        let detail = Some(format!("org {} roles {}", new.org, roles.join(",")));
        let outcome = match self.may_manage_users_of(&new.org).await {
            Ok(()) => self.console.people.add_user(new).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        self.log(OpAction::UserAdded, target, detail, outcome).await
    }

    /// Issues a new temporary password (returned, to show once), clears
    /// TOTP and lock, and ends the user's sessions.
    ///
    /// Not another administrator's: whoever resets learns the temporary
    /// password, and one administrator holding two accounts could then
    /// propose and approve a flow list alone. The host command
    /// (`kakehashi-broker users reset`) resets administrators.
    pub async fn reset(&self, user_id: &UserId) -> Result<TemporaryPassword, BrokerError> {
        let outcome = match self.managed_user(user_id).await {
            Ok(user) if user.roles.contains(&Role::Administrator) && *user_id != self.session.user_id => {
                Err(BrokerError::refused(
                    ErrorCode::Forbidden,
                    "他の管理者のパスワードはここではリセットできません。ホストのコマンド（kakehashi-broker users reset）を使ってください / another administrator's password is reset with the host command (kakehashi-broker users reset), not here",
                ))
            }
            Ok(_) => self.console.people.reset(user_id).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        self.log(
            OpAction::UserReset,
            Some(user_id.to_string()),
            None,
            outcome,
        )
        .await
    }

    /// Disables (`disabled`) or enables a user. Administrators cannot
    /// disable themselves (someone must be left to enable them).
    pub async fn set_disabled(
        &self,
        user_id: &UserId,
        disabled: bool,
    ) -> Result<UserView, BrokerError> {
        let action = if disabled {
            OpAction::UserDisabled
        } else {
            OpAction::UserEnabled
        };
        let outcome = match self.managed_user(user_id).await {
            Ok(_) if disabled && *user_id == self.session.user_id => Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "自分自身は無効にできません / you cannot disable yourself",
            )),
            Ok(_) if disabled => self
                .console
                .people
                .disable(user_id)
                .await
                .map_err(Into::into),
            Ok(_) => self
                .console
                .people
                .enable(user_id)
                .await
                .map_err(Into::into),
            Err(e) => Err(e),
        };
        self.log(action, Some(user_id.to_string()), None, outcome)
            .await
    }

    /// Grants (`on`) or revokes a role or the Individual-Number privilege.
    /// Administrators grant nothing to themselves (another administrator
    /// must) and cannot revoke their own administrator role.
    pub async fn set_grant(
        &self,
        user_id: &UserId,
        grant: Grant,
        on: bool,
    ) -> Result<UserView, BrokerError> {
        let action = match (grant, on) {
            (Grant::NumberPrivilege, true) => OpAction::NumberPrivilegeGranted,
            (Grant::NumberPrivilege, false) => OpAction::NumberPrivilegeRevoked,
            (Grant::Role(_), true) => OpAction::RoleGranted,
            (Grant::Role(_), false) => OpAction::RoleRevoked,
        };
        let own = *user_id == self.session.user_id;
        let own_admin = !on && grant == Grant::Role(Role::Administrator) && own;
        let outcome = match self.managed_user(user_id).await {
            Ok(_) if own_admin => Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "自分自身の管理者の役割は取り消せません / you cannot revoke your own administrator role",
            )),
            Ok(_) if on && own => Err(BrokerError::refused(
                ErrorCode::Forbidden,
                "自分自身には権限を付与できません。別の管理者に依頼してください / you cannot grant yourself a role or privilege; another administrator must",
            )),
            Ok(_) if on => self.console.people.grant(user_id, grant).await.map_err(Into::into),
            Ok(_) => self.console.people.revoke(user_id, grant).await.map_err(Into::into),
            Err(e) => Err(e),
        };
        self.log(
            action,
            Some(user_id.to_string()),
            Some(grant.to_string()),
            outcome,
        )
        .await
    }

    /// Every org, ordered by id (any administrator may read them).
    pub async fn orgs(&self) -> Result<Vec<OrgRecord>, BrokerError> {
        self.console.state.store.list_orgs().await
    }

    /// Registers an org (active), as `kakehashi-broker orgs add` does.
    pub async fn add_org(&self, new: NewOrg) -> Result<OrgRecord, BrokerError> {
        let target = Some(new.id.to_string());
        let detail = Some(format!("kind={}", new.kind.as_str()));
        let outcome = match (self.may_manage_orgs().await, org_name(&new.name)) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => self.console.state.store.add_org(&new).await,
        };
        self.log(OpAction::OrgAdded, target, detail, outcome).await
    }

    /// Suspends an org (its connections are refused from now on) or
    /// activates it again.
    pub async fn set_org_status(
        &self,
        id: &OrgId,
        status: OrgStatus,
    ) -> Result<OrgRecord, BrokerError> {
        let action = match status {
            OrgStatus::Suspended => OpAction::OrgSuspended,
            OrgStatus::Active => OpAction::OrgActivated,
        };
        let outcome = match self.may_manage_orgs().await {
            // The union suspending itself would cut every exchange of its own.
            Ok(()) if status == OrgStatus::Suspended && *id == self.session.org => {
                Err(BrokerError::refused(
                    ErrorCode::Forbidden,
                    "自分の団体は停止できません / you cannot suspend your own org",
                ))
            }
            Ok(()) => self.console.state.store.set_org_status(id, status).await,
            Err(e) => Err(e),
        };
        self.log(action, Some(id.to_string()), None, outcome).await
    }

    /// Pins an org to a certificate's SHA-256 fingerprint, or clears the pin.
    pub async fn set_org_pin(
        &self,
        id: &OrgId,
        fingerprint: Option<&str>,
    ) -> Result<OrgRecord, BrokerError> {
        let detail = Some(match fingerprint {
            Some(fp) => format!("pin={fp}"),
            None => "pin cleared".into(),
        });
        let outcome = match self.may_manage_orgs().await {
            Ok(()) => self.console.state.store.set_org_pin(id, fingerprint).await,
            Err(e) => Err(e),
        };
        self.log(OpAction::OrgPinned, Some(id.to_string()), detail, outcome)
            .await
    }
}

/// An org's display name: 1 to [`MAX_ORG_NAME_CHARS`] characters, no
/// control characters.
pub fn org_name(name: &str) -> Result<(), BrokerError> {
    let count = name.trim().chars().count();
    if count == 0 || count > MAX_ORG_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            format!(
                "団体名は1〜{MAX_ORG_NAME_CHARS}文字で、制御文字を含めないでください / name: 1 to {MAX_ORG_NAME_CHARS} characters, no control characters"
            ),
        ));
    }
    Ok(())
}

/// A certificate's SHA-256 fingerprint as people copy it (hex, any case,
/// with or without `:`), normalised to 64 lowercase hex digits.
pub fn fingerprint(typed: &str) -> Result<String, BrokerError> {
    let hex: String = typed
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            "フィンガープリントは証明書のSHA-256（16進数64桁、「:」区切り可） / fingerprint: the certificate's SHA-256, 64 hex digits (':' allowed)",
        ))
    }
}

// ---------------------------------------------------------------------------
// The JSON endpoints

/// The administrators' JSON endpoints (rows of the console's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /api/users`: add a user (temporary password shown once).
    UserAdd,
    /// `POST /api/users/{user_id}/reset`
    UserReset,
    /// `POST /api/users/{user_id}/disable`
    UserDisable,
    /// `POST /api/users/{user_id}/enable`
    UserEnable,
    /// `POST /api/users/{user_id}/grant`
    UserGrant,
    /// `POST /api/users/{user_id}/revoke`
    UserRevoke,
    /// `GET /api/orgs`
    Orgs,
    /// `POST /api/orgs`
    OrgAdd,
    /// `POST /api/orgs/{org}/suspend`
    OrgSuspend,
    /// `POST /api/orgs/{org}/activate`
    OrgActivate,
    /// `POST /api/orgs/{org}/pin`
    OrgPin,
}

impl Api {
    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Api::UserAdd => "console_user_add",
            Api::UserReset => "console_user_reset",
            Api::UserDisable => "console_user_disable",
            Api::UserEnable => "console_user_enable",
            Api::UserGrant => "console_user_grant",
            Api::UserRevoke => "console_user_revoke",
            Api::Orgs => "console_orgs",
            Api::OrgAdd => "console_org_add",
            Api::OrgSuspend => "console_org_suspend",
            Api::OrgActivate => "console_org_activate",
            Api::OrgPin => "console_org_pin",
        }
    }
}

/// Runs one of the administrators' JSON endpoints.
pub async fn run(
    api: Api,
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    match api {
        Api::UserAdd => add_user(call, req).await,
        Api::UserReset => reset(call).await,
        Api::UserDisable => set_disabled(call, true).await,
        Api::UserEnable => set_disabled(call, false).await,
        Api::UserGrant => set_grant(call, req, true).await,
        Api::UserRevoke => set_grant(call, req, false).await,
        Api::Orgs => orgs(call).await,
        Api::OrgAdd => add_org(call, req).await,
        Api::OrgSuspend => set_org_status(call, OrgStatus::Suspended).await,
        Api::OrgActivate => set_org_status(call, OrgStatus::Active).await,
        Api::OrgPin => set_org_pin(call, req).await,
    }
}

/// `GET /api/users`: the users this administrator manages (the union's:
/// every org's), without hashes or secrets.
pub async fn users(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let users = acting(call)?.users().await?;
    Ok(edge::json(
        StatusCode::OK,
        &kakehashi_interfaces::people::UserList { users },
    ))
}

/// The administrator acting in a JSON call (the flow-list endpoints too).
pub(crate) fn acting<'a>(call: &'a Call<'_>) -> Result<Admin<'a>, BrokerError> {
    Ok(Admin {
        console: call.console,
        session: call.session()?,
        source: call.conn.peer.ip(),
    })
}

fn user_param(call: &Call<'_>) -> Result<UserId, BrokerError> {
    Ok(UserId::new(call.params.get("user_id"))?)
}

fn org_param(call: &Call<'_>) -> Result<OrgId, BrokerError> {
    Ok(OrgId::new(call.params.get("org"))?)
}

fn temporary(user_id: UserId, password: &TemporaryPassword) -> Result<Response<Body>, BrokerError> {
    let password = kakehashi_interfaces::people::Password::new(password.expose())?;
    Ok(edge::json(
        StatusCode::OK,
        &TemporaryPasswordAnswer {
            user_id,
            temporary_password: password,
        },
    ))
}

/// `POST /api/users`: [`NewUserRequest`] → [`TemporaryPasswordAnswer`].
async fn add_user(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    let body = call.read_body(req).await?;
    let request: NewUserRequest = edge::parse_json(&body)?;
    let user_id = request.user_id.clone();
    let password = acting(call)?.add_user(request.into()).await?;
    temporary(user_id, &password)
}

/// `POST /api/users/{user_id}/reset` → [`TemporaryPasswordAnswer`].
async fn reset(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(call)?;
    let password = acting(call)?.reset(&user_id).await?;
    temporary(user_id, &password)
}

/// `POST /api/users/{user_id}/disable` or `/enable` → [`UserView`].
async fn set_disabled(call: &Call<'_>, disabled: bool) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(call)?;
    let user = acting(call)?.set_disabled(&user_id, disabled).await?;
    Ok(edge::json(StatusCode::OK, &user))
}

/// `POST /api/users/{user_id}/grant` or `/revoke` with a [`Grant`]
/// (`{"role": "auditor"}` or `{"number_privilege": true}`) → [`UserView`].
async fn set_grant(
    call: &Call<'_>,
    req: Request<Incoming>,
    on: bool,
) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(call)?;
    let body = call.read_body(req).await?;
    let grant: Grant = edge::parse_json(&body)?;
    let user = acting(call)?.set_grant(&user_id, grant, on).await?;
    Ok(edge::json(StatusCode::OK, &user))
}

/// `GET /api/orgs`: every org.
async fn orgs(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let orgs = acting(call)?.orgs().await?;
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "orgs": orgs }),
    ))
}

/// `POST /api/orgs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrgRequest {
    id: OrgId,
    kind: OrgKind,
    name: String,
    #[serde(default)]
    cert_fingerprint: Option<String>,
}

/// `POST /api/orgs`: `{id, kind, name, cert_fingerprint?}` → the org.
async fn add_org(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    let body = call.read_body(req).await?;
    let request: NewOrgRequest = edge::parse_json(&body)?;
    let cert_fingerprint = request
        .cert_fingerprint
        .as_deref()
        .map(fingerprint)
        .transpose()?;
    let org = acting(call)?
        .add_org(NewOrg {
            id: request.id,
            kind: request.kind,
            name: request.name,
            cert_fingerprint,
        })
        .await?;
    Ok(edge::json(StatusCode::OK, &org))
}

/// `POST /api/orgs/{org}/suspend` or `/activate` → the org.
async fn set_org_status(call: &Call<'_>, status: OrgStatus) -> Result<Response<Body>, BrokerError> {
    let id = org_param(call)?;
    let org = acting(call)?.set_org_status(&id, status).await?;
    Ok(edge::json(StatusCode::OK, &org))
}

/// `POST /api/orgs/{org}/pin` body: a fingerprint, or `null` to clear.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    cert_fingerprint: Option<String>,
}

/// `POST /api/orgs/{org}/pin`: `{cert_fingerprint}` (`null` clears) → the org.
async fn set_org_pin(
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let id = org_param(call)?;
    let body = call.read_body(req).await?;
    let request: PinRequest = edge::parse_json(&body)?;
    let pin = request
        .cert_fingerprint
        .as_deref()
        .map(fingerprint)
        .transpose()?;
    let org = acting(call)?.set_org_pin(&id, pin.as_deref()).await?;
    Ok(edge::json(StatusCode::OK, &org))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let colon = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        assert_eq!(fingerprint(&colon).unwrap(), "ab".repeat(32));
        assert!(fingerprint("abc").is_err());
        assert!(fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn org_names_are_short_and_plain() {
        assert!(org_name("川口市").is_ok());
        assert!(org_name(" ").is_err());
        assert!(org_name("a\nb").is_err());
        assert!(org_name(&"あ".repeat(MAX_ORG_NAME_CHARS + 1)).is_err());
    }
}
