//! mono-proxy: a local caching reverse proxy for Mono's open-banking API.
//!
//! Request path: [`service`] runs the pipeline: [`route`] classifies → authorize → one of the
//! [`request`] classes (cached read, realtime, job status, webhook, passthrough) → [`upstream`]
//! → respond. The request classes stand on shared handles that import nothing above them:
//! [`config`], [`upstream`], [`cache`], [`inflight`], [`store`], [`polls`], [`deliveries`],
//! [`tenant`], [`metrics`], gathered in [`state`]. [`app`] assembles a proxy and starts its
//! servers ([`server`], [`admin`]) and background tasks. docs/design.md draws the map.

pub mod account_view;
pub mod admin;
pub mod api;
pub mod app;
pub mod body;
pub mod cache;
pub mod clock;
pub mod config;
pub mod cooldowns;
pub mod deliveries;
pub mod demo;
pub mod error;
pub mod headers;
pub mod healthcheck;
pub mod inflight;
pub mod labels;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pagination;
pub mod polls;
pub mod purge;
pub mod purges;
pub mod recent_errors;
pub mod reload;
pub mod request;
pub mod route;
pub mod routes;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod singleflight;
pub mod state;
pub mod stats;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod upstream;
