//! Verification gates: pure functions from observed data to a verdict with findings.
