//! A sink that acknowledges everything and keeps nothing: for measuring the
//! HTTP and processing path alone.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Delivery, Message, Sink};

/// Discards every message.
#[derive(Debug, Default)]
pub struct NoopSink;

#[async_trait]
impl Sink for NoopSink {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        Delivery::all(messages.len())
    }
}
