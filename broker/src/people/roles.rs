//! Roles (R20) and the separate Individual-Number privilege (R5).

use std::collections::BTreeSet;

pub use kakehashi_interfaces::people::{Grant, Role};

/// What one person may do: a set of roles plus the Individual-Number
/// privilege, which no role implies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Privileges {
    /// Roles held.
    pub roles: BTreeSet<Role>,
    /// May see Individual Numbers (R5).
    pub number_privilege: bool,
}

impl Privileges {
    /// Whether `role` is held.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether `grant` is held.
    pub fn holds(&self, grant: Grant) -> bool {
        match grant {
            Grant::Role(role) => self.has(role),
            Grant::NumberPrivilege => self.number_privilege,
        }
    }

    /// The privileges with `grant` added (`on`) or removed.
    pub fn with(mut self, grant: Grant, on: bool) -> Self {
        match grant {
            Grant::Role(role) if on => {
                self.roles.insert(role);
            }
            Grant::Role(role) => {
                self.roles.remove(&role);
            }
            Grant::NumberPrivilege => self.number_privilege = on,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_implies_the_number_privilege() {
        let all = Role::ALL
            .into_iter()
            .fold(Privileges::default(), |p, r| p.with(Grant::Role(r), true));
        assert!(Role::ALL.into_iter().all(|r| all.has(r)));
        assert!(!all.holds(Grant::NumberPrivilege));
        let p = all.with(Grant::NumberPrivilege, true);
        assert!(p.holds(Grant::NumberPrivilege));
        let p = p.with(Grant::Role(Role::Auditor), false);
        assert!(!p.has(Role::Auditor));
        assert!(p.has(Role::Operator) && p.holds(Grant::NumberPrivilege));
    }
}
