//! Who the callee is told is calling: the caller's From checked against the
//! identity authentication proved.
//!
//! An authenticated user can write anything in From; a callee that shows it
//! would display a spoofed caller. The policy replaces (or refuses) a From
//! user that is not the authenticated user, and every callee-side INVITE of
//! an authenticated caller carries that user in P-Asserted-Identity
//! (RFC 3325), whatever the policy. Trusted and unauthenticated sources
//! assert nothing, so their From passes unchanged and no PAI is added; a
//! PAI the caller sent is never copied (the callee leg's headers are built
//! afresh).

use crate::auth::Authenticated;
use crate::sip::NameAddr;

/// What to do with a From user that is not the authenticated user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FromPolicy {
    /// Put the authenticated user in From towards the callee.
    #[default]
    Replace,
    /// Refuse the INVITE with 403.
    Reject,
    /// Pass the caller's From unchanged (the PAI still says who it is).
    Keep,
}

/// Whether the caller's display name reaches the callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DisplayNamePolicy {
    /// Always, as the caller wrote it.
    Keep,
    /// Only when the From user was the authenticated user: a replaced From
    /// loses its display name too, which was part of the disguise.
    #[default]
    IfMatching,
    /// Never, for authenticated callers.
    Drop,
}

/// The caller identity policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityPolicy {
    /// A From user that is not the authenticated user.
    pub from: FromPolicy,
    /// The caller's display name.
    pub display_name: DisplayNamePolicy,
}

/// The caller as the callee leg presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallerId {
    /// The From user towards the callee.
    pub(crate) number: String,
    /// The From display name towards the callee.
    pub(crate) name: Option<String>,
    /// The authenticated user, for P-Asserted-Identity.
    pub(crate) asserted: Option<String>,
}

/// The From user differs from the authenticated user under [`FromPolicy::Reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spoofed;

impl IdentityPolicy {
    /// The caller id for a caller whose From is `from`, authenticated as `identity`.
    pub(crate) fn caller_id(
        &self,
        from: &NameAddr,
        identity: &Authenticated,
    ) -> Result<CallerId, Spoofed> {
        let number = from.uri.user().unwrap_or_default();
        let name = from.display_name.clone();
        let Authenticated::User { username, .. } = identity else {
            return Ok(CallerId {
                number,
                name,
                asserted: None,
            });
        };
        // User parts compare case-sensitively (RFC 3261 §19.1.4).
        let matching = number == *username;
        if !matching && self.from == FromPolicy::Reject {
            return Err(Spoofed);
        }
        let name = match self.display_name {
            DisplayNamePolicy::Keep => name,
            DisplayNamePolicy::IfMatching if matching || self.from == FromPolicy::Keep => name,
            DisplayNamePolicy::IfMatching | DisplayNamePolicy::Drop => None,
        };
        Ok(CallerId {
            number: if self.from == FromPolicy::Keep {
                number
            } else {
                username.clone()
            },
            name,
            asserted: Some(username.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Algorithm;

    fn from(text: &str) -> NameAddr {
        NameAddr::parse(text).expect("test From parses")
    }

    fn user(name: &str) -> Authenticated {
        Authenticated::User {
            username: name.to_owned(),
            algorithm: Algorithm::Md5,
        }
    }

    fn policy(from: FromPolicy, display_name: DisplayNamePolicy) -> IdentityPolicy {
        IdentityPolicy { from, display_name }
    }

    fn id(number: &str, name: Option<&str>, asserted: Option<&str>) -> CallerId {
        CallerId {
            number: number.to_owned(),
            name: name.map(str::to_owned),
            asserted: asserted.map(str::to_owned),
        }
    }

    #[test]
    fn a_spoofed_from_is_replaced_with_the_authenticated_user_and_loses_its_name() {
        let spoofed = from("\"Accounts Office\" <sip:1002@pbx.example>;tag=x");
        assert_eq!(
            IdentityPolicy::default().caller_id(&spoofed, &user("1001")),
            Ok(id("1001", None, Some("1001")))
        );
        let honest = from("\"Alice\" <sip:1001@pbx.example>;tag=x");
        assert_eq!(
            IdentityPolicy::default().caller_id(&honest, &user("1001")),
            Ok(id("1001", Some("Alice"), Some("1001")))
        );
    }

    #[test]
    fn reject_refuses_only_a_differing_user_and_keep_passes_from_with_pai() {
        let spoofed = from("\"Accounts Office\" <sip:1002@pbx.example>");
        let reject = policy(FromPolicy::Reject, DisplayNamePolicy::IfMatching);
        assert_eq!(reject.caller_id(&spoofed, &user("1001")), Err(Spoofed));
        assert_eq!(
            reject.caller_id(&from("<sip:1001@pbx.example>"), &user("1001")),
            Ok(id("1001", None, Some("1001")))
        );
        // User parts are case-sensitive.
        assert_eq!(
            reject.caller_id(&from("<sip:Alice@pbx.example>"), &user("alice")),
            Err(Spoofed)
        );
        let keep = policy(FromPolicy::Keep, DisplayNamePolicy::IfMatching);
        assert_eq!(
            keep.caller_id(&spoofed, &user("1001")),
            Ok(id("1002", Some("Accounts Office"), Some("1001")))
        );
    }

    #[test]
    fn display_name_policies_and_unauthenticated_callers() {
        let spoofed = from("\"Accounts Office\" <sip:1002@pbx.example>");
        let honest = from("\"Alice\" <sip:1001@pbx.example>");
        let keep_name = policy(FromPolicy::Replace, DisplayNamePolicy::Keep);
        assert_eq!(
            keep_name.caller_id(&spoofed, &user("1001")),
            Ok(id("1001", Some("Accounts Office"), Some("1001")))
        );
        let drop_name = policy(FromPolicy::Replace, DisplayNamePolicy::Drop);
        assert_eq!(
            drop_name.caller_id(&honest, &user("1001")),
            Ok(id("1001", None, Some("1001")))
        );
        // Nothing was proved: the From passes, no PAI.
        for identity in [Authenticated::Trusted, Authenticated::NotRequired] {
            assert_eq!(
                IdentityPolicy::default().caller_id(&spoofed, &identity),
                Ok(id("1002", Some("Accounts Office"), None))
            );
        }
    }
}
