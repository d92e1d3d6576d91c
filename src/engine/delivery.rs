//! What one delivery did ([`Delivery`]) and to whom it goes ([`Target`]): the vocabulary of
//! the engine's single delivery path.

use crate::backplane::Remote;
use crate::outbox::Pushed;
use crate::session::SessionId;

/// What a broadcast or publish did, counted per recipient on this node, and what became of
/// it for the other nodes of a cluster (`remote`).
///
/// Nothing is lost without being counted: every matching session of this node is either in
/// `queued`, `dropped` or `disconnected`; the sessions of other nodes are counted there.
///
/// ```
/// # fn f(hub: &wshub::Hub) {
/// let report = hub.broadcast("tick");
/// if report.dropped + report.disconnected > 0 {
///     eprintln!("{} slow clients missed a tick", report.dropped + report.disconnected);
/// }
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Sessions the message was queued for. Queued is not delivered: a session may still end
    /// before its queue is written.
    ///
    /// With a backplane that keeps history (`RedisBackplane`), a publication to a topic with
    /// history is queued for nobody at the time of `publish`: every node, this one included,
    /// delivers it when the shared log hands it back numbered, so `queued`, `dropped` and
    /// `disconnected` are 0 here and the deliveries are counted in [`Stats`](crate::Stats)
    /// then; `remote` says whether it was handed to the backplane, and
    /// [`Hub::publish_confirmed`](crate::Hub::publish_confirmed) waits for its position.
    pub queued: usize,
    /// Messages discarded: recipients whose queue was full under
    /// [`DropNewest`](crate::SlowConsumerPolicy::DropNewest), older messages discarded under
    /// [`DropOldest`](crate::SlowConsumerPolicy::DropOldest), and recipients already closing.
    pub dropped: usize,
    /// Recipients closed with 1008 under
    /// [`Disconnect`](crate::SlowConsumerPolicy::Disconnect) because their queue was full.
    pub disconnected: usize,
    /// Whether the message was handed to the [`Backplane`](crate::backplane::Backplane) for
    /// the other nodes: [`Remote::NotConfigured`] on a hub without one, [`Remote::Failed`]
    /// when the other nodes will not get it.
    pub remote: Remote,
    /// The publication's place in its topic's history, for a topic with
    /// [history](crate::Config::history) on a single node. `None` for other topics, for
    /// broadcasts, and with a backplane that keeps history, where the position is assigned by
    /// the shared log after `publish` returns: [`Hub::publish_confirmed`](crate::Hub::publish_confirmed)
    /// waits for it.
    pub position: Option<crate::Position>,
}

impl Delivery {
    /// Adds one push to the counts.
    pub(crate) fn count(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.queued += 1,
            Pushed::QueuedDroppingOldest(n) => {
                self.queued += 1;
                self.dropped += n;
            }
            Pushed::DroppedNewest | Pushed::Closed => self.dropped += 1,
            Pushed::Disconnected => self.disconnected += 1,
        }
    }
}

/// The local recipients of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// Every session but `except`.
    All { except: Option<SessionId> },
    /// Every subscriber of `topic` but `except`.
    Topic {
        topic: &'a str,
        except: Option<SessionId>,
    },
}
