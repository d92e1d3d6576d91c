//! The packet codec and the hub's forwarding, with a recording backplane (no Redis; the
//! cross-node behaviour is tested against a real Redis in `tests/cluster.rs`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::*;
use crate::{CloseCode, CloseFrame, Delivery, Handler, Hub, SendError};

struct App;
impl Handler for App {}

/// Records what the hub hands it; answers with `answer`.
struct Recorder {
    node: u16,
    answer: Remote,
    sent: Mutex<Vec<(String, Packet)>>,
    interest: Mutex<Vec<String>>,
    attached: Mutex<Option<LocalNode>>,
}

impl Recorder {
    fn new(node: u16, answer: Remote) -> Arc<Self> {
        Arc::new(Recorder {
            node,
            answer,
            sent: Mutex::default(),
            interest: Mutex::default(),
            attached: Mutex::default(),
        })
    }
    fn take(&self) -> Vec<(String, Packet)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

impl Backplane for Recorder {
    fn node_id(&self) -> u16 {
        self.node
    }
    fn attach(&self, node: LocalNode) {
        *self.attached.lock().unwrap() = Some(node);
    }
    fn publish(&self, route: Route<'_>, envelope: Bytes) -> Remote {
        let e = Packet::decode(&envelope).expect("the hub encodes valid envelopes");
        assert_eq!(e.route(), route, "the route matches the envelope");
        self.sent.lock().unwrap().push((format!("{route:?}"), e));
        self.answer
    }
    fn interest_changed(&self, topic: &str) {
        self.interest.lock().unwrap().push(topic.to_owned());
    }
}

fn id(node: u16, seq: u64) -> SessionId {
    SessionId(u64::from(node) << 48 | seq)
}

#[test]
fn every_action_round_trips() {
    let actions = [
        Action::Broadcast {
            except: None,
            message: Message::from("héllo"),
        },
        Action::Broadcast {
            except: Some(id(3, 9)),
            message: Message::from(vec![0u8, 255, 7]),
        },
        Action::Publish {
            topic: "orders/eu".into(),
            except: None,
            message: Message::from("x".repeat(70_000)),
        },
        Action::Send {
            to: id(65_535, 1),
            message: Message::from(""),
        },
        Action::Close {
            to: id(2, 5),
            frame: CloseFrame::new(CloseCode::from(4001), "kicked"),
        },
    ];
    for action in actions {
        let e = Packet::new(42, action);
        let bytes = e.encode().unwrap();
        assert_eq!(bytes[0], 1, "version");
        assert_eq!(&bytes[3..5], &42u16.to_be_bytes(), "origin");
        assert_eq!(Packet::decode(&bytes).unwrap(), e);
    }
}

#[test]
fn the_header_is_as_documented() {
    let e = Packet::new(
        0x0102,
        Action::Publish {
            topic: "t".into(),
            except: Some(SessionId(0x0A0B)),
            message: Message::from("hi"),
        },
    );
    let b = e.encode().unwrap();
    assert_eq!(
        &b[..],
        &[
            1, 2, 1, 1, 2, 0, 0, 0, 0, 0, 0, 0x0A, 0x0B, 1, b't', b'h', b'i'
        ]
    );
}

#[test]
fn malformed_envelopes_are_refused() {
    let good = Packet::new(
        1,
        Action::Send {
            to: id(2, 1),
            message: Message::from("ok"),
        },
    )
    .encode()
    .unwrap()
    .to_vec();
    let with = |i: usize, v: u8| {
        let mut b = good.clone();
        b[i] = v;
        b
    };
    assert_eq!(Packet::decode(&[]), Err(PacketError::Malformed("empty")));
    assert_eq!(Packet::decode(&with(0, 2)), Err(PacketError::Version(2)));
    assert!(Packet::decode(&good[..10]).is_err(), "short header");
    assert!(Packet::decode(&with(1, 9)).is_err(), "kind");
    assert!(Packet::decode(&with(2, 9)).is_err(), "opcode");
    assert!(Packet::decode(&with(13, 5)).is_err(), "topic past the end");
    let mut no_target = good.clone();
    no_target[5..13].fill(0);
    assert!(Packet::decode(&no_target).is_err(), "send without a target");
    let mut bad_text = good.clone();
    bad_text.push(0xFF);
    assert!(Packet::decode(&bad_text).is_err(), "text not UTF-8");
    let close = Packet::new(
        1,
        Action::Close {
            to: id(2, 1),
            frame: CloseFrame::new(CloseCode::NORMAL, ""),
        },
    )
    .encode()
    .unwrap()
    .to_vec();
    let mut bad_code = close.clone();
    bad_code[14..16].copy_from_slice(&1005u16.to_be_bytes());
    assert!(Packet::decode(&bad_code).is_err(), "unsendable close code");
    assert!(
        Packet::decode(&close[..15]).is_err(),
        "close without a code"
    );
}

#[test]
fn a_hub_with_a_backplane_takes_its_node_id_and_forwards() {
    let bp = Recorder::new(7, Remote::Queued);
    let hub = Hub::builder(App).backplane(bp.clone()).build();
    let attached = bp
        .attached
        .lock()
        .unwrap()
        .clone()
        .expect("attached at build");
    assert_eq!(attached.node_id(), 7);
    assert!(attached.is_alive());

    let report = hub.broadcast("one");
    assert_eq!((report.queued, report.remote), (0, Remote::Queued));
    hub.broadcast_except(id(7, 3), "two");
    hub.publish("news", Message::binary(vec![1, 2]));
    assert_eq!(hub.send_to(id(9, 1), "three"), Ok(()));
    assert_eq!(hub.close(id(9, 1), CloseCode::NORMAL, "bye"), Ok(()));
    // A session id of this node is not forwarded: it is simply not found.
    assert_eq!(
        hub.send_to(id(7, 1), "four"),
        Err(SendError::NotFound(id(7, 1)))
    );
    let sent = bp.take();
    let routes: Vec<&str> = sent.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        routes,
        ["All", "All", "Topic(\"news\")", "Node(9)", "Node(9)"]
    );
    assert!(sent.iter().all(|(_, e)| e.origin == 7));
    assert_eq!(
        sent[1].1.action,
        Action::Broadcast {
            except: Some(id(7, 3)),
            message: Message::from("two")
        }
    );
    assert_eq!(
        sent[4].1.action,
        Action::Close {
            to: id(9, 1),
            frame: CloseFrame::new(CloseCode::NORMAL, "bye")
        }
    );
    drop(hub);
    assert!(
        !attached.is_alive(),
        "the backplane does not keep the hub alive"
    );
}

#[test]
fn a_backplane_failure_is_reported_not_hidden() {
    let bp = Recorder::new(3, Remote::Failed(RemoteError::Down));
    let hub = Hub::builder(App).backplane(bp).build();
    assert_eq!(
        hub.publish("news", "x").remote,
        Remote::Failed(RemoteError::Down)
    );
    assert_eq!(
        hub.send_to(id(4, 2), "x"),
        Err(SendError::Remote {
            id: id(4, 2),
            error: RemoteError::Down
        })
    );
    assert_eq!(
        hub.close(id(4, 2), CloseCode::NORMAL, ""),
        Err(SendError::Remote {
            id: id(4, 2),
            error: RemoteError::Down
        })
    );
}

#[test]
fn a_single_node_says_so() {
    let hub = Hub::new(App);
    assert_eq!(hub.broadcast("x").remote, Remote::NotConfigured);
    assert_eq!(
        hub.send_to(id(4, 2), "x"),
        Err(SendError::NotFound(id(4, 2)))
    );
}

#[test]
fn deliver_skips_own_envelopes_and_reports_bad_ones() {
    let bp = Recorder::new(5, Remote::Queued);
    let _hub = Hub::builder(App).backplane(bp.clone()).build();
    let local = bp.attached.lock().unwrap().clone().unwrap();
    let own = Packet::new(
        5,
        Action::Broadcast {
            except: None,
            message: "x".into(),
        },
    );
    assert_eq!(
        local.deliver(&own.encode().unwrap()),
        Ok(Delivery::default())
    );
    assert_eq!(local.deliver(b"\x07"), Err(PacketError::Version(7)));
    assert_eq!(local.session_count(), 0);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Packet>();
    check::<LocalNode>();
    check::<Remote>();
    check::<ClusterCount>();
    check::<BackplaneError>();
    check::<Arc<dyn Backplane>>();
}
