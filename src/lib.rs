//! # wshub
//!
//! Real-time server push over WebSocket for Rust services: a [`Hub`] of live sessions, a
//! [`Handler`] trait for the application logic (Tornado's `open` / `on_message` / `on_close`,
//! plus handshake hooks), and [`send_to`](Hub::send_to), [`broadcast`](Hub::broadcast) and
//! topic [`publish`](Hub::publish) that push any message from anywhere in the application
//! without ever waiting for a slow client.
//!
//! ## Quick start
//!
//! ```no_run
//! use wshub::{CloseReason, Handler, Hub, Message, Session};
//!
//! struct Orders;
//!
//! #[wshub::async_trait]
//! impl Handler for Orders {
//!     async fn open(&self, s: &Session) {
//!         let _ = s.subscribe("orders");
//!     }
//!     async fn on_message(&self, s: &Session, m: Message) {
//!         s.hub().broadcast_except(s.id(), m);
//!     }
//!     async fn on_close(&self, s: &Session, why: CloseReason) {
//!         println!("{} left: {why}", s.id());
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let hub = Hub::new(Orders);
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//!     tokio::spawn(hub.clone().serve(listener));
//!     // From anywhere in the application, e.g. a database change feed:
//!     hub.publish("orders", "order 17 shipped");
//!     # Ok(())
//! }
//! ```
//!
//! ## Features
//!
//! | Feature  | What it adds | Extra dependencies |
//! |----------|--------------|--------------------|
//! | *(none)* | [`Hub`], [`Handler`], [`Session`], [`Hub::serve`] on a `TcpListener`, [`Hub::accept`] on any byte stream, [`Handler::http`] for plain HTTP on the same port, [`Stats`] with [`Stats::to_prometheus`], [`browser`]: the browser client `wshub.js` and its types, served from `Handler::http` | — |
//! | `axum`   | [`axum::endpoint`] and [`axum::upgrade`]: mount the hub at a route of an axum 0.8 `Router`, so REST and push share one port | `axum`, `hyper`, `hyper-util` |
//! | `client` | [`Client`]: a client that reconnects with exponential backoff and jitter, re-subscribes (with `since`, recovering what it missed, when the server speaks the envelope) and exposes its state; [`protocol::ServerMessage`] reads the envelope | `tokio-tungstenite` |
//! | `redis`  | `RedisBackplane`: several nodes share broadcasts, topics, `send_to` and `close` through Redis pub/sub (see *Scale-out*) | `redis` |
//! | `tls`    | `wss://` without a proxy: `Hub::serve_tls` takes a rustls `ServerConfig` (tokio-rustls with rustls's `ring` provider; rustls is re-exported as `wshub::rustls`); with `client`, [`Client`] connects to `wss://` URLs too | `tokio-rustls` |
//! | `deflate` | permessage-deflate (RFC 7692): `Config::compression`, each publication compressed once and shared by every session that negotiated it; the size limit applies to inflated messages | `zlib-rs` |
//! | `fuzzing` | internal: exposes the parsers to the fuzz targets in `fuzz/`; not a public API | — |
//!
//! ## The data path of one broadcast
//!
//! The file layout follows it (`ARCHITECTURE.md` has the whole map):
//!
//! 1. `hub.rs` — [`Hub::broadcast`] is one call into the engine.
//! 2. `engine/mod.rs` — the engine frames the message **once** into a shared
//!    [`bytes::Bytes`] and hands it to its one delivery path, `Engine::deliver`, which every
//!    sender uses (`Hub`, [`Session`], history replay, and what other nodes send through the
//!    backplane), so counting, slow-consumer handling and logging are written once; then
//!    `engine/forward.rs` hands the message, encoded once, to the [`backplane`] for the other
//!    nodes.
//! 3. `registry.rs` — the sessions, shard by shard under a read lock: a reference-counted
//!    clone of the frame is pushed into each session's outbox.
//! 4. `outbox.rs` — a bounded queue per session; the first push wakes the session's task
//!    (not when the session's own handler is the sender: its task writes right after the
//!    handler's poll). A broadcast from a handler wakes nobody: when the sender's task ends
//!    its poll, after every message it read, its batch writes each recipient's share
//!    straight into that recipient's socket with one system call (a plain TCP socket whose
//!    connection is idle), and wakes only the connections it could not write for.
//! 5. `connection.rs` — one task per socket drains everything queued into one buffer and
//!    writes it with one system call (what the batch left, and every other sender's
//!    messages).
//!
//! So under load there is one write per session per batch, not one per message, and the
//! payload is copied only into the socket's write buffer.
//!
//! **Runtime.** wshub needs no tuning of tokio: `#[tokio::main]` (the multi-thread runtime,
//! one worker per core, its defaults for the LIFO slot and the event interval) is what the
//! examples and the benchmarks use. A round trip costs one worker wake-up there, and the
//! current-thread runtime measured the same latency (BENCHMARKS.md §7); it spends about a
//! tenth less CPU per fan-out delivery but uses one core, so take it only where one core is
//! enough.
//!
//! - **Bounded.** Each session's queue is limited in bytes and messages
//!   ([`Config::max_queue_bytes`], [`Config::max_queue_messages`]). When it is full, the
//!   [`SlowConsumerPolicy`] applies — disconnect with 1008 (default), drop the newest, or drop
//!   the oldest — once the client's socket has refused data (a burst to a reader that keeps
//!   up may briefly queue up to 4× the limits) — and the sender learns what happened: [`SendError::Full`] from `send_to`, the
//!   counts of a [`Delivery`] from `broadcast`/`publish`. Nothing is dropped uncounted.
//! - **Never blocking.** Sending is a synchronous push; no lock is held across an `.await`,
//!   and a stalled client only ever fills its own queue.
//! - **Ordered.** Messages to one session are written in the order they were queued;
//!   [`Handler::on_message`] runs in arrival order per session and concurrently across
//!   sessions.
//! - **Exactly once cleanup.** On every exit path (close handshake, error, timeout, a panic in
//!   a handler, shutdown) the session leaves the registry and every topic once, then
//!   [`Handler::on_close`] runs once.
//!
//! ## The lock rule
//!
//! **No application code runs while wshub holds one of its own locks.** Every [`Handler`]
//! hook is called after wshub's locks (registry shards, a topic's history, presence, an
//! outbox) are released: operations collect what changed under the locks and run the hooks
//! after. A hook may therefore call back into the hub — publish (to the same topic, with
//! history), subscribe, unsubscribe, `send_to`, `close`, `stats` — without deadlocking; the
//! synchronous hooks ([`Handler::on_subscribe`], [`Handler::on_unsubscribe`],
//! [`Handler::presence_info`], [`Handler::check_origin`], [`Handler::select_subprotocol`],
//! [`Handler::http`]) may call every synchronous method and spawn a task for the async ones
//! ([`Hub::presence`], [`Hub::history`]). `tests/lock_rule.rs` calls back from every hook, on
//! one node and with Redis.

//! ## Protocol and limits
//!
//! wshub implements the server side of RFC 6455 itself (framing, fragmentation, UTF-8
//! validation, the close handshake) so that it can frame once per broadcast and batch writes;
//! it uses `tungstenite` for the handshake key and `tokio-tungstenite` as the client in its
//! tests. tungstenite types never appear in wshub's API, so a tungstenite upgrade is not a
//! breaking change for wshub users; the [`http`] crate's types do (request headers, status
//! codes) and are re-exported.
//!
//! Defaults, all in [`Config`]: 1 MiB maximum message (close 1009 beyond it), ping every 20 s
//! with a 20 s pong timeout, 120 s idle timeout, 10 s handshake timeout, 5 s close timeout,
//! 100,000 sessions (HTTP 503 beyond), 16 KiB of request headers (HTTP 431 beyond), 1 MiB /
//! 4096 messages of outbound queue per session, same-origin browser requests only (HTTP 403
//! otherwise). Protocol errors close with 1002, invalid UTF-8 with 1007. A client that floods
//! pings without reading gets one pong for the latest ping, not one per ping.
//!
//! ## Scale-out
//!
//! Several hubs behind a load balancer share broadcasts, topic publishes, `send_to` and
//! `close` through a [`Backplane`](backplane::Backplane); with the `redis` feature,
//! `RedisBackplane` does it
//! through Redis pub/sub. Each node still delivers to its own sessions at once; the backplane
//! carries one envelope per message to the other nodes, which deliver it through the same
//! bounded queues. Without the feature nothing of Redis is compiled.
//!
//! ## History and recovery
//!
//! A topic with history ([`Config::history`], bounded by a [`HistoryPolicy`]) numbers its
//! publications with a [`Position`] (epoch, offset) and keeps the last ones. A client that
//! reconnects subscribes with the last position it processed
//! ([`Session::subscribe_from`], or the `subscribe` message with `since` applied by
//! [`Session::apply`]) and receives exactly what it missed, in order, then the live
//! publications; when that is impossible (history lost or too old) it is told
//! [`Recovered::Unrecoverable`] and reloads its state. [`Config::envelope`] sends publications
//! in a small JSON envelope carrying the topic and position (`PROTOCOL.md`, enough to write a
//! client in any language; [`protocol`] reads and writes it); the `client` feature's
//! [`Client`] uses it, and so does [`browser`]'s `wshub.js`, the browser client the crate
//! ships and serves (`GET /wshub.js`), which the dashboard example's page imports. Presence ([`Config::presence`], [`Hub::presence`]) lists who is subscribed. See
//! `docs/history.md` for the guarantees and the cost.
//!
//! ## Shutdown and cancellation
//!
//! [`Hub::shutdown`] stops accepting, sends close 1001 to every session behind what it has
//! queued, waits for the queues to drain and the clients to answer until its deadline, then
//! drops the rest; every `on_close` has run when it returns. Dropping the future returned by
//! [`Hub::accept`] drops that connection without running `on_close`; let it run instead.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
pub mod backplane;
pub mod browser;
#[cfg(feature = "client")]
mod client;
mod config;
mod connection;
mod deflate;
mod engine;
mod error;
mod frame;
mod handler;
mod handshake;
mod heartbeat;
mod hub;
mod message;
mod outbox;
mod prometheus;
pub mod protocol;
mod registry;
mod session;
mod stats;
#[cfg(feature = "tls")]
mod tls;

/// Internal: the crate's parsers for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a
/// public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_api.rs"]
pub mod __fuzz;

pub use backplane::{BackplaneError, Remote};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use backplane::{RedisBackplane, RedisConfig};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{Client, ClientBuilder, ClientSendError, ClientState, ConnectError};
pub use config::{Config, SlowConsumerPolicy};
#[cfg(feature = "deflate")]
pub use deflate::{Compression, NoCompression};
pub use engine::delivery::Delivery;
pub use engine::history::{HistoryError, HistoryPolicy, Position, Recovered};
pub use error::{FullOutcome, RemoteError, SendError, TopicError, validate_topic};
pub use handler::{CloseReason, Handler, Reject, Request};
pub use hub::{Hub, HubBuilder};
pub use message::{CloseCode, CloseFrame, Message, Text};
pub use protocol::PresenceEntry;
pub use session::{Session, SessionId};
pub use stats::Stats;

#[doc(no_inline)]
pub use async_trait::async_trait;

/// The README's code compiles (checked by `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
#[doc(no_inline)]
pub use bytes::Bytes;
#[doc(no_inline)]
pub use http;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
#[doc(no_inline)]
pub use tokio_rustls::rustls;
