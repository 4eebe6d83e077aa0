//! Integration tests: one binary (one link step) with a module per area.
//! Every test starts the real server in-process on port 0, or the real
//! binary as a child process where signals and exit codes are the point.

mod helpers;

mod api;
mod api_reference;
mod auth;
mod client;
mod config;
mod connections;
mod health;
mod limits;
mod observability;
mod outage;
mod overload;
mod pg;
mod postgres;
mod shutdown;
mod slow_clients;
mod store_contract;
mod tls;
mod tools;
