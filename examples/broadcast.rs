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
//! The optional second argument is the compression mode: `off` (default), `shared` or
//! `dedicated` (permessage-deflate, the `deflate` feature).
use wshub::{Config, Handler, Hub, Message, Session};

struct Broadcast;

#[wshub::async_trait]
impl Handler for Broadcast {
    async fn on_message(&self, session: &Session, message: Message) {
        session.hub().broadcast(message);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let hub = Hub::builder(Broadcast)
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

/// The compression mode of the optional second argument: `off` (default), `shared` or
/// `dedicated` (needs the `deflate` feature).
fn compression(config: Config) -> Config {
    let mode = std::env::args().nth(2).unwrap_or_else(|| "off".into());
    #[cfg(feature = "deflate")]
    {
        let mode = match mode.as_str() {
            "off" => wshub::Compression::Off,
            "shared" => wshub::Compression::Shared,
            "dedicated" => wshub::Compression::Dedicated { window_bits: 12 },
            other => panic!("unknown compression mode {other:?}: off, shared or dedicated"),
        };
        config.compression(mode)
    }
    #[cfg(not(feature = "deflate"))]
    {
        assert!(mode == "off", "compression needs --features deflate");
        config
    }
}
