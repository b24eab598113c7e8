//! PostHog-compatible event capture: HTTP in, Kafka out.
//!
//! Any PostHog SDK can point at this service unmodified. Each request is
//! decoded, validated, enriched and routed, and answered only after the sink
//! acknowledged every event in it.
//!
//! # Layout
//!
//! - [`config`]: static settings (flags, `CAPTURE_*` env, YAML file).
//! - [`router`]: endpoints, health, metrics, and the shared request pipeline.
//! - [`decode`]: body bytes to JSON bytes (gzip, lz64, base64, forms);
//!   [`lzstring`] is its bounded lz-string decompressor.
//! - [`parse`]: JSON to events and the request's token.
//! - [`process`]: validation and enrichment into one candidate per event,
//!   with its message; [`recordings`] does the same for `/s`.
//! - [`verdict`]: each event's candidate and verdict, from parsing to
//!   Kafka's answer; the HTTP answer renders them.
//! - [`event`]: the Kafka message contract (value, key, headers).
//! - [`route`]: data types and their topics.
//! - [`policy`]: quotas, deduplication, rate limits and overflow (Redis and
//!   local state), reserved at check and settled once the sink answered,
//!   and the quota admin library.
//! - [`runtime_config`]: the document the operator renders and capture
//!   reloads (token policies, restrictions, plugins, limits, routing);
//!   [`live`] keeps the one in force and reloads it.
//! - [`sink`]: Kafka, JSON lines (stdout, file), noop and memory sinks, and
//!   the spooling sink in front of Kafka; [`spool`] is its durable log.
//! - [`server`]: accept loop, start-up and graceful shutdown; [`tls`] is
//!   its optional HTTPS with certificate rotation.
//! - [`timestamp`], [`token`], [`clock`], [`metrics`], [`error`]: the small
//!   shared pieces.

pub mod budget;
pub mod clock;
pub mod config;
pub mod decode;
pub mod error;
pub mod event;
pub mod live;
pub mod lzstring;
pub mod metrics;
pub mod parse;
pub mod plugins;
pub mod policy;
pub mod process;
pub mod recordings;
pub mod route;
pub mod router;
pub mod runtime_config;
pub mod server;
pub mod signing;
pub mod sink;
pub mod spool;
pub mod timestamp;
pub mod tls;
pub mod token;
pub mod v1;
pub mod verdict;
pub mod warnings;

pub use config::Config;
pub use event::CapturedEvent;
pub use router::{AppState, Limits, app};
