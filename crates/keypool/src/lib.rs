//! keypool: an OpenAI-compatible gateway over a pool of upstream API keys.
//!
//! Data flows one way: [`server`] (listener, gateway-token auth, request
//! inspection) → [`routing`] (which upstreams serve the model, in which
//! order) → [`scheduler`] (choose a key and reserve its budget) →
//! [`upstream`] (send with the key) → the answer streams back through a usage
//! tap that finishes the lease → usage totals reach the [`store`] in the
//! background ([`app`]'s sync task).

pub mod admin;
pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod crypt;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod records;
pub mod reload;
pub mod routing;
pub mod scheduler;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod tokens;
pub mod upstream;
