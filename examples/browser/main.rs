//! The smallest page that follows a topic with wshub.js, the browser client the crate ships:
//! subscribe, show each publication, survive dropped connections and server restarts.
//! `index.html` (27 lines) is meant to be copied as the start of your own page.
//!
//! ```text
//! cargo run --example browser                  # then open http://127.0.0.1:8090/
//! cargo run --example browser -- 0.0.0.0:9000
//! ```
//!
//! The server publishes the time to the topic `ticks` every second. The topic keeps history
//! and the JSON envelope is on, so a page whose connection drops gets exactly what it missed
//! when it comes back; stop the server with Ctrl-C and start it again, and the page is told
//! its position cannot be served (a new history) and starts over.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wshub::http::{Response, StatusCode};
use wshub::protocol::ClientCommand;
use wshub::{Bytes, Config, Handler, HistoryPolicy, Hub, Message, Reject, Request, Session};

/// The page, compiled into the binary.
const INDEX_HTML: &str = include_str!("index.html");

struct Ticks;

#[wshub::async_trait]
impl Handler for Ticks {
    /// `/` is the page, `/wshub.js` its client; the socket is at `/ws`.
    fn http(&self, request: &Request) -> Option<Response<Bytes>> {
        wshub::browser::serve(request).or_else(|| {
            let page = Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .body(Bytes::from_static(INDEX_HTML.as_bytes()));
            let missing = Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Bytes::from_static(b"not found"));
            if request.path() == "/" { page } else { missing }.ok()
        })
    }

    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        match request.path() {
            "/ws" => Ok(()),
            _ => Err(Reject::new(StatusCode::NOT_FOUND)),
        }
    }

    /// The page's commands (subscribe since a position, ping, …) as wshub answers them.
    async fn on_message(&self, session: &Session, message: Message) {
        if let Some(command) = ClientCommand::parse(&message) {
            let _ = session.apply(&command).await;
        }
    }
}

/// The hub: history for `ticks` (the last 100 publications), publications in the envelope.
pub(crate) fn hub() -> Hub {
    let config = Config::default()
        .history(
            "ticks",
            HistoryPolicy::new(100, Some(Duration::from_secs(600))),
        )
        .envelope(true);
    Hub::builder(Ticks).config(config).build()
}

#[allow(
    dead_code,
    reason = "tests/browser_client.rs includes this file for `hub`"
)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("open http://{}/", listener.local_addr()?);
    let hub = hub();
    let ticks = hub.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            ticks.publish("ticks", format!("{} s since 1970", now.as_secs()));
        }
    });
    hub.serve(listener).await
}
