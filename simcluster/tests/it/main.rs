//! Integration tests of the simulated cluster: the real kube-rs client and the real kubectl
//! against an in-process server on a free loopback port.

mod bad_input;
mod binary;
mod common;
mod kube_client;
mod kubectl;
