//! The request classes (spec §2), each a step of the pipeline after classify and authorize:
//! cached read, realtime read, job status, webhook and passthrough, plus what several of them
//! share: the request context, a sync's effects, and the poller task.
//!
//! Only this layer takes the whole [`State`](crate::state::State); everything it uses sits below.

pub mod cached_read;
pub mod context;
pub mod cooldown;
pub mod directives;
pub mod fill;
pub mod guards;
pub mod job_status;
pub mod limits;
pub mod passthrough;
pub mod poller;
pub mod realtime;
pub mod sync;
pub mod webhook;
