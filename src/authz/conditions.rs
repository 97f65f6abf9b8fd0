//! The conditions stage of a Check: binds what a rule's `when` expressions
//! read (only that: see [`Uses`]) and evaluates them, inline when they are
//! cheap and off the request workers when they are costly (DESIGN.md §8).

use std::collections::HashMap;

use cel::Value;
use cel::objects::{Key, Map};

use super::request::HttpAttributes;
use super::token_cache::PreparedToken;
use crate::policy::conditions::{self, Bindings, ConditionFailure, ConditionGate, Uses};
use crate::policy::cost::INLINE_COST;
use crate::policy::{CompiledRule, RequestPath};
use crate::token::ReadClaims as _;

/// Whether every condition of `rule` holds for this request and token;
/// `gate` is the policy's, where costly conditions wait their turn.
pub async fn check(
    gate: Option<&ConditionGate>,
    rule: &CompiledRule,
    path: &RequestPath<'_>,
    request: &HttpAttributes<'_>,
    token: &PreparedToken,
) -> Result<(), ConditionFailure> {
    if rule.conditions.is_empty() {
        return Ok(());
    }
    let bindings = bind(rule, path, request, token);
    match gate {
        Some(gate) if rule.condition_cost > INLINE_COST => {
            // Boxed: the Check future stays small for the common path.
            Box::pin(gate.evaluate(rule.conditions.clone(), bindings)).await
        }
        _ => conditions::evaluate(&rule.conditions, &bindings),
    }
}

/// The variables the rule's conditions read.
fn bind(
    rule: &CompiledRule,
    path: &RequestPath<'_>,
    request: &HttpAttributes<'_>,
    token: &PreparedToken,
) -> Bindings {
    let uses = rule.condition_uses;
    Bindings {
        claims: uses.claims.then(|| token.condition_claims().clone()),
        request: uses
            .request
            .then(|| request_value(rule, path, request, uses)),
        token: uses.token.then(|| token_value(token)),
        actor: uses.actor.then(|| actor_value(token)),
    }
}

/// `request`: `method` (upper-case, as rules compare it), `host`, `path` (as
/// the rules match it), `params`, and `headers` when a condition reads them.
fn request_value(
    rule: &CompiledRule,
    path: &RequestPath<'_>,
    request: &HttpAttributes<'_>,
    uses: Uses,
) -> Value {
    let captures = rule.captures(path);
    let params: HashMap<Key, Value> = captures
        .into_iter()
        .map(|(name, value)| (Key::from(name), Value::from(value)))
        .collect();
    let mut fields: HashMap<Key, Value> = HashMap::from([
        (
            Key::from("method"),
            Value::from(request.method.to_ascii_uppercase()),
        ),
        (Key::from("host"), Value::from(request.host)),
        (Key::from("path"), Value::from(path.normalized())),
        (Key::from("params"), Value::Map(Map::from(params))),
    ]);
    if uses.headers {
        let headers: HashMap<Key, Value> = request
            .headers
            .iter()
            .map(|(name, value)| (Key::from(name.as_str()), Value::from(value.as_str())))
            .collect();
        fields.insert(Key::from("headers"), Value::Map(Map::from(headers)));
    }
    Value::Map(Map::from(fields))
}

/// `token`: `scopes` (a list) and `client` (`azp`, else `client_id`; null
/// without either).
fn token_value(token: &PreparedToken) -> Value {
    let scopes: Vec<Value> = token.scopes().map(Value::from).collect();
    let client = token.client_id().map_or(Value::Null, Value::from);
    Value::Map(Map::from(HashMap::from([
        (Key::from("scopes"), Value::List(scopes.into())),
        (Key::from("client"), client),
    ])))
}

/// `actor`: the RFC 8693 `act` chain, outermost first; each entry is that
/// actor's claims (without its own nested `act`).
fn actor_value(token: &PreparedToken) -> Value {
    let mut chain = Vec::new();
    let mut next = token.top_level_claim("act");
    while let Some(serde_json::Value::Object(actor)) = next {
        let mut entry = actor.clone();
        entry.remove("act");
        chain.push(conditions::to_cel(&serde_json::Value::Object(entry)));
        next = actor.get("act");
    }
    Value::List(chain.into())
}
