//! Cross-crate integration tests: the CI workflows, and the `rehearsal` binary as a user runs it.

mod architecture;
mod fidelity;
mod ingress;
mod preflight;
mod report_html;
mod runbook;
mod support;
mod workflows;
