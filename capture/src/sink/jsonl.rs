//! JSON lines on stdout or in a file: one line per message with its topic,
//! key, headers and value. This is the embedded default when no Kafka brokers
//! are configured, so `capture` can be tried with nothing else installed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Delivery, Message, Sink, SinkError};

enum Target {
    Stdout,
    File(BufWriter<File>),
}

/// Writes each message as one JSON line.
pub struct JsonLinesSink {
    name: &'static str,
    target: Mutex<Target>,
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSink")
            .field("name", &self.name)
            .finish()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    key: Option<&'a str>,
    headers: serde_json::Map<String, serde_json::Value>,
    value: &'a RawValue,
}

impl JsonLinesSink {
    /// Writes to standard output.
    pub fn stdout() -> Self {
        JsonLinesSink {
            name: "stdout",
            target: Mutex::new(Target::Stdout),
        }
    }

    /// Appends to `path`, creating it if needed.
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLinesSink {
            name: "file",
            target: Mutex::new(Target::File(BufWriter::new(file))),
        })
    }

    fn render(messages: &[Message]) -> Result<Vec<u8>, SinkError> {
        let mut out = Vec::with_capacity(messages.iter().map(|m| m.payload.len() + 256).sum());
        for message in messages {
            let value: &RawValue = serde_json::from_str(&message.payload)
                .map_err(|err| SinkError::Io(io::Error::new(io::ErrorKind::InvalidData, err)))?;
            let headers = message
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
                .collect();
            let line = Line {
                topic: &message.topic,
                key: message.key.as_deref(),
                headers,
                value,
            };
            serde_json::to_writer(&mut out, &line).map_err(|err| SinkError::Io(err.into()))?;
            out.push(b'\n');
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for JsonLinesSink {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        let count = messages.len();
        // One write of all lines: a failed write acknowledges none of them
        // (a retry may repeat lines a partial write left; never the reverse).
        match self.write(&messages) {
            Ok(()) => Delivery::all(count),
            Err(err) => Delivery::none(count, err),
        }
    }
}

impl JsonLinesSink {
    fn write(&self, messages: &[Message]) -> Result<(), SinkError> {
        let bytes = Self::render(messages)?;
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *target {
            Target::Stdout => {
                let mut stdout = io::stdout().lock();
                stdout.write_all(&bytes).and_then(|()| stdout.flush())
            }
            Target::File(file) => file.write_all(&bytes).and_then(|()| file.flush()),
        }
        .map_err(SinkError::Io)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::route::DataType;

    #[tokio::test]
    async fn file_sink_writes_one_parseable_line_per_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let sink = JsonLinesSink::file(&path).expect("open");
        let message = Message {
            kind: DataType::Events,
            topic: Arc::from("clickhouse_events"),
            key: Some("t:u".into()),
            headers: vec![("token", "t".into())],
            payload: r#"{"uuid":"x","event":"e"}"#.into(),
        };
        sink.send(Arc::new(vec![message.clone(), message]))
            .await
            .into_result()
            .expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["topic"], "clickhouse_events");
        assert_eq!(lines[0]["key"], "t:u");
        assert_eq!(lines[0]["headers"]["token"], "t");
        assert_eq!(lines[0]["value"]["event"], "e");
    }
}
