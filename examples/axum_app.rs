//! An axum application that serves REST and WebSocket push on one port: orders are read and
//! changed over REST, every change is pushed to the sockets at `/ws`, and `/metrics` exposes
//! the hub's counters to Prometheus.
//!
//! ```text
//! cargo run --release --features axum --example axum_app -- 127.0.0.1:3000
//! ```
//!
//! Then, in two terminals (any WebSocket client will do for the first):
//!
//! ```text
//! websocat 'ws://127.0.0.1:3000/ws?token=demo'
//! curl -X POST -H 'content-type: application/json' -d '{"status":"shipped"}' \
//!      http://127.0.0.1:3000/api/orders/17/status
//! curl http://127.0.0.1:3000/metrics
//! ```
//!
//! The socket's handshake hooks run inside axum, before the upgrade: without `?token=demo` the
//! upgrade is refused with 401, and a page from another origin gets 403.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wshub::{Handler, Hub, Reject, Request, Session};

/// The orders, shared by the REST handlers and the socket's `Handler`.
type Orders = Arc<Mutex<BTreeMap<u32, Order>>>;

/// The REST handlers' state.
#[derive(Clone)]
struct App {
    hub: Hub,
    orders: Orders,
}

#[derive(Clone, Serialize)]
struct Order {
    id: u32,
    item: String,
    status: String,
}

#[derive(Deserialize)]
struct StatusChange {
    status: String,
}

/// The socket's side: who may connect, and what a new session gets.
struct Push {
    orders: Orders,
}

#[wshub::async_trait]
impl Handler for Push {
    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        // A real application would check a session cookie or a signed token here.
        match request.query_param("token") {
            Some("demo") => Ok(()),
            _ => Err(Reject::new(StatusCode::UNAUTHORIZED).with_body("add ?token=demo")),
        }
    }

    /// Subscribes to changes and sends the current orders, under the lock that changes take
    /// too: every change is either in this snapshot or pushed after it.
    async fn open(&self, session: &Session) {
        let orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        let _ = session.subscribe("orders");
        let all: Vec<&Order> = orders.values().collect();
        let snapshot = serde_json::json!({ "type": "orders", "orders": all });
        let _ = session.send(snapshot.to_string());
    }
}

/// The hub and the router: REST routes, the hub at `/ws`, and `/metrics`.
pub(crate) fn app() -> (Hub, Router) {
    let orders: Orders = Arc::new(Mutex::new(
        [(17, "espresso machine"), (18, "grinder"), (19, "scale")]
            .into_iter()
            .map(|(id, item)| {
                let status = "received".to_string();
                let item = item.to_string();
                (id, Order { id, item, status })
            })
            .collect(),
    ));
    let hub = Hub::new(Push {
        orders: orders.clone(),
    });
    let state = App {
        hub: hub.clone(),
        orders,
    };
    let router = Router::new()
        .route("/api/orders", get(list_orders))
        .route("/api/orders/{id}/status", post(change_status))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
        .route("/ws", wshub::axum::endpoint(hub.clone()));
    (hub, router)
}

async fn list_orders(State(app): State<App>) -> Json<Vec<Order>> {
    let orders = app.orders.lock().unwrap_or_else(|e| e.into_inner());
    Json(orders.values().cloned().collect())
}

/// Changes an order and pushes the change to every subscriber of `orders`.
async fn change_status(
    State(app): State<App>,
    Path(id): Path<u32>,
    Json(change): Json<StatusChange>,
) -> Result<Json<Order>, StatusCode> {
    let mut orders = app.orders.lock().unwrap_or_else(|e| e.into_inner());
    let order = orders.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
    order.status = change.status;
    let event = serde_json::json!({ "type": "order", "order": &order });
    // Published under the lock, so that it is ordered with the snapshots `open` sends.
    // Publishing never waits for a client.
    app.hub.publish("orders", event.to_string());
    Ok(Json(order.clone()))
}

/// The hub's counters in the Prometheus text format.
async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.hub.stats().to_prometheus(),
    )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let (hub, router) = app();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "REST on http://{0}/api/orders, push on ws://{0}/ws?token=demo, metrics on http://{0}/metrics",
        listener.local_addr()?
    );
    // Connect info gives the hub each client's address (per-IP limits, logs).
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Close the sockets with 1001 first: axum waits for open connections to end.
            hub.shutdown(Duration::from_secs(2)).await;
        })
        .await
}
