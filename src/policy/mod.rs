//! Policies: the `TokenPolicy` schema ([`spec`]), its compiled form
//! ([`CompiledPolicy`]), host and path matching, the host-indexed
//! [`PolicySnapshot`] swapped atomically behind a [`SnapshotHandle`], and the
//! file source ([`files`]).

mod builder;
mod compile;
pub mod conditions;
pub mod cost;
pub mod files;
mod matching;
mod sharded;
mod snapshot;
pub mod spec;

pub use builder::{Seniority, SnapshotBuilder};
pub use compile::{
    ActorRule, ClaimHeader, CompiledIssuer, CompiledPolicy, CompiledRule, FieldError, PolicyId,
    ProofOfPossession,
};
pub use matching::{AmbiguousPath, HostPattern, PathPattern, RequestPath, normalize_host};
pub use sharded::ShardedMap;
pub use snapshot::{
    Candidate, HostEntry, PolicyEntry, PolicySnapshot, PolicyState, ReloadReport, ReportedState,
    ServedIssuer, ServedPolicy, SnapshotHandle, Verification, return_freed_memory,
};
pub use spec::{
    DefaultAction, Mode, PopMechanism, ProofOfPossessionSpec, TokenPolicy, TokenPolicySpec,
};

#[cfg(test)]
mod tests;
