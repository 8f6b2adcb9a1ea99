//! mono-proxy: a caching reverse proxy for Mono's open-banking API.
pub mod sandbox;
