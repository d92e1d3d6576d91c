//! PROTOCOL.md's JSON, both directions, in one place: the commands a client sends
//! ([`ClientCommand`]) and the messages a server sends ([`ServerMessage`]), each with its
//! reader and its writer. The hub writes server messages and reads commands; [`Client`] and
//! tests do the opposite with the same code, so the two sides cannot drift apart.
//!
//! Reading uses `serde_json` into fixed shapes. A command is at most [`MAX_COMMAND_BYTES`]
//! long (anything longer is not a command), so a hostile client's command costs bounded time
//! and memory; nesting beyond serde_json's recursion limit is refused.
//!
//! [`Client`]: crate::Client

mod base64;
mod read;
mod write;

use crate::engine::history::Position;
use crate::message::Message;
use crate::session::SessionId;

pub(crate) use write::{
    command_presence, command_subscribe, command_unsubscribe, error, event_join, event_leave, pong,
    presence, publication, subscribed,
};

/// Commands longer than this (in bytes) are not commands: [`ClientCommand::parse`] returns
/// `None` without parsing them.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// A command a client sends in the JSON protocol (PROTOCOL.md).
///
/// Parse one in [`Handler::on_message`](crate::Handler::on_message) and apply it with
/// [`Session::apply`](crate::Session::apply), after any authorization the application does.
///
/// ```
/// use wshub::protocol::ClientCommand;
/// use wshub::{Message, Position};
/// let m = Message::from(r#"{"type":"subscribe","topic":"orders","since":{"epoch":"7","offset":3}}"#);
/// assert_eq!(
///     ClientCommand::parse(&m),
///     Some(ClientCommand::Subscribe { topic: "orders".into(), since: Some(Position::new(7, 3)) })
/// );
/// assert_eq!(ClientCommand::parse(&Message::from(r#"{"type":"ping"}"#)), Some(ClientCommand::Ping { id: None }));
/// assert_eq!(ClientCommand::parse(&Message::from("hello")), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCommand {
    /// `{"type":"subscribe","topic":…,"since":{"epoch":"…","offset":…}}`, `since` optional.
    Subscribe {
        /// The topic.
        topic: String,
        /// The last position the client processed.
        since: Option<Position>,
    },
    /// `{"type":"unsubscribe","topic":…}`.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// `{"type":"ping"}`, optionally with an `id`: answered with `{"type":"pong"}` carrying
    /// the same `id`. Browsers cannot see WebSocket pings; this lets a page check liveness.
    Ping {
        /// The `id` field as JSON text (a string with its quotes, or a number), echoed back.
        id: Option<String>,
    },
    /// `{"type":"presence","topic":…}`: who is subscribed to the topic, answered with a
    /// `presence` message.
    Presence {
        /// The topic.
        topic: String,
    },
}

impl ClientCommand {
    /// Reads a command; `None` for anything else (binary, other text, malformed JSON, an
    /// unknown `type`, a malformed `since`, a missing `topic`, more than
    /// [`MAX_COMMAND_BYTES`]).
    pub fn parse(message: &Message) -> Option<ClientCommand> {
        let text = message.as_text()?;
        if text.len() > MAX_COMMAND_BYTES {
            return None;
        }
        read::command(text)
    }

    /// The command's JSON text, as a client sends it.
    ///
    /// ```
    /// use wshub::protocol::ClientCommand;
    /// let c = ClientCommand::Unsubscribe { topic: "orders".into() };
    /// assert_eq!(c.to_message().as_text(), Some(r#"{"type":"unsubscribe","topic":"orders"}"#));
    /// assert_eq!(ClientCommand::parse(&c.to_message()), Some(c));
    /// ```
    pub fn to_message(&self) -> Message {
        Message::text(match self {
            ClientCommand::Subscribe { topic, since } => command_subscribe(topic, *since),
            ClientCommand::Unsubscribe { topic } => command_unsubscribe(topic),
            ClientCommand::Ping { id } => write::command_ping(id.as_deref()),
            ClientCommand::Presence { topic } => command_presence(topic),
        })
    }
}

/// One session present on a topic: from [`Hub::presence`](crate::Hub::presence), and in
/// the `presence` and `join` messages.
///
/// ```
/// # async fn f(hub: &wshub::Hub) -> Result<(), wshub::BackplaneError> {
/// for entry in hub.presence("room:7").await? {
///     println!("{} is here ({})", entry.id, entry.info.as_deref().unwrap_or("?"));
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceEntry {
    /// The session (its node is in the top 16 bits).
    pub id: SessionId,
    /// What [`Handler::presence_info`](crate::Handler::presence_info) returned for it when it
    /// joined (a user name, a JSON object …).
    pub info: Option<String>,
}

impl PresenceEntry {
    /// An entry.
    pub fn new(id: SessionId, info: Option<String>) -> Self {
        PresenceEntry { id, info }
    }
}

/// A message of the server's side of the JSON protocol (PROTOCOL.md), as read by
/// [`ServerMessage::parse`].
///
/// ```
/// use wshub::protocol::ServerMessage;
/// use wshub::{Message, Position};
/// let m = Message::from(r#"{"type":"pub","topic":"board","epoch":"7","offset":18,"data":"hi"}"#);
/// match ServerMessage::parse(&m) {
///     Some(ServerMessage::Pub { topic, position, data, .. }) => {
///         assert_eq!((topic.as_str(), position), ("board", Some(Position::new(7, 18))));
///         assert_eq!(data.as_text(), Some("hi"));
///     }
///     other => panic!("{other:?}"),
/// }
/// let m = Message::from(r#"{"type":"unrecoverable","topic":"board","position":{"epoch":"9","offset":4}}"#);
/// assert!(matches!(ServerMessage::parse(&m), Some(ServerMessage::Unrecoverable { .. })));
/// assert_eq!(ServerMessage::parse(&Message::from("plain text")), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `pub`: one publication to `topic`.
    Pub {
        /// The topic.
        topic: String,
        /// Its position; `None` for a topic without history.
        position: Option<Position>,
        /// What was published: text from `data`, binary from `data_base64`.
        data: Message,
    },
    /// `subscribed`: the answer to a subscribe; when `recovered`, exactly `replayed`
    /// publications follow, then the live ones.
    Subscribed {
        /// The topic.
        topic: String,
        /// Whether `since` was served.
        recovered: bool,
        /// Publications replayed.
        replayed: u64,
        /// The position the subscription starts from (`None` without history).
        position: Option<Position>,
    },
    /// `unrecoverable`: publications were lost that cannot be replayed — `since` could not be
    /// served, or (unrequested, on a live stream) the server lost part of the stream. Reload
    /// the topic's state; live publications follow `position`.
    Unrecoverable {
        /// The topic.
        topic: String,
        /// The topic's current position (`None` without history).
        position: Option<Position>,
    },
    /// `pong`: the answer to a `ping`, with its `id` (as JSON text).
    Pong {
        /// The ping's `id`, as JSON text.
        id: Option<String>,
    },
    /// `presence`: who is subscribed to `topic`, answering a `presence` command.
    Presence {
        /// The topic.
        topic: String,
        /// The sessions present.
        present: Vec<PresenceEntry>,
    },
    /// `join`: a session joined a topic with presence.
    Join {
        /// The topic.
        topic: String,
        /// Who joined.
        entry: PresenceEntry,
    },
    /// `leave`: a session left a topic with presence.
    Leave {
        /// The topic.
        topic: String,
        /// Who left.
        id: SessionId,
    },
    /// `error`: a command was refused.
    Error {
        /// The command's `type`.
        command: String,
        /// Its topic, if it had one.
        topic: Option<String>,
        /// A stable code: `invalid_topic`, `too_many_topics`, `presence_disabled`,
        /// `unavailable`, `closing`.
        code: String,
        /// A human-readable explanation.
        message: String,
    },
}

impl ServerMessage {
    /// Reads a server message; `None` for anything else (binary, other text, malformed).
    pub fn parse(message: &Message) -> Option<ServerMessage> {
        read::server_message(message.as_text()?)
    }
}
