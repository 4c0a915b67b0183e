//! JWKS discovery, fetching and caching. (Stub: being written.)
