//! The dashboard example in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver) with fantoccini, against the example's own server code on a loopback port.
//!
//! Asserts what a person would check: the page fills itself by server push without any
//! polling request; a message typed in one page appears in another; and after the server
//! restarts on the same port, the page shows it is reconnecting, comes back with backoff and
//! replaces its state with the new server's snapshot; and when only its connection drops
//! while the server keeps publishing, the page comes back and shows exactly the updates it
//! missed (history and the JSON envelope), without a reload or a new snapshot.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROME` / `CHROMEDRIVER` pointing at a
//! browser and its matching driver). Without them each test prints `SKIPPED` and passes,
//! unless `WSHUB_REQUIRE_CHROMIUM=1`, which makes a missing browser a failure (CI sets it).
use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

#[path = "../examples/dashboard/board.rs"]
mod board;
#[path = "support/chromium.rs"]
mod chromium;

use chromium::{Browser, ONE_BROWSER, chromium};

/// How long any one thing may take: page load, an update, a reconnection.
const WAIT: Duration = Duration::from_secs(15);
/// Fast enough for quick tests, slow enough to leave the two cores to the browser.
const TICK: Duration = Duration::from_millis(100);
/// Starts the dashboard on `addr` (port 0 for a fresh one).
async fn start_dashboard(addr: SocketAddr) -> (board::Server, SocketAddr) {
    start_dashboard_ticking(addr, TICK).await
}

/// Starts the dashboard with its simulation moving a parcel every `tick` (after one at once).
async fn start_dashboard_ticking(addr: SocketAddr, tick: Duration) -> (board::Server, SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (board::Server::start(listener, tick), addr)
}

/// Evaluates `expression` in the page until it is truthy, within `WAIT`; returns its value.
/// Polling the DOM like this is how a WebDriver test waits; nothing here sleeps to synchronise.
async fn wait_until(page: &Client, what: &str, expression: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    let script = format!("return ({expression});");
    loop {
        let value = page.execute(&script, vec![]).await.unwrap();
        let done = match &value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if done {
            return value;
        }
        if Instant::now() >= deadline {
            let status = page
                .execute(
                    "return document.getElementById('conn').innerText + ' ' + JSON.stringify(window.dashboard && window.dashboard.stats);",
                    vec![],
                )
                .await
                .unwrap();
            panic!("timed out waiting for {what}; the page shows {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text_of(page: &Client, id: &str) -> String {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Opens the dashboard in the current window and waits until it shows a snapshot.
async fn open_dashboard(page: &Client, addr: SocketAddr) {
    page.goto(&format!("http://{addr}/")).await.unwrap();
    wait_until(
        page,
        "the socket to open and the snapshot to arrive",
        "document.getElementById('conn-state').textContent === 'OPEN' && window.dashboard.stats.snapshots === 1",
    )
    .await;
}

#[tokio::test]
async fn the_page_is_updated_by_server_push_without_polling() {
    let Some((chrome, driver)) = chromium() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let (server, addr) = start_dashboard(([127, 0, 0, 1], 0).into()).await;
    let browser = Browser::launch(&chrome, &driver).await;
    let page = &browser.client;
    open_dashboard(page, addr).await;

    assert_eq!(
        page.execute("return window.dashboard.readyState", vec![])
            .await
            .unwrap(),
        1
    );
    // With the deflate feature the dashboard compresses, and Chromium negotiates it.
    let extensions = page
        .execute("return window.dashboard.extensions", vec![])
        .await
        .unwrap();
    let extensions = extensions.as_str().unwrap_or_default();
    assert_eq!(
        extensions.starts_with("permessage-deflate"),
        cfg!(feature = "deflate"),
        "negotiated extensions: {extensions:?}"
    );
    let before = page
        .execute(
            "return [window.dashboard.board.seq, window.dashboard.stats.updates]",
            vec![],
        )
        .await
        .unwrap();
    let (first_seq, first_updates) = (before[0].as_u64().unwrap(), before[1].as_u64().unwrap());
    wait_until(
        page,
        "ten more pushed updates",
        &format!("window.dashboard.stats.updates >= {first_updates} + 10"),
    )
    .await;
    let seq: u64 = text_of(page, "seq").await.parse().unwrap();
    assert!(
        seq >= first_seq + 10,
        "the version shown went from {first_seq} to {seq}"
    );
    // The warm-up filled the board: rows and feed lines are on screen.
    let rows = page.find_all(Locator::Css("#parcels tr")).await.unwrap();
    assert!(rows.len() >= 5, "{} parcel rows", rows.len());
    let feed = text_of(page, "feed").await;
    assert!(feed.contains("PX-"), "feed: {feed}");
    // No polling: after the document itself the page made one HTTP request, for its client
    // script (wshub.js, served by the crate), and no other (no fetch, no XHR, no image);
    // everything else came over the one WebSocket.
    let requests = page
        .execute(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        requests,
        json!(["/wshub.js"]),
        "requests besides the WebSocket"
    );
    assert_eq!(server.hub.session_count(), 1);

    browser.quit().await;
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_message_typed_in_one_page_appears_in_another() {
    let Some((chrome, driver)) = chromium() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let (server, addr) = start_dashboard(([127, 0, 0, 1], 0).into()).await;
    let browser = Browser::launch(&chrome, &driver).await;
    let page = &browser.client;
    let first = page.window().await.unwrap();
    open_dashboard(page, addr).await;
    let second = page.new_window(false).await.unwrap().handle;
    page.switch_to_window(second.clone()).await.unwrap();
    open_dashboard(page, addr).await;
    wait_until(
        page,
        "two pages online",
        "document.getElementById('online').textContent === '2'",
    )
    .await;

    // Type into the first page, as a person would, and press Send.
    page.switch_to_window(first).await.unwrap();
    let words = format!("dock 4 is free ({})", std::process::id());
    page.find(Locator::Id("chat-input"))
        .await
        .unwrap()
        .send_keys(&words)
        .await
        .unwrap();
    page.find(Locator::Id("chat-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = page.find(Locator::Id("chat-input")).await.unwrap();
    assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(""));

    page.switch_to_window(second).await.unwrap();
    let shown = wait_until(
        page,
        "the message in the second page",
        &format!(
            "[...document.querySelectorAll('#chat-log li')].map(li => li.textContent).find(t => t.includes({}))",
            json!(words)
        ),
    )
    .await;
    assert!(
        shown.as_str().unwrap().contains("guest "),
        "author shown: {shown}"
    );
    assert_eq!(server.hub.session_count(), 2);

    browser.quit().await;
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_page_reconnects_and_catches_up_after_a_server_restart() {
    let Some((chrome, driver)) = chromium() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let (server, addr) = start_dashboard(([127, 0, 0, 1], 0).into()).await;
    let browser = Browser::launch(&chrome, &driver).await;
    let page = &browser.client;
    open_dashboard(page, addr).await;
    let first_boot = text_of(page, "boot").await;
    page.find(Locator::Id("chat-input"))
        .await
        .unwrap()
        .send_keys("said before the restart")
        .await
        .unwrap();
    page.find(Locator::Id("chat-send"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_until(
        page,
        "the chat line",
        "document.getElementById('chat-log').textContent.includes('said before the restart')",
    )
    .await;

    // The server goes away (close 1001 to the page), and stays away for a while: the page
    // shows it and keeps trying, with growing delays.
    server.stop(Duration::from_secs(1)).await;
    wait_until(
        page,
        "the page to notice and retry at least twice",
        "document.getElementById('conn-state').textContent !== 'OPEN' && window.dashboard.stats.reconnects >= 2",
    )
    .await;
    let detail = text_of(page, "conn-detail").await;
    assert!(detail.contains("retry"), "connection detail: {detail:?}");

    // A new server on the same port: the page comes back by itself and replaces its state
    // with the new snapshot (new server id, the old chat gone), then updates flow again.
    let (server, _) = start_dashboard(addr).await;
    wait_until(
        page,
        "the page to reconnect and take the new snapshot",
        "document.getElementById('conn-state').textContent === 'OPEN' && window.dashboard.stats.snapshots === 2",
    )
    .await;
    // The new server's history is new: the page was told "unrecoverable", then got the snapshot.
    let unrecoverable = page
        .execute("return window.dashboard.stats.unrecoverable", vec![])
        .await
        .unwrap();
    assert_eq!(unrecoverable, 1);
    let second_boot = text_of(page, "boot").await;
    assert_ne!(first_boot, second_boot, "the page shows the new server");
    let chat = text_of(page, "chat-log").await;
    assert!(
        !chat.contains("said before the restart"),
        "stale chat: {chat}"
    );
    let updates = page
        .execute("return window.dashboard.stats.updates", vec![])
        .await
        .unwrap();
    wait_until(
        page,
        "updates after the restart",
        &format!("window.dashboard.stats.updates >= {} + 3", updates),
    )
    .await;
    assert_eq!(server.hub.session_count(), 1);

    browser.quit().await;
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_page_whose_connection_drops_shows_exactly_the_updates_it_missed() {
    let Some((chrome, driver)) = chromium() else {
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    // The simulation stays still (one step at start): the test makes every update itself.
    let (server, addr) =
        start_dashboard_ticking(([127, 0, 0, 1], 0).into(), Duration::from_secs(3600)).await;
    let browser = Browser::launch(&chrome, &driver).await;
    let page = &browser.client;
    open_dashboard(page, addr).await;
    // Survives only if the page is not reloaded.
    page.execute("window.sameDocument = true; return true", vec![])
        .await
        .unwrap();
    let updates_before = page
        .execute("return window.dashboard.stats.updates", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    // The page is the only session; ids of a single hub count up from 1.
    let id = (1..10_000)
        .map(wshub::SessionId::from_u64)
        .find(|id| server.hub.session(*id).is_some())
        .expect("the page's session");

    // The server drops the page's connection and, at once, moves five parcels. The session
    // is closing, so these updates can only reach the page through recovery.
    server
        .hub
        .close(
            id,
            wshub::CloseCode::GOING_AWAY,
            "connection cut by the test",
        )
        .unwrap();
    let missed: Vec<u64> = (0..5).map(|_| server.step()).collect();

    wait_until(
        page,
        "the page to reconnect and recover",
        "document.getElementById('conn-state').textContent === 'OPEN' && window.dashboard.stats.recoveries === 1",
    )
    .await;
    let feed_seqs = "[...document.querySelectorAll('#feed li')].map(li => Number(li.dataset.seq))";
    wait_until(
        page,
        "the missed updates in the feed",
        &format!(
            "{feed_seqs}.filter(s => {}.includes(s)).length >= 5",
            json!(missed)
        ),
    )
    .await;
    let shown: Vec<u64> = serde_json::from_value(
        page.execute(&format!("return {feed_seqs}"), vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    // Newest first: exactly the five missed updates on top, in order, each once.
    let mut newest_first = missed.clone();
    newest_first.reverse();
    assert_eq!(shown[..5], newest_first[..], "feed shows {shown:?}");
    let mut unique = shown.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), shown.len(), "a feed line twice: {shown:?}");
    let stats = page
        .execute(
            "return [window.sameDocument === true, window.dashboard.stats]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stats[0], true, "the page was reloaded");
    // The replay came over a connection that negotiated compression again (with the feature).
    let extensions = page
        .execute("return window.dashboard.extensions", vec![])
        .await
        .unwrap();
    assert_eq!(
        extensions
            .as_str()
            .unwrap_or_default()
            .starts_with("permessage-deflate"),
        cfg!(feature = "deflate"),
        "{extensions}"
    );
    let stats = &stats[1];
    assert_eq!(stats["snapshots"], 1, "no new snapshot: {stats}");
    assert_eq!(stats["unrecoverable"], 0, "{stats}");
    assert_eq!(stats["updates"], updates_before + 5, "{stats}");
    assert!(stats["replayed"].as_u64().unwrap() >= 5, "{stats}");
    assert_eq!(text_of(page, "seq").await, missed[4].to_string());

    // Live again: the next update appears once, on top.
    let live = server.step();
    wait_until(
        page,
        "the next live update",
        &format!("{feed_seqs}[0] === {live}"),
    )
    .await;
    let shown: Vec<u64> = serde_json::from_value(
        page.execute(&format!("return {feed_seqs}"), vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        shown[..6],
        [live, missed[4], missed[3], missed[2], missed[1], missed[0]]
    );
    assert_eq!(server.hub.session_count(), 1);

    browser.quit().await;
    server.stop(Duration::from_secs(1)).await;
}
