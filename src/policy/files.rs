//! Policies from YAML files: the source that needs no cluster.
//!
//! A path is a file or a directory of `*.yaml`/`*.yml` files (not recursive;
//! hidden entries such as a ConfigMap mount's `..data` are skipped). A file
//! may hold several `---`-separated documents, each a `TokenPolicy` exactly
//! as it would be applied to a cluster.
//!
//! Files are all-or-nothing: if any document is invalid, the whole set is
//! rejected with `file:document: field.path: message` lines and, when
//! reloading, the last good set keeps serving. A reload that would replace
//! a non-empty set with an empty one (a file emptied, or caught
//! half-written) is rejected the same way. A document of another kind
//! than `TokenPolicy` or `TokenPolicyTest` is an error that names its kind.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use notify::Watcher as _;
use serde::Deserialize;

use super::{
    Candidate, CompiledPolicy, PolicyId, PolicySnapshot, PolicyState, SnapshotHandle,
    TokenPolicySpec,
};
use crate::jwks::JwksRegistry;

/// The `apiVersion` every document must have.
pub const API_VERSION: &str = "scopegate.dev/v1alpha1";

/// The kind of a policy document.
pub const POLICY_KIND: &str = "TokenPolicy";

/// The kind of a policy test document (`scopegate test`): such documents may
/// sit next to policies and are skipped by the policy loader.
pub const TEST_KIND: &str = "TokenPolicyTest";

/// One problem in one document: `file:document: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based document index within the file (0: the file itself).
    pub document: usize,
    /// The field path, or a short label when the document could not be read.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.document,
            self.field,
            self.message
        )
    }
}

/// A compiled policy and the document it came from.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// Where it was defined.
    pub file: PathBuf,
    /// The 1-based document index.
    pub document: usize,
    /// The compiled policy.
    pub policy: CompiledPolicy,
}

impl LoadedPolicy {
    /// The policy's warnings, located: `file:document: field: warning: …`.
    pub fn warnings(&self) -> impl Iterator<Item = FileError> + '_ {
        self.policy.warnings.iter().map(|w| {
            file_error(
                &self.file,
                self.document,
                w.field.clone(),
                format!("warning: {}", w.message),
            )
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDocument {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: TokenPolicySpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_json::Value>,
}

/// Reads and compiles every policy under `paths`, in path order (files of a
/// directory sorted by name). Any error rejects the whole set.
pub fn load(paths: &[PathBuf]) -> Result<Vec<LoadedPolicy>, Vec<FileError>> {
    let mut errors = Vec::new();
    let mut loaded: Vec<LoadedPolicy> = Vec::new();
    for file in expand(paths, &mut errors) {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_file(&file, &text, &mut loaded, &mut errors),
            Err(e) => errors.push(file_error(&file, 0, "file", e.to_string())),
        }
    }
    check_unique_and_disjoint(&loaded, &mut errors);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// The files named by `paths`: files as given, directories expanded.
pub(crate) fn expand(paths: &[PathBuf], errors: &mut Vec<FileError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut in_dir: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_policy_file(p))
                    .collect();
                in_dir.sort();
                files.extend(in_dir);
            }
            Err(e) => errors.push(file_error(path, 0, "directory", e.to_string())),
        }
    }
    files
}

/// Whether a change to `path`, in a watched directory, can change the
/// policies: a YAML file, or Kubernetes' atomic swap of a mounted
/// ConfigMap or Secret (`..data`, `..2026_11_30_…`). Anything else (a log
/// file, notes, an editor's swap file) does not reload.
fn is_policy_change(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let yaml = path
        .extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml");
    name.starts_with("..") || (yaml && !name.starts_with('.'))
}

fn is_policy_file(path: &Path) -> bool {
    let visible = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.'));
    let yaml = path
        .extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml");
    visible && yaml && path.is_file()
}

/// Parses and compiles the documents of one file's text (what `load` does
/// per file, without duplicate and host checks across files).
pub fn parse_text(file: &Path, text: &str) -> Result<Vec<LoadedPolicy>, Vec<FileError>> {
    let (mut loaded, mut errors) = (Vec::new(), Vec::new());
    load_file(file, text, &mut loaded, &mut errors);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

fn load_file(file: &Path, text: &str, loaded: &mut Vec<LoadedPolicy>, errors: &mut Vec<FileError>) {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match serde_yaml_ng::Value::deserialize(document) {
            Ok(serde_yaml_ng::Value::Null) => continue, // empty document
            Ok(value) => value,
            Err(e) => {
                errors.push(file_error(file, number, "yaml", e.to_string()));
                // A syntax error ends the stream: later documents cannot be read.
                return;
            }
        };
        match value.get("kind").and_then(serde_yaml_ng::Value::as_str) {
            Some(TEST_KIND) => continue, // a policy test, read by `scopegate test`
            Some(kind) if kind != POLICY_KIND => {
                // Another kind's fields are not mistakes in a TokenPolicy:
                // name the kind instead of listing them as unknown.
                let message = format!("not a {POLICY_KIND} (kind: {kind})");
                errors.push(file_error(file, number, "kind", message));
                continue;
            }
            None if value.get("apiVersion").is_none() => {
                // An Envoy bootstrap, a values file, …: not a policy at all.
                let message =
                    format!("not a {POLICY_KIND} (the document has no apiVersion and no kind)");
                errors.push(file_error(file, number, "kind", message));
                continue;
            }
            _ => {}
        }
        match parse_document(value) {
            Ok((id, spec)) => match CompiledPolicy::compile(id, &spec) {
                Ok(policy) => loaded.push(LoadedPolicy {
                    file: file.to_path_buf(),
                    document: number,
                    policy,
                }),
                Err(field_errors) => errors.extend(
                    field_errors
                        .into_iter()
                        .map(|e| file_error(file, number, e.field, e.message)),
                ),
            },
            Err((field, message)) => errors.push(file_error(file, number, field, message)),
        }
    }
}

/// Checks the envelope and returns the policy id and spec.
fn parse_document(
    value: serde_yaml_ng::Value,
) -> Result<(PolicyId, TokenPolicySpec), (String, String)> {
    let document: PolicyDocument = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "document".to_string()
        } else {
            path
        };
        (field, e.into_inner().to_string())
    })?;
    if document.api_version != API_VERSION {
        return Err(("apiVersion".into(), format!("must be {API_VERSION:?}")));
    }
    if document.kind != POLICY_KIND {
        return Err(("kind".into(), format!("must be {POLICY_KIND:?}")));
    }
    let name = document
        .metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ("metadata.name".to_string(), "is required".to_string()))?;
    let namespace = document
        .metadata
        .namespace
        .unwrap_or_else(|| "default".into());
    Ok((format!("{namespace}/{name}").into(), document.spec))
}

/// Rejects duplicate names and hosts claimed twice, by the rules of a
/// cluster (the same pattern, or a more specific host under another
/// namespace's wildcard): the paths of one call form one policy set, so
/// both are mistakes of one author. Each message names the other file too.
fn check_unique_and_disjoint(loaded: &[LoadedPolicy], errors: &mut Vec<FileError>) {
    let mut first_of: HashMap<&PolicyId, &LoadedPolicy> = HashMap::new();
    for p in loaded {
        if let Some(first) = first_of.get(&p.policy.id) {
            let message = format!(
                "policy {} is defined more than once (also in {}:{}; the paths given \
                 together form one policy set)",
                p.policy.id,
                first.file.display(),
                first.document
            );
            errors.push(file_error(&p.file, p.document, "metadata.name", message));
        } else {
            first_of.insert(&p.policy.id, p);
        }
    }
    let candidates = loaded
        .iter()
        .map(|p| Candidate::new(p.policy.id.clone(), Ok(p.policy.clone())))
        .collect();
    for ((_, state), p) in PolicySnapshot::states_of(candidates).iter().zip(loaded) {
        let PolicyState::HostConflict { winner, .. } = state else {
            continue;
        };
        if *winner == p.policy.id {
            continue; // a second definition of one policy: reported above
        }
        let Some(message) = state.conflict_message() else {
            continue;
        };
        let owner = first_of
            .get(winner)
            .map(|w| format!(" in {}:{}", w.file.display(), w.document))
            .unwrap_or_default();
        let message = format!(
            "policy {}: {message}{owner} (the paths given together form one policy set)",
            p.policy.id
        );
        errors.push(file_error(&p.file, p.document, "spec.hosts", message));
    }
}

pub(crate) fn file_error(
    file: &Path,
    document: usize,
    field: impl Into<String>,
    message: impl Into<String>,
) -> FileError {
    FileError {
        file: file.to_path_buf(),
        document,
        field: field.into(),
        message: message.into(),
    }
}

/// Loads `paths` and publishes them into `handle`. At start an empty set
/// is published (every Check then answers `unknown_host`) with a warning.
pub fn load_and_publish(
    paths: &[PathBuf],
    registry: &JwksRegistry,
    handle: &SnapshotHandle,
) -> Result<usize, Vec<FileError>> {
    let loaded = load(paths)?;
    if loaded.is_empty() {
        tracing::warn!(
            paths = %display_paths(paths),
            "no TokenPolicy in the policy files: every Check is denied (unknown_host) until one is added"
        );
    }
    let count = loaded.len();
    publish(loaded, registry, handle);
    Ok(count)
}

fn publish(loaded: Vec<LoadedPolicy>, registry: &JwksRegistry, handle: &SnapshotHandle) {
    for warning in loaded.iter().flat_map(LoadedPolicy::warnings) {
        tracing::warn!(%warning, "policy warning");
    }
    let candidates = loaded
        .into_iter()
        .map(|l| Candidate::new(l.policy.id.clone(), Ok(l.policy)))
        .collect();
    handle.publish_and_trim(PolicySnapshot::build(candidates, registry));
}

/// `paths`, comma-separated, for messages.
pub fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One reload of the watched files: the new set is published, unless it
/// does not load or it would replace policies with none. A file caught
/// half-written reads as empty or unparseable; an empty set is far more
/// often that than a wish to deny every request, so it keeps the last good
/// set too (restart scopegate to start with no policy).
fn reload(
    paths: &[PathBuf],
    registry: &JwksRegistry,
    handle: &SnapshotHandle,
) -> Result<usize, Vec<String>> {
    let loaded =
        load(paths).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let serving = handle.load().len();
    if loaded.is_empty() && serving > 0 {
        return Err(vec![format!(
            "{}: no TokenPolicy left (a file emptied or caught half-written?); keeping the {serving} \
             last good policies (restart scopegate to serve none)",
            display_paths(paths)
        )]);
    }
    let count = loaded.len();
    publish(loaded, registry, handle);
    Ok(count)
}

/// Watches `paths` and republishes on every change, after a short debounce.
/// An invalid change, or one that leaves no policy, is logged and counted
/// as a failed reload, and the previous snapshot keeps serving. The
/// returned watcher must be kept alive.
pub fn watch(
    paths: Vec<PathBuf>,
    registry: JwksRegistry,
    handle: SnapshotHandle,
) -> notify::Result<notify::RecommendedWatcher> {
    crate::metrics::policy_reloads_watched();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| is_policy_change(p))) {
            let _ = tx.send(());
        }
    })?;
    for path in &paths {
        // Watch a file's directory: editors and ConfigMap updates replace
        // files by renaming, which a watch on the file itself would miss.
        let target = if path.is_dir() {
            path.as_path()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        };
        watcher.watch(target, notify::RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: let a burst of writes settle, then reload once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match reload(&paths, &registry, &handle) {
                Ok(count) => {
                    handle.record_reload(Vec::new());
                    tracing::info!(policies = count, "reloaded policy files");
                }
                Err(errors) => {
                    for error in &errors {
                        tracing::error!(%error, "invalid policy file; keeping the last good policies");
                    }
                    handle.record_reload(errors);
                }
            }
        }
    });
    Ok(watcher)
}
