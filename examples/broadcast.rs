//! Broadcast hub: every text or binary message from any client goes, with the same opcode
//! and payload, to every connected client, the sender included.
//!
//! This is the workload of the peer benchmark (`../shared/bench`, see `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release --example broadcast -- 127.0.0.1:9001
//! cargo run --release --features deflate --example broadcast -- 127.0.0.1:9001 shared
//! ```
//!
//! The optional second argument is the compression mode: `off` (default), `shared`,
//! `dedicated` or `topic` (permessage-deflate, the `deflate` feature). With `topic` the
//! messages go through a topic (`Hub::publish`), to exercise the per-topic compression streams.
use wshub::{Config, Handler, Hub, Message, Session};

struct Broadcast {
    /// Every session subscribes to one topic and messages are published to it (the same
    /// recipients as a broadcast), for the per-topic compression streams.
    via_topic: bool,
}

#[wshub::async_trait]
impl Handler for Broadcast {
    async fn open(&self, session: &Session) {
        if self.via_topic {
            let _ = session.subscribe("all");
        }
    }

    async fn on_message(&self, session: &Session, message: Message) {
        if self.via_topic {
            session.hub().publish("all", message);
        } else {
            session.hub().broadcast(message);
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let handler = Broadcast {
        via_topic: via_topic(),
    };
    let hub = Hub::builder(handler)
        .config(compression(Config::default()))
        .build();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("broadcast hub listening on ws://{}", listener.local_addr()?);
    let server = tokio::spawn(hub.clone().serve(listener));
    let result = tokio::select! {
        r = server => r.map_err(std::io::Error::other)?,
        _ = tokio::signal::ctrl_c() => {
            hub.shutdown(std::time::Duration::from_secs(2)).await;
            Ok(())
        }
    };
    result
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
