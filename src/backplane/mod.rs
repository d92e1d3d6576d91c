//! Scale-out: the [`Backplane`] that carries broadcasts, topic publishes, `send_to` and
//! `close` between the nodes of a cluster, and the [`Envelope`] they travel in.
//!
//! A hub with a backplane delivers to its own sessions as a single hub does, then encodes the
//! message **once** into an envelope and hands it to the backplane, which publishes it for the
//! other nodes without ever making the caller wait. Each node that receives an envelope from
//! another node delivers it through the same data path as a local broadcast: framed once, then
//! pushed into each matching session's bounded outbox, under the same slow-consumer policy.
//!
//! This module has no dependency on Redis; `RedisBackplane` (feature
//! `redis`) is the implementation wshub ships.
//!
//! The wire format of the envelope is documented on [`Envelope`].

#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{RemoteError, SendError};
use crate::frame;
use crate::hub::{Core, Delivery};
use crate::message::{CloseCode, CloseFrame, Message, Text};
use crate::session::SessionId;

/// Carries the [`Position`](crate::Position) a shared log assigned to a publication back to
/// the publisher (see [`Backplane::publish_recorded`]).
#[derive(Debug)]
pub struct Confirm(tokio::sync::oneshot::Sender<crate::Position>);

impl Confirm {
    pub(crate) fn new() -> (Confirm, tokio::sync::oneshot::Receiver<crate::Position>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Confirm(tx), rx)
    }

    /// Reports the position; a publisher that stopped waiting is not an error.
    pub fn send(self, position: crate::Position) {
        let _ = self.0.send(position);
    }
}

/// Carries messages between the nodes of a cluster.
///
/// A hub built with [`HubBuilder::backplane`](crate::HubBuilder::backplane) calls
/// [`publish`](Backplane::publish) after every local broadcast, publish, and `send_to` or
/// `close` for a session of another node, and [`interest_changed`](Backplane::interest_changed)
/// when a topic gains its first local subscriber or loses its last. The backplane hands what it
/// receives from other nodes to the [`LocalNode`] it was [attached](Backplane::attach) to.
///
/// An implementation must:
/// - **never block** in `publish` or `interest_changed` (they run on the caller's thread,
///   sometimes under a registry lock): queue, and say what happened in the returned [`Remote`];
/// - give each envelope to every *other* node that has interest in its [`Route`] **once**,
///   keeping the order in which one node published them;
/// - not hand a node's own envelopes back to it (or let [`LocalNode::deliver`] skip them,
///   which it does).
///
/// `RedisBackplane` (feature `redis`) is the implementation wshub ships. A minimal one,
/// that only shows the shape:
///
/// ```
/// use std::sync::{Arc, OnceLock};
/// use wshub::{Backplane, Bytes, LocalNode, Remote, Route};
///
/// /// Every node in one process; a real backplane crosses the network.
/// #[derive(Default)]
/// struct InProcess {
///     node: u16,
///     peers: OnceLock<Vec<Arc<InProcess>>>,
///     local: OnceLock<LocalNode>,
/// }
///
/// impl Backplane for InProcess {
///     fn node_id(&self) -> u16 {
///         self.node
///     }
///     fn attach(&self, node: LocalNode) {
///         let _ = self.local.set(node);
///     }
///     fn publish(&self, _route: Route<'_>, envelope: Bytes) -> Remote {
///         for peer in self.peers.get().into_iter().flatten() {
///             if let Some(local) = peer.local.get() {
///                 let _ = local.deliver(&envelope); // skips its own envelopes
///             }
///         }
///         Remote::Queued
///     }
///     fn interest_changed(&self, _topic: &str) {}
/// }
/// ```
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// This node's number, unique in the cluster: the top 16 bits of every
    /// [`SessionId`] the hub hands out, so that `send_to` can route any id to its node.
    fn node_id(&self) -> u16;

    /// Connects the backplane to the hub that will deliver what it receives. Called once, by
    /// [`HubBuilder::build`](crate::HubBuilder::build).
    fn attach(&self, node: LocalNode);

    /// Queues `envelope` (see [`Envelope`] for its format) for the other nodes that
    /// have interest in `route`.
    ///
    /// # Return
    /// [`Remote::Queued`] when the backplane took it (queued is not delivered), or
    /// [`Remote::Failed`] when it did not and nothing will be sent.
    fn publish(&self, route: Route<'_>, envelope: Bytes) -> Remote;

    /// The local interest in `topic` may have changed: it gained its first subscriber on this
    /// node or lost its last. Ask [`LocalNode::subscriber_count`] for the current state rather
    /// than trusting the order of these calls, which can race.
    fn interest_changed(&self, topic: &str);

    /// Sessions connected to each live node of the cluster.
    ///
    /// # Errors
    /// [`BackplaneError::Unsupported`] unless the backplane implements it; a connection error
    /// when the shared state cannot be read.
    async fn cluster_sessions(&self) -> Result<ClusterCount, BackplaneError> {
        Err(BackplaneError::Unsupported)
    }

    /// Subscribers of `topic` on each live node of the cluster.
    ///
    /// # Errors
    /// As [`cluster_sessions`](Self::cluster_sessions).
    async fn cluster_subscribers(&self, topic: &str) -> Result<ClusterCount, BackplaneError> {
        let _ = topic;
        Err(BackplaneError::Unsupported)
    }

    /// Whether this backplane keeps the history of topics with
    /// [history](crate::Config::history) for the whole cluster. When it does, the hub hands
    /// such publications to [`publish_recorded`](Self::publish_recorded) instead of
    /// delivering them itself, and reads history with [`history_read`](Self::history_read).
    /// Default: `false` (each node keeps its own history, which is only right for one node).
    fn keeps_history(&self) -> bool {
        false
    }

    /// Appends `message` to the shared log of `topic`, numbering it, and hands it with its
    /// [`Position`](crate::Position) to every node with interest in the topic, **this one
    /// included**, through [`LocalNode::deliver_recorded`], in log order. Never blocks.
    ///
    /// When `confirm` is given, the position the log assigned is sent through it once known
    /// (dropped unsent if the publication fails).
    fn publish_recorded(
        &self,
        topic: &str,
        message: &Message,
        policy: &crate::HistoryPolicy,
        confirm: Option<Confirm>,
    ) -> Remote {
        let _ = (topic, message, policy, confirm);
        Remote::NotConfigured
    }

    /// Resolves once publications of `topic` reach this node (its subscription to the topic is
    /// in place) **and** every publication sent to this node before the call has been handed
    /// to [`LocalNode::deliver_recorded`]. A recovering session calls it before reading the
    /// log (so nothing after the read is missed) and after (so nothing the read saw is still
    /// in flight and delivered twice).
    ///
    /// # Errors
    /// A connection error when it cannot be established.
    async fn topic_ready(&self, topic: &str) -> Result<(), BackplaneError> {
        let _ = topic;
        Ok(())
    }

    /// Reads the shared log of `topic` after `since` (all of it when `None`).
    ///
    /// # Errors
    /// [`BackplaneError::Unsupported`] unless [`keeps_history`](Self::keeps_history); a
    /// connection error.
    async fn history_read(
        &self,
        topic: &str,
        since: Option<crate::Position>,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::HistoryRead, BackplaneError> {
        let _ = (topic, since, policy);
        Err(BackplaneError::Unsupported)
    }

    /// Session `id` of this node joined `topic` with presence `info`, or left it (`None`).
    /// Never blocks.
    fn presence_changed(&self, topic: &str, id: SessionId, info: Option<&str>) {
        let _ = (topic, id, info);
    }

    /// The sessions present on `topic` on every live node.
    ///
    /// # Errors
    /// [`BackplaneError::Unsupported`] unless implemented; a connection error.
    async fn cluster_presence(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::PresenceEntry>, BackplaneError> {
        let _ = topic;
        Err(BackplaneError::Unsupported)
    }
}

/// Which nodes an envelope is for.
///
/// ```
/// use wshub::Route;
/// let r = Route::Topic("orders");
/// assert_ne!(r, Route::All);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route<'a> {
    /// Every node (a broadcast).
    All,
    /// The nodes with at least one subscriber to this topic.
    Topic(&'a str),
    /// One node, the owner of a session (`send_to`, `close`).
    Node(u16),
}

/// What became of a message for the other nodes: the `remote` field of a
/// [`Delivery`](crate::Delivery).
///
/// ```
/// # fn f(hub: &wshub::Hub) {
/// match hub.publish("orders", "order 17 shipped").remote {
///     wshub::Remote::NotConfigured | wshub::Remote::Queued => {}
///     wshub::Remote::Failed(why) => eprintln!("only this node's subscribers got it: {why}"),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remote {
    /// The hub has no backplane: it is the only node. (Also returned for a publish to a topic
    /// name that [`validate_topic`](crate::validate_topic) refuses, which no session on any
    /// node can be subscribed to, so there is nothing to forward.)
    #[default]
    NotConfigured,
    /// Handed to the backplane, which publishes what it is handed in order. Queued is not
    /// delivered: if the connection breaks before the message is written, the backplane logs
    /// and counts the loss, but this report has already been returned.
    Queued,
    /// Not sent to the other nodes; only this node's sessions got the message.
    Failed(RemoteError),
}

/// Sessions (or subscribers of a topic) per live node, from
/// [`Backplane::cluster_sessions`] and [`Backplane::cluster_subscribers`].
///
/// This node's own count is current; the other nodes' are as of their last heartbeat. A node
/// that stopped without leaving (a crash) drops out once its liveness lapses.
///
/// ```
/// # async fn f(backplane: &dyn wshub::Backplane) -> Result<(), wshub::BackplaneError> {
/// let counts = backplane.cluster_sessions().await?;
/// println!("{} sessions on {} nodes", counts.total(), counts.nodes.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterCount {
    /// `(node number, count)` for every live node, by node number.
    pub nodes: Vec<(u16, usize)>,
}

impl ClusterCount {
    /// The sum over all live nodes.
    pub fn total(&self) -> usize {
        self.nodes.iter().map(|(_, n)| n).sum()
    }

    /// The count of one node; 0 when it is not live.
    pub fn node(&self, node: u16) -> usize {
        self.nodes
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(0, |(_, c)| *c)
    }
}

/// Why a backplane could not be set up or queried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The shared state (Redis) could not be reached or answered with an error. Check the URL
    /// and that the server is up; retry later.
    #[error("backplane connection: {0}")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Every node number (1 to 65535) is held by a live node. Stop nodes that are gone for
    /// good, or wait for their liveness to lapse.
    #[error("no free node number")]
    NoNodeNumber,
    /// This backplane does not implement the operation.
    #[error("not supported by this backplane")]
    Unsupported,
}

/// Why bytes are not a valid [`Envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Another format version: a node of another wshub version, or not a wshub envelope.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// The bytes are cut short or a field is out of range.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

/// One message between nodes, decoded.
///
/// Hubs encode envelopes themselves; this type is for backplane implementations and tools
/// that want to look inside one.
///
/// # Wire format (version 1)
///
/// All integers are big-endian. 14 bytes of header, then the topic, then the payload:
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0 | 1 | format version: `1` |
/// | 1 | 1 | kind: `1` broadcast, `2` publish, `3` send to one session, `4` close one session |
/// | 2 | 1 | WebSocket opcode of the message: `1` text, `2` binary (`0` for close) |
/// | 3 | 2 | origin node number |
/// | 5 | 8 | session id: the one left out (broadcast, publish; `0` for none) or the target (send, close) |
/// | 13 | 1 | topic length `n`, 0 to 255 (0 unless publish) |
/// | 14 | n | topic, UTF-8 |
/// | 14 + n | rest | payload: the message bytes; for close, the close code (2 bytes) then the UTF-8 reason |
///
/// A receiver refuses (and logs) an envelope of another version, so nodes of different
/// versions never misread each other's messages during a rolling upgrade.
///
/// ```
/// use wshub::{Action, Envelope, Message};
///
/// let e = Envelope::new(7, Action::Publish {
///     topic: "orders".into(),
///     except: None,
///     message: Message::from("order 17 shipped"),
/// });
/// let bytes = e.encode();
/// assert_eq!(Envelope::decode(&bytes).unwrap(), e);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The node that published it.
    pub origin: u16,
    /// What the receiving nodes do with it.
    pub action: Action,
}

/// What an [`Envelope`] asks the receiving nodes to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Queue `message` for every session but `except`.
    Broadcast {
        /// A session left out (usually the sender).
        except: Option<SessionId>,
        /// The message.
        message: Message,
    },
    /// Queue `message` for every subscriber of `topic` but `except`.
    Publish {
        /// The topic.
        topic: String,
        /// A session left out.
        except: Option<SessionId>,
        /// The message.
        message: Message,
    },
    /// Queue `message` for session `to`.
    Send {
        /// The session.
        to: SessionId,
        /// The message.
        message: Message,
    },
    /// Close session `to` with `frame`.
    Close {
        /// The session.
        to: SessionId,
        /// The close frame.
        frame: CloseFrame,
    },
}

const VERSION: u8 = 1;
const HEADER: usize = 14;
const KIND_BROADCAST: u8 = 1;
const KIND_PUBLISH: u8 = 2;
const KIND_SEND: u8 = 3;
const KIND_CLOSE: u8 = 4;

impl Envelope {
    /// An envelope from `origin`.
    pub fn new(origin: u16, action: Action) -> Self {
        Envelope { origin, action }
    }

    /// The route a backplane publishes it on.
    pub fn route(&self) -> Route<'_> {
        match &self.action {
            Action::Broadcast { .. } => Route::All,
            Action::Publish { topic, .. } => Route::Topic(topic),
            Action::Send { to, .. } | Action::Close { to, .. } => Route::Node(node_of(*to)),
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Bytes {
        match &self.action {
            Action::Broadcast { except, message } => {
                encode_message(KIND_BROADCAST, self.origin, *except, "", message)
            }
            Action::Publish {
                topic,
                except,
                message,
            } => encode_message(KIND_PUBLISH, self.origin, *except, topic, message),
            Action::Send { to, message } => {
                encode_message(KIND_SEND, self.origin, Some(*to), "", message)
            }
            Action::Close { to, frame } => encode_close(self.origin, *to, frame),
        }
    }

    /// Reads the wire form.
    ///
    /// # Errors
    /// [`EnvelopeError`] when the bytes are of another version or malformed (a topic that
    /// [`validate_topic`](crate::validate_topic) refuses, text that is not UTF-8, a close code
    /// that may not be sent).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let raw = Raw::parse(bytes)?;
        let message = |payload: &[u8]| {
            let payload = Bytes::copy_from_slice(payload);
            match raw.opcode {
                frame::OP_TEXT => Message::Text(Text::from_validated(payload)),
                _ => Message::Binary(payload),
            }
        };
        let action = match raw.kind {
            KIND_BROADCAST => Action::Broadcast {
                except: raw.id,
                message: message(raw.payload),
            },
            KIND_PUBLISH => Action::Publish {
                topic: raw.topic.to_owned(),
                except: raw.id,
                message: message(raw.payload),
            },
            KIND_SEND => Action::Send {
                to: raw.target()?,
                message: message(raw.payload),
            },
            _ => Action::Close {
                to: raw.target()?,
                frame: raw.close_frame()?,
            },
        };
        Ok(Envelope {
            origin: raw.origin,
            action,
        })
    }
}

fn message_of(opcode: u8, payload: &[u8]) -> Message {
    let payload = Bytes::copy_from_slice(payload);
    match opcode {
        frame::OP_TEXT => Message::Text(Text::from_validated(payload)),
        _ => Message::Binary(payload),
    }
}

/// The node number in the top 16 bits of a session id.
pub(crate) fn node_of(id: SessionId) -> u16 {
    (id.0 >> 48) as u16
}

fn header(
    buf: &mut BytesMut,
    kind: u8,
    opcode: u8,
    origin: u16,
    id: Option<SessionId>,
    topic: &str,
) {
    debug_assert!(topic.len() <= 255, "topic names are validated to 255 bytes");
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u8(opcode);
    buf.put_u16(origin);
    buf.put_u64(id.map_or(0, |id| id.0));
    buf.put_u8(topic.len() as u8);
    buf.extend_from_slice(topic.as_bytes());
}

fn encode_message(
    kind: u8,
    origin: u16,
    id: Option<SessionId>,
    topic: &str,
    message: &Message,
) -> Bytes {
    let payload = message.as_bytes();
    let mut buf = BytesMut::with_capacity(HEADER + topic.len() + payload.len());
    header(&mut buf, kind, message.opcode(), origin, id, topic);
    buf.extend_from_slice(payload);
    buf.freeze()
}

fn encode_close(origin: u16, to: SessionId, frame: &CloseFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER + 2 + frame.reason.len());
    header(&mut buf, KIND_CLOSE, 0, origin, Some(to), "");
    buf.put_u16(u16::from(frame.code));
    buf.extend_from_slice(frame.reason.as_bytes());
    buf.freeze()
}

/// A checked, borrowed view of an envelope.
struct Raw<'a> {
    kind: u8,
    opcode: u8,
    origin: u16,
    id: Option<SessionId>,
    topic: &'a str,
    payload: &'a [u8],
}

impl<'a> Raw<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, EnvelopeError> {
        let malformed = EnvelopeError::Malformed;
        let Some(&version) = b.first() else {
            return Err(malformed("empty"));
        };
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        if b.len() < HEADER {
            return Err(malformed("shorter than its header"));
        }
        let (kind, opcode) = (b[1], b[2]);
        let origin = u16::from_be_bytes([b[3], b[4]]);
        let id = u64::from_be_bytes(b[5..13].try_into().map_err(|_| malformed("id"))?);
        let topic_len = usize::from(b[13]);
        let Some(topic) = b.get(HEADER..HEADER + topic_len) else {
            return Err(malformed("topic cut short"));
        };
        let topic = std::str::from_utf8(topic).map_err(|_| malformed("topic not UTF-8"))?;
        let payload = &b[HEADER + topic_len..];
        match kind {
            KIND_BROADCAST | KIND_PUBLISH | KIND_SEND => {
                if opcode != frame::OP_TEXT && opcode != frame::OP_BINARY {
                    return Err(malformed("opcode"));
                }
                if opcode == frame::OP_TEXT && std::str::from_utf8(payload).is_err() {
                    return Err(malformed("text not UTF-8"));
                }
            }
            KIND_CLOSE => {}
            _ => return Err(malformed("kind")),
        }
        if (kind == KIND_PUBLISH) == topic.is_empty() {
            return Err(malformed(
                "topic on a kind that has none, or none on a publish",
            ));
        }
        if kind == KIND_PUBLISH && crate::error::validate_topic(topic).is_err() {
            return Err(malformed("topic name"));
        }
        Ok(Raw {
            kind,
            opcode,
            origin,
            id: (id != 0).then_some(SessionId(id)),
            topic,
            payload,
        })
    }

    fn target(&self) -> Result<SessionId, EnvelopeError> {
        self.id.ok_or(EnvelopeError::Malformed("no target session"))
    }

    fn close_frame(&self) -> Result<CloseFrame, EnvelopeError> {
        let p = self.payload;
        if p.len() < 2 {
            return Err(EnvelopeError::Malformed("close without a code"));
        }
        let code = CloseCode::from(u16::from_be_bytes([p[0], p[1]]));
        if !code.is_sendable() {
            return Err(EnvelopeError::Malformed("close code"));
        }
        let reason =
            std::str::from_utf8(&p[2..]).map_err(|_| EnvelopeError::Malformed("reason"))?;
        Ok(CloseFrame::new(code, reason))
    }
}

/// The hub a backplane delivers into: given to [`Backplane::attach`].
///
/// It holds the hub weakly, so a backplane does not keep a dropped hub alive; once the hub is
/// gone, [`deliver`](Self::deliver) does nothing and the counts are 0.
#[derive(Clone)]
pub struct LocalNode {
    core: Weak<Core>,
    node: u16,
}

impl LocalNode {
    /// This node's number.
    pub fn node_id(&self) -> u16 {
        self.node
    }

    /// Delivers an envelope from another node to this node's sessions, through the same
    /// bounded queues and slow-consumer policy as a local broadcast: the message is framed
    /// once, then queued for each matching session.
    ///
    /// An envelope this node published itself is skipped (its sessions already have it), as
    /// is one for a session that is not (or no longer) here.
    ///
    /// # Return
    /// The per-recipient counts, as [`Hub::broadcast`](crate::Hub::broadcast) returns them
    /// (its `remote` field is [`Remote::NotConfigured`]).
    ///
    /// # Errors
    /// [`EnvelopeError`] when the bytes are not a valid envelope; nothing is delivered.
    pub fn deliver(&self, envelope: &[u8]) -> Result<Delivery, EnvelopeError> {
        let raw = Raw::parse(envelope)?;
        let Some(core) = self.core.upgrade() else {
            return Ok(Delivery::default());
        };
        if raw.origin == self.node {
            return Ok(Delivery::default());
        }
        let frame = || frame::encode(raw.opcode, raw.payload);
        let report = match raw.kind {
            KIND_BROADCAST => core.registry.deliver_all(&frame(), raw.id),
            KIND_PUBLISH if core.config.envelope => {
                let message = message_of(raw.opcode, raw.payload);
                let frame = crate::history::frame_for(&core, raw.topic, None, &message);
                core.registry.deliver_topic(raw.topic, &frame, raw.id)
            }
            KIND_PUBLISH => core.registry.deliver_topic(raw.topic, &frame(), raw.id),
            KIND_SEND => {
                let to = raw.target()?;
                let mut report = Delivery::default();
                match core.registry.with(to, |s| {
                    s.outbox
                        .push(crate::deflate::for_one(s.deflate.as_ref(), frame()))
                }) {
                    Some(pushed) => {
                        // `push_result` counts and logs as a local `send_to` does.
                        let _ = core.push_result(to, pushed);
                        report.count(pushed);
                    }
                    None => tracing::debug!(id = %to, "send_to from another node: no such session"),
                }
                return Ok(report);
            }
            _ => {
                let (to, close) = (raw.target()?, raw.close_frame()?);
                if let Some(s) = core.registry.get(to) {
                    core.close_session(&s, close);
                }
                return Ok(Delivery::default());
            }
        };
        core.counters.delivery(&report);
        if report.disconnected > 0 {
            tracing::info!(
                sessions = report.disconnected,
                "slow consumer: queue full on a message from another node, closing with 1008"
            );
        }
        Ok(report)
    }

    /// Delivers a numbered publication of a topic with history, from the shared log (see
    /// [`Backplane::publish_recorded`]), to this node's subscribers, including the ones this
    /// node published itself. Sessions recovering the topic get it after their replay.
    pub fn deliver_recorded(
        &self,
        topic: &str,
        position: crate::Position,
        message: &Message,
    ) -> Delivery {
        match self.core.upgrade() {
            Some(core) => crate::history::deliver_recorded(&core, topic, position, message),
            None => Delivery::default(),
        }
    }

    /// Sessions connected to this node now.
    pub fn session_count(&self) -> usize {
        self.core.upgrade().map_or(0, |c| c.registry.len())
    }

    /// Subscribers of `topic` on this node now.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.core.upgrade().map_or(0, |c| {
            c.registry.topic_len(topic) + c.histories.recovering(topic)
        })
    }

    /// The topics with at least one subscriber on this node, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.core
            .upgrade()
            .map_or_else(Vec::new, |c| c.registry.topic_names())
    }

    /// Whether the hub still exists.
    pub fn is_alive(&self) -> bool {
        self.core.strong_count() > 0
    }
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode")
            .field("node", &self.node)
            .field("alive", &self.is_alive())
            .finish()
    }
}

// The hub's hooks: each is one call from `hub.rs`.

/// Attaches the hub's backplane, if any, once its core exists.
pub(crate) fn attach(core: &Arc<Core>) {
    if let Some(bp) = &core.backplane {
        bp.attach(LocalNode {
            core: Arc::downgrade(core),
            node: bp.node_id(),
        });
    }
}

/// The registry's interest hook: calls the backplane when a topic gains its first local
/// subscriber or loses its last.
pub(crate) fn interest_hook(
    backplane: &Option<Arc<dyn Backplane>>,
) -> Option<crate::registry::InterestHook> {
    let bp = backplane.clone()?;
    Some(Box::new(move |topic: &str| bp.interest_changed(topic)))
}

/// Forwards a broadcast (`except`: the session left out) to the other nodes.
pub(crate) fn broadcast(core: &Core, except: Option<SessionId>, message: &Message) -> Remote {
    let Some(bp) = &core.backplane else {
        return Remote::NotConfigured;
    };
    let envelope = encode_message(KIND_BROADCAST, bp.node_id(), except, "", message);
    bp.publish(Route::All, envelope)
}

/// Forwards a topic publish to the other nodes.
pub(crate) fn publish(core: &Core, topic: &str, message: &Message) -> Remote {
    let Some(bp) = &core.backplane else {
        return Remote::NotConfigured;
    };
    if crate::error::validate_topic(topic).is_err() {
        // No local session can be subscribed to it either.
        return Remote::NotConfigured;
    }
    let envelope = encode_message(KIND_PUBLISH, bp.node_id(), None, topic, message);
    bp.publish(Route::Topic(topic), envelope)
}

/// Forwards `send_to` when `to` belongs to another node; `None` when it is this node's.
pub(crate) fn send_to(
    core: &Core,
    to: SessionId,
    message: &Message,
) -> Option<Result<(), SendError>> {
    let bp = core.backplane.as_ref()?;
    let node = node_of(to);
    if node == bp.node_id() {
        return None;
    }
    let envelope = encode_message(KIND_SEND, bp.node_id(), Some(to), "", message);
    Some(forwarded(to, bp.publish(Route::Node(node), envelope)))
}

/// Forwards `close` when `to` belongs to another node; `None` when it is this node's.
pub(crate) fn close(
    core: &Core,
    to: SessionId,
    frame: &CloseFrame,
) -> Option<Result<(), SendError>> {
    let bp = core.backplane.as_ref()?;
    let node = node_of(to);
    if node == bp.node_id() {
        return None;
    }
    let envelope = encode_close(bp.node_id(), to, frame);
    Some(forwarded(to, bp.publish(Route::Node(node), envelope)))
}

fn forwarded(id: SessionId, remote: Remote) -> Result<(), SendError> {
    match remote {
        Remote::Failed(error) => Err(SendError::Remote { id, error }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
