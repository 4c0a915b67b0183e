//! devidp (stub)
