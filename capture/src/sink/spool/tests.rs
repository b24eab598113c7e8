use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use super::*;
use crate::event::header;
use crate::route::DataType;
use crate::spool::{DEFAULT_SEGMENT_BYTES, SpoolSettings};

/// What the scripted inner sink does with a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Acknowledges everything.
    Take,
    /// Acknowledges nothing (as librdkafka timing messages out).
    Refuse,
    /// Answers only once released, then acknowledges everything (Kafka
    /// slow past the deadline).
    Hang,
    /// Refuses the message whose payload says `"big"` as too large.
    TooLarge,
}

/// A Kafka stand-in whose answers a test sets.
struct Scripted {
    mode: Mutex<Mode>,
    ready: AtomicBool,
    released: tokio::sync::Notify,
    sends: AtomicUsize,
    taken: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Scripted {
            mode: Mutex::new(mode),
            ready: AtomicBool::new(true),
            released: tokio::sync::Notify::new(),
            sends: AtomicUsize::new(0),
            taken: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn taken(&self) -> Vec<String> {
        let mut taken = self.taken.lock().expect("lock").clone();
        taken.sort();
        taken
    }
}

#[async_trait]
impl Sink for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        self.sends.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().expect("lock");
        if mode == Mode::Hang {
            self.released.notified().await;
        }
        let mut acked = Vec::new();
        let mut error = None;
        for message in messages.iter() {
            let take = match mode {
                Mode::Take | Mode::Hang => true,
                Mode::Refuse => {
                    error.get_or_insert(SinkError::Timeout);
                    false
                }
                Mode::TooLarge if message.payload == "big" => {
                    error.get_or_insert(SinkError::MessageTooLarge { size: 3, max: 2 });
                    false
                }
                Mode::TooLarge => true,
            };
            if take {
                self.taken
                    .lock()
                    .expect("lock")
                    .push(message.payload.clone());
            }
            acked.push(take);
        }
        Delivery { acked, error }
    }

    fn health(&self) -> Health {
        if self.ready.load(Ordering::SeqCst) {
            Health::Ready
        } else {
            Health::NotReady("kafka cluster unreachable".into())
        }
    }
}

fn messages(names: &[&str]) -> Arc<Vec<Message>> {
    Arc::new(
        names
            .iter()
            .map(|name| Message {
                kind: DataType::Events,
                topic: Arc::from("events"),
                key: None,
                headers: vec![(header::UUID, (*name).to_owned())],
                payload: (*name).to_owned(),
            })
            .collect(),
    )
}

fn spooling(inner: &Arc<Scripted>, dir: &std::path::Path, max_bytes: u64) -> SpoolingSink {
    let (spool, _) = Spool::open(&SpoolSettings {
        dir: dir.to_owned(),
        max_bytes,
        segment_bytes: DEFAULT_SEGMENT_BYTES,
    })
    .expect("opens");
    let inner: Arc<dyn Sink> = Arc::clone(inner) as Arc<dyn Sink>;
    SpoolingSink::start(
        inner,
        spool,
        SpoolingSettings {
            ack_deadline: Duration::from_millis(200),
            replay_rate: 100_000,
        },
    )
}

/// Waits until the spool is empty.
async fn drained(sink: &SpoolingSink) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.spooled() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the spool drains");
}

#[tokio::test]
async fn a_healthy_kafka_takes_everything_and_nothing_is_spooled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Take);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    let delivery = sink.send(messages(&["a", "b"])).await;
    assert!(delivery.is_complete());
    assert_eq!(sink.spooled(), 0);
    assert_eq!(sink.health(), Health::Ready);
    assert_eq!(inner.taken(), ["a", "b"]);
}

#[tokio::test]
async fn what_kafka_refuses_is_spooled_answered_and_replayed_once_it_takes_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Refuse);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    let delivery = sink.send(messages(&["a", "b"])).await;
    assert!(delivery.is_complete(), "spooled counts as delivered");
    assert_eq!(sink.spooled(), 2);
    assert!(
        matches!(sink.health(), Health::Spooling(ref note) if note.contains("replaying 2")),
        "{:?}",
        sink.health()
    );
    assert!(inner.taken().is_empty());
    inner.set(Mode::Take);
    drained(&sink).await;
    assert_eq!(inner.taken(), ["a", "b"], "each exactly once");
    assert_eq!(sink.health(), Health::Ready);
}

#[tokio::test]
async fn while_kafka_is_unhealthy_events_go_straight_to_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Take);
    inner.ready.store(false, Ordering::SeqCst);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    assert!(sink.send(messages(&["a"])).await.is_complete());
    assert_eq!(inner.sends.load(Ordering::SeqCst), 0, "kafka was not asked");
    assert!(
        matches!(sink.health(), Health::Spooling(ref note) if note.contains("unreachable")),
        "{:?}",
        sink.health()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.spooled(), 1, "no replay while kafka is unhealthy");
    inner.ready.store(true, Ordering::SeqCst);
    drained(&sink).await;
    assert_eq!(inner.taken(), ["a"]);
}

#[tokio::test]
async fn past_the_deadline_the_request_is_answered_and_a_late_acknowledgement_is_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Hang);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    let started = Instant::now();
    let delivery = sink.send(messages(&["a", "b"])).await;
    assert!(delivery.is_complete());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sink.spooled(), 2);
    // Kafka answers after all; the replay must not produce them again.
    inner.set(Mode::Take);
    inner.released.notify_waiters();
    drained(&sink).await;
    assert_eq!(inner.taken(), ["a", "b"], "each exactly once");
}

#[tokio::test]
async fn a_full_spool_leaves_the_refusal_as_kafka_gave_it_and_fails_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Refuse);
    let mut one = Vec::new();
    crate::spool::record::encode(&mut one, 0, 0, &messages(&["a"])[0]);
    let sink = spooling(&inner, dir.path(), one.len() as u64 + 8);
    assert!(sink.send(messages(&["a"])).await.is_complete(), "fits");
    inner.ready.store(false, Ordering::SeqCst);
    assert!(
        matches!(sink.health(), Health::Spooling(_)),
        "{:?}",
        sink.health()
    );
    let delivery = sink.send(messages(&["b"])).await;
    assert!(!delivery.is_complete(), "the request gets 503");
    assert_eq!(sink.spooled(), 1);
    assert!(
        matches!(sink.health(), Health::NotReady(ref reason) if reason.contains("full")),
        "{:?}",
        sink.health()
    );
    inner.set(Mode::Take);
    inner.ready.store(true, Ordering::SeqCst);
    drained(&sink).await;
    assert_eq!(inner.taken(), ["a"]);
    inner.ready.store(false, Ordering::SeqCst);
    assert!(
        matches!(sink.health(), Health::Spooling(_)),
        "room again once replayed: {:?}",
        sink.health()
    );
}

#[tokio::test]
async fn a_message_too_large_for_kafka_is_not_spooled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::TooLarge);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    let delivery = sink.send(messages(&["a", "big"])).await;
    assert!(matches!(
        delivery.error,
        Some(SinkError::MessageTooLarge { .. })
    ));
    assert_eq!(sink.spooled(), 0);
}

#[tokio::test]
async fn a_spooled_record_kafka_refuses_as_too_large_is_set_aside_and_the_rest_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = Scripted::new(Mode::Refuse);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    assert!(sink.send(messages(&["a", "big", "c"])).await.is_complete());
    inner.set(Mode::TooLarge);
    drained(&sink).await;
    assert_eq!(inner.taken(), ["a", "c"]);
    let set_aside = std::fs::read_dir(dir.path().join("corrupt"))
        .expect("corrupt dir")
        .count();
    assert_eq!(set_aside, 1);
}

#[tokio::test]
async fn a_spool_left_by_another_process_is_replayed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (spool, _) = Spool::open(&SpoolSettings {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        })
        .expect("opens");
        spool.append(&messages(&["x", "y"])).await.expect("durable");
        spool.close();
    }
    let inner = Scripted::new(Mode::Take);
    let sink = spooling(&inner, dir.path(), 1 << 20);
    assert_eq!(sink.spooled(), 2);
    drained(&sink).await;
    assert_eq!(inner.taken(), ["x", "y"]);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(left.is_empty(), "replayed segments are deleted: {left:?}");
}
