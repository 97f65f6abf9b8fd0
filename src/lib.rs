//! scopegate validates agent-forwarded bearer tokens for every API behind an
//! Envoy or Istio mesh, as an Envoy external authorization (`ext_authz`) gRPC
//! service.
//!
//! Data flows one way:
//!
//! ```text
//!  policy files ──┐                                   ┌── JWKS caches (one per URI,
//!  (or CRDs)      │ parse + compile (policy::compile) │   refreshed in background)
//!                 ▼                                   ▼
//!         policy::PolicySnapshot  ──(ArcSwap)──►  authz::CheckService ◄── Envoy Check()
//!                 │                                   │
//!                 └──► admin /readyz                  └──► allow (claim headers) / deny (401/403/503)
//! ```
//!
//! * [`policy`] holds the `TokenPolicy` schema, its compiled form, host/path
//!   matching and the atomically swapped snapshot.
//! * [`jwks`] discovers, fetches, caches and refreshes issuer keys.
//! * [`token`] verifies a compact JWS against those keys and the policy's
//!   issuer rules.
//! * [`pop`] checks proof of possession (DPoP proofs, nonces, replay
//!   stores, mTLS certificate binding) for the Checks of bound tokens.
//! * [`mcp`] serves MCP APIs in Checks (RFC 9728 metadata, challenges,
//!   JSON-RPC call extraction, `mcp:` matchers).
//! * [`authz`] is the gRPC `envoy.service.auth.v3.Authorization` service: it
//!   turns a `CheckRequest` into a [`authz::Decision`] and the decision into a
//!   `CheckResponse`.
//! * [`k8s`] watches `TokenPolicy` objects, indexes them into the same
//!   snapshot and writes their status back (on the elected leader).
//! * [`metrics`] (one OpenTelemetry meter, read by `/metrics` and OTLP) and
//!   [`telemetry`] (logs, the Check span's OTLP export) observe all of it.
//! * [`admin`], [`devissuer`], [`serve`] and [`cli`] are the binary's edges.
// No unsafe code, except the one call that returns freed heap to the OS
// (`policy::snapshot`, `malloc_trim`).
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod devissuer;
pub mod jwks;
pub mod k8s;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod policy_test;
pub mod pop;
pub mod serve;
pub mod telemetry;
pub mod token;

/// The encoded protobuf descriptors of every gRPC service scopegate serves,
/// for server reflection (`grpcurl` needs no local `.proto` files).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));
