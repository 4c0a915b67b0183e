//! The MONGODB-OIDC SASL conversation. (Stub: being written.)
