//! The delegation stage of a Check (RFC 8693): a rule's `actor:` against
//! the token's `act` chain. Only the outermost actor — the one acting for
//! the user now — is matched against `allowed`; nested actors are
//! informational (§4.1), but count towards `maxDepth`.

use super::token_cache::PreparedToken;
use crate::mcp::glob_matches;
use crate::policy::ActorRule;
use crate::token::ReadClaims as _;

/// Why the delegation does not satisfy the rule (403 `access_denied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActorFailure {
    /// The rule needs a delegated token; this one has no `act`.
    #[error("this request needs a token issued to an agent acting for the user (act)")]
    Required,
    /// The acting agent is not in `allowed`, or the rule refuses delegation.
    #[error("the acting agent is not allowed here")]
    NotAllowed,
    /// The `act` chain is longer than `maxDepth`.
    #[error("the delegation chain is too deep")]
    TooDeep,
}

impl ActorFailure {
    /// A stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ActorFailure::Required => "actor_required",
            ActorFailure::NotAllowed => "actor_not_allowed",
            ActorFailure::TooDeep => "delegation_too_deep",
        }
    }
}

/// Whether `token`'s `act` chain satisfies `rule`.
pub fn check(rule: &ActorRule, token: &PreparedToken) -> Result<(), ActorFailure> {
    let chain = token.actor_chain();
    let Some(outermost) = chain.first() else {
        return match rule.required {
            Some(true) => Err(ActorFailure::Required),
            _ => Ok(()),
        };
    };
    if rule.required == Some(false) {
        return Err(ActorFailure::NotAllowed);
    }
    if let Some(allowed) = &rule.allowed
        && !allowed.iter().any(|glob| glob_matches(glob, outermost))
    {
        return Err(ActorFailure::NotAllowed);
    }
    if rule.max_depth.is_some_and(|max| chain.len() > max) {
        return Err(ActorFailure::TooDeep);
    }
    Ok(())
}
