//! Fan-out with and without topic history: every session subscribes to topic `t` on open,
//! and every message a client sends is published to `t` (raw, no envelope), so the shared
//! load generator's `fanout` scenario measures the cost of history on the publish path.
//!
//! ```text
//! cargo run --release --example history_bench -- 127.0.0.1:9001            # plain topic
//! cargo run --release --example history_bench -- 127.0.0.1:9001 --history  # history on `t`
//! ```
use wshub::{Config, Handler, HistoryPolicy, Hub, Message, Session};

struct Fanout;

#[wshub::async_trait]
impl Handler for Fanout {
    async fn open(&self, session: &Session) {
        let _ = session.subscribe("t");
    }
    async fn on_message(&self, session: &Session, message: Message) {
        session.hub().publish("t", message);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let history = args.next().as_deref() == Some("--history");
    let mut config = Config::default();
    if history {
        config = config.history("t", HistoryPolicy::new(10_000, None));
    }
    let hub = Hub::builder(Fanout).config(config).build();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "fan-out hub (history: {history}) listening on ws://{}",
        listener.local_addr()?
    );
    hub.serve(listener).await
}
