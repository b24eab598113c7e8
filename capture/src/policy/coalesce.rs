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

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use redis::{Cmd, Pipeline, RedisError, RedisResult, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::pipe::{Pipe, Target};
use super::resp::{self, Reply};
use super::store::Store;

/// Most checks in one pipeline.
const MOST_PER_PIPELINE: usize = 64;

/// One request's check, waiting for the driver.
struct Pending {
    /// Which pipeline it may share: the token on a cluster, `None` on a
    /// standalone server (where any checks may share one).
    group: Option<String>,
    /// The `EVALSHA`, packed.
    command: Vec<u8>,
    reply: oneshot::Sender<RedisResult<Value>>,
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
}

impl Coalescer {
    /// A coalescer for the script `source` on `store`, or on a connection
    /// of its own to `lean`; its driver starts with the first check.
    pub fn new(store: Store, lean: Option<Target>, source: &'static str) -> Self {
        Coalescer {
            store,
            lean,
            script: Arc::new(Script::new(source)),
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
            group: matches!(self.store, Store::Cluster(_)).then(|| token.to_owned()),
            command,
            reply,
        };
        let queue = self.queue.get_or_init(|| {
            let (queue, requests) = mpsc::unbounded_channel();
            let backend = match &self.lean {
                Some(target) => Backend::Lean(Box::new(Pipe::new(target.clone(), self.source))),
                None => Backend::Shared {
                    store: self.store.clone(),
                    script: Arc::clone(&self.script),
                    in_flight: FuturesUnordered::new(),
                },
            };
            tokio::spawn(drive(requests, backend));
            queue
        });
        if queue.send(pending).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
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
        match self {
            Backend::Lean(pipe) => {
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

/// Collects checks into pipelines and keeps them in flight until every
/// handle is gone and every answer is delivered.
async fn drive(mut requests: mpsc::UnboundedReceiver<Pending>, mut backend: Backend) {
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = backend.progress() => {}
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
                    backend.send(std::mem::take(&mut batch));
                }
            }
        }
    }
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
                Value::ServerError(err) => {
                    let _ = answer.send(Err(err.into()));
                }
                reply => {
                    let _ = answer.send(Ok(reply));
                }
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

fn answer_all(waiting: Vec<oneshot::Sender<RedisResult<Value>>>, err: &RedisError) {
    for answer in waiting {
        let _ = answer.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(group: Option<&str>, n: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        let command = resp::pack(&["ECHO", &n.to_string()]);
        Pending {
            group: group.map(str::to_owned),
            command,
            reply,
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
