//! Compile-time checks of the public API's thread-safety: every type an application passes
//! between tasks is `Send + Sync`, handles are cheap `Clone`s, and the futures to spawn are
//! `Send + 'static`. A regression here is a compile error, not a test failure.

mod support;

use std::future::Future;
use std::time::Duration;

use support::WAIT;

use wshub::{
    CloseReason, Config, Delivery, Hub, Message, Request, SendError, Session, SessionId, Stats,
};

const fn assert_send_sync<T: Send + Sync>() {}
const fn assert_clone<T: Clone>() {}
fn assert_spawnable<F: Future + Send + 'static>(_: &F) {}
fn assert_send<F: Future + Send>(_: &F) {}

const _: () = {
    assert_send_sync::<Hub>();
    assert_send_sync::<Session>();
    assert_send_sync::<SessionId>();
    assert_send_sync::<Message>();
    assert_send_sync::<Config>();
    assert_send_sync::<Delivery>();
    assert_send_sync::<SendError>();
    assert_send_sync::<Stats>();
    assert_send_sync::<CloseReason>();
    assert_send_sync::<Request>();
    assert_send_sync::<wshub::TopicError>();
    assert_send_sync::<wshub::CloseFrame>();
    assert_clone::<Hub>();
    assert_clone::<Session>();
};

/// Errors work with `?` into `Box<dyn Error + Send + Sync>`.
fn _errors_are_boxable(e: SendError) -> Box<dyn std::error::Error + Send + Sync + 'static> {
    Box::new(e)
}

#[tokio::test]
async fn serve_and_accept_futures_are_spawnable() {
    struct Nothing;
    impl wshub::Handler for Nothing {}
    let hub = Hub::new(Nothing);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serve = hub.clone().serve(listener);
    assert_spawnable(&serve);
    let (stream, _) = tokio::io::duplex(64);
    let accept = hub.accept(stream, "127.0.0.1:1".parse().unwrap());
    assert_spawnable(&accept);
    drop(accept);
    let shutdown = hub.shutdown(Duration::from_millis(1));
    assert_send(&shutdown);
    // Nothing was accepted, so shutdown returns at once and ends the serve loop.
    tokio::time::timeout(WAIT, shutdown).await.unwrap();
    tokio::time::timeout(WAIT, serve).await.unwrap().unwrap();
}
