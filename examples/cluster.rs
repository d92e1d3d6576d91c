//! Broadcast hub across nodes: the protocol of `examples/broadcast` (every text or binary
//! message from any client goes, with the same opcode and payload, to every connected
//! client, the sender included), but every client of every node sharing the same Redis.
//!
//! ```text
//! cargo run --release --features redis --example cluster -- 127.0.0.1:9001 redis://127.0.0.1:6379/
//! ```
//!
//! Run it twice on two ports (`127.0.0.1:9001` and `127.0.0.1:9002`) with the same Redis URL:
//! clients of either port are in one chat. Ctrl-C closes the sessions and leaves the cluster.
use std::sync::Arc;
use std::time::Duration;

use wshub::{Handler, Hub, Message, RedisBackplane, Remote, Session};

struct Broadcast;

#[wshub::async_trait]
impl Handler for Broadcast {
    async fn on_message(&self, session: &Session, message: Message) {
        let report = session.hub().broadcast(message);
        if let Remote::Failed(why) = report.remote {
            // Local clients got it; the other nodes did not (the backplane logs the outage).
            eprintln!("not sent to other nodes: {why}");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let redis = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());

    let backplane = Arc::new(RedisBackplane::connect(&redis).await?);
    let hub = Hub::builder(Broadcast).backplane(backplane.clone()).build();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "cluster node {} listening on ws://{} (Redis {redis})",
        backplane.node_id(),
        listener.local_addr()?
    );
    let server = tokio::spawn(hub.clone().serve(listener));
    tokio::select! {
        r = server => r??,
        _ = tokio::signal::ctrl_c() => {
            hub.shutdown(Duration::from_secs(2)).await;
        }
    }
    backplane.close().await?;
    Ok(())
}
