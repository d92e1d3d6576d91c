//! The messages users send and receive, and close codes.
//!
//! wshub has its own small message types instead of re-exporting tungstenite's, so that a
//! tungstenite upgrade is never a breaking change for users of wshub (the same choice axum made).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// A complete WebSocket data message: text or binary.
///
/// Payloads are [`Bytes`], so a message that goes to many sessions is never copied per
/// recipient. Every common payload type converts into a `Message`, which is what the generic
/// `impl Into<Message>` arguments of [`Hub`](crate::Hub) accept:
///
/// ```
/// use wshub::Message;
///
/// let a: Message = "hello".into();               // text
/// let b: Message = String::from("hello").into(); // text
/// let c: Message = vec![1u8, 2, 3].into();       // binary
/// let d: Message = bytes::Bytes::from_static(b"\x01").into(); // binary
/// assert!(a.is_text() && b.is_text() && !c.is_text() && !d.is_text());
/// assert_eq!(a.as_text(), Some("hello"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message: valid UTF-8.
    Text(Text),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Text>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(t) => Some(t),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes (UTF-8 for a text message).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    /// The payload, without copying.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Message::Text(t) => t.0,
            Message::Binary(b) => b,
        }
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn opcode(&self) -> u8 {
        match self {
            Message::Text(_) => crate::frame::OP_TEXT,
            Message::Binary(_) => crate::frame::OP_BINARY,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) => f.debug_tuple("Text").field(&&**t).finish(),
            Message::Binary(b) => f.debug_tuple("Binary").field(b).finish(),
        }
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::Text(s.into())
    }
}
impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::Text(s.into())
    }
}
impl From<&String> for Message {
    fn from(s: &String) -> Self {
        Message::Text(s.as_str().into())
    }
}
impl From<Text> for Message {
    fn from(t: Text) -> Self {
        Message::Text(t)
    }
}
impl From<Vec<u8>> for Message {
    fn from(v: Vec<u8>) -> Self {
        Message::Binary(v.into())
    }
}
impl From<&[u8]> for Message {
    fn from(v: &[u8]) -> Self {
        Message::Binary(Bytes::copy_from_slice(v))
    }
}
impl<const N: usize> From<&[u8; N]> for Message {
    fn from(v: &[u8; N]) -> Self {
        Message::Binary(Bytes::copy_from_slice(v))
    }
}
impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::Binary(b)
    }
}

/// UTF-8 text backed by [`Bytes`]: cheap to clone, dereferences to `str`.
///
/// ```
/// let t = wshub::Text::from("héllo");
/// assert_eq!(&*t, "héllo");
/// assert_eq!(t.len(), 6);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(Bytes);

impl Text {
    /// Wraps bytes that are valid UTF-8, or gives them back.
    ///
    /// ```
    /// use bytes::Bytes;
    /// assert!(wshub::Text::from_utf8(Bytes::from_static(b"ok")).is_ok());
    /// assert!(wshub::Text::from_utf8(Bytes::from_static(b"\xff")).is_err());
    /// ```
    pub fn from_utf8(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(_) => Ok(Text(bytes)),
            Err(_) => Err(bytes),
        }
    }

    /// The text as `&str`.
    pub fn as_str(&self) -> &str {
        self
    }

    /// The underlying bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Only for bytes the decoder has already validated.
    pub(crate) fn from_validated(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        Text(bytes)
    }
}

impl Deref for Text {
    type Target = str;
    #[allow(unsafe_code, reason = "UTF-8 is checked once, when the Text is built")]
    fn deref(&self) -> &str {
        // SAFETY: every constructor (`From<&str>`, `From<String>`, `from_utf8`, and
        // `from_validated`, which the frame decoder calls only after validating) guarantees
        // that the bytes are UTF-8, and the bytes are immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}
impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}
impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A WebSocket close status code (RFC 6455 section 7.4).
///
/// ```
/// use wshub::CloseCode;
/// assert_eq!(u16::from(CloseCode::GOING_AWAY), 1001);
/// assert!(CloseCode::from(4000).is_sendable());
/// assert!(!CloseCode::NO_STATUS.is_sendable());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going away (shutdown) or the session timed out.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: the close frame had no status code (never sent on the wire).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame (never sent on the wire).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (slow consumer, inbound rate limit).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message exceeded the configured maximum size.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server hit an unexpected condition (a handler panicked).
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether this code may appear in a close frame on the wire: 1000–1003, 1007–1014
    /// (registered codes) and 3000–4999 (libraries and applications).
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}
impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}
impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}
impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The code and reason of a close frame.
///
/// ```
/// let f = wshub::CloseFrame::new(wshub::CloseCode::NORMAL, "bye");
/// assert_eq!(f.reason, "bye");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason text (at most 123 bytes on the wire; longer reasons are cut at a character
    /// boundary when sent).
    pub reason: String,
}

impl CloseFrame {
    /// A close frame with `code` and `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({})", self.code, self.reason)
        }
    }
}
