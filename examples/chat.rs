//! Chat room: joins and leaves are announced, every message goes to everyone, and each
//! announcement carries the number of people in the room.
//!
//! Connect with any WebSocket client, e.g. `websocat ws://127.0.0.1:9001/?name=ada`; the
//! optional `name` query parameter names you (default: your session id).
//!
//! ```text
//! cargo run --release --example chat -- 127.0.0.1:9001
//! ```
use wshub::{CloseReason, Handler, Hub, Message, Reject, Request, Session};

/// The display name, attached to the session at the handshake.
#[derive(Clone)]
struct Name(String);

struct Chat;

#[wshub::async_trait]
impl Handler for Chat {
    async fn authorize(&self, req: &mut Request) -> Result<(), Reject> {
        if let Some(name) = req.query_param("name").filter(|n| !n.is_empty()) {
            let name: String = name
                .chars()
                .filter(|c| c.is_alphanumeric())
                .take(32)
                .collect();
            req.extensions_mut().insert(Name(name));
        }
        Ok(())
    }

    async fn open(&self, s: &Session) {
        let hub = s.hub();
        hub.broadcast(format!(
            "* {} joined ({} online)",
            name(s),
            hub.session_count()
        ));
    }

    async fn on_message(&self, s: &Session, m: Message) {
        if let Some(text) = m.as_text() {
            s.hub().broadcast(format!("{}: {text}", name(s)));
        }
    }

    async fn on_close(&self, s: &Session, _why: CloseReason) {
        let hub = s.hub();
        hub.broadcast(format!(
            "* {} left ({} online)",
            name(s),
            hub.session_count()
        ));
    }
}

fn name(s: &Session) -> String {
    s.data::<Name>()
        .map_or_else(|| format!("guest{}", s.id()), |n| n.0.clone())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let hub = Hub::new(Chat);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("chat on ws://{}/?name=you", listener.local_addr()?);
    hub.serve(listener).await
}
