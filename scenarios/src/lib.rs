//! Placeholder crate root, filled in by the crate's first module.
