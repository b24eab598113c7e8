//! A sink that acknowledges everything and keeps nothing: for measuring the
//! HTTP and processing path alone.

use async_trait::async_trait;

use super::{Message, Sink, SinkError};

/// Discards every message.
#[derive(Debug, Default)]
pub struct NoopSink;

#[async_trait]
impl Sink for NoopSink {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn send(&self, _messages: Vec<Message>) -> Result<(), SinkError> {
        Ok(())
    }
}
