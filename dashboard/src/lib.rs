//! The customers' dashboard (issue 21, in progress). What is here is the part every page stands
//! on, kept free of I/O so that it is tested by the injected time alone:
//!
//! - [`random`]: secrets from the operating system's secure source.
//! - [`limits`]: how many times a key (an address, a client) may do something per window.
//! - [`codes`]: sign-in by emailed one-time code: issued, checked, limited.
//! - [`session`]: session tokens, 30-day idle expiry, the cookie, and CSRF tokens.
//!
//! Layers, bottom up: random, limits → codes, session → this.

pub mod codes;
pub mod limits;
pub mod random;
pub mod session;
