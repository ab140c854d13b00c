//! The roles of end users, typed: services compare `Role`s, never names.
//! Names appear only at the edges (tokens, headers, configuration, CLI).

use std::fmt;

/// One role. The wire and the configuration spell it in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Maintainer,
    Developer,
    Viewer,
    /// An executor acting for itself (sessions, its own identity).
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Maintainer,
        Role::Developer,
        Role::Viewer,
        Role::Worker,
    ];
    /// The roles a person may hold (a worker is a machine).
    pub const HUMAN: [Role; 4] = [Role::Admin, Role::Maintainer, Role::Developer, Role::Viewer];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Maintainer => "maintainer",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The `devcycle.auth.v1.Role` value; `None` for UNSPECIFIED or unknown.
    pub fn from_proto(v: i32) -> Option<Role> {
        use crate::proto::auth::v1::Role as P;
        Some(match P::try_from(v).ok()? {
            P::Admin => Role::Admin,
            P::Maintainer => Role::Maintainer,
            P::Developer => Role::Developer,
            P::Viewer => Role::Viewer,
            P::Worker => Role::Worker,
            P::Unspecified => return None,
        })
    }

    pub fn to_proto(self) -> i32 {
        use crate::proto::auth::v1::Role as P;
        (match self {
            Role::Admin => P::Admin,
            Role::Maintainer => P::Maintainer,
            Role::Developer => P::Developer,
            Role::Viewer => P::Viewer,
            Role::Worker => P::Worker,
        }) as i32
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const NONE: Roles = Roles(0);
    pub const ADMIN: Roles = Roles::one(Role::Admin);
    pub const MAINTAINER: Roles = Roles::one(Role::Maintainer);
    pub const DEVELOPER: Roles = Roles::one(Role::Developer);
    pub const VIEWER: Roles = Roles::one(Role::Viewer);
    pub const WORKER: Roles = Roles::one(Role::Worker);

    pub const fn one(r: Role) -> Roles {
        Roles(r.bit())
    }
    pub const fn or(self, o: Roles) -> Roles {
        Roles(self.0 | o.0)
    }
    pub fn intersects(self, o: Roles) -> bool {
        self.0 & o.0 != 0
    }
    pub fn contains(self, r: Role) -> bool {
        self.0 & r.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles in this set, in `Role::ALL` order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The names of the roles in this set.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Role::as_str).collect()
    }

    /// The set of known role names in `names`; unknown names grant nothing.
    pub fn of<S: AsRef<str>>(names: &[S]) -> Roles {
        names
            .iter()
            .filter_map(|n| Role::parse(n.as_ref()))
            .collect()
    }

    /// A comma-separated list as sent in `x-devcycle-roles`.
    pub fn parse_list(list: &str) -> Roles {
        list.split(',').filter_map(Role::parse).collect()
    }

    /// The comma-separated form `parse_list` reads.
    pub fn to_list(self) -> String {
        self.names().join(",")
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(it: I) -> Self {
        it.into_iter().map(Roles::one).fold(Roles::NONE, Roles::or)
    }
}

impl From<Role> for Roles {
    fn from(r: Role) -> Self {
        Roles::one(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        let set = Roles::parse_list("viewer,root,,admin");
        assert_eq!(set, Roles::ADMIN.or(Roles::VIEWER));
        assert_eq!(set.to_list(), "admin,viewer");
        assert!(set.contains(Role::Admin) && !set.contains(Role::Developer));
        assert!(Roles::of(&["root"]).is_empty());
        for r in Role::ALL {
            assert_eq!(Role::from_proto(r.to_proto()), Some(r));
        }
        assert_eq!(Role::from_proto(0), None);
    }
}
