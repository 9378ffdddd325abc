//! Integration tests of the simulated cluster: the real kube-rs client and the real kubectl
//! against an in-process server on a free loopback port.

mod bad_input;
mod binary;
mod common;
mod fidelity;
mod kube_client;
mod kubectl;
// The one rule for missing prerequisites, shared with every test crate. Included as a file:
// the harness depends on this crate, so this crate's tests cannot depend on the harness.
#[path = "../../../harness/src/testing.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "a shared file; this crate uses part of it"
)]
mod testing;
