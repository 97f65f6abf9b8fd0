//! `TokenPolicy` custom resources against a real kube-apiserver and etcd,
//! built from the Go module proxy by `tests/kube/build.sh` and started by
//! `.ci/test.sh`, which exports `SCOPEGATE_TEST_KUBE_DIR` (the state
//! directory of `tests/kube/start.sh`, holding an admin `kubeconfig`).
//!
//! Each test works in its own namespace, with scopegate watching only that
//! namespace, so the tests share one control plane and run in parallel.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use scopegate::config::PolicySource;
use scopegate::k8s::{KubernetesConfig, LeaderSettings};
use scopegate::policy::TokenPolicy;
use serde_json::json;
use support::*;

/// The shared control plane.
struct Cluster {
    dir: PathBuf,
    client: kube::Client,
}

impl Cluster {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

async fn cluster() -> Cluster {
    let dir = std::env::var_os("SCOPEGATE_TEST_KUBE_DIR").map(PathBuf::from).expect(
        "SCOPEGATE_TEST_KUBE_DIR is not set: run .ci/test.sh, or tests/kube/start.sh DIR and export SCOPEGATE_TEST_KUBE_DIR=DIR",
    );
    connect(dir).await
}

async fn connect(dir: PathBuf) -> Cluster {
    let client = scopegate::k8s::client(Some(&dir.join("kubeconfig")))
        .await
        .unwrap();
    install_crd(&client).await;
    Cluster { dir, client }
}

/// Applies the generated CRD (idempotent) and waits until it is served.
async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("scopegate-tests").force();
    crds.patch(
        "tokenpolicies.scopegate.dev",
        &params,
        &Patch::Apply(TokenPolicy::crd()),
    )
    .await
    .expect("the real API server accepts the generated (structural) CRD");
    eventually("the CRD is established", || async {
        let crd = crds.get("tokenpolicies.scopegate.dev").await.unwrap();
        crd.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    })
    .await;
}

/// Creates a fresh namespace for one test.
async fn namespace(client: &kube::Client, name: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    name.to_string()
}

/// A TokenPolicy in `ns` for the standard test host (see support::policy_yaml).
fn token_policy(ns: &str, name: &str, jwks: &JwksServer, spec_extra: &str) -> TokenPolicy {
    let yaml = policy_yaml(name, &jwks.issuer(), &jwks.jwks_uri(), spec_extra);
    let mut policy: TokenPolicy = serde_yaml_ng::from_str(&yaml).unwrap();
    policy.metadata.namespace = Some(ns.into());
    policy
}

fn policies(client: &kube::Client, ns: &str) -> Api<TokenPolicy> {
    Api::namespaced(client.clone(), ns)
}

fn k8s_config(kubeconfig: &Path, watch: &str, lease_namespace: &str) -> KubernetesConfig {
    KubernetesConfig {
        namespaces: vec![watch.into()],
        kubeconfig: Some(kubeconfig.to_path_buf()),
        leader: LeaderSettings {
            namespace: lease_namespace.into(),
            lease_name: "scopegate".into(),
            identity: scopegate::k8s::default_identity(),
            lease_duration: Duration::from_secs(3),
        },
        status_resync: Duration::from_millis(300),
    }
}

/// scopegate in Kubernetes mode, watching `ns` (lease in `ns` too).
async fn start_scopegate(cluster: &Cluster, ns: &str) -> Scopegate {
    start_scopegate_with(k8s_config(&cluster.kubeconfig(), ns, ns)).await
}

async fn start_scopegate_with(config: KubernetesConfig) -> Scopegate {
    let config = test_config(PolicySource::Kubernetes(config));
    Scopegate::start_config(config, tempfile::tempdir().unwrap()).await
}

/// Creates `policy` (standard host and rules) and waits until `sg` allows
/// a good token with it; returns that token and how long serving took.
async fn create_served(
    api: &Api<TokenPolicy>,
    sg: &Scopegate,
    policy: TokenPolicy,
    jwks: &JwksServer,
) -> (String, Duration) {
    api.create(&PostParams::default(), &policy).await.unwrap();
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let took = eventually("the created policy serves", || async {
        sg.check_token("GET", "/orders", &token).await.http_status() == 200
    })
    .await;
    (token, took)
}

async fn ready_condition(api: &Api<TokenPolicy>, name: &str) -> Option<(String, String, String)> {
    let policy = api.get(name).await.ok()?;
    let condition = policy
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((condition.status, condition.reason, condition.message))
}

#[tokio::test]
async fn checks_follow_policies_as_they_are_created_patched_and_deleted() {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client, "t-lifecycle").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = start_scopegate(&cluster, &ns).await;
    let api = policies(&cluster.client, &ns);
    let token = KEY_A.sign(&claims(&jwks.issuer()));

    assert_eq!(
        sg.check_token("GET", "/orders", &token).await.http_status(),
        403,
        "no policy yet"
    );
    let (_, took) = create_served(
        &api,
        &sg,
        token_policy(&ns, "orders", &jwks, STANDARD_RULES),
        &jwks,
    )
    .await;
    println!("created → served in {took:?}");

    let stricter = STANDARD_RULES.replace("[\"read:orders\"]", "[\"read:all\"]");
    let patch =
        json!({"spec": {"rules": token_policy(&ns, "orders", &jwks, &stricter).spec.rules}});
    api.patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let took = eventually("the patch applies", || async {
        sg.check_token("GET", "/orders", &token).await.http_status() == 403
    })
    .await;
    println!("patched → served in {took:?}");

    eventually("the status reports generation 2", || async {
        let policy = api.get("orders").await.unwrap();
        policy.status.and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    let (status, reason, _) = ready_condition(&api, "orders").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Accepted"));

    api.delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted policy stops serving", || async {
        let checked = sg.check_token("GET", "/orders", &token).await;
        checked.http_status() == 403
            && checked.body()["error_description"] == "no policy protects this host"
    })
    .await;
}

#[tokio::test]
async fn the_api_server_rejects_invalid_objects_with_the_schema_and_cel_messages() {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client, "t-schema").await;
    let api = policies(&cluster.client, &ns);
    let bad: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "scopegate.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {
            "hosts": ["api.example.com:443"],
            "issuer": {"url": "http://tenant.example.com/", "audiences": ["api"], "algorithms": ["RS256"]},
            "rules": [{"anonymous": true, "requireScopes": ["x"]}],
            "claimHeaders": [{"header": "authorization", "claim": "sub"}, {"header": "x-a", "claim": "sub"}, {"header": "x-a", "claim": "azp"}],
        },
    }))
    .unwrap();
    let Err(kube::Error::Api(error)) = api.create(&PostParams::default(), &bad).await else {
        panic!("an invalid TokenPolicy was accepted");
    };
    assert_eq!(error.code, 422);
    for expected in [
        "spec.hosts[0]",
        "spec.issuer: Invalid value",
        "jwksUri (or, without it, url) must use https unless its host is loopback",
        "an anonymous rule cannot also require scopes or clients",
        "this header is reserved and cannot be set from a claim",
        "each header may be set by one entry only",
    ] {
        assert!(
            error.message.contains(expected),
            "{expected:?} not in: {}",
            error.message
        );
    }
    let mut no_audience = bad.clone();
    no_audience.spec = token_policy(&ns, "x", &JwksServer::start(vec![]).await, "").spec;
    no_audience.spec.issuer.as_mut().unwrap().audiences.clear();
    let Err(kube::Error::Api(error)) = api.create(&PostParams::default(), &no_audience).await
    else {
        panic!("a TokenPolicy without audiences was accepted");
    };
    assert!(
        error
            .message
            .contains("spec.issuer.audiences in body should have at least 1 items"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn uncompilable_and_conflicting_policies_are_not_ready_while_others_serve() {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client, "t-status").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = start_scopegate(&cluster, &ns).await;
    let api = policies(&cluster.client, &ns);

    api.create(
        &PostParams::default(),
        &token_policy(&ns, "good", &jwks, STANDARD_RULES),
    )
    .await
    .unwrap();
    // Passes the schema (paths start with "/"), fails compilation.
    let uncompilable = "  rules:\n    - paths: [\"/a/**/b\"]\n";
    let mut invalid = token_policy(&ns, "invalid", &jwks, uncompilable);
    invalid.spec.hosts = vec!["other.example.com".into()];
    // `issuers:` instead of `issuer:`: the Issuer column shows it too.
    invalid.spec.issuers = Some(vec![invalid.spec.issuer.take().unwrap()]);
    api.create(&PostParams::default(), &invalid).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a later creationTimestamp
    api.create(
        &PostParams::default(),
        &token_policy(&ns, "late", &jwks, STANDARD_RULES),
    )
    .await
    .unwrap();

    eventually("statuses are written", || async {
        ready_condition(&api, "invalid").await.is_some()
            && ready_condition(&api, "late").await.is_some()
    })
    .await;
    let (status, reason, message) = ready_condition(&api, "invalid").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert_eq!(
        message,
        "spec.rules[0].paths[0]: \"**\" may only be the last segment"
    );
    let (status, reason, message) = ready_condition(&api, "late").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "HostConflict")
    );
    assert!(
        message.contains(&format!("claimed by policy {ns}/good")),
        "{message}"
    );
    eventually("the good policy is ready", || async {
        ready_condition(&api, "good")
            .await
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let good = api.get("good").await.unwrap().status.unwrap().jwks.unwrap();
    assert_eq!(good.keys, 1);
    assert_eq!(good.uri.as_deref(), Some(jwks.jwks_uri().as_str()));

    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg.check_token("GET", "/orders", &token).await;
    assert_eq!(checked.metadata("policy"), Some(format!("{ns}/good")));

    // kubectl shows it too (printer columns).
    let kubectl = tool("SCOPEGATE_KUBECTL", ".tools/kube/v1.37.2/kubectl");
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["get", "tp", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        row("good ").contains("True") && row("good ").contains("Accepted"),
        "{table}"
    );
    assert!(
        row("invalid ").contains("False") && row("invalid ").contains("Invalid"),
        "{table}"
    );
    assert!(row("late ").contains("HostConflict"), "{table}");
    for name in ["good ", "invalid "] {
        assert!(row(name).contains(&jwks.issuer()), "{table}");
    }
}

/// Deletes `name` if it exists and waits until it is gone.
/// Issue 20, finding 2: a `when:` over the cost budget passes the CRD's
/// schema (244 characters) but is `Invalid`, its status naming the estimate
/// and the budget.
#[tokio::test]
async fn finding_2_a_condition_over_the_cost_budget_is_invalid_naming_estimate_and_budget() {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client, "t-cost").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let _sg = start_scopegate(&cluster, &ns).await;
    let api = policies(&cluster.client, &ns);
    let rules = format!(
        "  rules:\n    - paths: [\"/orders\"]\n      when: ['{}']\n",
        nested_alls()
    );
    delete_if_present(&api, "costly").await;
    api.create(
        &PostParams::default(),
        &token_policy(&ns, "costly", &jwks, &rules),
    )
    .await
    .unwrap();
    eventually("the status is written", || async {
        ready_condition(&api, "costly").await.is_some()
    })
    .await;
    let (status, reason, message) = ready_condition(&api, "costly").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.contains("spec.rules[0].when[0]")
            && message.contains("estimated cost ")
            && message.contains("exceeds the budget of 16,000"),
        "{message}"
    );
}

async fn delete_if_present(api: &Api<TokenPolicy>, name: &str) {
    if api.get_opt(name).await.unwrap().is_some() {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        eventually("the leftover policy is gone", || async {
            api.get_opt(name).await.unwrap().is_none()
        })
        .await;
    }
}

/// Finding 1 of the security review: a newer policy in another namespace
/// carved `pay.own.example.com` out of an older `*.own.example.com` and
/// served it with its own (anonymous) rules; an invalid edit of the owner
/// stopped serving it and released its hosts. Now the owner keeps them —
/// through an invalid edit, on its last good version — until it is deleted.
#[tokio::test]
async fn finding_1_hosts_stay_with_their_owner_until_it_is_deleted() {
    let cluster = cluster().await;
    let owner_ns = namespace(&cluster.client, "t-own-a").await;
    let rival_ns = namespace(&cluster.client, "t-own-b").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let mut config = k8s_config(&cluster.kubeconfig(), &owner_ns, &owner_ns);
    config.namespaces.push(rival_ns.clone());
    let sg = start_scopegate_with(config).await;
    let owners = policies(&cluster.client, &owner_ns);
    let rivals = policies(&cluster.client, &rival_ns);
    for (api, name) in [(&owners, "owner"), (&rivals, "rival")] {
        delete_if_present(api, name).await; // a rerun on the same cluster
    }
    const PAY: &str = "pay.own.example.com";
    let anonymous_get = || async { sg.check_host(PAY, "GET", "/orders", &[]).await };

    let mut owner = token_policy(&owner_ns, "owner", &jwks, STANDARD_RULES);
    owner.spec.hosts = vec!["*.own.example.com".into()];
    owners.create(&PostParams::default(), &owner).await.unwrap();
    eventually("the owner serves pay.own.example.com", || async {
        anonymous_get().await.http_status() == 401
    })
    .await;

    let mut rival = token_policy(
        &rival_ns,
        "rival",
        &jwks,
        "  rules:\n    - anonymous: true\n",
    );
    rival.spec.hosts = vec![PAY.into()];
    rivals.create(&PostParams::default(), &rival).await.unwrap();
    eventually("the rival is in HostConflict", || async {
        ready_condition(&rivals, "rival")
            .await
            .is_some_and(|(status, reason, message)| {
                status == "False"
                    && reason == "HostConflict"
                    && message.contains(&format!("already claimed by policy {owner_ns}/owner"))
                    && message.contains("*.own.example.com covers it")
            })
    })
    .await;
    assert_eq!(
        anonymous_get().await.http_status(),
        401,
        "the owner's rules still decide"
    );

    // An edit the API server accepts but that does not compile.
    let broken = json!({"spec": {"rules": [{"paths": ["/a/**/b"]}]}});
    owners
        .patch("owner", &PatchParams::default(), &Patch::Merge(&broken))
        .await
        .unwrap();
    eventually("the owner reports Invalid, naming the field", || async {
        ready_condition(&owners, "owner")
            .await
            .is_some_and(|(_, reason, message)| {
                reason == "Invalid"
                    && message.contains("spec.rules[0].paths[0]")
                    && message.contains("the last valid version keeps serving")
            })
    })
    .await;
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    let checked = sg
        .check_host(
            PAY,
            "GET",
            "/orders",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(checked.http_status(), 200, "the last good version serves");
    assert_eq!(
        checked.metadata("policy"),
        Some(format!("{owner_ns}/owner"))
    );
    assert_eq!(anonymous_get().await.http_status(), 401);
    let (_, reason, _) = ready_condition(&rivals, "rival").await.unwrap();
    assert_eq!(reason, "HostConflict", "an invalid owner keeps its hosts");

    owners
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let took = eventually(
        "the rival takes the host once the owner is deleted",
        || async {
            anonymous_get().await.http_status() == 200
                && ready_condition(&rivals, "rival")
                    .await
                    .is_some_and(|(status, reason, _)| status == "True" && reason == "Accepted")
        },
    )
    .await;
    println!("owner deleted → rival Accepted and serving in {took:?}");
}

/// Waits until `name`'s status says `Invalid` with `message` in its
/// message and records `host` as the one host it serves or holds.
async fn invalid_and_holding(api: &Api<TokenPolicy>, name: &str, host: &str, message: &str) {
    eventually(
        &format!("{name} is Invalid ({message}) and holds {host}"),
        || async {
            api.get(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .is_some_and(|status| {
                    status.served_hosts == [host]
                        && status
                            .conditions
                            .iter()
                            .any(|c| c.reason == "Invalid" && c.message.contains(message))
                })
        },
    )
    .await;
}

/// Issue 20, finding 1: a host held for an owner whose edit is invalid is
/// never answered by another namespace's wider wildcard — not by the
/// replica that saw the last good version, nor by replicas started after
/// the invalid edit (which know only the status's `servedHosts`), however
/// they are started in turn.
#[tokio::test]
async fn tenant_finding_1_replicas_started_after_an_invalid_edit_hold_the_host_before_any_wildcard()
{
    let cluster = cluster().await;
    let owner_ns = namespace(&cluster.client, "t-held-a").await;
    let rival_ns = namespace(&cluster.client, "t-held-b").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let config = || {
        let mut config = k8s_config(&cluster.kubeconfig(), &owner_ns, &owner_ns);
        config.namespaces.push(rival_ns.clone());
        config
    };
    let first = start_scopegate_with(config()).await;
    let owners = policies(&cluster.client, &owner_ns);
    let rivals = policies(&cluster.client, &rival_ns);
    for (api, name) in [(&owners, "owner"), (&rivals, "wide")] {
        delete_if_present(api, name).await; // a rerun on the same cluster
    }
    const PAY: &str = "pay.corp.example.com";
    const OTHER: &str = "hr.corp.example.com";

    let mut owner = token_policy(&owner_ns, "owner", &jwks, STANDARD_RULES);
    owner.spec.hosts = vec![PAY.into()];
    owners.create(&PostParams::default(), &owner).await.unwrap();
    eventually("the owner serves its host", || async {
        first
            .check_host(PAY, "GET", "/orders", &[])
            .await
            .http_status()
            == 401
    })
    .await;
    // A newer wildcard of another namespace over the owner's exact host is
    // no conflict: it serves every other host under it, anonymously.
    let mut wide = token_policy(
        &rival_ns,
        "wide",
        &jwks,
        "  rules:\n    - anonymous: true\n",
    );
    wide.spec.hosts = vec!["*.corp.example.com".into()];
    rivals.create(&PostParams::default(), &wide).await.unwrap();
    eventually("the wildcard serves the other hosts", || async {
        first.check_host(OTHER, "GET", "/", &[]).await.http_status() == 200
    })
    .await;

    let broken = json!({"spec": {"rules": [{"paths": ["/a/**/b"]}]}});
    owners
        .patch("owner", &PatchParams::default(), &Patch::Merge(&broken))
        .await
        .unwrap();
    invalid_and_holding(&owners, "owner", PAY, "keeps serving").await;
    assert_eq!(
        first
            .check_host(PAY, "GET", "/orders", &[])
            .await
            .http_status(),
        401,
        "the replica that saw the last good version serves it"
    );

    // A replica started now never saw the last good version: it must hold
    // the host (503), never answer it with the wildcard's anonymous rule.
    let second = start_scopegate_with(config()).await;
    // Loaded: the wildcard answers its other hosts.
    eventually("the second replica has listed the policies", || async {
        second
            .check_host(OTHER, "GET", "/", &[])
            .await
            .http_status()
            == 200
    })
    .await;
    let held = second.check_host(PAY, "GET", "/orders", &[]).await;
    assert_eq!(
        (
            held.http_status(),
            held.0.status.as_ref().map(|s| s.message.clone())
        ),
        (503, Some("policy_invalid".to_string())),
        "a restarted replica answers the held host before any wildcard"
    );
    assert_eq!(
        second
            .check_host(OTHER, "GET", "/", &[])
            .await
            .http_status(),
        200
    );

    // The first replica goes away; the second leads and rewrites the
    // owner's status from what it knows; a third replica started after
    // that still holds the host.
    first.running.shutdown().await;
    invalid_and_holding(&owners, "owner", PAY, "stay reserved").await;
    let third = start_scopegate_with(config()).await;
    eventually("the third replica has listed the policies", || async {
        third.check_host(OTHER, "GET", "/", &[]).await.http_status() == 200
    })
    .await;
    for replica in [&second, &third] {
        let held = replica.check_host(PAY, "GET", "/orders", &[]).await;
        assert_eq!(held.http_status(), 503);
    }
}

#[tokio::test]
async fn one_replica_writes_status_and_another_takes_over_when_it_stops() {
    let cluster = cluster().await;
    let ns = namespace(&cluster.client, "t-leader").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let first = start_scopegate(&cluster, &ns).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &ns);
    let holder = || async {
        leases
            .get_opt("scopegate")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually("the first replica holds the lease", || async {
        holder().await.is_some()
    })
    .await;
    let first_holder = holder().await.unwrap();
    let second = start_scopegate(&cluster, &ns).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder().await.unwrap(),
        first_holder,
        "the lease does not flap while the holder renews"
    );

    // Both serve Checks.
    let api = policies(&cluster.client, &ns);
    api.create(
        &PostParams::default(),
        &token_policy(&ns, "orders", &jwks, STANDARD_RULES),
    )
    .await
    .unwrap();
    let token = KEY_A.sign(&claims(&jwks.issuer()));
    for replica in [&first, &second] {
        eventually("both replicas serve", || async {
            replica
                .check_token("GET", "/orders", &token)
                .await
                .http_status()
                == 200
        })
        .await;
    }

    first.running.shutdown().await; // releases the lease
    eventually("the second replica takes over", || async {
        holder().await.is_some_and(|h| h != first_holder)
    })
    .await;
    // The new leader writes status for a policy created after the takeover.
    let mut later = token_policy(&ns, "later", &jwks, "");
    later.spec.hosts = vec!["later.example.com".into()];
    api.create(&PostParams::default(), &later).await.unwrap();
    eventually("the new leader writes status", || async {
        ready_condition(&api, "later")
            .await
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
}

#[tokio::test]
async fn the_rbac_manifest_is_enough_and_no_more() {
    let cluster = cluster().await;
    namespace(&cluster.client, "scopegate-system").await;
    let ns = namespace(&cluster.client, "t-rbac").await;
    let kubectl = tool("SCOPEGATE_KUBECTL", ".tools/kube/v1.37.2/kubectl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["apply", "--server-side", "-f", "manifests/rbac.yaml"]);
    let token = run(&[
        "create",
        "token",
        "scopegate",
        "-n",
        "scopegate-system",
        "--duration",
        "1h",
    ]);
    let admin = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    let service_account = admin
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("token:") {
                format!("    token: {}", token.trim())
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, service_account).unwrap();

    // scopegate runs with exactly the manifest's permissions.
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = start_scopegate_with(k8s_config(&kubeconfig, &ns, "scopegate-system")).await;
    let api = policies(&cluster.client, &ns);
    create_served(
        &api,
        &sg,
        token_policy(&ns, "orders", &jwks, STANDARD_RULES),
        &jwks,
    )
    .await;
    eventually("the status is written with the service account", || async {
        ready_condition(&api, "orders")
            .await
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "scopegate-system");
    assert!(
        leases.get_opt("scopegate").await.unwrap().is_some(),
        "the lease was created"
    );

    // And nothing more: writes to policies, other resources, other namespaces' leases are refused.
    let sa_client = scopegate::k8s::client(Some(&kubeconfig)).await.unwrap();
    let sa_policies = policies(&sa_client, &ns);
    let forbidden = |result: Result<(), kube::Error>| matches!(result, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(forbidden(
        sa_policies
            .delete("orders", &DeleteParams::default())
            .await
            .map(|_| ())
    ));
    let copy = token_policy(&ns, "copy", &jwks, "");
    assert!(forbidden(
        sa_policies
            .create(&PostParams::default(), &copy)
            .await
            .map(|_| ())
    ));
    let patch = json!({"spec": {"mode": "audit"}});
    assert!(forbidden(
        sa_policies
            .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    ));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sa_client.clone(), &ns);
    assert!(forbidden(
        secrets.list(&Default::default()).await.map(|_| ())
    ));
    let other_leases: Api<Lease> = Api::namespaced(sa_client, &ns);
    assert!(forbidden(
        other_leases.list(&Default::default()).await.map(|_| ())
    ));
}

/// A control plane of its own, for the test that restarts the API server.
struct OwnControlPlane(PathBuf);

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tests/kube/stop.sh")
            .arg(&self.0)
            .status();
    }
}

/// Stops the API server process recorded in DIR/kube-apiserver.pid and starts
/// it again with the same command line (same port, certificates and etcd).
async fn restart_api_server(dir: &Path, outage: Duration) {
    let pid_file = dir.join("kube-apiserver.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    while Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(outage).await;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("kube-apiserver.log"))
        .unwrap();
    let child = std::process::Command::new("setsid")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(pid_file, child.id().to_string()).unwrap();
    // stop.sh kills it by pid; this thread reaps it then.
    let mut child = child;
    std::thread::spawn(move || child.wait());
}

#[tokio::test]
async fn scopegate_keeps_serving_through_an_api_server_restart_and_resyncs() {
    let dir = tempfile::tempdir().unwrap().keep();
    let started = std::process::Command::new("tests/kube/start.sh")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _control_plane = OwnControlPlane(dir.clone());
    let cluster = connect(dir.clone()).await;
    let ns = namespace(&cluster.client, "t-restart").await;
    let jwks = JwksServer::start(vec![KEY_A.jwk()]).await;
    let sg = start_scopegate(&cluster, &ns).await;
    let api = policies(&cluster.client, &ns);
    let (token, _) = create_served(
        &api,
        &sg,
        token_policy(&ns, "orders", &jwks, STANDARD_RULES),
        &jwks,
    )
    .await;

    let restart = tokio::spawn({
        let dir = dir.clone();
        async move { restart_api_server(&dir, Duration::from_secs(2)).await }
    });
    // During the outage and the restart, Checks keep being answered from the snapshot.
    let outage_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < outage_end {
        assert_eq!(
            sg.check_token("GET", "/orders", &token).await.http_status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    restart.await.unwrap();
    eventually("the API server is back", || async {
        cluster.client.apiserver_version().await.is_ok()
    })
    .await;

    let mut later = token_policy(&ns, "later", &jwks, STANDARD_RULES);
    later.spec.hosts = vec!["later.example.com".into()];
    api.create(&PostParams::default(), &later).await.unwrap();
    let auth = format!("Bearer {token}");
    eventually(
        "the watch resynced and serves a policy created after the restart",
        || async {
            sg.check_host(
                "later.example.com",
                "GET",
                "/orders",
                &[("authorization", &auth)],
            )
            .await
            .http_status()
                == 200
        },
    )
    .await;
}
