//! Topic names and the registry's topic map, against a model: `validate_topic` must follow
//! its documented rule, and any sequence of subscribe, unsubscribe, publish and session ends
//! must leave the hub's view (subscriber counts, topic list, each session's topics, publish
//! reports) equal to the model's, and every topic gone once every session has ended.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wshub::__fuzz::Topics;
use wshub::{TopicError, validate_topic};

const SESSIONS: usize = 4;
const KNOWN: [&str; 4] = ["orders", "orders/eu", "é", "x"];

#[derive(Arbitrary, Debug)]
enum Topic {
    Known(u8),
    Any(String),
}

impl Topic {
    fn name(&self) -> String {
        match self {
            Topic::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_string(),
            Topic::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe(u8, Topic),
    Unsubscribe(u8, Topic),
    Publish(Topic),
    End(u8),
}

/// The documented rule: 1 to 255 bytes, no control characters.
fn valid(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 255 && !topic.chars().any(char::is_control)
}

fuzz_target!(|ops: Vec<Op>| {
    let t = Topics::new(SESSIONS);
    let mut model: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut ended = [false; SESSIONS];
    for op in ops.into_iter().take(256) {
        match op {
            Op::Subscribe(i, topic) => {
                let (i, topic) = (usize::from(i) % SESSIONS, topic.name());
                let got = t.subscribe(i, &topic);
                assert_eq!(validate_topic(&topic).is_ok(), valid(&topic), "{topic:?}");
                if !valid(&topic) {
                    assert_eq!(got, Err(TopicError::InvalidName));
                    continue;
                }
                let added = !ended[i] && model.entry(topic.clone()).or_default().insert(i);
                assert_eq!(got, Ok(added), "subscribe {i} to {topic:?}");
            }
            Op::Unsubscribe(i, topic) => {
                let (i, topic) = (usize::from(i) % SESSIONS, topic.name());
                let removed = model.get_mut(&topic).is_some_and(|m| m.remove(&i));
                assert_eq!(
                    t.unsubscribe(i, &topic),
                    removed,
                    "unsubscribe {i} from {topic:?}"
                );
            }
            Op::Publish(topic) => {
                let topic = topic.name();
                let d = t.publish(&topic, b"m");
                let n = model.get(&topic).map_or(0, BTreeSet::len);
                assert_eq!(
                    d.queued + d.dropped + d.disconnected,
                    n,
                    "publish to {topic:?}"
                );
            }
            Op::End(i) => {
                let i = usize::from(i) % SESSIONS;
                assert_eq!(t.remove(i), !ended[i]);
                ended[i] = true;
                for members in model.values_mut() {
                    members.remove(&i);
                }
            }
        }
        model.retain(|_, m| !m.is_empty());
        let names: Vec<String> = model.keys().cloned().collect();
        assert_eq!(t.hub().topics(), names);
        for (topic, members) in &model {
            assert_eq!(t.hub().subscriber_count(topic), members.len(), "{topic:?}");
        }
        for i in 0..SESSIONS {
            let mut mine = t.session_topics(i);
            mine.sort();
            let expected: Vec<String> = model
                .iter()
                .filter(|(_, m)| m.contains(&i))
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(mine, expected, "session {i}");
        }
    }
    for i in 0..SESSIONS {
        t.remove(i);
    }
    assert!(t.hub().topics().is_empty());
    assert_eq!(t.hub().session_count(), 0);
    assert_eq!(t.hub().stats().topics, 0);
});
