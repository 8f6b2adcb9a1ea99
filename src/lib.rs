//! mono-proxy: a local caching reverse proxy for Mono's open-banking API.
//!
//! Request path: [`route`] classifies → [`service`] authorizes and picks the phase →
//! [`cache`] | [`realtime`] | [`jobs`] | [`webhook`] | passthrough → [`upstream`] → respond.

pub mod admin;
pub mod app;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod jobs;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod pagination;
pub mod realtime;
pub mod route;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod singleflight;
pub mod state;
pub mod store;
pub mod upstream;
pub mod webhook;
