//! wshub.js, the browser client the crate ships, in headless Chromium against a real hub.
//!
//! The "lab" server serves a page that imports `/wshub.js` (through `wshub::browser::serve`)
//! and passes every protocol command to `ClientCommand::parse` + `Session::apply`; the tests
//! drive clients in that page over WebDriver and read what they recorded. Where a connection
//! must break in a particular way, the page connects through [`Proxy`], a TCP relay on
//! loopback that can cut its connections with a reset (an abrupt drop) or freeze them (the
//! peer stops answering without closing: what a dead NAT mapping or a suspended laptop does).
//!
//! Needs Chromium like tests/browser.rs (`SKIPPED` without it unless
//! `WSHUB_REQUIRE_CHROMIUM=1`).
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fantoccini::Client;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wshub::http::{Response, StatusCode};
use wshub::protocol::ClientCommand;
use wshub::{
    Bytes, Config, Handler, HistoryPolicy, Hub, Message, Reject, Request, Session, SessionId,
};

#[path = "support/chromium.rs"]
mod chromium;
#[allow(dead_code, reason = "the example's main is not run here; its hub is")]
#[path = "../examples/browser/main.rs"]
mod example;

use chromium::{Browser, ONE_BROWSER, chromium};

/// How long any one thing may take in the page.
const WAIT: Duration = Duration::from_secs(20);

/// The page: wshub.js, and `lab(name, url, options)` which opens a client that records every
/// event, publication and answer into `labs[name]`, for the tests to read.
const LAB_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>wshub.js lab</title>
<script>
window.errors = [];
addEventListener("error", (e) => errors.push("error: " + e.message));
addEventListener("unhandledrejection", (e) => errors.push("unhandled rejection: " + e.reason));
</script>
<script type="module">
import * as wshub from "/wshub.js";
window.labs = {};
window.lab = (name, url, options) => {
  const l = { events: [], pubs: {}, unrecoverable: {}, subscribed: {}, joins: [], leaves: [], pongs: 0 };
  l.client = wshub.connect(url, options);
  for (const e of ["connecting", "open", "closed", "reconnecting", "dropped", "error"]) {
    l.client.on(e, (x) => l.events.push({ e, t: performance.now(), ...x }));
  }
  l.client.on("pong", () => l.pongs++);
  l.count = (e) => l.events.filter((x) => x.e === e).length;
  l.of = (e) => l.events.filter((x) => x.e === e);
  // keep: whether to keep every publication (false: count only, for the memory test).
  l.sub = (topic, keep = true) => {
    const p = (l.pubs[topic] = { count: 0, offsets: [], epochs: [], data: [], binary: [] });
    l.unrecoverable[topic] = [];
    l.subscribed[topic] = [];
    l.client.subscribe(topic, {
      onPublication: (data, info) => {
        p.count++;
        if (!keep) return;
        p.offsets.push(info.offset);
        p.epochs.push(info.epoch);
        p.binary.push(data instanceof Uint8Array);
        p.data.push(typeof data === "string" ? data : Array.from(data));
      },
      onUnrecoverable: (position) => l.unrecoverable[topic].push(position),
      onSubscribed: (answer) => l.subscribed[topic].push(answer),
      onJoin: (m) => l.joins.push({ topic, ...m }),
      onLeave: (m) => l.leaves.push({ topic, ...m }),
    });
    return true;
  };
  labs[name] = l;
  return true;
};
window.ready = true;
</script>
"#;

/// What the lab's handler saw, for the tests.
enum Seen {
    Open(SessionId),
    /// A text message that is not a protocol command.
    Text(String),
}

/// The lab's handler: the page, wshub.js, and the protocol applied as wshub answers it.
struct Lab {
    seen: mpsc::UnboundedSender<Seen>,
}

#[wshub::async_trait]
impl Handler for Lab {
    fn http(&self, request: &Request) -> Option<Response<Bytes>> {
        wshub::browser::serve(request).or_else(|| {
            (request.path() == "/").then(|| {
                Response::builder()
                    .header("content-type", "text/html; charset=utf-8")
                    .body(Bytes::from_static(LAB_PAGE.as_bytes()))
                    .unwrap()
            })
        })
    }

    /// The page comes from the lab's own port, its sockets sometimes through the proxy's.
    fn check_origin(&self, _origin: &str, _request: &Request) -> bool {
        true
    }

    async fn authorize(&self, request: &mut Request) -> Result<(), Reject> {
        if request.path() != "/ws" {
            return Err(Reject::new(StatusCode::NOT_FOUND));
        }
        let name = request
            .query_param("name")
            .unwrap_or("anonymous")
            .to_string();
        request.extensions_mut().insert(Name(name));
        Ok(())
    }

    fn presence_info(&self, session: &Session) -> Option<String> {
        session.data::<Name>().map(|n| n.0.clone())
    }

    async fn open(&self, session: &Session) {
        let _ = self.seen.send(Seen::Open(session.id()));
    }

    async fn on_message(&self, session: &Session, message: Message) {
        match ClientCommand::parse(&message) {
            Some(command) => {
                let _ = session.apply(&command).await;
            }
            None => {
                let text = message.as_text().unwrap_or("<binary>").to_string();
                let _ = self.seen.send(Seen::Text(text));
            }
        }
    }
}

#[derive(Clone)]
struct Name(String);

/// A lab server on a loopback port.
struct LabServer {
    hub: Hub,
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    serve: JoinHandle<std::io::Result<()>>,
}

impl LabServer {
    /// Serves a lab on `addr` (port 0 for a fresh one): history on `h:*`, presence on
    /// `room:*`, the envelope on.
    async fn start(addr: SocketAddr) -> LabServer {
        let config = Config::default()
            .history("h:*", HistoryPolicy::new(20_000, None))
            .presence("room:*")
            .envelope(true);
        let (tx, seen) = mpsc::unbounded_channel();
        let hub = Hub::builder(Lab { seen: tx }).config(config).build();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = tokio::spawn(hub.clone().serve(listener));
        LabServer {
            hub,
            addr,
            seen,
            serve,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The next session opened.
    async fn opened(&mut self) -> SessionId {
        loop {
            match within("a session to open", self.seen.recv()).await {
                Some(Seen::Open(id)) => return id,
                Some(Seen::Text(_)) => {}
                None => panic!("the lab is gone"),
            }
        }
    }

    /// The next text message that is not a protocol command.
    async fn text(&mut self) -> String {
        loop {
            match within("a text message", self.seen.recv()).await {
                Some(Seen::Text(text)) => return text,
                Some(Seen::Open(_)) => {}
                None => panic!("the lab is gone"),
            }
        }
    }

    /// Closes every session (1001) and releases the port.
    async fn stop(self) {
        self.hub.shutdown(Duration::from_secs(1)).await;
        let _ = self.serve.await;
    }
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP relay that can break its connections on demand

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Run,
    /// Stop relaying in both directions and hold both sockets open: nothing arrives, nothing
    /// is closed.
    Freeze,
    /// Reset both sides (TCP RST): an abrupt drop.
    Cut,
}

struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<watch::Sender<Link>>>>,
    /// Connections accepted so far.
    accepted: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Relays connections from a fresh loopback port to `target`.
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<watch::Sender<Link>>>> = Arc::default();
        let (count, accepted) = watch::channel(0);
        let task = tokio::spawn({
            let links = links.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        continue; // the browser sees the connection fail
                    };
                    for s in [&client, &server] {
                        s.set_nodelay(true).unwrap();
                        // Dropping a socket resets it: every end of a link is abrupt.
                        #[allow(deprecated)]
                        s.set_linger(Some(Duration::ZERO)).unwrap();
                    }
                    let (tx, mut rx) = watch::channel(Link::Run);
                    links.lock().unwrap().push(tx);
                    count.send_modify(|n| *n += 1);
                    tokio::spawn(async move {
                        let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
                        let stop = async { rx.wait_for(|l| *l != Link::Run).await.map(|l| *l) };
                        let frozen = tokio::select! {
                            _ = relay => false,
                            stop = stop => matches!(stop, Ok(Link::Freeze)),
                        };
                        if frozen {
                            // Hold both sockets open, relay nothing, until cut.
                            let _ = rx.wait_for(|l| *l == Link::Cut).await.map(|_| ());
                        }
                    });
                }
            }
        });
        Proxy {
            addr,
            links,
            accepted,
            task,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn send_all(&self, link: Link) {
        for tx in self.links.lock().unwrap().iter() {
            tx.send_if_modified(|l| {
                let change = *l != Link::Cut && *l != link;
                if change {
                    *l = link;
                }
                change
            });
        }
    }

    /// Resets every connection relayed so far.
    fn cut(&self) {
        self.send_all(Link::Cut);
    }

    /// Freezes every connection relayed so far; later ones are relayed normally.
    fn freeze(&self) {
        self.send_all(Link::Freeze);
    }

    /// Waits until `n` connections in all were accepted.
    async fn accepted(&mut self, n: usize) {
        within(
            "the proxy to accept a connection",
            self.accepted.wait_for(|a| *a >= n),
        )
        .await
        .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------------
// The page

/// Runs `script` (a function body) in the page.
async fn js(page: &Client, script: &str) -> Value {
    page.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Evaluates `expression` in the page until it is truthy, within [`WAIT`]; returns its value.
/// Polling the page like this is how a WebDriver test waits; nothing here sleeps.
async fn until(page: &Client, what: &str, expression: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    let script = format!("return ({expression});");
    loop {
        let value = js(page, &script).await;
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
            let state = js(
                page,
                "return JSON.stringify({errors: window.errors, labs: Object.fromEntries(Object.entries(window.labs || {}).map(([k, l]) => [k, {state: l.client.state, events: l.events.slice(-8), counts: Object.fromEntries(Object.entries(l.pubs).map(([t, p]) => [t, p.count]))}]))})",
            )
            .await;
            panic!("timed out waiting for {what}; the page shows {state}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A browser showing the lab page of `lab`, or `None` when Chromium is missing.
async fn open_lab(lab: &LabServer, extra_flags: &[&str]) -> Option<Browser> {
    let (chrome, driver) = chromium()?;
    let browser = Browser::launch_with(&chrome, &driver, extra_flags).await;
    browser
        .client
        .goto(&format!("http://{}/", lab.addr))
        .await
        .unwrap();
    until(&browser.client, "wshub.js to load", "window.ready === true").await;
    Some(browser)
}

/// Fails the test if the page reported an uncaught error or an unhandled rejection.
async fn assert_no_page_errors(page: &Client) {
    let errors = js(page, "return window.errors").await;
    assert_eq!(errors, json!([]), "errors in the page");
}

/// The offsets `labs[name]` received on `topic`.
async fn offsets(page: &Client, name: &str, topic: &str) -> Vec<u64> {
    serde_json::from_value(js(page, &format!("return labs.{name}.pubs[{topic:?}].offsets")).await)
        .unwrap()
}

fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// Publishes `"1"`, `"2"`, … to `topic` every `every` until stopped; returns how many.
struct Publisher {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl Publisher {
    fn start(hub: &Hub, topic: &'static str, every: Duration) -> Publisher {
        let (stop, mut stopped) = watch::channel(false);
        let hub = hub.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stopped.changed() => return n,
                }
                n += 1;
                hub.publish(topic, n.to_string());
            }
        });
        Publisher { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn recovery_is_exact_across_twenty_abrupt_drops_while_publishing() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let mut proxy = Proxy::start(lab.addr).await;
    let options = json!({ "minDelay": 50, "maxDelay": 200, "stableAfter": 100 });
    js(
        page,
        &format!(
            "return lab('a', {:?}, {options}) && labs.a.sub('h:drops')",
            proxy.ws()
        ),
    )
    .await;
    until(
        page,
        "the first subscribe answered",
        "labs.a.subscribed['h:drops'].length === 1",
    )
    .await;

    let publisher = Publisher::start(&lab.hub, "h:drops", Duration::from_millis(2));
    for drop in 1..=20usize {
        // Drop while publications are flowing: some are in flight, some not yet sent.
        let seen = js(page, "return labs.a.pubs['h:drops'].count").await;
        until(
            page,
            "publications on this connection",
            &format!("labs.a.pubs['h:drops'].count > {seen} + 5"),
        )
        .await;
        proxy.cut();
        proxy.accepted(drop + 1).await;
        until(
            page,
            "the client to reconnect",
            &format!("labs.a.count('open') === {}", drop + 1),
        )
        .await;
    }
    let published = publisher.stop().await;
    until(
        page,
        "every publication",
        &format!("labs.a.pubs['h:drops'].count >= {published}"),
    )
    .await;

    println!("{published} publications across 20 resets");
    // Every offset once, in order, and the data that went with it.
    assert_eq!(offsets(page, "a", "h:drops").await, one_to(published));
    let data: Vec<String> =
        serde_json::from_value(js(page, "return labs.a.pubs['h:drops'].data").await).unwrap();
    let expected: Vec<String> = (1..=published).map(|n| n.to_string()).collect();
    assert_eq!(data, expected);
    // Twenty drops, each noticed, each followed by a recovered subscribe.
    let closed = js(page, "return labs.a.count('closed')").await;
    assert_eq!(closed, 20);
    let recovered = js(
        page,
        "return labs.a.subscribed['h:drops'].filter(a => a.recovered).length",
    )
    .await;
    assert_eq!(recovered, 20);
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn after_a_server_restart_the_page_is_told_unrecoverable_and_live_publications_continue() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let options = json!({ "minDelay": 100, "maxDelay": 400 });
    js(
        page,
        &format!(
            "return lab('a', {:?}, {options}) && labs.a.sub('h:restart')",
            lab.ws()
        ),
    )
    .await;
    until(
        page,
        "the subscribe answered",
        "labs.a.subscribed['h:restart'].length === 1",
    )
    .await;
    let first_epoch = lab
        .hub
        .publish("h:restart", "1")
        .position
        .expect("a topic with history")
        .epoch;
    lab.hub.publish("h:restart", "2");
    lab.hub.publish("h:restart", "3");
    until(
        page,
        "three publications",
        "labs.a.pubs['h:restart'].count === 3",
    )
    .await;

    // A new server on the same port: its history is new, so the position cannot be served.
    let addr = lab.addr;
    lab.stop().await;
    let lab = LabServer::start(addr).await;
    let unrecoverable = until(
        page,
        "the unrecoverable callback",
        "labs.a.unrecoverable['h:restart'].length === 1 && labs.a.unrecoverable['h:restart'][0]",
    )
    .await;
    assert_ne!(unrecoverable["epoch"], first_epoch.to_string());
    assert_eq!(unrecoverable["offset"], 0);

    // Still subscribed: the new server's publications arrive, numbered from 1 in its epoch.
    for n in 4..=6 {
        lab.hub.publish("h:restart", n.to_string());
    }
    until(
        page,
        "live publications",
        "labs.a.pubs['h:restart'].count === 6",
    )
    .await;
    assert_eq!(offsets(page, "a", "h:restart").await, [1, 2, 3, 1, 2, 3]);
    let epochs = js(page, "return labs.a.pubs['h:restart'].epochs").await;
    assert_eq!(epochs[3], unrecoverable["epoch"]);
    assert_eq!(epochs[0], first_epoch.to_string());
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn a_gap_on_the_live_stream_is_refilled_and_an_unrequested_unrecoverable_is_taken() {
    let _one = ONE_BROWSER.lock().await;
    let mut lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    js(
        page,
        &format!("return lab('a', {:?}) && labs.a.sub('h:gap')", lab.ws()),
    )
    .await;
    let id = lab.opened().await;
    until(
        page,
        "the subscribe answered",
        "labs.a.subscribed['h:gap'].length === 1",
    )
    .await;
    for n in 1..=3 {
        lab.hub.publish("h:gap", n.to_string());
    }
    until(
        page,
        "three publications",
        "labs.a.pubs['h:gap'].count === 3",
    )
    .await;

    // The session misses 4, 5 and 6 (the server took it off the topic and back), then sees 7
    // live: a jump in offsets. The client asks again since 3 and gets 4..7, each once.
    lab.hub.unsubscribe(id, "h:gap").unwrap();
    for n in 4..=6 {
        lab.hub.publish("h:gap", n.to_string());
    }
    lab.hub.subscribe(id, "h:gap").unwrap();
    let epoch = lab.hub.publish("h:gap", "7").position.unwrap().epoch;
    until(page, "the gap refilled", "labs.a.pubs['h:gap'].count === 7").await;
    assert_eq!(offsets(page, "a", "h:gap").await, one_to(7));
    let answers = js(page, "return labs.a.subscribed['h:gap']").await;
    assert_eq!(answers[1]["recovered"], true, "{answers}");
    assert_eq!(answers[1]["replayed"], 4, "{answers}");
    assert_eq!(
        js(page, "return labs.a.count('open')").await,
        1,
        "no reconnection"
    );

    // The server says, unasked, that it lost part of the stream (PROTOCOL.md: e.g. Redis
    // restarted without its data): the client takes the position and stays subscribed.
    let lost = json!({"type": "unrecoverable", "topic": "h:gap",
                      "position": {"epoch": epoch.to_string(), "offset": 9}});
    lab.hub
        .send_to(id, Message::text(lost.to_string()))
        .unwrap();
    until(
        page,
        "the callback",
        "labs.a.unrecoverable['h:gap'].length === 1",
    )
    .await;
    // Offsets 8 and 9 are behind the new position; 10 is the next one.
    lab.hub.publish("h:gap", "8");
    lab.hub.publish("h:gap", "9");
    lab.hub.publish("h:gap", "10");
    until(
        page,
        "the next live publication",
        "labs.a.pubs['h:gap'].count === 8",
    )
    .await;
    assert_eq!(offsets(page, "a", "h:gap").await, [1, 2, 3, 4, 5, 6, 7, 10]);
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn sends_while_offline_are_queued_up_to_the_limit_and_flushed_in_order() {
    let _one = ONE_BROWSER.lock().await;
    let mut lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let options = json!({ "minDelay": 100, "maxDelay": 400, "queueLimit": 5 });
    js(page, &format!("return lab('a', {:?}, {options})", lab.ws())).await;
    until(page, "the socket open", "labs.a.client.state === 'open'").await;
    js(page, "return labs.a.client.send('online 1')").await;
    assert_eq!(lab.text().await, "online 1");

    let addr = lab.addr;
    lab.stop().await;
    until(
        page,
        "the client to notice",
        "labs.a.count('reconnecting') >= 1",
    )
    .await;
    // Eight sends while offline: five are kept, three are refused and reported.
    let kept = js(
        page,
        "return [0, 1, 2, 3, 4, 5, 6, 7].map(i => labs.a.client.send('queued ' + i))",
    )
    .await;
    assert_eq!(
        kept,
        json!([true, true, true, true, true, false, false, false])
    );
    let dropped = js(
        page,
        "return labs.a.of('dropped').map(d => [d.data, d.queued])",
    )
    .await;
    assert_eq!(
        dropped,
        json!([["queued 5", 5], ["queued 6", 5], ["queued 7", 5]])
    );

    let mut lab = LabServer::start(addr).await;
    until(page, "the client back", "labs.a.client.state === 'open'").await;
    js(page, "return labs.a.client.send('online 2')").await;
    // The five kept, in order, before anything sent after the reconnection; nothing else.
    for i in 0..5 {
        assert_eq!(lab.text().await, format!("queued {i}"));
    }
    assert_eq!(lab.text().await, "online 2");
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced_within_the_configured_time() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let mut proxy = Proxy::start(lab.addr).await;
    // Dead after 600 + 600 ms without a message.
    let options = json!({ "pingInterval": 600, "pongTimeout": 600, "minDelay": 20 });
    js(
        page,
        &format!(
            "return lab('a', {:?}, {options}) && labs.a.sub('h:dead')",
            proxy.ws()
        ),
    )
    .await;
    until(
        page,
        "the subscribe answered",
        "labs.a.subscribed['h:dead'].length === 1",
    )
    .await;
    let publisher = Publisher::start(&lab.hub, "h:dead", Duration::from_millis(50));
    until(page, "publications", "labs.a.pubs['h:dead'].count >= 5").await;

    // The path goes silent both ways; nothing is closed.
    let frozen = Instant::now();
    proxy.freeze();
    proxy.accepted(2).await;
    let replaced = frozen.elapsed();
    println!("a frozen connection was replaced {replaced:?} after the freeze (configured 1.2 s)");
    // Publications come every 50 ms, so the last one reached the page at most ~50 ms before
    // the freeze; the watchdog's timers add a little.
    assert!(
        replaced >= Duration::from_millis(1000) && replaced <= Duration::from_millis(2500),
        "replaced {replaced:?} after the freeze (configured: 1.2 s)"
    );
    let closed = until(page, "the closed event", "labs.a.of('closed')[0]").await;
    assert_eq!(closed["code"], 4000, "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .starts_with("no message for"),
        "{closed}"
    );

    // What the frozen connection swallowed is recovered.
    until(page, "the new connection", "labs.a.count('open') === 2").await;
    let published = publisher.stop().await;
    until(
        page,
        "every publication",
        &format!("labs.a.pubs['h:dead'].count >= {published}"),
    )
    .await;
    assert_eq!(offsets(page, "a", "h:dead").await, one_to(published));
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn reconnection_delays_stay_within_the_documented_bounds() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let (min, max) = (100.0, 800.0);
    let options = json!({ "minDelay": min, "maxDelay": max, "stableAfter": 300 });
    js(page, &format!("return lab('a', {:?}, {options})", lab.ws())).await;
    until(page, "the socket open", "labs.a.client.state === 'open'").await;

    let addr = lab.addr;
    lab.stop().await;
    until(page, "eight attempts", "labs.a.count('reconnecting') >= 8").await;
    let events = js(page, "return labs.a.events").await;
    let events = events.as_array().unwrap();
    let mut attempts = 0;
    for (i, e) in events.iter().enumerate() {
        if e["e"] != "reconnecting" {
            continue;
        }
        attempts += 1;
        assert_eq!(e["attempt"], attempts, "{e}");
        // Full jitter: a random delay in [0, min(maxDelay, minDelay * 2^(attempt - 1))].
        let bound = f64::min(max, min * 2f64.powi(attempts - 1));
        let delay = e["delay"].as_f64().unwrap();
        assert!(
            (0.0..=bound).contains(&delay),
            "attempt {attempts}: {delay} > {bound}"
        );
        // And the client waited that long before trying (timers are not early; they may be
        // late on a busy machine).
        if let Some(next) = events[i + 1..].iter().find(|n| n["e"] == "connecting") {
            let waited = next["t"].as_f64().unwrap() - e["t"].as_f64().unwrap();
            assert!(
                waited >= delay - 2.0 && waited <= delay + 1000.0,
                "attempt {attempts}: waited {waited} ms for a delay of {delay} ms"
            );
        }
    }

    // Coming back online, or the page becoming visible, retries at once.
    let mut lab = LabServer::start(addr).await;
    // Run when the client is waiting for its next attempt (checked and dispatched in one
    // script, so the timer cannot fire in between): 2 when the event started an attempt at once.
    let retried_at_once = |dispatch: &str| {
        format!(
            "(() => {{ const a = labs.a;
               if (a.client.state !== 'reconnecting') return 0;
               const before = a.count('connecting');
               {dispatch};
               return 1 + a.count('connecting') - before; }})()"
        )
    };
    let now_online = until(
        page,
        "the client waiting to retry",
        &retried_at_once("dispatchEvent(new Event('online'))"),
    )
    .await;
    assert_eq!(now_online, 2, "an immediate attempt on 'online'");
    until(page, "the socket open", "labs.a.client.state === 'open'").await;
    lab.opened().await;

    // A connection that stays up 300 ms resets the backoff: the next drop starts at attempt 1.
    until(page, "the backoff reset", "labs.a.client.attempt === 0").await;
    let before = js(page, "return labs.a.count('reconnecting')").await;
    lab.stop().await;
    let first = until(
        page,
        "the next reconnection",
        &format!("labs.a.of('reconnecting')[{before}]"),
    )
    .await;
    assert_eq!(first["attempt"], 1, "{first}");
    assert!(first["delay"].as_f64().unwrap() <= min, "{first}");
    let now_visible = until(
        page,
        "the client waiting to retry",
        &retried_at_once("document.dispatchEvent(new Event('visibilitychange'))"),
    )
    .await;
    assert_eq!(now_visible, 2, "an immediate attempt on becoming visible");
    assert_no_page_errors(page).await;

    browser.quit().await;
}

#[tokio::test]
async fn binary_publications_arrive_as_bytes() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    js(
        page,
        &format!(
            "return lab('a', {:?}) && labs.a.sub('h:bin') && labs.a.sub('plain')",
            lab.ws()
        ),
    )
    .await;
    until(
        page,
        "both subscribes answered",
        "labs.a.subscribed['h:bin'].length === 1 && labs.a.subscribed['plain'].length === 1",
    )
    .await;
    let every_byte: Vec<u8> = (0..=255).collect();
    lab.hub
        .publish("h:bin", Message::binary(every_byte.clone()));
    lab.hub.publish("h:bin", Message::binary(Vec::new()));
    lab.hub.publish("h:bin", "text too");
    lab.hub.publish("plain", Message::binary(vec![0xff, 0, 7]));
    until(
        page,
        "the publications",
        "labs.a.pubs['h:bin'].count === 3 && labs.a.pubs['plain'].count === 1",
    )
    .await;
    let bin = js(page, "return labs.a.pubs['h:bin']").await;
    assert_eq!(bin["binary"], json!([true, true, false]));
    assert_eq!(bin["data"], json!([every_byte, [], "text too"]));
    let plain = js(page, "return labs.a.pubs['plain']").await;
    assert_eq!(plain["binary"], json!([true]));
    assert_eq!(plain["data"], json!([[255, 0, 7]]));
    assert_eq!(
        plain["offsets"],
        json!([null]),
        "a topic without history has no position"
    );
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn two_topics_keep_independent_positions_across_a_drop() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let proxy = Proxy::start(lab.addr).await;
    js(
        page,
        &format!(
            "return lab('a', {:?}, {{minDelay: 50}}) && labs.a.sub('h:one') && labs.a.sub('h:two')",
            proxy.ws()
        ),
    )
    .await;
    until(
        page,
        "both subscribes answered",
        "labs.a.subscribed['h:one'].length === 1 && labs.a.subscribed['h:two'].length === 1",
    )
    .await;
    for n in 1..=5 {
        lab.hub.publish("h:one", n.to_string());
    }
    for n in 1..=2 {
        lab.hub.publish("h:two", n.to_string());
    }
    until(
        page,
        "the first publications",
        "labs.a.pubs['h:one'].count === 5 && labs.a.pubs['h:two'].count === 2",
    )
    .await;

    // Published while the path is frozen (lost in it), then the connection is reset: both
    // topics must be replayed, each from its own position.
    proxy.freeze();
    for n in 6..=8 {
        lab.hub.publish("h:one", n.to_string());
    }
    for n in 3..=6 {
        lab.hub.publish("h:two", n.to_string());
    }
    proxy.cut();
    until(
        page,
        "both topics recovered",
        "labs.a.pubs['h:one'].count === 8 && labs.a.pubs['h:two'].count === 6",
    )
    .await;
    assert_eq!(offsets(page, "a", "h:one").await, one_to(8));
    assert_eq!(offsets(page, "a", "h:two").await, one_to(6));
    let answers = js(
        page,
        "return [labs.a.subscribed['h:one'][1], labs.a.subscribed['h:two'][1]]",
    )
    .await;
    assert_eq!(answers[0]["replayed"], 3, "{answers}");
    assert_eq!(answers[1]["replayed"], 4, "{answers}");
    let positions = js(
        page,
        "return ['h:one', 'h:two'].map(t => labs.a.client.subscriptions.get(t).position.offset)",
    )
    .await;
    assert_eq!(positions, json!([8, 6]));
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

/// Publishes publications `from + 1 ..= from + n` of 1 kB to `topic` and waits until the page
/// expression `counter` equals `from + n`, which it returns. The wait runs one script text
/// with the target as an argument: every distinct script run over WebDriver stays in the
/// page's heap (some 20 kB each), which would blur a measurement.
async fn publish_and_count(
    page: &Client,
    hub: &Hub,
    (topic, counter): (&str, &str),
    from: u64,
    n: u64,
) -> u64 {
    let payload = "x".repeat(1000);
    for i in from + 1..=from + n {
        hub.publish(topic, format!("{i:06}{payload}"));
    }
    let script = format!("return {counter} === arguments[0]");
    within("the page to count a batch", async {
        while page.execute(&script, vec![json!(from + n)]).await.unwrap() != true {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    from + n
}

/// How much the page's heap grows (after `gc()`) over 10,000 publications to `topic`, sent
/// after a warm-up of 200 (the code compiled, the caches filled) in batches of 500 that the
/// page keeps up with (a session's outbound queue holds 4096 messages).
async fn heap_growth(page: &Client, hub: &Hub, target: (&str, &str)) -> f64 {
    let heap = "gc(); return performance.memory.usedJSHeapSize";
    let mut n = publish_and_count(page, hub, target, 0, 200).await;
    let before = js(page, heap).await.as_f64().unwrap();
    for _ in 0..20 {
        n = publish_and_count(page, hub, target, n, 500).await;
    }
    js(page, heap).await.as_f64().unwrap() - before
}

#[tokio::test]
async fn ten_thousand_publications_leave_no_growth_and_no_error() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    // `gc()` and unrounded heap figures in `performance.memory`.
    let flags = ["--js-flags=--expose-gc", "--enable-precise-memory-info"];
    let Some(browser) = open_lab(&lab, &flags).await else {
        return;
    };
    let page = &browser.client;

    // The baseline: what the same traffic costs the page through a bare WebSocket that only
    // counts (under WebDriver the browser keeps some bookkeeping per frame received).
    js(
        page,
        &format!(
            "window.bare = -1; const w = new WebSocket({:?}); window.bareSocket = w;
             w.onmessage = () => bare++;
             w.onopen = () => w.send(JSON.stringify({{type: 'subscribe', topic: 'h:bare'}}));
             return true",
            lab.ws()
        ),
    )
    .await;
    // The first message is the `subscribed` answer: the count starts at 0 after it.
    until(page, "the bare socket subscribed", "window.bare === 0").await;
    let bare = heap_growth(page, &lab.hub, ("h:bare", "window.bare")).await;
    js(page, "bareSocket.close(); return true").await;

    // The same through wshub.js, publications counted, not kept.
    js(
        page,
        &format!(
            "return lab('a', {:?}) && labs.a.sub('h:mem', false)",
            lab.ws()
        ),
    )
    .await;
    until(
        page,
        "the subscribe answered",
        "labs.a.subscribed['h:mem'].length === 1",
    )
    .await;
    let client = heap_growth(page, &lab.hub, ("h:mem", "labs.a.pubs['h:mem'].count")).await;
    println!(
        "heap growth over 10,000 publications of 1 kB, after gc: {bare} bytes through a bare \
         WebSocket, {client} through wshub.js"
    );
    // Kept, 10,000 publications would hold at least 10 MB; even an offset kept for each (a
    // number in an array) adds some 50 kB. The two figures differ by about 5 kB run to run.
    assert!(
        client - bare < 30_000.0,
        "the heap grew by {client} bytes through wshub.js, by {bare} through a bare socket"
    );
    let internals = js(
        page,
        "const c = labs.a.client;
         return [c.queue.length, c.presenceWaiters.size, c.subscriptions.size, labs.a.count('closed')]",
    )
    .await;
    assert_eq!(
        internals,
        json!([0, 0, 1, 0]),
        "queue, waiters, topics, drops"
    );
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn the_minimal_example_page_shows_publications_and_survives_a_drop_and_a_restart() {
    let _one = ONE_BROWSER.lock().await;
    let Some((chrome, driver)) = chromium() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = example::hub();
    let serve = tokio::spawn(hub.clone().serve(listener));
    let browser = Browser::launch(&chrome, &driver).await;
    let page = &browser.client;
    page.goto(&format!("http://{addr}/")).await.unwrap();
    let state = "document.getElementById('state').textContent";
    let items = "[...document.querySelectorAll('#log li')].map(li => li.textContent)";
    until(page, "the page connected", &format!("{state} === 'open'")).await;
    // The page subscribes right after opening; publish once the hub has it.
    within("the page's subscription", async {
        while hub.subscriber_count("ticks") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    hub.publish("ticks", "a");
    hub.publish("ticks", "b");
    until(page, "two items", &format!("{items}.length === 2")).await;

    // The server drops the page's connection and publishes at once: the page gets it once.
    let id = (1..100)
        .map(SessionId::from_u64)
        .find(|id| hub.session(*id).is_some())
        .expect("the page's session");
    hub.close(id, wshub::CloseCode::GOING_AWAY, "dropped by the test")
        .unwrap();
    hub.publish("ticks", "c");
    until(page, "the missed item", &format!("{items}.length === 3")).await;
    assert_eq!(
        js(page, &format!("return {items}")).await,
        json!(["#3: c", "#2: b", "#1: a"])
    );

    // A restart: new history, so the page starts over with the new server's publications.
    hub.shutdown(Duration::from_secs(1)).await;
    let _ = serve.await;
    let listener = TcpListener::bind(addr).await.unwrap();
    let hub = example::hub();
    let serve = tokio::spawn(hub.clone().serve(listener));
    within("the page back", async {
        while hub.subscriber_count("ticks") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    until(
        page,
        "the stale items cleared",
        &format!("{items}.length === 0"),
    )
    .await;
    hub.publish("ticks", "d");
    until(page, "the new item", &format!("{items}.length === 1")).await;
    assert_eq!(js(page, &format!("return {items}")).await, json!(["#1: d"]));

    browser.quit().await;
    hub.shutdown(Duration::from_secs(1)).await;
    let _ = serve.await;
}

#[tokio::test]
async fn a_quiet_connection_that_answers_pings_stays_open() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    // Dead after 200 + 200 ms of silence, unless the server answers the pings.
    let options = json!({ "pingInterval": 200, "pongTimeout": 200 });
    js(
        page,
        &format!(
            "return lab('a', {:?}, {options}) && labs.a.sub('h:quiet')",
            lab.ws()
        ),
    )
    .await;
    until(page, "five pongs", "labs.a.pongs >= 5").await;
    let counts = js(
        page,
        "return [labs.a.count('open'), labs.a.count('closed')]",
    )
    .await;
    assert_eq!(counts, json!([1, 0]), "the quiet connection was replaced");
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}

#[tokio::test]
async fn presence_lists_who_is_here_and_reports_joins_and_leaves() {
    let _one = ONE_BROWSER.lock().await;
    let lab = LabServer::start(([127, 0, 0, 1], 0).into()).await;
    let Some(browser) = open_lab(&lab, &[]).await else {
        return;
    };
    let page = &browser.client;
    let ws = lab.ws();
    js(
        page,
        &format!("return lab('alice', '{ws}?name=alice') && labs.alice.sub('room:1')"),
    )
    .await;
    until(
        page,
        "alice in",
        "labs.alice.subscribed['room:1'].length === 1",
    )
    .await;
    js(
        page,
        &format!("return lab('bob', '{ws}?name=bob') && labs.bob.sub('room:1')"),
    )
    .await;
    until(page, "bob in", "labs.bob.subscribed['room:1'].length === 1").await;
    let join = until(
        page,
        "alice told that bob joined",
        "labs.alice.joins.find(j => j.info === 'bob')",
    )
    .await;
    let bob = join["id"]
        .as_str()
        .expect("a session id as a string")
        .to_string();
    assert_eq!(join["topic"], "room:1");

    // Who is here, as the server sees it.
    js(
        page,
        "labs.alice.client.presence('room:1').then(p => window.present = p, e => window.present = e.code); return true",
    )
    .await;
    let present = until(page, "the presence answer", "window.present").await;
    let mut names: Vec<(String, String)> = present
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {present}"))
        .iter()
        .map(|m| {
            (
                m["info"].as_str().unwrap().into(),
                m["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{present}");
    assert_eq!(names[0].0, "alice");
    assert_eq!(names[1], ("bob".to_string(), bob.clone()));
    let in_hub: Vec<String> = lab
        .hub
        .presence("room:1")
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.as_u64().to_string())
        .collect();
    assert!(in_hub.contains(&bob), "{in_hub:?}");

    // Bob leaves: alice is told.
    js(page, "labs.bob.client.close(); return true").await;
    let leave = until(
        page,
        "alice told that bob left",
        &format!("labs.alice.leaves.find(l => l.id === '{bob}')"),
    )
    .await;
    assert_eq!(leave["topic"], "room:1");

    // A topic without presence: the request is refused with the server's code.
    js(
        page,
        "labs.alice.client.presence('h:none').then(p => window.refused = p, e => window.refused = e.code); return true",
    )
    .await;
    let refused = until(page, "the refusal", "window.refused").await;
    assert_eq!(refused, "presence_disabled");
    assert_no_page_errors(page).await;

    browser.quit().await;
    lab.stop().await;
}
