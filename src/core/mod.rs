//! The sans-IO protocol core: plain state machines that take `now` and inputs
//! and return outputs as data. They never open a socket, spawn a thread or
//! read the clock, which is what lets them be tested without sleeps.

pub mod exec;
pub mod node;
pub mod progress;
pub mod server;
