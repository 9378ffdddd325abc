//! Integration tests of the harness against real PostgreSQL servers, containers and tools.

mod data;
mod pg;
mod pitr;
mod ready;
mod redis_restore;
mod statistics;
mod support;
