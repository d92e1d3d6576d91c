//! Scale-out: the [`Backplane`] trait that carries broadcasts, topic publishes, `send_to` and
//! `close` between the nodes of a cluster, and what an implementation needs: the [`Packet`]
//! one message travels in between nodes (`packet.rs`) and the [`LocalNode`] handle it
//! delivers into (`node.rs`). The hub's outbound side (what it hands a backplane) is the
//! engine's `forward.rs`.
//!
//! A hub with a backplane delivers to its own sessions as a single hub does, then encodes the
//! message **once** into a packet and hands it to the backplane, which publishes it for the
//! other nodes without ever making the caller wait. Each node that receives a packet from
//! another node delivers it through the engine's one delivery path: framed once, then pushed
//! into each matching session's bounded outbox, under the same slow-consumer policy.
//!
//! Users of a hub need nothing here but [`RedisBackplane`] (feature `redis`) to pass to
//! [`HubBuilder::backplane`](crate::HubBuilder::backplane); the rest is for implementors.

mod node;
mod packet;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::RemoteError;
use crate::message::Message;
use crate::session::SessionId;

pub use crate::engine::history::HistoryRead;
pub use node::LocalNode;
pub(crate) use node::attach;
pub use packet::{Action, Packet, PacketError};
pub(crate) use packet::{
    KIND_BROADCAST, KIND_PUBLISH, KIND_SEND, encode_close, encode_event, encode_message, node_of,
    origin,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisBackplane, RedisConfig, RedisStats};

/// Carries the [`Position`](crate::Position) a shared log assigned to a publication back to
/// the publisher (see [`Backplane::publish_recorded`]).
#[derive(Debug)]
pub struct Confirm(tokio::sync::oneshot::Sender<Result<crate::Position, RemoteError>>);

/// What a [`Confirm`] carries back: the position, or why the publication was not made.
pub(crate) type Confirmed = tokio::sync::oneshot::Receiver<Result<crate::Position, RemoteError>>;

impl Confirm {
    pub(crate) fn new() -> (Confirm, Confirmed) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Confirm(tx), rx)
    }

    /// Reports the position; a publisher that stopped waiting is not an error.
    pub fn send(self, position: crate::Position) {
        let _ = self.0.send(Ok(position));
    }

    /// Reports that the publication was not made, and why.
    pub fn refuse(self, error: RemoteError) {
        let _ = self.0.send(Err(error));
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
/// - **never block** in `publish`, `interest_changed` or `presence_changed` (they run on the
///   caller's thread; `presence_changed` under the hub's presence lock, so that one session's
///   joins and leaves reach the backplane in order): queue, and say what happened in the
///   returned [`Remote`]; never call back into the hub from them;
/// - give each packet to every *other* node that has interest in its [`Route`] **once**,
///   keeping the order in which one node published them;
/// - not hand a node's own packets back to it (or let [`LocalNode::deliver`] skip them,
///   which it does).
///
/// `RedisBackplane` (feature `redis`) is the implementation wshub ships. A minimal one,
/// that only shows the shape:
///
/// ```
/// use std::sync::{Arc, OnceLock};
/// use wshub::Bytes;
/// use wshub::backplane::{Backplane, LocalNode, Remote, Route};
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
///     fn publish(&self, _route: Route<'_>, packet: Bytes) -> Remote {
///         for peer in self.peers.get().into_iter().flatten() {
///             if let Some(local) = peer.local.get() {
///                 let _ = local.deliver(&packet); // skips its own packets
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

    /// Queues `packet` (see [`Packet`] for its format) for the other nodes that
    /// have interest in `route`.
    ///
    /// # Return
    /// [`Remote::Queued`] when the backplane took it (queued is not delivered), or
    /// [`Remote::Failed`] when it did not and nothing will be sent.
    fn publish(&self, route: Route<'_>, packet: Bytes) -> Remote;

    /// The local interest in `topic` may have changed: it gained its first subscriber on this
    /// node or lost its last. Ask [`LocalNode::subscriber_count`] for the current state rather
    /// than trusting the order of these calls, which can race.
    fn interest_changed(&self, topic: &str);

    /// Sessions connected to each live node of the cluster.
    ///
    /// # Errors
    /// [`BackplaneError::Unsupported`] unless the backplane implements it; a connection error
    /// when the shared state cannot be read.
    ///
    /// # Cancel safety
    /// A read: dropping the future loses nothing. Implementations must keep it so.
    async fn cluster_sessions(&self) -> Result<ClusterCount, BackplaneError> {
        Err(BackplaneError::Unsupported)
    }

    /// Subscribers of `topic` on each live node of the cluster.
    ///
    /// # Errors
    /// As [`cluster_sessions`](Self::cluster_sessions).
    ///
    /// # Cancel safety
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
    ///
    /// # Cancel safety
    /// Dropping the future must leave nothing behind but the topic's subscription, which
    /// [`interest_changed`](Self::interest_changed) reconciles.
    async fn topic_ready(&self, topic: &str) -> Result<(), BackplaneError> {
        let _ = topic;
        Ok(())
    }

    /// The current position of `topic`'s shared log, without reading its publications (a
    /// live subscribe needs no more). Default: [`history_read`](Self::history_read) of the
    /// whole log, keeping only its `current`.
    ///
    /// # Errors
    /// As [`history_read`](Self::history_read).
    ///
    /// # Cancel safety
    /// A read: dropping the future loses nothing. Implementations must keep it so.
    async fn history_position(
        &self,
        topic: &str,
        policy: &crate::HistoryPolicy,
    ) -> Result<crate::Position, BackplaneError> {
        Ok(self.history_read(topic, None, policy).await?.current)
    }

    /// Reads the shared log of `topic` after `since` (all of it when `None`).
    ///
    /// # Errors
    /// [`BackplaneError::Unsupported`] unless [`keeps_history`](Self::keeps_history); a
    /// connection error.
    ///
    /// # Cancel safety
    /// A read: dropping the future loses nothing. Implementations must keep it so.
    async fn history_read(
        &self,
        topic: &str,
        since: Option<crate::Position>,
        policy: &crate::HistoryPolicy,
    ) -> Result<HistoryRead, BackplaneError> {
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
    ///
    /// # Cancel safety
    /// A read: dropping the future loses nothing. Implementations must keep it so.
    async fn cluster_presence(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::PresenceEntry>, BackplaneError> {
        let _ = topic;
        Err(BackplaneError::Unsupported)
    }
}

/// Which nodes an packet is for.
///
/// ```
/// use wshub::backplane::Route;
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
/// # async fn f(backplane: &dyn wshub::backplane::Backplane) -> Result<(), wshub::BackplaneError> {
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

#[cfg(test)]
mod tests;
