//! Echo server: every message goes back to its sender, same opcode and payload.
//!
//! The target for conformance suites (the Autobahn TestSuite runs against it in
//! `scripts/autobahn`), so it raises the maximum message size to 64 MiB: the suite sends
//! single 16 MiB frames. Everything else is the default configuration.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```
use wshub::{Config, Handler, Hub, Message, Session};

struct Echo;

#[wshub::async_trait]
impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) {
        let _ = session.send(message);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_queue_bytes(64 << 20);
    let hub = Hub::builder(Echo).config(config).build();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo listening on ws://{}", listener.local_addr()?);
    hub.serve(listener).await
}
