//! A request's Redis round trips: `policy.lua` run with the request's keys
//! and settings, once to check and reserve, and once more (only when
//! something must be committed or given back) to settle; and the script's
//! answers read back into Rust types.
//!
//! The script is sent by hash (`EVALSHA`) and loaded on the first miss, so a
//! request costs one small command once each server has it. Concurrent
//! requests' commands share a round trip (see [`super::coalesce`]).

use std::time::Duration;

use redis::{RedisResult, Script, Value};

use super::coalesce::Coalescer;
use super::keys::{Keys, QuotaType};
use super::resp::Packer;

/// The policy script: check (and reserve) or settle.
pub const SOURCE: &str = include_str!("policy.lua");

/// What the script decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Produce it to its topic.
    Accept,
    /// Already captured within the dedup TTL: drop it.
    Duplicate,
    /// Over its quota: drop it.
    OverQuota,
    /// Over a rate limit: produce it to the overflow topic.
    Overflow,
}

/// How to treat events over quota. Spelled `drop` / `reject` everywhere:
/// on the command line, in the `action` hash field, in settings documents.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum QuotaAction {
    /// Drop them and answer 200 with `quota_limited`.
    Drop,
    /// Refuse the whole request with 429.
    Reject,
}

impl QuotaAction {
    /// The value in the `action` hash field and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaAction::Drop => "drop",
            QuotaAction::Reject => "reject",
        }
    }

    /// The action named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        [QuotaAction::Drop, QuotaAction::Reject]
            .into_iter()
            .find(|action| action.as_str() == name)
    }
}

/// How to treat events over a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateAction {
    /// Produce them to the overflow topic without a key.
    Overflow,
    /// Refuse the whole request with 429 and `Retry-After`.
    Reject,
}

/// Per-type settings sent with a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeCheck {
    /// Which type.
    pub kind: QuotaType,
    /// Whether to enforce its quota.
    pub quota: bool,
    /// Default rate in events per second (0: off) unless the token's
    /// settings override it.
    pub rate: f64,
    /// Default burst.
    pub burst: u64,
}

/// One event as the check sees it.
#[derive(Debug, Clone, Copy)]
pub struct CheckedEvent<'a> {
    /// Index into the request's [`TypeCheck`]s.
    pub type_index: usize,
    /// What its dedup marker is made of, when dedup applies to it.
    pub marker: Option<Marker<'a>>,
}

/// The parts of an event's dedup marker key besides the token (see
/// [`Keys::dedup`]).
#[derive(Debug, Clone, Copy)]
pub struct Marker<'a> {
    /// Its distinct id.
    pub distinct_id: &'a str,
    /// Its event name.
    pub event: &'a str,
    /// The id the client gave it.
    pub id: &'a str,
}

/// Everything one check needs.
#[derive(Debug)]
pub struct CheckRequest<'a> {
    /// The request's token.
    pub token: &'a str,
    /// Server time, unix milliseconds.
    pub now_ms: i64,
    /// Written into the dedup markers this check reserves, so only this
    /// request's settle removes them.
    pub reservation: u64,
    /// How long a reserved marker lives unless settled first.
    pub hold: Duration,
    /// The types present, at most nine.
    pub types: &'a [TypeCheck],
    /// The events, in request order.
    pub events: &'a [CheckedEvent<'a>],
    /// Default over-quota action.
    pub quota_action: QuotaAction,
    /// Rate limit action.
    pub rate_action: RateAction,
}

/// What a check charged one type, to give back for events not delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Charge {
    /// Whether each accepted or overflowed event took one unit of quota.
    pub quota: bool,
    /// Milliseconds of rate budget each accepted event took (0: none).
    pub interval_ms: f64,
}

impl Charge {
    /// Nothing taken.
    pub const NONE: Charge = Charge {
        quota: false,
        interval_ms: 0.0,
    };
}

/// The script's answer to a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Per-event decisions, what each type was charged, and the types left
    /// with nothing this window.
    Decided {
        /// One per event, in order.
        decisions: Vec<Decision>,
        /// Per type of the request, in its order.
        charges: Vec<Charge>,
        /// Exhausted types and how long until their windows end.
        exhausted: Vec<(QuotaType, Duration)>,
        /// The token's over-quota action.
        action: QuotaAction,
    },
    /// An event of the request is held by another request still waiting
    /// for Kafka: nothing was charged; the request must be sent again.
    InFlight {
        /// Until that reservation lapses at the latest.
        retry_after: Duration,
    },
    /// Some events are over quota and the token's action is `reject`.
    OverQuota {
        /// Until the earliest exhausted window ends.
        retry_after: Duration,
    },
    /// The rate limit refused the request.
    RateLimited {
        /// Until the request would fit.
        retry_after: Duration,
    },
}

/// Runs the check, in the same pipeline as other requests' checks (see
/// [`super::coalesce`]).
pub async fn run(
    coalescer: &Coalescer,
    keys: &Keys,
    request: &CheckRequest<'_>,
) -> RedisResult<Reply> {
    let reply = coalescer
        .run(request.token, command(coalescer.script(), keys, request))
        .await?;
    parse_reply(reply, request.events.len())
}

/// The `EVALSHA` of `script` for `request`, packed for the wire: the
/// token's settings, counter and rate keys per type, then each event's
/// dedup marker; the arguments the script reads after them.
fn command(script: &Script, keys: &Keys, request: &CheckRequest<'_>) -> Vec<u8> {
    debug_assert!(request.types.len() <= 9, "types are sent as one digit");
    let token = request.token;
    let markers = request.events.iter().filter(|e| e.marker.is_some()).count();
    let key_count = 1 + 2 * request.types.len() + markers;
    let args = 3 + key_count + 7 + 4 * request.types.len() + 2;
    let mut command = Packer::new(args, 64 * key_count + 3 * request.events.len() + 200);
    command
        .arg("EVALSHA")
        .arg(script.get_hash())
        .int(key_count as i64)
        .parts(&keys.quota_config_parts(token));
    for check in request.types {
        command
            .parts(&keys.quota_parts(token, check.kind))
            .parts(&keys.rate_parts(token, check.kind));
    }
    let mut kinds = String::with_capacity(request.events.len());
    let mut mask = String::with_capacity(request.events.len());
    for event in request.events {
        kinds.push(char::from(b'1' + event.type_index as u8));
        match event.marker {
            Some(marker) => {
                command.parts(&keys.dedup_parts(
                    token,
                    marker.distinct_id,
                    marker.event,
                    marker.id,
                ));
                mask.push('1');
            }
            None => mask.push('0'),
        }
    }
    command
        .arg("check")
        .int(request.now_ms)
        .int(request.hold.as_millis().max(1) as i64)
        .int(request.reservation as i64)
        .int(request.types.len() as i64)
        .arg(request.quota_action.as_str())
        .arg(match request.rate_action {
            RateAction::Overflow => "overflow",
            RateAction::Reject => "reject",
        });
    for check in request.types {
        command
            .arg(check.kind.as_str())
            .arg(if check.quota { "1" } else { "0" })
            .float(check.rate)
            .int(check.burst as i64);
    }
    command.arg(&kinds).arg(&mask);
    command.finish()
}

/// What one request gives back or confirms once its events' fates are
/// known.
#[derive(Debug)]
pub struct SettleRequest<'a> {
    /// The request's token.
    pub token: &'a str,
    /// Server time, unix milliseconds.
    pub now_ms: i64,
    /// The id its check wrote into the markers it reserved.
    pub reservation: u64,
    /// Lifetime of a committed marker.
    pub dedup_ttl: Duration,
    /// Per type: its kind, what its check charged, and how many events
    /// not delivered took quota and rate budget.
    pub refunds: &'a [Refund],
    /// The reserved markers: commit (delivered) or release (not).
    pub markers: &'a [(Marker<'a>, bool)],
}

/// What to give back to one type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refund {
    /// Which type.
    pub kind: QuotaType,
    /// Events not delivered that took a unit of quota.
    pub quota: u64,
    /// Events not delivered that took rate budget.
    pub rate: u64,
    /// Their rate budget per event, milliseconds.
    pub interval_ms: f64,
}

/// Settles a request's reservation, in the same pipeline as other
/// requests' checks.
pub async fn settle(
    coalescer: &Coalescer,
    keys: &Keys,
    request: &SettleRequest<'_>,
) -> RedisResult<()> {
    let reply = coalescer
        .run(
            request.token,
            settle_command(coalescer.script(), keys, request),
        )
        .await?;
    settled(&reply)
}

/// The settle `EVALSHA`: each refunded type's counter and rate keys, then
/// the markers; the refunds and one commit/release byte per marker.
fn settle_command(script: &Script, keys: &Keys, request: &SettleRequest<'_>) -> Vec<u8> {
    let token = request.token;
    let key_count = 2 * request.refunds.len() + request.markers.len();
    let args = 3 + key_count + 5 + 3 * request.refunds.len() + 1;
    let mut command = Packer::new(args, 64 * key_count + 160);
    command
        .arg("EVALSHA")
        .arg(script.get_hash())
        .int(key_count as i64);
    for refund in request.refunds {
        command
            .parts(&keys.quota_parts(token, refund.kind))
            .parts(&keys.rate_parts(token, refund.kind));
    }
    let mut ops = String::with_capacity(request.markers.len());
    for (marker, delivered) in request.markers {
        command.parts(&keys.dedup_parts(token, marker.distinct_id, marker.event, marker.id));
        ops.push(if *delivered { 'c' } else { 'r' });
    }
    command
        .arg("settle")
        .int(request.now_ms)
        .int(request.reservation as i64)
        .int(request.dedup_ttl.as_secs().max(1) as i64)
        .int(request.refunds.len() as i64);
    for refund in request.refunds {
        command
            .int(refund.quota as i64)
            .int(refund.rate as i64)
            .float(refund.interval_ms);
    }
    command.arg(&ops);
    command.finish()
}

/// Markers of delivered events, from any number of requests, waiting to be
/// committed by one settle call: the settle script with no refunds and
/// every marker committed. Each marker is packed as it is added, so the
/// call is put together by copying bytes.
#[derive(Debug, Default)]
pub struct Commits {
    /// The markers' keys, packed as RESP bulk strings.
    keys: Vec<u8>,
    markers: usize,
    requests: usize,
}

impl Commits {
    /// Adds the markers of one request of `token`.
    pub fn add<'a>(
        &mut self,
        keys: &Keys,
        token: &str,
        markers: impl IntoIterator<Item = Marker<'a>>,
    ) {
        for marker in markers {
            super::resp::bulk(
                &mut self.keys,
                &keys.dedup_parts(token, marker.distinct_id, marker.event, marker.id),
            );
            self.markers += 1;
        }
        self.requests += 1;
    }

    /// How many markers are waiting.
    pub fn markers(&self) -> usize {
        self.markers
    }

    /// How many requests they came from.
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// The settle `EVALSHA` committing every marker with `ttl`.
    pub fn command(&self, script: &Script, ttl: Duration, now_ms: i64) -> Vec<u8> {
        let args = 3 + self.markers + 6;
        let mut command = Packer::new(args, self.keys.len() + self.markers + 160);
        command
            .arg("EVALSHA")
            .arg(script.get_hash())
            .int(self.markers as i64)
            .packed(&self.keys, self.markers)
            .arg("settle")
            .int(now_ms)
            // No marker is released, so no reservation id is read.
            .int(0)
            .int(ttl.as_secs().max(1) as i64)
            .int(0)
            .arg(&"c".repeat(self.markers));
        command.finish()
    }
}

/// Whether a settle call's reply is the script's "ok".
pub fn settled(reply: &Value) -> RedisResult<()> {
    match reply {
        Value::BulkString(bytes) if bytes == b"ok" => Ok(()),
        Value::SimpleString(text) if text == "ok" => Ok(()),
        _ => Err(malformed("not ok")),
    }
}

fn malformed(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected policy script reply",
        what.to_owned(),
    ))
}

fn parse_reply(reply: Value, events: usize) -> RedisResult<Reply> {
    let text = match reply {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?,
        Value::SimpleString(text) => text,
        _ => return Err(malformed("not a string")),
    };
    let mut fields = text.split(' ');
    let mut next = || fields.next().ok_or_else(|| malformed("too short"));
    let number = |field: &str| field.parse::<i64>().map_err(|_| malformed("not a number"));
    let verdict = next()?;
    let decisions = next()?;
    let retry_after = Duration::from_millis(number(next()?)?.max(0) as u64);
    match verdict {
        "quota" => return Ok(Reply::OverQuota { retry_after }),
        "rate" => return Ok(Reply::RateLimited { retry_after }),
        "busy" => return Ok(Reply::InFlight { retry_after }),
        "ok" => {}
        other => return Err(malformed(other)),
    }
    if decisions.len() != events {
        return Err(malformed("wrong number of decisions"));
    }
    let decisions = decisions
        .bytes()
        .map(|b| match b {
            b'a' => Ok(Decision::Accept),
            b'd' => Ok(Decision::Duplicate),
            b'q' => Ok(Decision::OverQuota),
            b'o' => Ok(Decision::Overflow),
            _ => Err(malformed("unknown decision")),
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let action = QuotaAction::from_name(next()?).ok_or_else(|| malformed("unknown action"))?;
    let charges = next()?
        .split(',')
        .map(|charge| {
            let (quota, interval) = charge.split_once('/').ok_or_else(|| malformed("charge"))?;
            Ok(Charge {
                quota: quota == "1",
                interval_ms: interval
                    .parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .ok_or_else(|| malformed("charge interval"))?,
            })
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let mut exhausted = Vec::new();
    while let Ok(name) = next() {
        let kind = name.parse().map_err(|_| malformed("unknown type"))?;
        let ttl = number(next()?)?;
        exhausted.push((kind, Duration::from_millis(ttl.max(0) as u64)));
    }
    Ok(Reply::Decided {
        decisions,
        charges,
        exhausted,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decided_replies_are_read_in_event_order() {
        assert_eq!(
            parse_reply(
                text("ok adqo 1500 reject 1/0.000000,0/12.500000 events 1500"),
                4
            )
            .expect("valid reply"),
            Reply::Decided {
                decisions: vec![
                    Decision::Accept,
                    Decision::Duplicate,
                    Decision::OverQuota,
                    Decision::Overflow
                ],
                charges: vec![
                    Charge {
                        quota: true,
                        interval_ms: 0.0
                    },
                    Charge {
                        quota: false,
                        interval_ms: 12.5
                    }
                ],
                exhausted: vec![(QuotaType::Events, Duration::from_millis(1500))],
                action: QuotaAction::Reject,
            }
        );
        assert_eq!(
            parse_reply(text("ok aa 0 drop 0/0"), 2).expect("valid reply"),
            Reply::Decided {
                decisions: vec![Decision::Accept; 2],
                charges: vec![Charge {
                    quota: false,
                    interval_ms: 0.0
                }],
                exhausted: vec![],
                action: QuotaAction::Drop,
            }
        );
    }

    #[test]
    fn refusals_carry_their_wait() {
        assert_eq!(
            parse_reply(text("rate  250"), 3).expect("valid reply"),
            Reply::RateLimited {
                retry_after: Duration::from_millis(250)
            }
        );
        assert_eq!(
            parse_reply(text("quota  60000"), 1).expect("valid reply"),
            Reply::OverQuota {
                retry_after: Duration::from_secs(60)
            }
        );
        assert_eq!(
            parse_reply(text("busy  4000"), 1).expect("valid reply"),
            Reply::InFlight {
                retry_after: Duration::from_secs(4)
            }
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            Value::Nil,
            Value::Array(vec![text("ok"), text("aa"), Value::Int(0), text("drop")]),
            text("ok"),
            text("ok a 0 drop"),
            text("ok ax 0 drop"),
            text("ok aa x drop"),
            text("ok aa 0 maybe"),
            text("maybe aa 0 drop"),
            text("ok aa 0 drop"),
            text("ok aa 0 drop 1"),
            text("ok aa 0 drop 1/x"),
            text("ok aa 0 drop 1/-1"),
            text("ok aa 0 drop 0/0 widgets 1"),
            text("ok aa 0 drop 0/0 events"),
            text("ok aa 0 drop 0/0 events soon"),
        ] {
            assert!(parse_reply(reply.clone(), 2).is_err(), "{reply:?}");
        }
    }
}
