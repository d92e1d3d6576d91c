//! Writing PROTOCOL.md's messages: the server's (publications, answers, events, errors) and
//! the client's commands. Each returns the JSON text; the caller frames it.

use serde::Serialize;

use super::PresenceEntry;
use super::base64::Base64;
use crate::engine::history::{Position, Recovered};
use crate::message::Message;
use crate::session::SessionId;

/// A `u64` written as a JSON string of decimal digits (epochs and session ids do not fit a
/// JavaScript number).
struct Decimal(u64);

impl Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Serialize)]
struct Wire {
    epoch: Decimal,
    offset: u64,
}

impl From<Position> for Wire {
    fn from(p: Position) -> Self {
        Wire {
            epoch: Decimal(p.epoch),
            offset: p.offset,
        }
    }
}

/// A JSON value given as its text (the `id` of a ping), written as is.
struct Verbatim<'a>(&'a str);

impl Serialize for Verbatim<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only ever holds what the reader accepted as a JSON string or number.
        match serde_json::from_str::<serde_json::Value>(self.0) {
            Ok(v) => v.serialize(s),
            Err(_) => s.serialize_none(),
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    // Serializing these shapes into a String cannot fail: no maps with non-string keys, no
    // I/O, and every custom impl writes a string, a number or null.
    serde_json::to_string(value).unwrap_or_default()
}

/// `pub`: `{"type":"pub","topic":…,["epoch":"…","offset":…,]"data":…}` (or `data_base64`).
pub(crate) fn publication(topic: &str, position: Option<Position>, message: &Message) -> String {
    #[derive(Serialize)]
    struct Pub<'a> {
        r#type: &'static str,
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<Decimal>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data_base64: Option<Base64<'a>>,
    }
    let text = message.as_text();
    to_json(&Pub {
        r#type: "pub",
        topic,
        epoch: position.map(|p| Decimal(p.epoch)),
        offset: position.map(|p| p.offset),
        data: text,
        data_base64: text.is_none().then(|| Base64(message.as_bytes())),
    })
}

/// The answer to a subscribe: `subscribed`, or `unrecoverable` (also sent unrequested when a
/// live stream lost publications it cannot replay).
pub(crate) fn subscribed(topic: &str, outcome: &Recovered) -> String {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        r#type: &'static str,
        topic: &'a str,
        recovered: bool,
        replayed: usize,
        position: Option<Wire>,
    }
    #[derive(Serialize)]
    struct Unrecoverable<'a> {
        r#type: &'static str,
        topic: &'a str,
        position: Option<Wire>,
    }
    match *outcome {
        Recovered::Replayed { messages, position } => to_json(&Subscribed {
            r#type: "subscribed",
            topic,
            recovered: true,
            replayed: messages,
            position: Some(position.into()),
        }),
        Recovered::Live { position } => to_json(&Subscribed {
            r#type: "subscribed",
            topic,
            recovered: false,
            replayed: 0,
            position: position.map(Wire::from),
        }),
        Recovered::Unrecoverable { current } => to_json(&Unrecoverable {
            r#type: "unrecoverable",
            topic,
            position: current.map(Wire::from),
        }),
    }
}

/// `{"type":…}` with an optional `id` given as JSON text: `ping` and its `pong`.
fn with_id(kind: &'static str, id: Option<&str>) -> String {
    #[derive(Serialize)]
    struct WithId<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Verbatim<'a>>,
    }
    to_json(&WithId {
        r#type: kind,
        id: id.map(Verbatim),
    })
}

/// `{"type":"pong"}`, with the ping's `id` when it had one.
pub(crate) fn pong(id: Option<&str>) -> String {
    with_id("pong", id)
}

#[derive(Serialize)]
struct Entry<'a> {
    id: Decimal,
    info: Option<&'a str>,
}

impl<'a> From<&'a PresenceEntry> for Entry<'a> {
    fn from(e: &'a PresenceEntry) -> Self {
        Entry {
            id: Decimal(e.id.as_u64()),
            info: e.info.as_deref(),
        }
    }
}

/// `presence`: who is on `topic`.
pub(crate) fn presence(topic: &str, present: &[PresenceEntry]) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        r#type: &'static str,
        topic: &'a str,
        present: Vec<Entry<'a>>,
    }
    to_json(&Presence {
        r#type: "presence",
        topic,
        present: present.iter().map(Entry::from).collect(),
    })
}

/// `join`: `entry` joined `topic`.
pub(crate) fn event_join(topic: &str, entry: &PresenceEntry) -> String {
    #[derive(Serialize)]
    struct Join<'a> {
        r#type: &'static str,
        topic: &'a str,
        #[serde(flatten)]
        entry: Entry<'a>,
    }
    to_json(&Join {
        r#type: "join",
        topic,
        entry: entry.into(),
    })
}

/// `leave`: session `id` left `topic`.
pub(crate) fn event_leave(topic: &str, id: SessionId) -> String {
    #[derive(Serialize)]
    struct Leave<'a> {
        r#type: &'static str,
        topic: &'a str,
        id: Decimal,
    }
    to_json(&Leave {
        r#type: "leave",
        topic,
        id: Decimal(id.as_u64()),
    })
}

/// `error`: `command` (on `topic`) was refused with `code`.
pub(crate) fn error(command: &str, topic: Option<&str>, code: &str, message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        command: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    }
    to_json(&Error {
        r#type: "error",
        command,
        topic,
        code,
        message,
    })
}

#[derive(Serialize)]
struct TopicCommand<'a> {
    r#type: &'static str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<Wire>,
}

/// `subscribe`, with `since` when given.
pub(crate) fn command_subscribe(topic: &str, since: Option<Position>) -> String {
    to_json(&TopicCommand {
        r#type: "subscribe",
        topic,
        since: since.map(Wire::from),
    })
}

/// `unsubscribe`.
pub(crate) fn command_unsubscribe(topic: &str) -> String {
    to_json(&TopicCommand {
        r#type: "unsubscribe",
        topic,
        since: None,
    })
}

/// `presence`.
pub(crate) fn command_presence(topic: &str) -> String {
    to_json(&TopicCommand {
        r#type: "presence",
        topic,
        since: None,
    })
}

/// `ping`, with an `id` (JSON text) when given.
pub(crate) fn command_ping(id: Option<&str>) -> String {
    with_id("ping", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_keep_the_documented_shape() {
        let p = publication("a\"b", Some(Position::new(5, 6)), &Message::from("x\ny"));
        assert_eq!(
            p,
            r#"{"type":"pub","topic":"a\"b","epoch":"5","offset":6,"data":"x\ny"}"#
        );
        let p = publication("t", None, &Message::binary(&b"foo"[..]));
        assert_eq!(p, r#"{"type":"pub","topic":"t","data_base64":"Zm9v"}"#);
        let u = subscribed(
            "t",
            &Recovered::Unrecoverable {
                current: Some(Position::new(1, 2)),
            },
        );
        assert_eq!(
            u,
            r#"{"type":"unrecoverable","topic":"t","position":{"epoch":"1","offset":2}}"#
        );
        let s = subscribed("t", &Recovered::Live { position: None });
        assert_eq!(
            s,
            r#"{"type":"subscribed","topic":"t","recovered":false,"replayed":0,"position":null}"#
        );
    }

    #[test]
    fn events_and_answers() {
        let e = PresenceEntry::new(SessionId::from_u64(u64::MAX), Some("al\"ice".into()));
        assert_eq!(
            event_join("r", &e),
            r#"{"type":"join","topic":"r","id":"18446744073709551615","info":"al\"ice"}"#
        );
        assert_eq!(
            event_leave("r", e.id),
            r#"{"type":"leave","topic":"r","id":"18446744073709551615"}"#
        );
        assert_eq!(
            presence("r", &[PresenceEntry::new(SessionId::from_u64(3), None)]),
            r#"{"type":"presence","topic":"r","present":[{"id":"3","info":null}]}"#
        );
        assert_eq!(pong(Some("\"a\"")), r#"{"type":"pong","id":"a"}"#);
        assert_eq!(pong(Some("17")), r#"{"type":"pong","id":17}"#);
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        assert_eq!(
            error("subscribe", Some("t"), "too_many_topics", "at most 2"),
            r#"{"type":"error","command":"subscribe","topic":"t","code":"too_many_topics","message":"at most 2"}"#
        );
    }
}
