//! A terminal for the dashboard: prints its live feed and ops chat, sends each line you type
//! as a chat message, and rides through server restarts with `wshub::Client` (reconnection
//! with backoff and jitter, state changes shown as they happen).
//!
//! ```text
//! cargo run --release --example dashboard                                   # terminal 1
//! cargo run --release --features client --example tail -- ws://127.0.0.1:8080/ws   # terminal 2
//! ```
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use wshub::Client;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let mut client = Client::builder(url.as_str())
        .initial_backoff(Duration::from_millis(250))
        .max_backoff(Duration::from_secs(10))
        .spawn()?;
    let mut states = client.state_changes();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut typing = true;
    println!("tail {url}: type a line and press Enter to chat, Ctrl-C to quit");
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                println!("-- connection {}", *states.borrow_and_update());
            }
            line = stdin.next_line(), if typing => match line? {
                Some(text) if !text.trim().is_empty() => {
                    let chat = serde_json::json!({ "type": "chat", "text": text });
                    // `send` never waits: while the server is unreachable the queue fills up.
                    if let Err(e) = client.send(chat.to_string()).await {
                        println!("-- not sent: {e}");
                    }
                }
                Some(_) => {}
                None => typing = false,
            },
            message = client.recv() => {
                let Some(message) = message else { break };
                let Some(text) = message.as_text() else { continue };
                print_event(&serde_json::from_str(text)?);
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}

fn print_event(event: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match event["type"].as_str() {
        Some("snapshot") => println!(
            "== board of server {} at version {}: {} delivered, {} online",
            text(&event["boot"]),
            event["seq"],
            event["counts"]["delivered"],
            event["online"]
        ),
        Some("parcel") => println!("   {}", text(&event["feed"]["text"])),
        Some("chat") => println!("<{}> {}", text(&event["from"]), text(&event["text"])),
        _ => {}
    }
}
