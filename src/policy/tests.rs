//! Compilation and host indexing, without any server (as linkerd2's index
//! tests do): build candidates, index them, assert the states.

use super::*;

fn spec(hosts: &[&str]) -> TokenPolicySpec {
    serde_json::from_value(serde_json::json!({
        "hosts": hosts,
        "issuer": {"url": "https://tenant.example.com/", "audiences": ["api"]},
    }))
    .unwrap()
}

fn candidate(name: &str, hosts: &[&str]) -> Candidate {
    let id: PolicyId = format!("ns/{name}").into();
    Candidate::new(id.clone(), CompiledPolicy::compile(id, &spec(hosts)))
}

/// A candidate in namespace `ns`.
fn candidate_in(ns: &str, name: &str, hosts: &[&str]) -> Candidate {
    let id: PolicyId = format!("{ns}/{name}").into();
    Candidate::new(id.clone(), CompiledPolicy::compile(id, &spec(hosts)))
}

#[test]
fn defaults_are_applied_at_compile_time() {
    let policy = CompiledPolicy::compile("ns/p".into(), &spec(&["a.example.com"])).unwrap();
    assert_eq!(
        policy.issuers[0]
            .rules
            .algorithms
            .iter()
            .collect::<Vec<_>>(),
        vec![crate::token::Algorithm::RS256]
    );
    assert_eq!(policy.issuers[0].rules.clock_skew_seconds, 60);
    assert_eq!(&*policy.scope_claims, &["scope".into(), "scp".into()]);
    assert!(policy.warnings.is_empty());
    assert_eq!(policy.default_action, DefaultAction::Deny);
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(
        policy.issuers[0].jwks_source.to_string(),
        "https://tenant.example.com/.well-known/openid-configuration"
    );
}

#[test]
fn the_older_policy_keeps_a_contested_host() {
    let states = PolicySnapshot::states_of(vec![
        candidate("old", &["a.example.com", "*.example.org"]),
        candidate("new", &["b.example.com", "*.example.org"]),
        candidate("other", &["c.example.com"]),
    ]);
    assert_eq!(states[0].1, PolicyState::Accepted);
    assert_eq!(
        states[1].1,
        PolicyState::HostConflict {
            host: "*.example.org".into(),
            winner: "ns/old".into(),
            winner_host: "*.example.org".into(),
        }
    );
    assert_eq!(states[2].1, PolicyState::Accepted);
}

#[test]
fn invalid_policies_report_every_field_and_do_not_block_others() {
    let mut bad = spec(&[]);
    bad.issuer.as_mut().unwrap().audiences.clear();
    let states = PolicySnapshot::states_of(vec![
        Candidate::new(
            "ns/bad".into(),
            CompiledPolicy::compile("ns/bad".into(), &bad),
        ),
        candidate("good", &["a.example.com"]),
    ]);
    let PolicyState::Invalid {
        errors,
        serving_last_good: false,
    } = &states[0].1
    else {
        panic!("{states:?}")
    };
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["spec.hosts", "spec.issuer.audiences"]);
    assert_eq!(states[1].1, PolicyState::Accepted);
}

#[tokio::test]
async fn lookup_prefers_exact_hosts_then_the_longest_wildcard() {
    let registry = crate::jwks::JwksRegistry::new(Default::default());
    let snapshot = PolicySnapshot::build(
        vec![
            candidate("wide", &["*.example.com"]),
            candidate("narrow", &["*.eu.example.com"]),
            candidate("exact", &["api.eu.example.com"]),
        ],
        &registry,
    );
    let owner = |host: &str| snapshot.lookup(host).map(|p| p.policy.id.to_string());
    assert_eq!(owner("api.eu.example.com").as_deref(), Some("ns/exact"));
    assert_eq!(owner("web.eu.example.com").as_deref(), Some("ns/narrow"));
    assert_eq!(owner("a.b.eu.example.com").as_deref(), Some("ns/narrow"));
    assert_eq!(owner("www.example.com").as_deref(), Some("ns/wide"));
    assert_eq!(
        owner("example.com"),
        None,
        "a wildcard needs at least one label"
    );
    assert_eq!(owner(".example.com"), None);
    assert_eq!(owner("example.org"), None);
}

#[tokio::test]
async fn policies_with_the_same_issuer_share_one_key_cache() {
    let registry = crate::jwks::JwksRegistry::new(Default::default());
    let snapshot = PolicySnapshot::build(
        vec![
            candidate("a", &["a.example.com"]),
            candidate("b", &["b.example.com"]),
        ],
        &registry,
    );
    let served = snapshot.served();
    assert!(std::sync::Arc::ptr_eq(
        &served[0].issuers[0].keys,
        &served[1].issuers[0].keys
    ));
    assert_eq!(registry.states().len(), 1);
}

#[tokio::test]
async fn a_newer_policy_cannot_carve_a_host_out_of_an_older_wildcard() {
    let registry = crate::jwks::JwksRegistry::new(Default::default());
    let snapshot = PolicySnapshot::build(
        vec![
            candidate_in("corp", "wide", &["*.corp.example.com"]),
            candidate_in("team", "exact", &["pay.corp.example.com"]),
            candidate_in("team", "nested", &["*.eu.corp.example.com"]),
            candidate_in("team", "uncle", &["corp.example.com"]),
        ],
        &registry,
    );
    let states = snapshot.states();
    for (i, host) in [(1, "pay.corp.example.com"), (2, "*.eu.corp.example.com")] {
        assert_eq!(
            *states[i].1,
            PolicyState::HostConflict {
                host: host.into(),
                winner: "corp/wide".into(),
                winner_host: "*.corp.example.com".into(),
            }
        );
    }
    assert_eq!(
        *states[3].1,
        PolicyState::Accepted,
        "not under the wildcard"
    );
    let owner = |host: &str| snapshot.lookup(host).map(|p| p.policy.id.to_string());
    assert_eq!(owner("pay.corp.example.com").as_deref(), Some("corp/wide"));
    assert_eq!(owner("a.eu.corp.example.com").as_deref(), Some("corp/wide"));
}

#[tokio::test]
async fn an_older_exact_host_stays_with_its_owner_under_a_newer_wildcard() {
    let registry = crate::jwks::JwksRegistry::new(Default::default());
    let snapshot = PolicySnapshot::build(
        vec![
            candidate_in("team", "exact", &["pay.corp.example.com"]),
            candidate_in("corp", "wide", &["*.corp.example.com"]),
        ],
        &registry,
    );
    assert!(
        snapshot
            .states()
            .iter()
            .all(|(_, s)| **s == PolicyState::Accepted)
    );
    let owner = |host: &str| snapshot.lookup(host).map(|p| p.policy.id.to_string());
    assert_eq!(owner("pay.corp.example.com").as_deref(), Some("team/exact"));
    assert_eq!(owner("hr.corp.example.com").as_deref(), Some("corp/wide"));
}

#[test]
fn the_same_pattern_conflicts_even_within_a_namespace() {
    let states = PolicySnapshot::states_of(vec![
        candidate_in("corp", "a", &["*.corp.example.com"]),
        candidate_in("corp", "b", &["*.corp.example.com"]),
    ]);
    assert!(matches!(states[1].1, PolicyState::HostConflict { .. }));
}

#[test]
fn a_never_valid_policy_claims_nothing_and_a_broken_one_keeps_its_hosts() {
    let mut bad = spec(&["x.example.com"]);
    bad.issuer.as_mut().unwrap().audiences.clear();
    let last_good = CompiledPolicy::compile("a/owner".into(), &spec(&["x.example.com"])).unwrap();
    let broken = |last_good| Candidate {
        id: "a/owner".into(),
        compiled: CompiledPolicy::compile("a/owner".into(), &bad),
        last_good,
        held_hosts: Vec::new(),
    };
    let states = PolicySnapshot::states_of(vec![
        broken(None),
        candidate_in("b", "rival", &["x.example.com"]),
    ]);
    assert_eq!(states[1].1, PolicyState::Accepted);
    let states = PolicySnapshot::states_of(vec![
        broken(Some(last_good)),
        candidate_in("b", "rival", &["x.example.com"]),
    ]);
    assert!(matches!(
        states[0].1,
        PolicyState::Invalid {
            serving_last_good: true,
            ..
        }
    ));
    assert!(matches!(states[1].1, PolicyState::HostConflict { .. }));
}

#[test]
fn listing_permissions_compiles_with_a_warning_that_says_why() {
    let mut with_permissions = spec(&["a.example.com"]);
    with_permissions.scope_claims = vec!["scope".into(), "permissions".into()];
    let policy = CompiledPolicy::compile("ns/p".into(), &with_permissions).unwrap();
    assert_eq!(policy.warnings.len(), 1);
    assert_eq!(policy.warnings[0].field, "spec.scopeClaims[1]");
    assert!(
        policy.warnings[0]
            .message
            .contains("not what the user consented to")
    );
    assert!(policy.warnings[0].message.contains("machine-to-machine"));
}

fn spec_with_pop(pop: serde_json::Value) -> TokenPolicySpec {
    serde_json::from_value(serde_json::json!({
        "hosts": ["a.example.com"],
        "issuer": {"url": "https://tenant.example.com/", "audiences": ["api"]},
        "proofOfPossession": pop,
    }))
    .unwrap()
}

#[test]
fn proof_of_possession_compiles_into_the_policy() {
    for (mechanism, name) in [(PopMechanism::Dpop, "dpop"), (PopMechanism::Mtls, "mtls")] {
        let required = serde_json::json!({"mechanism": name, "required": true});
        let policy = CompiledPolicy::compile("ns/p".into(), &spec_with_pop(required)).unwrap();
        assert_eq!(
            policy.proof_of_possession,
            Some(ProofOfPossession {
                mechanism,
                required: true
            })
        );
        let optional = serde_json::json!({"mechanism": name});
        let policy = CompiledPolicy::compile("ns/p".into(), &spec_with_pop(optional)).unwrap();
        assert_eq!(
            policy.proof_of_possession,
            Some(ProofOfPossession {
                mechanism,
                required: false
            })
        );
    }
    let policy = CompiledPolicy::compile("ns/p".into(), &spec(&["a.example.com"])).unwrap();
    assert_eq!(policy.proof_of_possession, None);
}
