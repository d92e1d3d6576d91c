//! Reading PROTOCOL.md's messages with serde_json into fixed shapes: unknown fields are
//! skipped, a wrong type for a known field makes the message "not ours" (`None`).

use std::borrow::Cow;

use serde::Deserialize;

use super::{ClientCommand, PresenceEntry, ServerMessage, base64};
use crate::engine::history::Position;
use crate::message::Message;
use crate::session::SessionId;

/// A `u64` sent as a number or as a string of decimal digits.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number<'a> {
    Int(u64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

impl Number<'_> {
    fn get(&self) -> Option<u64> {
        match self {
            Number::Int(n) => Some(*n),
            Number::Text(s) => s.parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    epoch: Number<'a>,
    #[serde(borrow)]
    offset: Number<'a>,
}

impl Wire<'_> {
    fn position(&self) -> Option<Position> {
        Some(Position::new(self.epoch.get()?, self.offset.get()?))
    }
}

/// A ping's `id`: a string or a number, kept as JSON text.
#[derive(Deserialize)]
#[serde(untagged)]
enum Id<'a> {
    Int(i64),
    Float(f64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

impl Id<'_> {
    fn to_json(&self) -> String {
        match self {
            Id::Int(n) => n.to_string(),
            Id::Float(f) => serde_json::to_string(f).unwrap_or_else(|_| "null".into()),
            Id::Text(s) => serde_json::to_string(s).unwrap_or_else(|_| "null".into()),
        }
    }
}

/// Every field either side sends; each message uses some. Unknown fields are skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    since: Option<Wire<'a>>,
    #[serde(borrow, default)]
    id: Option<Id<'a>>,
    // Server messages.
    #[serde(borrow, default)]
    epoch: Option<Number<'a>>,
    #[serde(borrow, default)]
    offset: Option<Number<'a>>,
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data_base64: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    replayed: Option<u64>,
    #[serde(borrow, default)]
    position: Option<Wire<'a>>,
    #[serde(borrow, default)]
    present: Option<Vec<WireEntry<'a>>>,
    #[serde(borrow, default)]
    info: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    command: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireEntry<'a> {
    #[serde(borrow)]
    id: Number<'a>,
    #[serde(borrow, default)]
    info: Option<Cow<'a, str>>,
}

impl WireEntry<'_> {
    fn entry(&self) -> Option<PresenceEntry> {
        Some(PresenceEntry::new(
            SessionId::from_u64(self.id.get()?),
            self.info.as_deref().map(str::to_owned),
        ))
    }
}

fn fields(text: &str) -> Option<Fields<'_>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// A client's command.
pub(super) fn command(text: &str) -> Option<ClientCommand> {
    let f = fields(text)?;
    let topic = || f.topic.as_deref().map(str::to_owned);
    Some(match &*f.kind {
        "subscribe" => ClientCommand::Subscribe {
            topic: topic()?,
            since: match &f.since {
                None => None,
                Some(w) => Some(w.position()?),
            },
        },
        "unsubscribe" => ClientCommand::Unsubscribe { topic: topic()? },
        "presence" => ClientCommand::Presence { topic: topic()? },
        "ping" => ClientCommand::Ping {
            id: f.id.as_ref().map(Id::to_json),
        },
        _ => return None,
    })
}

/// A server's message.
pub(super) fn server_message(text: &str) -> Option<ServerMessage> {
    let f = fields(text)?;
    let topic = || f.topic.as_deref().map(str::to_owned);
    let position = || match &f.position {
        None => Some(None),
        Some(w) => w.position().map(Some),
    };
    Some(match &*f.kind {
        "pub" => ServerMessage::Pub {
            topic: topic()?,
            position: match (&f.epoch, &f.offset) {
                (None, _) => None,
                (Some(e), Some(o)) => Some(Position::new(e.get()?, o.get()?)),
                (Some(_), None) => return None,
            },
            data: match (&f.data, &f.data_base64) {
                (Some(d), _) => Message::text(d.clone().into_owned()),
                (None, Some(b)) => Message::binary(base64::decode(b)?),
                (None, None) => return None,
            },
        },
        "subscribed" => ServerMessage::Subscribed {
            topic: topic()?,
            recovered: f.recovered.unwrap_or(false),
            replayed: f.replayed.unwrap_or(0),
            position: position()?,
        },
        "unrecoverable" => ServerMessage::Unrecoverable {
            topic: topic()?,
            position: position()?,
        },
        "pong" => ServerMessage::Pong {
            id: f.id.as_ref().map(Id::to_json),
        },
        "presence" => ServerMessage::Presence {
            topic: topic()?,
            present: f
                .present
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(WireEntry::entry)
                .collect::<Option<_>>()?,
        },
        "join" => ServerMessage::Join {
            topic: topic()?,
            entry: PresenceEntry::new(
                SessionId::from_u64(match &f.id {
                    Some(Id::Text(s)) => s.parse().ok()?,
                    Some(Id::Int(n)) => u64::try_from(*n).ok()?,
                    _ => return None,
                }),
                f.info.as_deref().map(str::to_owned),
            ),
        },
        "leave" => ServerMessage::Leave {
            topic: topic()?,
            id: SessionId::from_u64(match &f.id {
                Some(Id::Text(s)) => s.parse().ok()?,
                Some(Id::Int(n)) => u64::try_from(*n).ok()?,
                _ => return None,
            }),
        },
        "error" => ServerMessage::Error {
            command: f.command.as_deref()?.to_owned(),
            topic: topic(),
            code: f.code.as_deref()?.to_owned(),
            message: f.message.as_deref().unwrap_or_default().to_owned(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::write;
    use super::*;

    #[test]
    fn commands_accept_both_number_forms_and_refuse_garbage() {
        let c = command(
            r#"{"type":"subscribe","topic":"t","since":{"epoch":7,"offset":"3"},"x":[1,{"y":2}]}"#,
        );
        assert_eq!(
            c,
            Some(ClientCommand::Subscribe {
                topic: "t".into(),
                since: Some(Position::new(7, 3))
            })
        );
        let escaped = command(r#"{"type":"unsubscribe","topic":"a\"b\u00e9"}"#);
        assert_eq!(
            escaped,
            Some(ClientCommand::Unsubscribe {
                topic: "a\"bé".into()
            })
        );
        for bad in [
            "",
            "[]",
            "{",
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","topic":7}"#,
            r#"{"type":"subscribe","topic":"t","since":{"epoch":"x","offset":1}}"#,
            r#"{"type":"subscribe","topic":"t","since":{"epoch":-1,"offset":1}}"#,
            r#"{"type":"jump","topic":"t"}"#,
            r#"{"type":"subscribe","topic":"t","topic":"u"}"#,
        ] {
            assert_eq!(command(bad), None, "{bad}");
        }
        // Deep nesting costs no stack: skipped without recursion in an unknown field, refused
        // at serde_json's recursion limit in a known one. (`ClientCommand::parse` refuses
        // both earlier, by size.)
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!(r#"{{"type":"ping","x":{}}}"#, nest(100_000));
        assert_eq!(command(&deep), Some(ClientCommand::Ping { id: None }));
        let deep = format!(
            r#"{{"type":"subscribe","topic":"t","since":{}}}"#,
            nest(100_000)
        );
        assert_eq!(command(&deep), None);
        let m = Message::text(deep);
        assert_eq!(ClientCommand::parse(&m), None);
    }

    #[test]
    fn every_server_message_reads_back_what_the_writer_wrote() {
        let p = Position::new(u64::MAX, 9);
        let e = PresenceEntry::new(SessionId::from_u64(1 << 60), Some("bob".into()));
        let cases = [
            (
                write::publication("t", Some(p), &Message::from("hi")),
                ServerMessage::Pub {
                    topic: "t".into(),
                    position: Some(p),
                    data: Message::from("hi"),
                },
            ),
            (
                write::publication("t", None, &Message::binary(vec![0, 255, 7])),
                ServerMessage::Pub {
                    topic: "t".into(),
                    position: None,
                    data: Message::binary(vec![0, 255, 7]),
                },
            ),
            (
                write::pong(Some("\"x\"")),
                ServerMessage::Pong {
                    id: Some("\"x\"".into()),
                },
            ),
            (
                write::presence("r", std::slice::from_ref(&e)),
                ServerMessage::Presence {
                    topic: "r".into(),
                    present: vec![e.clone()],
                },
            ),
            (
                write::event_join("r", &e),
                ServerMessage::Join {
                    topic: "r".into(),
                    entry: e.clone(),
                },
            ),
            (
                write::event_leave("r", e.id),
                ServerMessage::Leave {
                    topic: "r".into(),
                    id: e.id,
                },
            ),
            (
                write::error("presence", Some("r"), "presence_disabled", "no"),
                ServerMessage::Error {
                    command: "presence".into(),
                    topic: Some("r".into()),
                    code: "presence_disabled".into(),
                    message: "no".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(server_message(&text), Some(expected), "{text}");
        }
    }
}
