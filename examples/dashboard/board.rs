//! The dashboard's server side: the board's state, the simulated parcel network that changes
//! it, and the [`Handler`] that serves the page and its WebSocket on one port.
//!
//! The board topic keeps history ([`Config::history`]: the last 500 publications of the last
//! 10 minutes) and publications travel in the JSON envelope of `PROTOCOL.md`
//! ([`Config::envelope`]): `{"type":"pub","topic":"board","epoch":"…","offset":n,"data":"…"}`,
//! where `data` is one of the board messages below as a JSON string. A page remembers the
//! position (epoch, offset) of the last publication it processed.
//!
//! | `type`          | direction     | when |
//! |-----------------|---------------|------|
//! | `subscribe`     | page → server | right after the socket opens: `{"type":"subscribe","topic":"board"}` on the first load, with `"since":{"epoch":…,"offset":…}` after a reconnection |
//! | `snapshot`      | server → page | the answer to a subscribe without `since`, or after `unrecoverable`: the whole board and its `position`, which replace the page's state |
//! | `subscribed`    | server → page | the answer to a subscribe with `since` that can be served: exactly `replayed` missed publications follow, then live ones |
//! | `unrecoverable` | server → page | `since` cannot be served (the server restarted, or the page was away too long): a `snapshot` follows |
//! | `parcel`        | published     | a parcel moved: the parcel, the new counters and a feed line |
//! | `chat`          | both ways     | the page sends `{"type":"chat","text":…}`; everyone gets it, published, with its author |
//! | `presence`      | published     | someone connected or left |
//!
//! Every `snapshot` and `parcel` carries `seq`, the board's version: the page ignores a
//! `parcel` whose `seq` is not newer than what it shows. Every publication to the board is
//! made under the board's lock, so the snapshot's `position` is exactly the last publication
//! it includes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wshub::http::{Response, StatusCode};
use wshub::protocol::ClientCommand;
use wshub::{
    Bytes, CloseReason, Config, Handler, HistoryPolicy, Hub, Message, Position, Recovered, Reject,
    Request, Session,
};

/// The page, compiled into the binary: no build step, no files to deploy.
const INDEX_HTML: &str = include_str!("index.html");
/// The topic every page is subscribed to.
const BOARD: &str = "board";
/// Board publications kept for pages that reconnect: at most this many, this old.
const HISTORY_KEPT: usize = 500;
const HISTORY_AGE: Duration = Duration::from_secs(600);
/// Feed lines and chat lines kept for the snapshot.
const FEED_KEPT: usize = 40;
const CHAT_KEPT: usize = 30;
/// Parcels in the network at most; the simulation delivers before it adds beyond this.
const MAX_ACTIVE: usize = 24;
const DEPOTS: [&str; 8] = [
    "Rotterdam",
    "Hamburg",
    "Lyon",
    "Milan",
    "Warsaw",
    "Madrid",
    "Vienna",
    "Dublin",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Received,
    Sorted,
    InTransit,
    OutForDelivery,
    Delivered,
    Exception,
}

impl Status {
    const ALL: [Status; 6] = [
        Status::Received,
        Status::Sorted,
        Status::InTransit,
        Status::OutForDelivery,
        Status::Delivered,
        Status::Exception,
    ];

    fn describe(self) -> &'static str {
        match self {
            Status::Received => "received at",
            Status::Sorted => "sorted in",
            Status::InTransit => "in transit to",
            Status::OutForDelivery => "out for delivery in",
            Status::Delivered => "delivered in",
            Status::Exception => "delayed (address check) on the way to",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct Parcel {
    id: String,
    from: &'static str,
    to: &'static str,
    status: Status,
    /// Where the parcel is now.
    at: &'static str,
    /// Milliseconds since the Unix epoch.
    updated: u64,
}

impl Parcel {
    /// The depot the parcel's status refers to: where it is, or where it is going.
    fn place(&self) -> &'static str {
        match self.status {
            Status::Received | Status::Sorted => self.from,
            _ => self.to,
        }
    }
}

/// Parcels per status since the server started (delivered ones included).
#[derive(Clone, Debug, Default, Serialize)]
struct Counts {
    received: u64,
    sorted: u64,
    in_transit: u64,
    out_for_delivery: u64,
    delivered: u64,
    exception: u64,
}

impl Counts {
    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Received => &mut self.received,
            Status::Sorted => &mut self.sorted,
            Status::InTransit => &mut self.in_transit,
            Status::OutForDelivery => &mut self.out_for_delivery,
            Status::Delivered => &mut self.delivered,
            Status::Exception => &mut self.exception,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct FeedLine {
    /// The board version that wrote it: identifies the line.
    seq: u64,
    t: u64,
    text: String,
}

/// A [`Position`] as the protocol writes it: the 64-bit epoch as a string.
#[derive(Clone, Debug, Serialize)]
struct Pos {
    epoch: String,
    offset: u64,
}

impl From<Position> for Pos {
    fn from(p: Position) -> Pos {
        Pos {
            epoch: p.epoch.to_string(),
            offset: p.offset,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct ChatLine {
    t: u64,
    from: String,
    text: String,
}

/// Server → page.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Snapshot {
        boot: &'a str,
        seq: u64,
        /// Parcels currently in the network, by status count ("now") …
        now: &'a BTreeMap<&'static str, u64>,
        /// … and per status since the start.
        counts: &'a Counts,
        parcels: Vec<&'a Parcel>,
        feed: &'a VecDeque<FeedLine>,
        chat: &'a VecDeque<ChatLine>,
        online: usize,
        /// The board topic's position after the last publication this snapshot includes.
        position: Option<Pos>,
    },
    Parcel {
        seq: u64,
        parcel: &'a Parcel,
        now: &'a BTreeMap<&'static str, u64>,
        counts: &'a Counts,
        feed: &'a FeedLine,
    },
    Chat(&'a ChatLine),
    Presence {
        online: usize,
    },
}

impl Out<'_> {
    fn to_message(&self) -> Message {
        Message::text(serde_json::to_string(self).expect("board messages serialize"))
    }
}

/// Page → server.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum In {
    Chat { text: String },
}

/// The board's current state: what a page that connects now is sent.
struct State {
    seq: u64,
    parcels: BTreeMap<u32, Parcel>,
    counts: Counts,
    feed: VecDeque<FeedLine>,
    chat: VecDeque<ChatLine>,
    next_parcel: u32,
    rng: u64,
    /// The position of the last publication to the board.
    position: Option<Position>,
}

/// The board: its state and what changes it. Shared by the [`Dashboard`] handler and the
/// simulation task.
pub(crate) struct Board {
    /// Changes every start, so a page can tell it reconnected to a new server.
    boot: String,
    state: Mutex<State>,
}

impl Board {
    pub(crate) fn new() -> Board {
        let seed = now_ms() ^ u64::from(std::process::id()).rotate_left(32);
        Board {
            boot: format!("{:08x}", seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32),
            state: Mutex::new(State {
                seq: 0,
                parcels: BTreeMap::new(),
                counts: Counts::default(),
                feed: VecDeque::new(),
                chat: VecDeque::new(),
                next_parcel: 10_400,
                rng: seed | 1,
                position: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One step of the simulated network: a parcel arrives, moves on, or is delivered. The
    /// update is published while the state is locked, so that a page receiving a snapshot
    /// (also taken under the lock) sees every later update after it, and none twice. Returns
    /// the new board version.
    pub(crate) fn step(&self, hub: &Hub) -> u64 {
        let mut st = self.lock();
        let st = &mut *st;
        st.seq += 1;
        let pick = st.next_random();
        let active: Vec<u32> = st
            .parcels
            .iter()
            .filter(|(_, p)| p.status != Status::Delivered)
            .map(|(id, _)| *id)
            .collect();
        // A new parcel one time in three, or whenever the network is nearly empty.
        let parcel = if active.len() < 4 || (pick % 3 == 0 && active.len() < MAX_ACTIVE) {
            let n = st.next_parcel;
            st.next_parcel += 1;
            let from = DEPOTS[(pick >> 8) as usize % DEPOTS.len()];
            let mut to = DEPOTS[(pick >> 16) as usize % DEPOTS.len()];
            if to == from {
                to = DEPOTS[(DEPOTS.iter().position(|d| *d == from).unwrap_or(0) + 3) % 8];
            }
            let parcel = Parcel {
                id: format!("PX-{n}"),
                from,
                to,
                status: Status::Received,
                at: from,
                updated: now_ms(),
            };
            st.parcels.insert(n, parcel);
            n
        } else {
            let n = active[(pick >> 8) as usize % active.len()];
            let exception = (pick >> 24) % 12 == 0;
            let p = st.parcels.get_mut(&n).expect("active parcel");
            p.status = match p.status {
                _ if exception && p.status == Status::InTransit => Status::Exception,
                Status::Received => Status::Sorted,
                Status::Sorted | Status::Exception => Status::InTransit,
                Status::InTransit => Status::OutForDelivery,
                Status::OutForDelivery | Status::Delivered => Status::Delivered,
            };
            p.at = match p.status {
                Status::Received | Status::Sorted => p.from,
                Status::InTransit | Status::Exception => "en route",
                Status::OutForDelivery | Status::Delivered => p.to,
            };
            p.updated = now_ms();
            n
        };
        // Delivered parcels leave the table once it is full.
        if st.parcels.len() > MAX_ACTIVE {
            if let Some(old) = st
                .parcels
                .iter()
                .find(|(id, p)| p.status == Status::Delivered && **id != parcel)
                .map(|(id, _)| *id)
            {
                st.parcels.remove(&old);
            }
        }
        let p = &st.parcels[&parcel];
        *st.counts.slot(p.status) += 1;
        let line = FeedLine {
            seq: st.seq,
            t: p.updated,
            text: format!("{} {} {}", p.id, p.status.describe(), p.place()),
        };
        st.feed.push_front(line);
        st.feed.truncate(FEED_KEPT);
        let now = now_by_status(&st.parcels);
        let update = Out::Parcel {
            seq: st.seq,
            parcel: p,
            now: &now,
            counts: &st.counts,
            feed: &st.feed[0],
        }
        .to_message();
        publish(st, hub, update);
        st.seq
    }

    /// Subscribes `session` to the board (if it is not yet) and sends it the snapshot,
    /// atomically with respect to every publication to the board.
    fn join(&self, session: &Session) {
        let st = self.lock();
        let _ = session.subscribe(BOARD);
        let now = now_by_status(&st.parcels);
        let mut parcels: Vec<&Parcel> = st.parcels.values().collect();
        parcels.sort_by_key(|p| std::cmp::Reverse(p.updated));
        let snapshot = Out::Snapshot {
            boot: &self.boot,
            seq: st.seq,
            now: &now,
            counts: &st.counts,
            parcels,
            feed: &st.feed,
            chat: &st.chat,
            online: session.hub().session_count(),
            position: st.position.map(Pos::from),
        };
        let _ = session.send(snapshot.to_message());
    }

    /// Tells every page how many are online.
    fn presence(&self, hub: &Hub) {
        let mut st = self.lock();
        let online = hub.session_count();
        publish(&mut st, hub, Out::Presence { online }.to_message());
    }

    fn chat(&self, session: &Session, text: &str) {
        let text: String = text.chars().filter(|c| !c.is_control()).take(280).collect();
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let mut st = self.lock();
        let line = ChatLine {
            t: now_ms(),
            from: format!("guest {}", session.id()),
            text: text.to_string(),
        };
        publish(&mut st, session.hub(), Out::Chat(&line).to_message());
        st.chat.push_back(line);
        if st.chat.len() > CHAT_KEPT {
            st.chat.pop_front();
        }
    }
}

impl State {
    /// xorshift64*: plenty for a simulation, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn now_by_status(parcels: &BTreeMap<u32, Parcel>) -> BTreeMap<&'static str, u64> {
    let mut now: BTreeMap<&'static str, u64> = BTreeMap::new();
    for status in Status::ALL {
        now.insert(status_key(status), 0);
    }
    for p in parcels.values() {
        *now.entry(status_key(p.status)).or_default() += 1;
    }
    now
}

fn status_key(status: Status) -> &'static str {
    match status {
        Status::Received => "received",
        Status::Sorted => "sorted",
        Status::InTransit => "in_transit",
        Status::OutForDelivery => "out_for_delivery",
        Status::Delivered => "delivered",
        Status::Exception => "exception",
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Publishes to the board and remembers the position; the caller holds the board's lock.
fn publish(st: &mut State, hub: &Hub, message: Message) {
    if let Some(p) = hub.publish(BOARD, message).position {
        st.position = Some(p);
    }
}

/// The `Handler`: serves the page and runs each page's session.
struct Dashboard {
    board: Arc<Board>,
}

#[wshub::async_trait]
impl Handler for Dashboard {
    /// `GET /` is the page, `GET /wshub.js` its client (served by the crate); the socket
    /// lives at `/ws`; anything else is 404.
    fn http(&self, request: &Request) -> Option<Response<Bytes>> {
        if let Some(script) = wshub::browser::serve(request) {
            return Some(script);
        }
        let response = match request.path() {
            "/" | "/index.html" => Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-cache")
                .body(Bytes::from_static(INDEX_HTML.as_bytes())),
            _ => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Bytes::from_static(b"not found")),
        };
        response.ok()
    }

    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        if request.path() != "/ws" {
            return Err(Reject::new(StatusCode::NOT_FOUND));
        }
        Ok(())
    }

    async fn open(&self, session: &Session) {
        // The page subscribes next, with or without the position it last saw.
        self.board.presence(session.hub());
    }

    async fn on_message(&self, session: &Session, message: Message) {
        match ClientCommand::parse(&message) {
            // Pages follow the board and nothing else.
            Some(ClientCommand::Subscribe { topic, since }) if topic == BOARD => {
                let outcome = match since {
                    None => Ok(Recovered::Live { position: None }),
                    // Answered `subscribed` (the missed publications follow) or
                    // `unrecoverable`.
                    Some(since) => session.subscribe_from(BOARD, since).await,
                };
                match outcome {
                    Ok(Recovered::Replayed { messages, .. }) => {
                        tracing::debug!(id = %session.id(), messages, "page recovered");
                    }
                    Ok(_) => self.board.join(session),
                    Err(e) => {
                        tracing::debug!(id = %session.id(), error = %e, "recovery failed");
                        self.board.join(session);
                    }
                }
                return;
            }
            // Anything else of the protocol (unsubscribe, ping, presence) as wshub answers it.
            Some(command) => {
                let _ = session.apply(&command).await;
                return;
            }
            None => {}
        }
        let Some(text) = message.as_text() else {
            return;
        };
        match serde_json::from_str::<In>(text) {
            Ok(In::Chat { text }) => self.board.chat(session, &text),
            Err(e) => tracing::debug!(id = %session.id(), error = %e, "ignored a message"),
        }
    }

    async fn on_close(&self, session: &Session, _reason: CloseReason) {
        self.board.presence(session.hub());
    }
}

/// A running dashboard: the hub, its accept loop and the simulation.
pub(crate) struct Server {
    pub(crate) hub: Hub,
    board: Arc<Board>,
    serve: JoinHandle<std::io::Result<()>>,
    simulation: JoinHandle<()>,
}

impl Server {
    /// Serves a new dashboard on `listener`, moving a parcel every `tick`.
    pub(crate) fn start(listener: TcpListener, tick: Duration) -> Server {
        let board = Arc::new(Board::new());
        // Chat comes from browsers on the open internet: small messages, a human rate.
        // The board keeps history, and publications carry their position, so that a page that
        // lost its connection gets exactly what it missed when it comes back.
        let config = Config::default()
            .max_message_size(4 * 1024)
            .max_messages_per_second(Some(20))
            .history(BOARD, HistoryPolicy::new(HISTORY_KEPT, Some(HISTORY_AGE)))
            .envelope(true);
        // Board updates are JSON that deflate shrinks well, and much better with the previous
        // updates as context: the board topic keeps one compression stream, each update is
        // compressed once for every page following it (browsers all offer permessage-deflate).
        #[cfg(feature = "deflate")]
        let config = config.compression(wshub::Compression::Topic { window_bits: 12 });
        let handler = Dashboard {
            board: board.clone(),
        };
        let hub = Hub::builder(handler).config(config).build();
        // Warm up, so that the first page already shows a busy network.
        for _ in 0..30 {
            board.step(&hub);
        }
        let serve = tokio::spawn(hub.clone().serve(listener));
        let simulation = tokio::spawn({
            let hub = hub.clone();
            let board = board.clone();
            async move {
                let mut ticks = tokio::time::interval(tick);
                loop {
                    ticks.tick().await;
                    board.step(&hub);
                }
            }
        });
        Server {
            hub,
            board,
            serve,
            simulation,
        }
    }

    /// Moves one parcel now, besides the simulation's ticks; the new board version.
    #[allow(dead_code)] // for tests/browser.rs
    pub(crate) fn step(&self) -> u64 {
        self.board.step(&self.hub)
    }

    /// Stops the simulation, closes every session with 1001 (waiting up to `deadline` for the
    /// pages to answer) and releases the port.
    pub(crate) async fn stop(self, deadline: Duration) {
        self.simulation.abort();
        self.hub.shutdown(deadline).await;
        let _ = self.serve.await;
    }
}
