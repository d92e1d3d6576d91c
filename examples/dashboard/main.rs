//! Live operations board: parcels moving through a logistics network, pushed to every open
//! page over one WebSocket, plus an ops chat that everyone sees. Start here.
//!
//! ```text
//! cargo run --release --example dashboard            # then open http://127.0.0.1:8080/
//! cargo run --release --example dashboard -- 0.0.0.0:9000
//! ```
//!
//! One port serves both the page (through [`Handler::http`](wshub::Handler::http), from the
//! hub's own listener) and its socket at `/ws`. A tokio task moves a parcel four times a
//! second and publishes the change; the page never polls. The board topic keeps history and
//! publications carry their position (wshub's JSON envelope, `PROTOCOL.md`): a page whose
//! connection drops reconnects with exponential backoff and jitter, subscribes since the last
//! position it showed, and receives exactly the updates it missed, without reloading. Stop the
//! server with Ctrl-C and start it again: the new server's history is new, so open pages are
//! told "unrecoverable" and replace their state with the snapshot it sends.
//!
//! Files: `board.rs` (state, simulation, `Handler`), `index.html` (the page and the script that
//! draws the board, compiled into the binary with `include_str!`). The page's connection,
//! reconnection and recovery are `wshub.js`, the browser client the crate ships and serves
//! ([`wshub::browser`]). Set `RUST_LOG=wshub=debug` to
//! see sessions open and close.
mod board;

use std::time::Duration;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("dashboard on http://{}/", listener.local_addr()?);
    let server = board::Server::start(listener, Duration::from_millis(250));
    tokio::signal::ctrl_c().await?;
    println!("shutting down");
    server.stop(Duration::from_secs(2)).await;
    Ok(())
}
