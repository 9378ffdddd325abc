//! The simulated cluster provider (filled in when simcluster exposes its library API).
