//! The [`Packet`]: one message between the nodes of a cluster, and its binary codec.

use bytes::{BufMut, Bytes, BytesMut};

use super::Route;
use crate::frame;
use crate::message::{CloseCode, CloseFrame, Message, Text};
use crate::session::SessionId;

/// Why bytes are not a valid [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Another format version: a node of another wshub version, or not a wshub packet.
    #[error("unknown packet version {0}")]
    Version(u8),
    /// The bytes are cut short or a field is out of range.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// One message between nodes, decoded.
///
/// Hubs encode packets themselves; this type is for backplane implementations and tools
/// that want to look inside one.
///
/// # Wire format (version 1)
///
/// All integers are big-endian. 14 bytes of header, then the topic, then the payload:
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0 | 1 | format version: `1` |
/// | 1 | 1 | kind: `1` broadcast, `2` publish, `3` send to one session, `4` close one session, `5` event (a JSON-protocol text frame for a topic's subscribers, as is) |
/// | 2 | 1 | WebSocket opcode of the message: `1` text, `2` binary (`0` for close) |
/// | 3 | 2 | origin node number |
/// | 5 | 8 | session id: the one left out (broadcast, publish; `0` for none) or the target (send, close) |
/// | 13 | 1 | topic length `n`, 0 to 255 (0 unless publish or event) |
/// | 14 | n | topic, UTF-8 |
/// | 14 + n | rest | payload: the message bytes; for close, the close code (2 bytes) then the UTF-8 reason |
///
/// A receiver refuses (and logs) a packet of another version, so nodes of different
/// versions never misread each other's messages during a rolling upgrade.
///
/// ```
/// use wshub::Message;
/// use wshub::backplane::{Action, Packet};
///
/// let e = Packet::new(7, Action::Publish {
///     topic: "orders".into(),
///     except: None,
///     message: Message::from("order 17 shipped"),
/// });
/// let bytes = e.encode().unwrap();
/// assert_eq!(Packet::decode(&bytes).unwrap(), e);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Packet {
    /// The node that published it.
    pub origin: u16,
    /// What the receiving nodes do with it.
    pub action: Action,
}

/// What an [`Packet`] asks the receiving nodes to do.
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
    /// Queue `text` as it is (a JSON-protocol event such as `join` or `leave`, never wrapped
    /// in a `pub`) for every subscriber of `topic`.
    Event {
        /// The topic.
        topic: String,
        /// The JSON text.
        text: String,
    },
}

const VERSION: u8 = 1;
const HEADER: usize = 14;
pub(crate) const KIND_BROADCAST: u8 = 1;
pub(crate) const KIND_PUBLISH: u8 = 2;
pub(crate) const KIND_SEND: u8 = 3;
pub(crate) const KIND_CLOSE: u8 = 4;
pub(crate) const KIND_EVENT: u8 = 5;

impl Packet {
    /// A packet from `origin`.
    pub fn new(origin: u16, action: Action) -> Self {
        Packet { origin, action }
    }

    /// The route a backplane publishes it on.
    pub fn route(&self) -> Route<'_> {
        match &self.action {
            Action::Broadcast { .. } => Route::All,
            Action::Publish { topic, .. } | Action::Event { topic, .. } => Route::Topic(topic),
            Action::Send { to, .. } | Action::Close { to, .. } => Route::Node(node_of(*to)),
        }
    }

    /// The wire form.
    ///
    /// # Errors
    /// [`PacketError::Malformed`] for a topic that
    /// [`validate_topic`](crate::validate_topic) refuses (it would not fit the header).
    pub fn encode(&self) -> Result<Bytes, PacketError> {
        if let Action::Publish { topic, .. } | Action::Event { topic, .. } = &self.action {
            crate::error::validate_topic(topic)
                .map_err(|_| PacketError::Malformed("topic name"))?;
        }
        Ok(match &self.action {
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
            Action::Event { topic, text } => encode_event(self.origin, topic, text),
        })
    }

    /// Reads the wire form.
    ///
    /// # Errors
    /// [`PacketError`] when the bytes are of another version or malformed (a topic that
    /// [`validate_topic`](crate::validate_topic) refuses, text that is not UTF-8, a close code
    /// that may not be sent).
    pub fn decode(bytes: &[u8]) -> Result<Packet, PacketError> {
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
            KIND_EVENT => Action::Event {
                topic: raw.topic.to_owned(),
                // Checked UTF-8 by `Raw::parse`.
                text: String::from_utf8_lossy(raw.payload).into_owned(),
            },
            _ => Action::Close {
                to: raw.target()?,
                frame: raw.close_frame()?,
            },
        };
        Ok(Packet {
            origin: raw.origin,
            action,
        })
    }
}

pub(crate) fn message_of(opcode: u8, payload: &[u8]) -> Message {
    let payload = Bytes::copy_from_slice(payload);
    match opcode {
        frame::OP_TEXT => Message::Text(Text::from_validated(payload)),
        _ => Message::Binary(payload),
    }
}

/// The node that published `bytes`, read from the header without decoding the rest; `None`
/// when it is not a packet of this version.
pub(crate) fn origin(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [VERSION, _, _, a, b, ..] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
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
    // Every caller passes a validated topic (at most 255 bytes); a longer one would be
    // refused by the receiver rather than misread, as its length cannot be represented.
    let topic = topic.as_bytes();
    let len = u8::try_from(topic.len()).unwrap_or(0);
    buf.put_u8(VERSION);
    buf.put_u8(kind);
    buf.put_u8(opcode);
    buf.put_u16(origin);
    buf.put_u64(id.map_or(0, |id| id.0));
    buf.put_u8(len);
    buf.extend_from_slice(&topic[..usize::from(len)]);
}

pub(crate) fn encode_message(
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

pub(crate) fn encode_close(origin: u16, to: SessionId, frame: &CloseFrame) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER + 2 + frame.reason.len());
    header(&mut buf, KIND_CLOSE, 0, origin, Some(to), "");
    buf.put_u16(u16::from(frame.code));
    buf.extend_from_slice(frame.reason.as_bytes());
    buf.freeze()
}

pub(crate) fn encode_event(origin: u16, topic: &str, text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER + topic.len() + text.len());
    header(&mut buf, KIND_EVENT, frame::OP_TEXT, origin, None, topic);
    buf.extend_from_slice(text.as_bytes());
    buf.freeze()
}

/// A checked, borrowed view of a packet.
pub(crate) struct Raw<'a> {
    pub(crate) kind: u8,
    pub(crate) opcode: u8,
    pub(crate) origin: u16,
    pub(crate) id: Option<SessionId>,
    pub(crate) topic: &'a str,
    pub(crate) payload: &'a [u8],
}

impl<'a> Raw<'a> {
    pub(crate) fn parse(b: &'a [u8]) -> Result<Self, PacketError> {
        let malformed = PacketError::Malformed;
        let Some(&version) = b.first() else {
            return Err(malformed("empty"));
        };
        if version != VERSION {
            return Err(PacketError::Version(version));
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
            KIND_EVENT => {
                if std::str::from_utf8(payload).is_err() {
                    return Err(malformed("text not UTF-8"));
                }
            }
            _ => return Err(malformed("kind")),
        }
        let topical = kind == KIND_PUBLISH || kind == KIND_EVENT;
        if topical == topic.is_empty() {
            return Err(malformed(
                "topic on a kind that has none, or none on a publish",
            ));
        }
        if topical && crate::error::validate_topic(topic).is_err() {
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

    pub(crate) fn target(&self) -> Result<SessionId, PacketError> {
        self.id.ok_or(PacketError::Malformed("no target session"))
    }

    pub(crate) fn close_frame(&self) -> Result<CloseFrame, PacketError> {
        let p = self.payload;
        if p.len() < 2 {
            return Err(PacketError::Malformed("close without a code"));
        }
        let code = CloseCode::from(u16::from_be_bytes([p[0], p[1]]));
        if !code.is_sendable() {
            return Err(PacketError::Malformed("close code"));
        }
        let reason = std::str::from_utf8(&p[2..]).map_err(|_| PacketError::Malformed("reason"))?;
        Ok(CloseFrame::new(code, reason))
    }
}
