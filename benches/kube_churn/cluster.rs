//! The cluster side of the benchmark: a real kube-apiserver and etcd
//! (`tests/kube/start.sh`), the CRD as `scopegate crd` prints it, and the
//! benchmark's TokenPolicies, created and edited as untyped objects (so that
//! any scopegate build can be measured, whatever its Rust types).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::support::{AUDIENCE, numbered_host};

/// The TokenPolicy CRD's name.
const CRD: &str = "tokenpolicies.scopegate.dev";

/// A control plane: started here (and stopped on drop), or one already
/// running that `tests/kube/start.sh DIR` started.
pub struct ControlPlane {
    dir: PathBuf,
    own: bool,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with `tests/kube/start.sh` in a new
    /// temporary directory (binaries: `$KUBE_BIN`, else `tests/kube/build.sh`).
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kube-churn-")
            .tempdir()?
            .keep();
        let started = Command::new(repo_path("tests/kube/start.sh"))
            .arg(&dir)
            .output()
            .context("running tests/kube/start.sh")?;
        ensure!(
            started.status.success(),
            "tests/kube/start.sh failed (is $KUBE_BIN set, or tests/kube/build.sh done?):\n{}",
            String::from_utf8_lossy(&started.stderr)
        );
        Ok(ControlPlane { dir, own: true })
    }

    /// A control plane someone else started (and will stop) in `dir`.
    pub fn existing(dir: PathBuf) -> Result<Self> {
        let plane = ControlPlane { dir, own: false };
        ensure!(
            plane.kubeconfig().exists(),
            "{} not found: start the control plane with tests/kube/start.sh DIR",
            plane.kubeconfig().display()
        );
        Ok(plane)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.own {
            let _ = Command::new(repo_path("tests/kube/stop.sh"))
                .arg(&self.dir)
                .status();
        }
    }
}

/// `path` inside the repository.
fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A client with the admin kubeconfig.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Applies the CRD that `scopegate crd` prints and waits until it is served.
pub async fn install_crd(client: &kube::Client, scopegate: &Path) -> Result<()> {
    let printed = Command::new(scopegate)
        .arg("crd")
        .output()
        .context("running scopegate crd")?;
    ensure!(printed.status.success(), "scopegate crd failed");
    let crd: CustomResourceDefinition = serde_yaml_ng::from_slice(&printed.stdout)
        .context("scopegate crd printed something else than a CRD")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        CRD,
        &PatchParams::apply("scopegate-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the CRD")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !established(&crds.get(CRD).await?) {
        ensure!(
            Instant::now() < deadline,
            "the CRD was not established in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Creates namespace `name`; fails if it exists (a rerun on a shared
/// control plane must not count another run's objects).
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Deletes namespace `name` (and with it the policies), without waiting.
pub async fn delete_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &Default::default()).await;
}

/// The TokenPolicy API in `namespace`, untyped.
pub fn policies(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("scopegate.dev", "v1alpha1", "TokenPolicy");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "tokenpolicies");
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The name of policy `index`.
pub fn policy_name(index: usize) -> String {
    format!("api-{index}")
}

/// The index of the policy named `name`, if it is one of the benchmark's.
pub fn policy_index(name: &str) -> Option<usize> {
    name.strip_prefix("api-")?.parse().ok()
}

/// Where the issuer's keys are, for every policy.
#[derive(Clone)]
pub struct Issuer {
    /// `iss`.
    pub url: String,
    /// The JWKS URI.
    pub jwks_uri: String,
}

/// Policy `index`: host `api-INDEX.example.com`; `GET /orders[/*]` and
/// `GET /edit/VERSION` need `scope:0` (an edit changes VERSION, so a Check
/// of the new path tells whether the new version serves).
pub fn policy_object(namespace: &str, index: usize, issuer: &Issuer) -> Value {
    json!({
        "apiVersion": "scopegate.dev/v1alpha1",
        "kind": "TokenPolicy",
        "metadata": {"name": policy_name(index), "namespace": namespace},
        "spec": {
            "hosts": [numbered_host(index)],
            "issuer": {
                "url": issuer.url,
                "jwksUri": issuer.jwks_uri,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
            },
            "rules": rules(0),
            "claimHeaders": [
                {"header": "x-user-id", "claim": "sub"},
                {"header": "x-agent-client-id", "claim": "azp"},
            ],
        },
    })
}

/// The rules of a policy at `version`.
fn rules(version: u64) -> Value {
    json!([
        {"methods": ["GET"], "paths": ["/orders", "/orders/*"], "requireScopes": ["scope:0"]},
        {"methods": ["GET"], "paths": [edit_path(version)], "requireScopes": ["scope:0"]},
    ])
}

/// The path that only `version` of a policy allows.
pub fn edit_path(version: u64) -> String {
    format!("/edit/{version}")
}

/// The policies `0..count` as one multi-document YAML file (files mode).
pub fn policies_yaml(namespace: &str, count: usize, issuer: &Issuer) -> Result<String> {
    let mut yaml = String::new();
    for index in 0..count {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(&policy_object(
            namespace, index, issuer,
        ))?);
    }
    Ok(yaml)
}

/// Creates the policies `0..count`, `concurrency` requests at a time.
pub async fn create_policies(
    api: &Api<DynamicObject>,
    count: usize,
    issuer: &Issuer,
    concurrency: usize,
) -> Result<()> {
    let namespace = api
        .namespace()
        .context("the policy API is namespaced")?
        .to_string();
    let mut created = futures::stream::iter(0..count)
        .map(|index| {
            let object = policy_object(&namespace, index, issuer);
            async move {
                let object: DynamicObject = serde_json::from_value(object)?;
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating policy {}", policy_name(index)))
            }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = created.next().await {
        result?;
    }
    Ok(())
}

/// Changes policy `index` to `version` (a JSON merge patch of its rules:
/// one API write).
pub async fn edit(api: &Api<DynamicObject>, index: usize, version: u64) -> Result<()> {
    let patch = json!({"spec": {"rules": rules(version)}});
    api.patch(
        &policy_name(index),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The collection's current `resourceVersion` (to watch from).
pub async fn resource_version(api: &Api<DynamicObject>) -> Result<String> {
    let list = api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await?;
    match list.metadata.resource_version {
        Some(version) => Ok(version),
        None => bail!("the list has no resourceVersion"),
    }
}
