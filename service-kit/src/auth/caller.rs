//! Who is calling and what the token lets them do.

use std::collections::BTreeSet;
use std::fmt;

use super::AuthRejection;

/// The contract's scopes; any other scope a token carries is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `accounts:read`: the caller's own accounts, their operations and events.
    AccountsRead,
    /// `accounts:write`: opening accounts, moving money on the caller's own accounts.
    AccountsWrite,
    /// `accounts:admin`: everything `accounts:read` and `accounts:write` allow, on
    /// every account, plus lifecycle commands, owners and listings.
    AccountsAdmin,
    /// `events:read`: the global event feed and any account's events.
    EventsRead,
}

impl Scope {
    pub const ALL: [Self; 4] = [
        Self::AccountsRead,
        Self::AccountsWrite,
        Self::AccountsAdmin,
        Self::EventsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountsRead => "accounts:read",
            Self::AccountsWrite => "accounts:write",
            Self::AccountsAdmin => "accounts:admin",
            Self::EventsRead => "events:read",
        }
    }

    /// The scope named `name`, if the contract defines it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of a request: its `sub`, the client it came through
/// (`azp`, else `client_id`) and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub sub: String,
    pub client_id: Option<String>,
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// Whether the caller may do what `scope` allows; `accounts:admin` includes
    /// `accounts:read` and `accounts:write`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (matches!(scope, Scope::AccountsRead | Scope::AccountsWrite)
                && self.scopes.contains(&Scope::AccountsAdmin))
    }

    /// Whether the caller acts on every account, not only its own.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::AccountsAdmin)
    }

    /// `Ok` when the caller has `scope`, else the 403 rejection naming it.
    pub fn require(&self, scope: Scope) -> Result<(), AuthRejection> {
        if self.has(scope) {
            Ok(())
        } else {
            tracing::debug!(sub = %self.sub, %scope, "caller lacks a scope");
            Err(AuthRejection::InsufficientScope(scope))
        }
    }
}

/// The scopes named in a space-separated list, unknown names ignored.
pub(crate) fn scopes_in<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<Scope> {
    names
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(Scope::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(scopes: &str) -> Caller {
        Caller {
            sub: "alice".to_owned(),
            client_id: None,
            scopes: scopes_in([scopes]),
        }
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("accounts:delete"), None);
    }

    #[test]
    fn unknown_scopes_are_ignored() {
        assert_eq!(
            caller("openid accounts:read  profile").scopes,
            BTreeSet::from([Scope::AccountsRead])
        );
    }

    #[test]
    fn admin_includes_read_and_write_but_not_the_event_feed() {
        let admin = caller("accounts:admin");
        assert!(admin.has(Scope::AccountsRead));
        assert!(admin.has(Scope::AccountsWrite));
        assert!(admin.is_admin());
        assert!(!admin.has(Scope::EventsRead));
        assert!(!caller("accounts:write").has(Scope::AccountsRead));
    }

    #[test]
    fn require_names_the_missing_scope() {
        assert_eq!(
            caller("accounts:read").require(Scope::AccountsWrite),
            Err(AuthRejection::InsufficientScope(Scope::AccountsWrite))
        );
        assert_eq!(caller("accounts:read").require(Scope::AccountsRead), Ok(()));
    }
}
