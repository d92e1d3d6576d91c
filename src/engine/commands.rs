//! The JSON protocol's commands, applied: `Session::apply` lands here. Each command is one
//! engine operation and, where PROTOCOL.md says so, an answer queued to the session.

use super::history::{HistoryError, Recovered};
use crate::frame;
use crate::protocol::{self, ClientCommand};
use crate::session::Session;

/// `Session::apply`.
pub(crate) async fn apply(
    session: &Session,
    command: &ClientCommand,
) -> Result<Recovered, HistoryError> {
    let engine = &session.hub.engine;
    let done = Recovered::Live { position: None };
    match command {
        ClientCommand::Subscribe { topic, since } => {
            let joined = super::join(session, topic, *since).await;
            if let Err(e) = &joined {
                refuse(session, "subscribe", Some(topic), e);
            }
            joined
        }
        ClientCommand::Unsubscribe { topic } => {
            session.unsubscribe(topic);
            Ok(done)
        }
        ClientCommand::Ping { id } => {
            answer(session, &protocol::pong(id.as_deref()));
            Ok(done)
        }
        ClientCommand::Presence { topic } => {
            let read = if engine.config.presence_enabled(topic) {
                engine.presence(topic).await.map_err(HistoryError::from)
            } else {
                Err(HistoryError::NotEnabled)
            };
            match read {
                Ok(present) => {
                    answer(session, &protocol::presence(topic, &present));
                    Ok(done)
                }
                Err(e) => {
                    refuse(session, "presence", Some(topic), &e);
                    Err(e)
                }
            }
        }
    }
}

fn answer(session: &Session, json: &str) {
    let _ = session
        .hub
        .engine
        .deliver_to(&session.inner, frame::encode_text(json));
}

/// An `error` message for a refused command (with the envelope, like every answer of it).
fn refuse(session: &Session, command: &str, topic: Option<&str>, e: &HistoryError) {
    if !session.hub.engine.config.envelope {
        return;
    }
    let code = match e {
        HistoryError::InvalidName => "invalid_topic",
        HistoryError::TooManyTopics { .. } => "too_many_topics",
        HistoryError::NotEnabled => "presence_disabled",
        HistoryError::Closing => return, // nothing can be sent any more
        _ => "unavailable",
    };
    answer(
        session,
        &protocol::error(command, topic, code, &e.to_string()),
    );
}
