//! The background task of one [`Client`]: it connects, sends the subscriptions, pumps
//! messages both ways, follows the positions of the held topics, and reconnects with backoff
//! when the connection is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use super::builder::Settings;
use super::transport::{Socket, open};
use super::{Client, ClientState, Command, Positions, lock};
use crate::message::{Message, Text};
use crate::protocol::{self, ServerMessage};

/// A connection that lasted this long resets the backoff to its first step.
const STABLE: Duration = Duration::from_secs(5);
/// How long closing may take: flushing what was queued and the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn start(settings: Arc<Settings>, first: Option<Socket>) -> Client {
    let (commands, command_rx) = mpsc::channel(settings.queue_capacity);
    let (inbound_tx, inbound) = mpsc::channel(settings.queue_capacity);
    let initial = if first.is_some() {
        ClientState::Open
    } else {
        ClientState::Connecting
    };
    let (state_tx, state) = watch::channel(initial);
    let (closing, closing_rx) = watch::channel(false);
    let positions = Positions::default();
    let task = Task {
        settings,
        commands: command_rx,
        inbound: inbound_tx,
        state: state_tx,
        closing: closing_rx,
        topics: Vec::new(),
        positions: positions.clone(),
        recovering: HashSet::new(),
    };
    tokio::spawn(task.run(first));
    Client {
        commands,
        inbound,
        state,
        closing,
        positions,
    }
}

/// The background task of one client: connect, pump, back off, repeat.
struct Task {
    settings: Arc<Settings>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Message>,
    state: watch::Sender<ClientState>,
    closing: watch::Receiver<bool>,
    /// The topics to subscribe to after each reconnection, in first-subscribed order.
    topics: Vec<String>,
    /// The last position received per topic in `topics` (envelope servers only).
    positions: Positions,
    /// Topics with a gap being repaired on this connection: their publications are ignored
    /// until the server answers the subscribe `since` (PROTOCOL.md, "Client algorithm").
    recovering: HashSet<String>,
}

/// What [`Task::track`] decided for an incoming message.
enum Tracked {
    /// Pass it on to the application.
    Pass,
    /// A duplicate, or a publication of a topic whose gap is being repaired: drop it.
    Drop,
    /// A gap: drop the publication and write this subscribe (with `since`).
    Gap(Message),
}

/// How a connection ended.
enum Ended {
    /// The server or the network ended it: reconnect.
    Lost,
    /// The application closed the client.
    Closed,
}

impl Task {
    async fn run(mut self, mut socket: Option<Socket>) {
        let mut attempt = 0u32;
        loop {
            let ws = match socket.take() {
                Some(ws) => ws,
                None => {
                    let opened = tokio::select! {
                        opened = open(&self.settings) => opened,
                        _ = closed(&mut self.closing) => break,
                    };
                    match opened {
                        Ok(ws) => ws,
                        Err(e) => {
                            attempt += 1;
                            tracing::debug!(url = %self.settings.url, attempt, error = %e, "connection attempt failed");
                            if self.back_off(attempt).await {
                                continue;
                            }
                            break;
                        }
                    }
                }
            };
            tracing::debug!(url = %self.settings.url, "client connected");
            self.state.send_replace(ClientState::Open);
            let since = Instant::now();
            let ended = self.pump(ws).await;
            if matches!(ended, Ended::Closed) {
                break;
            }
            if since.elapsed() >= STABLE {
                attempt = 0;
            }
            attempt += 1;
            tracing::debug!(url = %self.settings.url, "client connection lost");
            if !self.back_off(attempt).await {
                break;
            }
        }
        self.state.send_replace(ClientState::Closed);
    }

    /// Waits the backoff before `attempt`; false when the client was closed meanwhile.
    async fn back_off(&mut self, attempt: u32) -> bool {
        let retry_in = self.settings.backoff(attempt);
        self.state
            .send_replace(ClientState::Reconnecting { attempt, retry_in });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {
                self.state.send_replace(ClientState::Connecting);
                true
            }
            _ = closed(&mut self.closing) => false,
        }
    }

    /// Runs one connection: subscriptions first, then messages both ways until it ends.
    ///
    /// Liveness: a ping every [`ping_interval`](Settings::ping_interval); the connection is
    /// lost when no frame arrived for [`read_timeout`](Settings::read_timeout) (time spent
    /// waiting for the application to take a message does not count), including while a
    /// write is stuck on a full socket.
    async fn pump(&mut self, mut ws: Socket) -> Ended {
        let mut heard = Instant::now();
        // A new session: the subscriptions below start every topic afresh.
        self.recovering.clear();
        let resubscribe: Vec<tungstenite::Message> = self
            .topics
            .iter()
            .map(|topic| to_wire(self.resubscribe_message(topic)))
            .collect();
        let subscribing = async {
            for m in resubscribe {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        match self.bounded(heard, subscribing).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Ended::Lost,
            None => return self.ended(&mut ws).await,
        }
        let mut ping = self.settings.ping_interval.map(|every| {
            let mut ping = tokio::time::interval_at(Instant::now() + every, every);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping
        });
        'connection: loop {
            let silent = self.deadline(heard);
            // Unbiased: neither a flood of sends nor a flood of messages starves the other
            // direction, and a busy send queue cannot hide a live server from the read
            // timeout.
            let outgoing = tokio::select! {
                _ = closed(&mut self.closing) => {
                    self.close_socket(&mut ws).await;
                    return Ended::Closed;
                }
                _ = sleep_until(silent) => {
                    tracing::debug!(url = %self.settings.url, timeout = ?self.settings.read_timeout, "client read timeout: the server went silent");
                    return Ended::Lost;
                }
                _ = tick(&mut ping) => tungstenite::Message::Ping(Bytes::new()),
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        self.close_socket(&mut ws).await;
                        return Ended::Closed;
                    };
                    let Some(m) = self.apply(command) else { continue };
                    m
                }
                incoming = ws.next() => 'incoming: {
                    heard = Instant::now();
                    let message = match incoming {
                        Some(Ok(tungstenite::Message::Text(t))) => {
                            let m = Message::Text(Text::from_validated(Bytes::from(t)));
                            match self.track(&m) {
                                Tracked::Pass => m,
                                Tracked::Drop => continue 'connection,
                                Tracked::Gap(resubscribe) => break 'incoming to_wire(resubscribe),
                            }
                        }
                        Some(Ok(tungstenite::Message::Binary(b))) => Message::Binary(b),
                        // Pings are answered by tungstenite; a close frame is answered and
                        // then ends the stream.
                        Some(Ok(_)) => continue 'connection,
                        Some(Err(e)) => {
                            tracing::debug!(url = %self.settings.url, error = %e, "client connection error");
                            return Ended::Lost;
                        }
                        None => return Ended::Lost,
                    };
                    // While the application does not read, neither does the client (the
                    // queue is bounded), but a close must still get through.
                    let delivered = tokio::select! {
                        sent = self.inbound.send(message) => sent.is_ok(),
                        _ = closed(&mut self.closing) => false,
                    };
                    if !delivered {
                        self.close_socket(&mut ws).await;
                        return Ended::Closed;
                    }
                    // Waiting for the application is not the server's silence.
                    heard = Instant::now();
                    continue 'connection;
                }
            };
            // A server that does not read must neither keep `close` waiting nor hold the
            // connection open for ever.
            match self.bounded(heard, ws.send(outgoing)).await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::debug!(url = %self.settings.url, error = %e, "client write failed");
                    return Ended::Lost;
                }
                None => return self.ended(&mut ws).await,
            }
        }
    }

    /// When the connection counts as dead if nothing arrives after `heard`.
    fn deadline(&self, heard: Instant) -> Option<Instant> {
        self.settings.read_timeout.map(|timeout| heard + timeout)
    }

    /// Runs `io` until it completes; `None` when the client was closed or the read timeout
    /// (counted from `heard`) passed first.
    async fn bounded<T>(&mut self, heard: Instant, io: impl Future<Output = T>) -> Option<T> {
        let silent = self.deadline(heard);
        tokio::select! {
            // A write that can complete does, even when the client is closing: what was
            // taken from the queue is not dropped.
            biased;
            done = io => Some(done),
            _ = closed(&mut self.closing) => None,
            _ = sleep_until(silent) => None,
        }
    }

    /// After [`bounded`](Self::bounded) gave up: closed by the application, or timed out.
    async fn ended(&mut self, ws: &mut Socket) -> Ended {
        if *self.closing.borrow() {
            self.close_socket(ws).await;
            Ended::Closed
        } else {
            tracing::debug!(url = %self.settings.url, timeout = ?self.settings.read_timeout, "client write stalled past the read timeout");
            Ended::Lost
        }
    }

    /// Sends what the application queued before closing, then closes with 1000 and waits for
    /// the server's answer, all within [`CLOSE_TIMEOUT`].
    async fn close_socket(&mut self, ws: &mut Socket) {
        let closing = async {
            while let Ok(command) = self.commands.try_recv() {
                if let Some(m) = self.apply(command) {
                    ws.feed(m).await?;
                }
            }
            let normal = tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            };
            ws.close(Some(normal)).await?;
            while ws.next().await.is_some() {}
            Ok::<_, tungstenite::Error>(())
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }

    /// The subscribe message for `topic` after a reconnection: with `since` when its
    /// position is known and the message format is the default one.
    fn resubscribe_message(&self, topic: &str) -> Message {
        match lock(&self.positions).get(topic) {
            Some(p) if !self.settings.custom_subscribe => {
                Message::text(protocol::command_subscribe(topic, Some(*p)))
            }
            _ => (self.settings.subscribe)(topic),
        }
    }

    /// Follows the positions of the held topics in envelope messages (PROTOCOL.md, "Client
    /// algorithm"): what to do with `message`.
    ///
    /// The gap rule: a live publication whose epoch differs from the last position's, or
    /// whose offset is beyond the next one, means publications were lost on the way; the
    /// client subscribes again `since` its last position (the server replays the gap, or
    /// answers `unrecoverable`) and ignores that topic's publications until the answer. One
    /// at or before the last offset of the same epoch is a duplicate.
    fn track(&mut self, message: &Message) -> Tracked {
        let Some(m) = ServerMessage::parse(message) else {
            return Tracked::Pass;
        };
        if !topic_of(&m).is_some_and(|topic| self.topics.iter().any(|t| t == topic)) {
            return Tracked::Pass;
        }
        let url = &self.settings.url;
        let mut positions = lock(&self.positions);
        match m {
            ServerMessage::Pub {
                topic,
                position: Some(p),
                ..
            } => {
                if self.recovering.contains(&topic) {
                    tracing::debug!(%url, %topic, position = %p, "publication ignored until the gap is answered");
                    return Tracked::Drop;
                }
                let Some(last) = positions.get(&topic).copied() else {
                    positions.insert(topic, p);
                    return Tracked::Pass;
                };
                if last.epoch == p.epoch && p.offset <= last.offset {
                    tracing::debug!(%url, %topic, position = %p, "duplicate publication ignored");
                    return Tracked::Drop;
                }
                if last.epoch == p.epoch && last.offset.checked_add(1) == Some(p.offset) {
                    positions.insert(topic, p);
                    return Tracked::Pass;
                }
                if self.settings.custom_subscribe {
                    // A custom subscribe message cannot carry `since`: nothing to repair with.
                    tracing::debug!(%url, %topic, %last, position = %p, "gap in the stream (custom subscribe: not repaired)");
                    positions.insert(topic, p);
                    return Tracked::Pass;
                }
                tracing::debug!(%url, %topic, %last, position = %p, "gap in the stream: subscribing again since the last position");
                let resubscribe = Message::text(protocol::command_subscribe(&topic, Some(last)));
                self.recovering.insert(topic);
                Tracked::Gap(resubscribe)
            }
            ServerMessage::Subscribed {
                topic, position, ..
            } => {
                self.recovering.remove(&topic);
                if let Some(p) = position {
                    positions.entry(topic).or_insert(p);
                }
                Tracked::Pass
            }
            ServerMessage::Unrecoverable { topic, position } => {
                tracing::debug!(%url, %topic, "unrecoverable: the application must reload");
                self.recovering.remove(&topic);
                match position {
                    Some(p) => positions.insert(topic, p),
                    None => positions.remove(&topic),
                };
                Tracked::Pass
            }
            ServerMessage::Error {
                command,
                topic: Some(topic),
                ..
            } if command == "subscribe" => {
                // The repair was refused: the next publication finds the gap again.
                self.recovering.remove(&topic);
                Tracked::Pass
            }
            _ => Tracked::Pass,
        }
    }

    /// Updates the topic list for a command; the message to write, if any.
    fn apply(&mut self, command: Command) -> Option<tungstenite::Message> {
        match command {
            Command::Send(m) => Some(to_wire(m)),
            Command::Subscribe(topic) => {
                if self.topics.contains(&topic) {
                    return None;
                }
                let m = (self.settings.subscribe)(&topic);
                self.topics.push(topic);
                Some(to_wire(m))
            }
            Command::Unsubscribe(topic) => {
                let i = self.topics.iter().position(|t| *t == topic)?;
                self.topics.remove(i);
                lock(&self.positions).remove(&topic);
                self.recovering.remove(&topic);
                Some(to_wire((self.settings.unsubscribe)(&topic)))
            }
        }
    }
}

/// The topic an envelope message is about, if any.
fn topic_of(m: &ServerMessage) -> Option<&str> {
    match m {
        ServerMessage::Pub { topic, .. }
        | ServerMessage::Subscribed { topic, .. }
        | ServerMessage::Unrecoverable { topic, .. }
        | ServerMessage::Presence { topic, .. }
        | ServerMessage::Join { topic, .. }
        | ServerMessage::Leave { topic, .. } => Some(topic),
        ServerMessage::Error { topic, .. } => topic.as_deref(),
        _ => None,
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next ping time; never resolves without pings.
async fn tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when the application closed the client (or dropped it).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

fn to_wire(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(t) => {
            // The bytes of a `Text` are UTF-8 by construction; this checks them once more.
            match tungstenite::Utf8Bytes::try_from(t.into_bytes()) {
                Ok(text) => tungstenite::Message::Text(text),
                Err(_) => unreachable!("Text holds UTF-8"),
            }
        }
        Message::Binary(b) => tungstenite::Message::Binary(b),
    }
}
