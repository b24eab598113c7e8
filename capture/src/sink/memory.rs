//! A sink that keeps messages in memory, for tests that drive the router
//! without a broker (fixture replay, handler tests).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Delivery, Message, Sink};

/// Collects messages until [`MemorySink::take`] is called.
#[derive(Debug, Default)]
pub struct MemorySink {
    messages: Mutex<Vec<Message>>,
}

impl MemorySink {
    /// Removes and returns everything sent so far.
    pub fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.messages.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn send(&self, messages: Arc<Vec<Message>>) -> Delivery {
        let count = messages.len();
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(messages.iter().cloned());
        Delivery::all(count)
    }
}
