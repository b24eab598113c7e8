//! The policy checks' own connection to a standalone Redis.
//!
//! Checks arrive already packed (see [`super::resp`]), so this connection
//! only copies them to the socket and reads the replies back in order, in
//! the check driver's task: no task of its own, no channel per command, no
//! general reply parser. Admin commands and the billing refresh keep using
//! the `redis` crate's connection, and so does a Redis Cluster.
//!
//! It behaves like that connection where it matters: it connects on first
//! use and after a failure, within the connect timeout; it waits between
//! failed connects (50 ms, doubling up to 2 s) and answers checks at once
//! with an error meanwhile; a reply later than the response timeout drops
//! the connection (and every check on it) rather than leaving later replies
//! answering the wrong checks; a server that lost the script is sent it
//! once and the refused checks again.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, RedisResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::coalesce::Answer;
use super::resp::{self, Reply};
use super::store::StoreSettings;

/// First wait after a failed connect.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between connects.
const MOST_BACKOFF: Duration = Duration::from_secs(2);
/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    /// `AUTH` and `SELECT` as the URL asks, packed; sent before anything.
    prelude: Vec<u8>,
    /// How many replies the prelude gets.
    prelude_replies: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Target {
    /// The target for `settings`, when this connection can serve them: one
    /// plain `redis://` server. `None` for a cluster or anything else
    /// (`rediss://`), which the `redis` crate serves.
    pub fn new(settings: &StoreSettings) -> Option<Target> {
        let [url] = settings.urls.as_slice() else {
            return None;
        };
        if settings.cluster {
            return None;
        }
        let info = url.as_str().into_connection_info().ok()?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        let mut prelude = Vec::new();
        let mut prelude_replies = 0;
        if let Some(password) = redis.password() {
            prelude.extend(match redis.username() {
                Some(user) => resp::pack(&["AUTH", user, password]),
                None => resp::pack(&["AUTH", password]),
            });
            prelude_replies += 1;
        }
        if redis.db() != 0 {
            prelude.extend(resp::pack(&["SELECT", &redis.db().to_string()]));
            prelude_replies += 1;
        }
        Some(Target {
            host: host.clone(),
            port: *port,
            prelude,
            prelude_replies,
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
        })
    }
}

/// A check written (or about to be) and waiting for its reply.
enum Waiter {
    /// A `SCRIPT LOAD` this connection sent; its reply needs no answer.
    Load,
    Check {
        command: Vec<u8>,
        reply: Answer,
        /// Whether it was sent again after `NOSCRIPT` already.
        retried: bool,
        /// Its place among the commands queued on this connection.
        seq: u64,
        queued: Instant,
    },
}

enum State {
    /// No connection; connect on the next check, not before `retry_at`.
    Down {
        retry_at: Option<Instant>,
    },
    Connecting(BoxFuture<'static, RedisResult<TcpStream>>),
    Up(TcpStream),
}

/// The connection and the checks on it.
pub struct Pipe {
    target: Target,
    /// `SCRIPT LOAD` of the check script, packed.
    load: Vec<u8>,
    state: State,
    backoff: Duration,
    /// Bytes queued and not yet written.
    out: Vec<u8>,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    waiting: VecDeque<Waiter>,
    /// Commands queued on this connection so far.
    queued: u64,
    /// The `queued` count when the last `SCRIPT LOAD` was queued.
    last_load: Option<u64>,
    /// Looks for a reply later than the response timeout.
    overdue: Interval,
}

impl Pipe {
    /// A connection to `target` for checks of the script `source`; it
    /// connects with the first check.
    pub fn new(target: Target, source: &str) -> Self {
        let period = (target.response_timeout / 4).max(Duration::from_millis(5));
        let mut overdue = tokio::time::interval(period);
        overdue.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pipe {
            target,
            load: resp::pack(&["SCRIPT", "LOAD", source]),
            state: State::Down { retry_at: None },
            backoff: FIRST_BACKOFF,
            out: Vec::new(),
            input: Vec::new(),
            waiting: VecDeque::new(),
            queued: 0,
            last_load: None,
            overdue,
        }
    }

    /// Whether checks are on their way.
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Queues `checks` (packed commands and where their replies go) and
    /// writes what the socket takes now.
    pub fn send(&mut self, checks: impl IntoIterator<Item = (Vec<u8>, Answer)>) {
        if let State::Down { retry_at } = &self.state {
            if retry_at.is_some_and(|at| Instant::now() < at) {
                let err = unavailable("redis connection failed; waiting to reconnect");
                for (_, reply) in checks {
                    reply.send(Err(err.clone()));
                }
                return;
            }
            self.state = State::Connecting(Box::pin(connect(self.target.clone())));
        }
        let queued = Instant::now();
        for (command, reply) in checks {
            self.queue_check(command, reply, false, queued);
        }
        self.flush();
    }

    fn queue_check(&mut self, command: Vec<u8>, reply: Answer, retried: bool, queued: Instant) {
        self.out.extend_from_slice(&command);
        self.waiting.push_back(Waiter::Check {
            command,
            reply,
            retried,
            seq: self.queued,
            queued,
        });
        self.queued += 1;
    }

    /// Writes what the socket takes without waiting.
    fn flush(&mut self) {
        let State::Up(stream) = &self.state else {
            return;
        };
        let mut written = 0;
        while written < self.out.len() {
            match stream.try_write(&self.out[written..]) {
                Ok(0) => return self.broken(unavailable("redis closed the connection")),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return self.broken(err.into()),
            }
        }
        self.out.drain(..written);
    }

    /// Waits for something to happen on the connection and handles it:
    /// replies arriving, the socket taking more bytes, the connect ending,
    /// a reply running late. Never returns while there is nothing to do;
    /// cancelling it loses nothing.
    pub async fn progress(&mut self) {
        enum Event {
            Connected(RedisResult<TcpStream>),
            Readable(io::Result<()>),
            Writable(io::Result<()>),
            Tick,
        }
        let event = match &mut self.state {
            State::Down { .. } => std::future::pending().await,
            State::Connecting(connecting) => Event::Connected(connecting.await),
            State::Up(stream) => {
                let writing = !self.out.is_empty();
                let waiting = !self.waiting.is_empty();
                tokio::select! {
                    biased;
                    readable = stream.readable() => Event::Readable(readable),
                    writable = stream.writable(), if writing => Event::Writable(writable),
                    _ = self.overdue.tick(), if waiting => Event::Tick,
                }
            }
        };
        match event {
            Event::Connected(Ok(stream)) => {
                self.state = State::Up(stream);
                self.backoff = FIRST_BACKOFF;
                self.flush();
            }
            Event::Connected(Err(err)) => {
                let retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MOST_BACKOFF);
                self.fail_all(&err);
                self.state = State::Down {
                    retry_at: Some(retry_at),
                };
            }
            Event::Readable(Ok(())) => self.read(),
            Event::Writable(Ok(())) => self.flush(),
            Event::Readable(Err(err)) | Event::Writable(Err(err)) => self.broken(err.into()),
            Event::Tick => {
                let late = self.waiting.iter().find_map(|waiter| match waiter {
                    Waiter::Check { queued, .. } => Some(*queued),
                    Waiter::Load => None,
                });
                if late.is_some_and(|queued| queued.elapsed() >= self.target.response_timeout) {
                    self.broken(RedisError::from((
                        ErrorKind::Io,
                        "redis did not answer within the response timeout",
                    )));
                }
            }
        }
    }

    /// Reads what arrived and answers the checks whose replies are whole.
    fn read(&mut self) {
        let State::Up(stream) = &self.state else {
            return;
        };
        loop {
            if self.input.capacity() - self.input.len() < READ_CHUNK / 2 {
                self.input.reserve(READ_CHUNK);
            }
            match stream.try_read_buf(&mut self.input) {
                Ok(0) => return self.broken(unavailable("redis closed the connection")),
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return self.broken(err.into()),
            }
        }
        let mut used = 0;
        let mut resend = false;
        loop {
            match resp::parse(&self.input[used..]) {
                Ok(Some((reply, took))) => {
                    used += took;
                    match self.answer(reply) {
                        Ok(again) => resend |= again,
                        Err(err) => return self.broken(err),
                    }
                }
                Ok(None) => break,
                Err(err) => return self.broken(err.into()),
            }
        }
        self.input.drain(..used);
        if resend {
            self.flush();
        }
    }

    /// Hands `reply` to the oldest waiting check; `Ok(true)` when it was
    /// queued again behind a `SCRIPT LOAD`.
    fn answer(&mut self, reply: Reply) -> RedisResult<bool> {
        let Some(waiter) = self.waiting.pop_front() else {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "redis sent a reply nothing asked for",
            )));
        };
        let Waiter::Check {
            command,
            reply: answer,
            retried,
            seq,
            ..
        } = waiter
        else {
            // A failed load shows in the checks sent after it.
            return Ok(false);
        };
        match reply {
            Reply::Error(text) if !retried && text.starts_with("NOSCRIPT") => {
                // Load once for all the checks this server refused.
                if self.last_load.is_none_or(|load| load < seq) {
                    self.last_load = Some(self.queued);
                    self.out.extend_from_slice(&self.load);
                    self.waiting.push_back(Waiter::Load);
                    self.queued += 1;
                }
                self.queue_check(command, answer, true, Instant::now());
                Ok(true)
            }
            reply => {
                answer.send(reply.into_result());
                Ok(false)
            }
        }
    }

    /// Drops the connection and fails every check on it; the next check
    /// connects again.
    fn broken(&mut self, err: RedisError) {
        self.fail_all(&err);
        self.state = State::Down { retry_at: None };
    }

    fn fail_all(&mut self, err: &RedisError) {
        for waiter in self.waiting.drain(..) {
            if let Waiter::Check { reply, .. } = waiter {
                reply.send(Err(err.clone()));
            }
        }
        self.out.clear();
        self.input.clear();
        self.last_load = None;
    }
}

fn unavailable(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Io, what))
}

/// Opens a socket to `target` and runs its prelude, within the connect
/// timeout.
async fn connect(target: Target) -> RedisResult<TcpStream> {
    let opening = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&target.prelude).await?;
        let mut input = Vec::with_capacity(256);
        let mut used = 0;
        let mut replies = 0;
        while replies < target.prelude_replies {
            match resp::parse(&input[used..])? {
                Some((Reply::Error(text), _)) => {
                    return Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "redis refused the connection's AUTH or SELECT",
                        text,
                    )));
                }
                Some((_, took)) => {
                    used += took;
                    replies += 1;
                }
                None => {
                    if stream.read_buf(&mut input).await? == 0 {
                        return Err(unavailable("redis closed the connection"));
                    }
                }
            }
        }
        Ok(stream)
    };
    match tokio::time::timeout(target.connect_timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from((
            ErrorKind::Io,
            "no connection to redis within the connect timeout",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(urls: &[&str], cluster: bool) -> StoreSettings {
        StoreSettings::from_urls(
            urls.iter().copied(),
            cluster,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn plain_standalone_servers_get_their_own_connection() {
        let target = Target::new(&settings(&["redis://:pw@h:7/2"], false)).expect("served");
        assert_eq!((target.host.as_str(), target.port), ("h", 7));
        let mut prelude = resp::pack(&["AUTH", "pw"]);
        prelude.extend(resp::pack(&["SELECT", "2"]));
        assert_eq!(target.prelude, prelude);
        assert_eq!(target.prelude_replies, 2);

        let target = Target::new(&settings(&["redis://u:pw@h:7"], false)).expect("served");
        assert_eq!(target.prelude, resp::pack(&["AUTH", "u", "pw"]));

        let target = Target::new(&settings(&["redis://h:7"], false)).expect("served");
        assert!(target.prelude.is_empty());
        assert_eq!(target.prelude_replies, 0);
    }

    #[test]
    fn clusters_stay_on_the_redis_crate() {
        assert!(Target::new(&settings(&["redis://h:7"], true)).is_none());
        assert!(Target::new(&settings(&["redis://a:7", "redis://b:7"], false)).is_none());
    }

    #[test]
    fn tls_stays_on_the_redis_crate() {
        assert!(Target::new(&settings(&["rediss://h:7"], false)).is_none());
    }
}
