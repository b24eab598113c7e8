//! Policy checks of concurrent requests, sent to Redis together.
//!
//! Each request builds its own `EVALSHA` and hands it to one driver task.
//! The driver lets every request that is ready to run reach its check
//! first (it yields until a pass brings no new check), then writes all the
//! checks it holds as one pipeline: one write and one read on the socket,
//! and one wake-up of capture and of Redis, for the lot. Under load
//! requests arrive in bursts (a Kafka acknowledgement answers many at
//! once, and their clients send again together), so one round trip serves
//! many requests. A lone request pays one extra scheduler pass, not a
//! timer: a timer that held pipelines for more checks halved the round
//! trips but cost more than it saved. Pipelines do not wait for each
//! other either: holding checks back until the previous pipeline returned
//! made them larger but cost more (latency, and CPU) than it saved.
//!
//! The script still runs once per request, so each request's check stays
//! atomic on its own and means what it meant alone. On a Redis Cluster a
//! pipeline must stay in one slot, so checks are grouped by token there
//! (every key of a token carries the token as its hash tag).
//!
//! Commits of fully delivered requests (their dedup markers set to
//! "delivered") wait here instead of in the request: the request is
//! answered at once, and the markers of every request that finished since
//! the last pipeline go out as one settle call at the head of the next
//! one, ahead of the checks in it. So a check sent after a request was
//! answered finds that request's markers committed (on the checks' own
//! connection, and per token on a cluster, where commits and checks share
//! the token's pipeline). When no check comes, the commits go out alone
//! after [`COMMIT_WAIT`]. A commit that never reaches Redis leaves its
//! markers pending until their hold ends, as a lost settle does.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Script, ServerErrorKind, Value};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::check::Commits;
use super::pipe::{Pipe, Target};
use super::resp::{self, Reply};
use super::store::Store;

/// Most checks in one pipeline.
const MOST_PER_PIPELINE: usize = 64;

/// Longest a commit waits for a pipeline of checks to ride before it goes
/// out alone.
pub const COMMIT_WAIT: Duration = Duration::from_millis(20);

/// Most markers in one commit call (a longer one blocks Redis longer).
const MOST_PER_COMMIT: usize = 2048;

/// Where the outcome of a command goes.
pub enum Answer {
    /// To the request waiting for it.
    Check(oneshot::Sender<RedisResult<Value>>),
    /// To the policy's report of commits (nobody waits for them).
    Commit {
        requests: usize,
        markers: usize,
        report: Report,
    },
}

/// Counts and logs the outcome of a commit call of `requests` requests'
/// `markers` markers.
pub type Report = fn(requests: usize, markers: usize, result: RedisResult<()>);

impl Answer {
    /// Hands `result` on.
    pub fn send(self, result: RedisResult<Value>) {
        match self {
            Answer::Check(reply) => {
                let _ = reply.send(result);
            }
            Answer::Commit {
                requests,
                markers,
                report,
            } => report(
                requests,
                markers,
                result.and_then(|reply| super::check::settled(&reply)),
            ),
        }
    }

    /// Whether nobody needs the answer any more: a check whose request
    /// gave up. A commit is always needed.
    fn is_closed(&self) -> bool {
        matches!(self, Answer::Check(reply) if reply.is_closed())
    }
}

/// One command waiting for the driver: a request's check, or commits.
struct Pending {
    /// Which pipeline it may share: the token on a cluster, `None` on a
    /// standalone server (where any checks may share one).
    group: Option<String>,
    /// The `EVALSHA`, packed.
    command: Vec<u8>,
    reply: Answer,
}

/// Commits waiting for a pipeline.
struct Deferred {
    waiting: Mutex<Waiting>,
    /// Tells the driver commits arrived (to start their clock) or that
    /// enough arrived to go now.
    nudge: Notify,
    script: Arc<Script>,
    report: Report,
    /// [`COMMIT_WAIT`], but for tests.
    wait: Duration,
}

#[derive(Default)]
struct Waiting {
    /// Per pipeline group and marker TTL.
    batches: Vec<(Option<String>, Duration, Commits)>,
    markers: usize,
    /// When the oldest waiting commit arrived.
    since: Option<Instant>,
}

impl Deferred {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the waiting commits must go out without a check to ride.
    fn due(&self) -> Option<Instant> {
        let waiting = self.lock();
        let since = waiting.since?;
        Some(if waiting.markers >= MOST_PER_COMMIT {
            since
        } else {
            since + self.wait
        })
    }

    /// The waiting commits as commands, oldest group first, each reporting
    /// its outcome when it comes.
    fn take(&self) -> Vec<Pending> {
        self.take_batches()
            .into_iter()
            .map(|(group, ttl, commits)| Pending {
                group,
                command: commits.command(&self.script, ttl, chrono::Utc::now().timestamp_millis()),
                reply: Answer::Commit {
                    requests: commits.requests(),
                    markers: commits.markers(),
                    report: self.report,
                },
            })
            .collect()
    }

    /// The waiting commits, per pipeline group and marker TTL, leaving none.
    fn take_batches(&self) -> Vec<(Option<String>, Duration, Commits)> {
        let mut waiting = self.lock();
        waiting.markers = 0;
        waiting.since = None;
        std::mem::take(&mut waiting.batches)
    }
}

/// The handle requests submit their checks through.
pub struct Coalescer {
    store: Store,
    /// The checks' own connection, on a plain standalone server.
    lean: Option<Target>,
    script: Arc<Script>,
    source: &'static str,
    /// Started by the first check, so on the runtime that serves requests.
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    deferred: Arc<Deferred>,
}

impl Coalescer {
    /// A coalescer for the script `source` on `store`, or on a connection
    /// of its own to `lean`; its driver starts with the first check.
    /// Outcomes of commits go to `report`.
    pub fn new(store: Store, lean: Option<Target>, source: &'static str, report: Report) -> Self {
        let script = Arc::new(Script::new(source));
        Coalescer {
            store,
            lean,
            deferred: Arc::new(Deferred {
                waiting: Mutex::new(Waiting::default()),
                nudge: Notify::new(),
                script: Arc::clone(&script),
                report,
                wait: COMMIT_WAIT,
            }),
            script,
            source,
            queue: OnceLock::new(),
        }
    }

    /// The script the checks run.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Runs `command` (a packed `EVALSHA` of the driver's script) for a
    /// request of `token`, in the next pipeline, and returns its reply.
    pub async fn run(&self, token: &str, command: Vec<u8>) -> RedisResult<Value> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            group: self.group(token),
            command,
            reply: Answer::Check(reply),
        };
        if self.queue().send(pending).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Commits the markers `fill` adds (of one request of `token`, kept
    /// for `ttl`) with the next pipeline, or within [`COMMIT_WAIT`];
    /// returns at once. The outcome goes to the report.
    pub fn commit(&self, token: &str, ttl: Duration, fill: impl FnOnce(&mut Commits)) {
        self.queue();
        let group = self.group(token);
        let nudge = {
            let mut waiting = self.deferred.lock();
            let first = waiting.since.is_none();
            let index = waiting
                .batches
                .iter()
                .position(|(g, t, c)| *g == group && *t == ttl && c.markers() < MOST_PER_COMMIT)
                .unwrap_or_else(|| {
                    waiting.batches.push((group, ttl, Commits::default()));
                    waiting.batches.len() - 1
                });
            let commits = &mut waiting.batches[index].2;
            let before = commits.markers();
            fill(commits);
            let added = commits.markers() - before;
            waiting.markers += added;
            if first {
                waiting.since = Some(Instant::now());
            }
            first
                || (waiting.markers >= MOST_PER_COMMIT && waiting.markers - added < MOST_PER_COMMIT)
        };
        if nudge {
            self.deferred.nudge.notify_one();
        }
    }

    /// Sends the waiting commits now and waits for their outcome (reported
    /// as always); for shutdown.
    pub async fn flush(&self) {
        let batches = self.deferred.take_batches();
        if batches.is_empty() {
            return;
        }
        let queue = self.queue();
        let report = self.deferred.report;
        let mut answers = Vec::with_capacity(batches.len());
        for (group, ttl, commits) in batches {
            let (requests, markers) = (commits.requests(), commits.markers());
            let (reply, answer) = oneshot::channel();
            let pending = Pending {
                group,
                command: commits.command(&self.script, ttl, chrono::Utc::now().timestamp_millis()),
                // Waited for here, and reported once it comes.
                reply: Answer::Check(reply),
            };
            if queue.send(pending).is_err() {
                report(requests, markers, Err(stopped()));
                continue;
            }
            answers.push(async move {
                let result = answer.await.unwrap_or_else(|_| Err(stopped()));
                report(
                    requests,
                    markers,
                    result.and_then(|r| super::check::settled(&r)),
                );
            });
        }
        futures::future::join_all(answers).await;
    }

    /// Which pipelines a command of `token` may share.
    fn group(&self, token: &str) -> Option<String> {
        matches!(self.store, Store::Cluster(_)).then(|| token.to_owned())
    }

    /// The driver's queue, starting the driver on first use.
    fn queue(&self) -> &mpsc::UnboundedSender<Pending> {
        self.queue.get_or_init(|| {
            let (queue, requests) = mpsc::unbounded_channel();
            let backend = match &self.lean {
                Some(target) => Backend::Lean(Box::new(Pipe::new(target.clone(), self.source))),
                None => Backend::Shared {
                    store: self.store.clone(),
                    script: Arc::clone(&self.script),
                    in_flight: FuturesUnordered::new(),
                },
            };
            tokio::spawn(drive(requests, backend, Arc::clone(&self.deferred)));
            queue
        })
    }
}

fn stopped() -> RedisError {
    RedisError::from((redis::ErrorKind::Client, "policy check driver stopped"))
}

/// Where the driver sends pipelines.
enum Backend {
    /// The checks' own connection.
    Lean(Box<Pipe>),
    /// The `redis` crate's connection, shared with everything else.
    Shared {
        store: Store,
        script: Arc<Script>,
        in_flight: FuturesUnordered<BoxFuture<'static, ()>>,
    },
}

impl Backend {
    /// Sends `batch` as one pipeline or more.
    fn send(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        match self {
            Backend::Lean(pipe) => {
                metrics::counter!(crate::metrics::REDIS_PIPELINES).increment(1);
                pipe.send(
                    batch
                        .into_iter()
                        .map(|pending| (pending.command, pending.reply)),
                );
            }
            Backend::Shared {
                store,
                script,
                in_flight,
            } => {
                for mut group in split_by_group(batch) {
                    while !group.is_empty() {
                        metrics::counter!(crate::metrics::REDIS_PIPELINES).increment(1);
                        let rest = group.split_off(group.len().min(MOST_PER_PIPELINE));
                        in_flight.push(Box::pin(send(store.clone(), Arc::clone(script), group)));
                        group = rest;
                    }
                }
            }
        }
    }

    /// Moves pipelines in flight along; pending while there are none.
    async fn progress(&mut self) {
        match self {
            Backend::Lean(pipe) => pipe.progress().await,
            Backend::Shared { in_flight, .. } => {
                if in_flight.next().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    fn busy(&self) -> bool {
        match self {
            Backend::Lean(pipe) => pipe.busy(),
            Backend::Shared { in_flight, .. } => !in_flight.is_empty(),
        }
    }
}

/// Collects checks into pipelines, with the waiting commits at their head,
/// and keeps them in flight until every handle is gone and every answer is
/// delivered.
async fn drive(
    mut requests: mpsc::UnboundedReceiver<Pending>,
    mut backend: Backend,
    deferred: Arc<Deferred>,
) {
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let due = deferred.due();
        tokio::select! {
            biased;
            () = backend.progress() => {}
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                backend.send(deferred.take());
            }
            () = deferred.nudge.notified() => {}
            received = requests.recv_many(&mut batch, MOST_PER_PIPELINE) => {
                if received == 0 {
                    break;
                }
                // Requests already runnable reach their checks before these
                // go out, and so do those that become runnable meanwhile:
                // the pipeline leaves after a pass that brought nothing new.
                loop {
                    tokio::task::yield_now().await;
                    let before = batch.len();
                    while let Ok(pending) = requests.try_recv() {
                        batch.push(pending);
                    }
                    if batch.len() == before || batch.len() >= MOST_PER_PIPELINE {
                        break;
                    }
                }
                // A request that gave up (timed out, or its client left) has
                // failed open or closed already; its check would only spend
                // quota.
                batch.retain(|pending| !pending.reply.is_closed());
                if !batch.is_empty() {
                    let mut commands = deferred.take();
                    commands.append(&mut batch);
                    backend.send(commands);
                }
            }
        }
    }
    backend.send(deferred.take());
    while backend.busy() {
        backend.progress().await;
    }
}

/// Splits `batch` into runs that may share a pipeline, keeping each
/// group's order.
fn split_by_group(mut batch: Vec<Pending>) -> Vec<Vec<Pending>> {
    if batch.is_empty() {
        return Vec::new();
    }
    if batch.iter().all(|p| p.group == batch[0].group) {
        return vec![batch];
    }
    batch.sort_by(|a, b| a.group.cmp(&b.group));
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for pending in batch {
        match groups.last_mut() {
            Some(last) if last[0].group == pending.group => last.push(pending),
            _ => groups.push(vec![pending]),
        }
    }
    groups
}

/// Sends one group as a pipeline and answers each of its requests. A
/// server that lost the script (restarted, or `SCRIPT FLUSH`) gets it
/// loaded once, and the checks it refused are sent again.
async fn send(mut store: Store, script: Arc<Script>, group: Vec<Pending>) {
    let mut pipeline = Pipeline::with_capacity(group.len());
    pipeline.ignore_errors();
    let mut waiting = Vec::with_capacity(group.len());
    for pending in group {
        pipeline.add_command(unpack(&pending.command));
        waiting.push(pending.reply);
    }
    for attempt in 0..2 {
        let replies: Vec<Value> = match pipeline.query_async(&mut store).await {
            Ok(replies) => replies,
            Err(err) => return answer_all(waiting, &err),
        };
        if replies.len() != waiting.len() {
            let err = RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "pipeline answered a different number of checks than sent",
            ));
            return answer_all(waiting, &err);
        }
        let mut retry = Pipeline::new();
        retry.ignore_errors();
        let mut refused = Vec::new();
        for ((reply, answer), command) in replies.into_iter().zip(waiting).zip(pipeline.cmd_iter())
        {
            match reply {
                Value::ServerError(err)
                    if attempt == 0 && err.kind() == Some(ServerErrorKind::NoScript) =>
                {
                    retry.add_command(command.clone());
                    refused.push(answer);
                }
                Value::ServerError(err) => answer.send(Err(err.into())),
                reply => answer.send(Ok(reply)),
            }
        }
        if refused.is_empty() {
            return;
        }
        if let Err(err) = script.load_async(&mut store).await {
            return answer_all(refused, &err);
        }
        (pipeline, waiting) = (retry, refused);
    }
}

/// The `redis` crate's command for a packed one.
fn unpack(packed: &[u8]) -> Cmd {
    let mut command = Cmd::new();
    match resp::parse(packed) {
        Ok(Some((Reply::Array(args), _))) => {
            for arg in args {
                if let Reply::Bulk(bytes) = arg {
                    command.arg(bytes);
                }
            }
        }
        other => unreachable!("a packed command reads back as an array: {other:?}"),
    }
    command
}

fn answer_all(waiting: Vec<Answer>, err: &RedisError) {
    for answer in waiting {
        answer.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::policy::check::Marker;
    use crate::policy::keys::Keys;
    use crate::policy::store::StoreSettings;

    /// A stand-in for Redis on loopback that answers every command `+ok`
    /// and passes on each command it reads, as text arguments, in order.
    async fn fake_redis() -> (String, mpsc::UnboundedReceiver<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("address"));
        let (seen, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut input = Vec::new();
            loop {
                if socket.read_buf(&mut input).await.expect("read") == 0 {
                    return;
                }
                let mut used = 0;
                while let Some((Reply::Array(args), took)) =
                    resp::parse(&input[used..]).expect("RESP")
                {
                    used += took;
                    let args = args
                        .into_iter()
                        .map(|arg| match arg {
                            Reply::Bulk(bytes) => String::from_utf8(bytes).expect("text"),
                            other => panic!("not a bulk string: {other:?}"),
                        })
                        .collect();
                    let _ = seen.send(args);
                    socket.write_all(b"+ok\r\n").await.expect("write");
                }
                input.drain(..used);
            }
        });
        (url, commands)
    }

    /// A coalescer on its own connection to `url` whose commits wait
    /// `wait` for a check, reporting into `reported`.
    fn start(url: &str, wait: Duration, report: Report) -> Coalescer {
        let settings =
            StoreSettings::from_urls([url], false, Duration::from_secs(1), Duration::from_secs(1));
        let store = Store::open(&settings).expect("store");
        let mut coalescer = Coalescer::new(
            store,
            Target::new(&settings),
            super::super::check::SOURCE,
            report,
        );
        Arc::get_mut(&mut coalescer.deferred)
            .expect("not shared yet")
            .wait = wait;
        coalescer
    }

    fn commit(coalescer: &Coalescer, keys: &Keys, token: &str, ids: &[&str]) {
        coalescer.commit(token, Duration::from_secs(60), |commits| {
            commits.add(
                keys,
                token,
                ids.iter().map(|id| Marker {
                    distinct_id: "u",
                    event: "e",
                    id,
                }),
            );
        });
    }

    /// The commit call's arguments besides the script hash and the time.
    fn commit_shape(args: &[String]) -> Vec<String> {
        assert_eq!(args[0], "EVALSHA", "{args:?}");
        let mut shape = args.to_vec();
        shape.remove(1);
        let now = shape.iter().position(|a| a == "settle").expect("settle") + 1;
        shape.remove(now);
        shape
    }

    #[tokio::test]
    async fn commits_wait_for_the_next_check_and_go_ahead_of_it() {
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        fn report(requests: usize, _: usize, result: RedisResult<()>) {
            result.expect("committed");
            REPORTED.fetch_add(requests, Ordering::SeqCst);
        }
        let (url, mut seen) = fake_redis().await;
        let coalescer = start(&url, Duration::from_secs(3600), report);
        let keys = Keys::new("p:").expect("keys");
        commit(&coalescer, &keys, "t1", &["a", "b"]);
        commit(&coalescer, &keys, "t2", &["c"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.try_recv().is_err(), "nothing sent before a check");
        assert_eq!(REPORTED.load(Ordering::SeqCst), 0);

        let reply = coalescer.run("t1", resp::pack(&["PING"])).await;
        assert_eq!(reply.expect("answered"), Value::SimpleString("ok".into()));
        let first = seen.recv().await.expect("commit");
        assert_eq!(
            commit_shape(&first),
            [
                "EVALSHA",
                "3",
                "p:event:{t1}:u:e:a",
                "p:event:{t1}:u:e:b",
                "p:event:{t2}:u:e:c",
                "settle",
                "0",
                "60",
                "0",
                "ccc"
            ]
        );
        assert_eq!(seen.recv().await.expect("check"), ["PING"]);
        assert_eq!(REPORTED.load(Ordering::SeqCst), 2, "both requests reported");
    }

    #[tokio::test]
    async fn commits_go_alone_after_the_wait_and_at_once_when_flushed() {
        fn report(_: usize, _: usize, result: RedisResult<()>) {
            result.expect("committed");
        }
        let keys = Keys::new("p:").expect("keys");

        let (url, mut seen) = fake_redis().await;
        let coalescer = start(&url, Duration::from_millis(30), report);
        commit(&coalescer, &keys, "t", &["a"]);
        let alone = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("sent within the wait")
            .expect("commit");
        assert_eq!(commit_shape(&alone)[2], "p:event:{t}:u:e:a");

        let (url, mut seen) = fake_redis().await;
        let coalescer = start(&url, Duration::from_secs(3600), report);
        commit(&coalescer, &keys, "t", &["b"]);
        coalescer.flush().await;
        let flushed = seen.try_recv().expect("sent by the flush");
        assert_eq!(commit_shape(&flushed)[2], "p:event:{t}:u:e:b");
    }

    fn pending(group: Option<&str>, n: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        let command = resp::pack(&["ECHO", &n.to_string()]);
        Pending {
            group: group.map(str::to_owned),
            command,
            reply: Answer::Check(reply),
        }
    }

    fn ids(groups: &[Vec<Pending>]) -> Vec<Vec<(Option<String>, Vec<u8>)>> {
        groups
            .iter()
            .map(|group| {
                group
                    .iter()
                    .map(|p| (p.group.clone(), p.command.clone()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn one_group_stays_one_pipeline_in_order() {
        let groups = split_by_group((0..5).map(|n| pending(None, n)).collect());
        let expected = ids(&[(0..5).map(|n| pending(None, n)).collect()]);
        assert_eq!(ids(&groups), expected);
    }

    #[test]
    fn cluster_checks_split_by_token_keeping_each_tokens_order() {
        let batch = vec![
            pending(Some("b"), 0),
            pending(Some("a"), 1),
            pending(Some("b"), 2),
            pending(Some("a"), 3),
        ];
        let expected = ids(&[
            vec![pending(Some("a"), 1), pending(Some("a"), 3)],
            vec![pending(Some("b"), 0), pending(Some("b"), 2)],
        ]);
        assert_eq!(ids(&split_by_group(batch)), expected);
    }

    #[test]
    fn packed_commands_unpack_to_the_same_bytes() {
        let packed = resp::pack(&["EVALSHA", "abc", "1", "quota:{t}", ""]);
        assert_eq!(unpack(&packed).get_packed_command(), packed);
    }
}
