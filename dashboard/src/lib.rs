//! The customers' dashboard (issue 21, in progress). What is here is the part every page stands
//! on. Codes and sessions do no I/O and take "now" as an argument (the server passes the one
//! injected clock), so their tests move time instead of waiting:
//!
//! - [`random`]: secrets from the operating system's secure source.
//! - [`limits`]: how many times a key (an address, a client) may do something per window.
//! - [`codes`]: sign-in by emailed one-time code: issued, checked, limited.
//! - [`session`]: session tokens, 30-day idle expiry, the cookie, and CSRF tokens.
//! - [`mail`]: the code's message, sent over SMTP.
//!
//! Layers, bottom up: random, limits → codes, session → mail → this.

pub mod codes;
pub mod limits;
pub mod mail;
pub mod random;
pub mod session;
