//! Echo server: every message goes back to its sender, same opcode and payload.
//!
//! The target for conformance suites (the Autobahn TestSuite runs against it in
//! `scripts/autobahn`), so it raises the maximum message size to 64 MiB: the suite sends
//! single 16 MiB frames. Everything else is the default configuration.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:9001
//! cargo run --release --features deflate --example echo -- 127.0.0.1:9001 shared
//! ```
//!
//! The optional second argument is the compression mode: `off` (default), `shared`,
//! `dedicated` or `topic` (permessage-deflate, the `deflate` feature). With `topic` the
//! messages go through a topic (`Hub::publish`), to exercise the per-topic compression streams.
use wshub::{Config, Handler, Hub, Message, Session};

struct Echo {
    /// Echo through a topic of the session's own (`Hub::publish`) instead of `Session::send`.
    via_topic: bool,
}

#[wshub::async_trait]
impl Handler for Echo {
    async fn open(&self, session: &Session) {
        if self.via_topic {
            let _ = session.subscribe(&format!("echo-{}", session.id()));
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        if self.via_topic {
            session
                .hub()
                .publish(&format!("echo-{}", session.id()), message);
        } else {
            let _ = session.send(message);
        }
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
    let config = compression(config);
    let echo = Echo {
        via_topic: via_topic(),
    };
    let hub = Hub::builder(echo).config(config).build();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo listening on ws://{}", listener.local_addr()?);
    hub.serve(listener).await
}

/// Whether the mode is `topic`: messages then go through a topic.
fn via_topic() -> bool {
    std::env::args().nth(2).as_deref() == Some("topic")
}

/// The compression mode of the optional second argument: `off` (default), `shared`,
/// `dedicated` or `topic` (needs the `deflate` feature).
fn compression(config: Config) -> Config {
    let mode = std::env::args().nth(2).unwrap_or_else(|| "off".into());
    #[cfg(feature = "deflate")]
    {
        let mode = match mode.as_str() {
            "off" => wshub::Compression::Off,
            "shared" => wshub::Compression::Shared,
            "dedicated" => wshub::Compression::Dedicated { window_bits: 12 },
            "topic" => wshub::Compression::Topic { window_bits: 12 },
            other => panic!("unknown compression mode {other:?}: off, shared, dedicated or topic"),
        };
        config.compression(mode)
    }
    #[cfg(not(feature = "deflate"))]
    {
        assert!(mode == "off", "compression needs --features deflate");
        config
    }
}
