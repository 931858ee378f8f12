//! `kakehashi-broker users …`: add, list, reset, disable, enable, grant and
//! revoke people's accounts on the host. The first administrator comes from
//! here, and so does recovery when every administrator is locked out.
//!
//! A temporary password is printed once, to stdout; `list` never prints a
//! hash or secret.

use std::fmt::Write as _;
use std::path::Path;

use clap::{Args, Subcommand};
use kakehashi_interfaces::datetime::format_canonical;
use kakehashi_interfaces::people::{UserId, UserList, UserView};
use kakehashi_interfaces::OrgId;

use crate::config::Config;
use crate::error::BrokerError;
use crate::oplog::HostLog;
use crate::oplog::OpAction;
use crate::people::{Grant, NewUser, People, Role, TemporaryPassword};
use crate::store;

/// `users` subcommands.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user. Prints a temporary password once; it must be changed at first login.
    Add {
        /// Personal user id: 3-64 characters of a-z, 0-9, '.', '_' and '-'.
        user_id: String,
        /// The user's org (registered with `orgs add`).
        #[arg(long)]
        org: String,
        /// A role: operator, auditor or administrator (repeatable, at least one).
        #[arg(long = "role", required = true, value_name = "ROLE")]
        roles: Vec<Role>,
        /// Allow the user to see Individual Numbers (R5).
        #[arg(long)]
        number_privilege: bool,
    },
    /// List users (no passwords, hashes or secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new temporary password (printed once), clear TOTP and any
    /// lock, and end the user's sessions.
    Reset {
        /// User id.
        user_id: String,
    },
    /// Disable a user: no logins, and the user's sessions end at once.
    Disable {
        /// User id.
        user_id: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User id.
        user_id: String,
    },
    /// Grant a role or the Individual-Number privilege.
    Grant {
        /// User id.
        user_id: String,
        #[command(flatten)]
        privilege: PrivilegeArg,
    },
    /// Revoke a role or the Individual-Number privilege.
    Revoke {
        /// User id.
        user_id: String,
        #[command(flatten)]
        privilege: PrivilegeArg,
    },
}

/// Exactly one of `--role R` or `--number-privilege`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PrivilegeArg {
    /// operator, auditor or administrator.
    #[arg(long, value_name = "ROLE")]
    role: Option<Role>,
    /// The Individual-Number privilege (R5).
    #[arg(long)]
    number_privilege: bool,
}

impl PrivilegeArg {
    fn grant(&self) -> Grant {
        match self.role {
            Some(role) => Grant::Role(role),
            None => Grant::NumberPrivilege,
        }
    }
}

/// Runs a `users` subcommand against the broker configured in `config`.
pub async fn run(config: &Path, command: UsersCommand) -> Result<(), BrokerError> {
    let config = Config::load(config)?;
    let store = store::open(&config.storage).await?;
    let people = People::new(store.pools(), config.people.clone())?;
    // Every change made from the host is an operation-log entry (R17);
    // `list` only reads.
    let log = HostLog::open(store.pools(), &config.keys.dir).await?;
    match command {
        UsersCommand::Add {
            user_id,
            org,
            roles,
            number_privilege,
        } => {
            let new = NewUser {
                user_id: UserId::new(user_id)?,
                org: OrgId::new(org)?,
                roles: roles.into_iter().collect(),
                number_privilege,
            };
            let (user_id, org) = (new.user_id.clone(), new.org.clone());
            let roles = join_roles(new.roles.iter().copied());
            let target = Some(user_id.to_string());
            let added = people.add_user(new).await.map_err(BrokerError::from);
            let temporary = log
                .outcome(
                    OpAction::UserAdded,
                    Some(&org),
                    target,
                    Some(format!("roles {roles}")),
                    added,
                )
                .await?;
            tracing::info!(user = %user_id, org = %org, "user added from the host");
            println!(
                "利用者 {user_id} を追加しました（団体 {org}、役割 {roles}） / added user {user_id} (org {org}, roles {roles})"
            );
            print_temporary(&temporary);
        }
        UsersCommand::List { json } => {
            let users = people.list().await?;
            if json {
                let text = serde_json::to_string_pretty(&UserList { users })
                    .map_err(|e| BrokerError::encoding("user list", e))?;
                println!("{text}");
            } else {
                print!("{}", table(&users));
            }
        }
        UsersCommand::Reset { user_id } => {
            let user_id = UserId::new(user_id)?;
            let reset = people.reset(&user_id).await.map_err(BrokerError::from);
            let temporary = log
                .outcome(
                    OpAction::UserReset,
                    None,
                    Some(user_id.to_string()),
                    None,
                    reset,
                )
                .await?;
            tracing::info!(user = %user_id, "user reset from the host");
            println!(
                "利用者 {user_id} のパスワードを再発行し、TOTPとロックを解除しました / reset user {user_id}: new temporary password, TOTP and lock cleared"
            );
            print_temporary(&temporary);
        }
        UsersCommand::Disable { user_id } => {
            let user_id = UserId::new(user_id)?;
            let done = people.disable(&user_id).await.map_err(BrokerError::from);
            let user = log
                .outcome(
                    OpAction::UserDisabled,
                    None,
                    Some(user_id.to_string()),
                    None,
                    done,
                )
                .await?;
            println!(
                "利用者 {} を無効にしました / disabled user {}",
                user.user_id, user.user_id
            );
        }
        UsersCommand::Enable { user_id } => {
            let user_id = UserId::new(user_id)?;
            let done = people.enable(&user_id).await.map_err(BrokerError::from);
            let user = log
                .outcome(
                    OpAction::UserEnabled,
                    None,
                    Some(user_id.to_string()),
                    None,
                    done,
                )
                .await?;
            println!(
                "利用者 {} を有効にしました / enabled user {}",
                user.user_id, user.user_id
            );
        }
        UsersCommand::Grant { user_id, privilege } => {
            let grant = privilege.grant();
            let user_id = UserId::new(user_id)?;
            let done = people
                .grant(&user_id, grant)
                .await
                .map_err(BrokerError::from);
            let action = match grant {
                Grant::NumberPrivilege => OpAction::NumberPrivilegeGranted,
                Grant::Role(_) => OpAction::RoleGranted,
            };
            let user = log
                .outcome(
                    action,
                    None,
                    Some(user_id.to_string()),
                    Some(grant.to_string()),
                    done,
                )
                .await?;
            println!(
                "利用者 {} に {grant} を付与しました / granted {grant} to {}",
                user.user_id, user.user_id
            );
        }
        UsersCommand::Revoke { user_id, privilege } => {
            let grant = privilege.grant();
            let user_id = UserId::new(user_id)?;
            let done = people
                .revoke(&user_id, grant)
                .await
                .map_err(BrokerError::from);
            let action = match grant {
                Grant::NumberPrivilege => OpAction::NumberPrivilegeRevoked,
                Grant::Role(_) => OpAction::RoleRevoked,
            };
            let user = log
                .outcome(
                    action,
                    None,
                    Some(user_id.to_string()),
                    Some(grant.to_string()),
                    done,
                )
                .await?;
            println!(
                "利用者 {} の {grant} を取り消しました / revoked {grant} from {}",
                user.user_id, user.user_id
            );
        }
    }
    Ok(())
}

fn print_temporary(temporary: &TemporaryPassword) {
    println!("仮パスワード / temporary password: {}", temporary.expose());
    println!(
        "初回ログイン時に変更が必要です。この表示は一度だけです / it must be changed at first login; it is shown only this once"
    );
}

fn join_roles(roles: impl Iterator<Item = Role>) -> String {
    let names: Vec<&str> = roles.map(Role::as_str).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// The `list` table: one line per user, no secrets.
pub fn table(users: &[UserView]) -> String {
    let mut out = format!(
        "{:<24} {:<20} {:<32} {:<7} {:<9} {:<5} {:<9} LAST LOGIN\n",
        "USER", "ORG", "ROLES", "NUMBER", "STATE", "TOTP", "PASSWORD"
    );
    for u in users {
        let state = if u.disabled {
            "disabled"
        } else if u.locked_until.is_some() {
            "locked"
        } else {
            "active"
        };
        let last = u
            .last_login
            .as_ref()
            .map(|e| match e.from {
                Some(ip) => format!("{} from {ip}", format_canonical(e.at)),
                None => format_canonical(e.at),
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<32} {:<7} {:<9} {:<5} {:<9} {last}",
            u.user_id.as_str(),
            u.org.as_str(),
            join_roles(u.roles.iter().copied()),
            if u.number_privilege { "yes" } else { "no" },
            state,
            if u.totp_enrolled { "yes" } else { "no" },
            if u.temporary_password {
                "temporary"
            } else {
                "set"
            },
        );
    }
    out
}
