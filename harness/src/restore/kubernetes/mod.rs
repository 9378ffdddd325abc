//! Kubernetes restore: the backed-up objects in Velero's order, applied with server-side
//! apply, with a deadline and a readable reason on every wait.
//!
//! [`KubeRestorePlan::new`] is pure: it sorts objects into phases and sets the replica counts
//! a quiesced backup recorded. [`restore_kubernetes`] runs a plan against a cluster through
//! kube-rs; the data steps (database, Redis) are the caller's, through [`DataRestorer`], so
//! this module does not care how the database is reached.

//!
//! `plan.rs` orders the objects (pure), `apply.rs` runs a plan, `wait.rs` holds every wait on
//! a restored object (claims bound, workloads ready, pods observed) and the explanation of a
//! wait that ran out.

mod apply;
mod plan;
mod wait;

pub use apply::{DataRestorer, KubeRestoreOptions, KubeRestoreReport, Waits, restore_kubernetes};
pub use plan::{KubeRestorePlan, PlanRoles, PlanStep, RESTORE_ANNOTATION, StepKind};
pub use wait::observe_pods;
