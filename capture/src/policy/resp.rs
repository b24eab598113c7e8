//! RESP, Redis's wire format, for the commands the policy checks send and
//! the replies they read: a writer that packs a command's arguments
//! straight into the bytes sent, and a reader for RESP2 replies.
//!
//! Both are small on purpose. The check of every request is packed here
//! once, and the same bytes go to the socket (see [`super::pipe`]); the
//! `redis` crate's general command and reply types cost more than the
//! check itself on capture's side.

use std::fmt::Write as _;

/// Deepest nesting of arrays a reply may have; policy replies have none.
const MOST_DEPTH: usize = 8;

/// A command being packed as a RESP array of bulk strings.
pub struct Packer {
    bytes: Vec<u8>,
    left: usize,
}

impl Packer {
    /// A command of exactly `args` arguments (the count comes first on the
    /// wire), with room for about `capacity` bytes.
    pub fn new(args: usize, capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity + 16);
        bytes.push(b'*');
        bytes.extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
        bytes.extend_from_slice(b"\r\n");
        Packer { bytes, left: args }
    }

    /// Adds one argument made of `parts`, written one after the other.
    pub fn parts(&mut self, parts: &[&str]) -> &mut Self {
        self.take(1);
        bulk(&mut self.bytes, parts);
        self
    }

    /// Adds `args` arguments already packed one after the other (by
    /// [`bulk`]).
    pub fn packed(&mut self, bytes: &[u8], args: usize) -> &mut Self {
        self.take(args);
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Adds one text argument.
    pub fn arg(&mut self, arg: &str) -> &mut Self {
        self.parts(&[arg])
    }

    /// Adds one integer argument.
    pub fn int(&mut self, arg: i64) -> &mut Self {
        self.arg(itoa::Buffer::new().format(arg))
    }

    /// Adds one number argument as Lua's `tonumber` reads it back.
    pub fn float(&mut self, arg: f64) -> &mut Self {
        let mut text = String::with_capacity(24);
        let _ = write!(text, "{arg}");
        self.arg(&text)
    }

    fn take(&mut self, args: usize) {
        assert!(
            self.left >= args,
            "more arguments than the command was sized for"
        );
        self.left -= args;
    }

    /// The packed command.
    pub fn finish(self) -> Vec<u8> {
        assert_eq!(
            self.left, 0,
            "fewer arguments than the command was sized for"
        );
        self.bytes
    }
}

/// Appends one bulk string made of `parts`, written one after the other,
/// to `out`.
pub fn bulk(out: &mut Vec<u8>, parts: &[&str]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Packs a command of text arguments.
pub fn pack(args: &[&str]) -> Vec<u8> {
    let mut packer = Packer::new(args.len(), args.iter().map(|a| a.len() + 8).sum());
    for arg in args {
        packer.arg(arg);
    }
    packer.finish()
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the server refused the command.
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as the `redis` crate's value, a server error as an error.
    pub fn into_result(self) -> redis::RedisResult<redis::Value> {
        use redis::Value;
        Ok(match self {
            Reply::Simple(text) => Value::SimpleString(text),
            Reply::Error(text) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    "redis refused the command",
                    text,
                )));
            }
            Reply::Int(n) => Value::Int(n),
            Reply::Bulk(bytes) => Value::BulkString(bytes),
            Reply::Nil => Value::Nil,
            Reply::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(Reply::into_result)
                    .collect::<redis::RedisResult<_>>()?,
            ),
        })
    }
}

/// Bytes that are not RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed reply from redis: {}", self.0)
    }
}

impl From<Malformed> for redis::RedisError {
    fn from(err: Malformed) -> Self {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "malformed reply from redis",
            err.0.to_owned(),
        ))
    }
}

/// Reads the first reply in `bytes`: the reply and how many bytes it took,
/// or `None` when it has not arrived whole yet.
pub fn parse(bytes: &[u8]) -> Result<Option<(Reply, usize)>, Malformed> {
    parse_at(bytes, 0)
}

fn parse_at(bytes: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, Malformed> {
    let Some((line, mut used)) = line(bytes) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = line.split_first() else {
        return Err(Malformed("empty line"));
    };
    let text = || {
        std::str::from_utf8(rest)
            .map(str::to_owned)
            .map_err(|_| Malformed("status line is not UTF-8"))
    };
    let reply = match kind {
        b'+' => Reply::Simple(text()?),
        b'-' => Reply::Error(text()?),
        b':' => Reply::Int(number(rest)?),
        b'$' => {
            let len = number(rest)?;
            if len < 0 {
                Reply::Nil
            } else {
                let len = len as usize;
                let Some(body) = bytes.get(used..used + len + 2) else {
                    return Ok(None);
                };
                if !body.ends_with(b"\r\n") {
                    return Err(Malformed("bulk string longer than announced"));
                }
                used += len + 2;
                Reply::Bulk(body[..len].to_vec())
            }
        }
        b'*' => {
            let count = number(rest)?;
            if count < 0 {
                Reply::Nil
            } else {
                if depth >= MOST_DEPTH {
                    return Err(Malformed("arrays nested too deep"));
                }
                let mut items = Vec::with_capacity((count as usize).min(1024));
                for _ in 0..count {
                    let Some((item, took)) = parse_at(&bytes[used..], depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    used += took;
                }
                Reply::Array(items)
            }
        }
        _ => return Err(Malformed("unknown reply type")),
    };
    Ok(Some((reply, used)))
}

/// The first line without its `\r\n`, and the bytes it took with it.
fn line(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let end = bytes.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&bytes[..end], end + 2))
}

fn number(digits: &[u8]) -> Result<i64, Malformed> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(Malformed("length or integer is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_pack_as_arrays_of_bulk_strings() {
        let mut packer = Packer::new(5, 0);
        packer
            .arg("EVALSHA")
            .parts(&["quota:{", "phc", "}"])
            .int(-42)
            .int(0)
            .float(2.5);
        assert_eq!(
            packer.finish(),
            b"*5\r\n$7\r\nEVALSHA\r\n$11\r\nquota:{phc}\r\n$3\r\n-42\r\n$1\r\n0\r\n$3\r\n2.5\r\n"
        );
        assert_eq!(pack(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn packed_floats_have_no_exponent() {
        let mut packer = Packer::new(2, 0);
        packer.float(1e21).float(100.0);
        assert_eq!(
            packer.finish(),
            b"*2\r\n$22\r\n1000000000000000000000\r\n$3\r\n100\r\n"
        );
    }

    #[test]
    #[should_panic(expected = "fewer arguments")]
    fn a_short_command_is_a_bug() {
        let mut packer = Packer::new(2, 0);
        packer.arg("one");
        packer.finish();
    }

    #[test]
    fn every_reply_type_is_read_with_its_length() {
        let cases: Vec<(&[u8], Reply)> = vec![
            (b"+OK\r\n", Reply::Simple("OK".into())),
            (
                b"-NOSCRIPT No matching script\r\n",
                Reply::Error("NOSCRIPT No matching script".into()),
            ),
            (b":-7\r\n", Reply::Int(-7)),
            (b"$5\r\nok\r\na\r\n", Reply::Bulk(b"ok\r\na".to_vec())),
            (b"$-1\r\n", Reply::Nil),
            (b"*-1\r\n", Reply::Nil),
            (
                b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
                Reply::Array(vec![
                    Reply::Bulk(b"a".to_vec()),
                    Reply::Array(vec![Reply::Int(1)]),
                ]),
            ),
        ];
        for (bytes, expected) in cases {
            let mut with_next = bytes.to_vec();
            with_next.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                parse(&with_next),
                Ok(Some((expected, bytes.len()))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_reply_cut_anywhere_waits_for_the_rest() {
        let whole = b"*3\r\n$4\r\nab\r\n\r\n:12\r\n+OK\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(matches!(parse(whole), Ok(Some((_, n))) if n == whole.len()));
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &b"?what\r\n"[..],
            b"$x\r\n",
            b":1.5\r\n",
            b"$2\r\nabc\r\n",
            b"\r\n",
        ] {
            assert!(
                parse(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut deep = b"*1\r\n".repeat(MOST_DEPTH + 1);
        deep.extend_from_slice(b":1\r\n");
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn server_errors_become_errors() {
        let err = Reply::Error("ERR wrong".into())
            .into_result()
            .expect_err("an error");
        assert!(err.to_string().contains("ERR wrong"), "{err}");
        assert_eq!(
            Reply::Array(vec![Reply::Int(1), Reply::Nil])
                .into_result()
                .expect("a value"),
            redis::Value::Array(vec![redis::Value::Int(1), redis::Value::Nil])
        );
    }
}
