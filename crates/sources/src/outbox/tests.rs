//! Relay tests against a real PostgreSQL (TENANTSYNC_TEST_POSTGRES).
