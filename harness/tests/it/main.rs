//! Integration tests of the harness against real PostgreSQL servers, containers and tools.

mod data;
mod pg;
mod support;
