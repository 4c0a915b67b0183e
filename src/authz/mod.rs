//! Authorisation: grants that map an authenticated identity to a backend identity.
