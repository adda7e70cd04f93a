//! Fan-out of applied changes and published messages to this process's
//! subscribers and listeners.

use crate::named::Change;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many changes (or messages of one channel) a subscriber may fall
/// behind before it misses some: its next `recv` then answers
/// `RecvError::Lagged(n)`, saying how many.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// The senders of one node.
pub(crate) struct Events {
    changes: broadcast::Sender<Change>,
    channels: Mutex<HashMap<Bytes, broadcast::Sender<Bytes>>>,
}

impl Events {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Events {
            changes: broadcast::channel(SUBSCRIBER_BUFFER).0,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The change hook (called by the state machine as it applies).
    pub(crate) fn on_change(&self, c: &Change) {
        // No subscriber is not an error.
        let _ = self.changes.send(c.clone());
    }

    /// The publish hook: delivers `message` to this node's listeners of
    /// `channel`; returns how many.
    pub(crate) fn on_publish(&self, channel: &Bytes, message: &Bytes) -> i64 {
        let Ok(mut channels) = self.channels.lock() else {
            return 0;
        };
        let Some(tx) = channels.get(channel) else {
            return 0;
        };
        match tx.send(message.clone()) {
            Ok(n) => n as i64,
            Err(_) => {
                // Every listener went: forget the channel.
                channels.remove(channel);
                0
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(crate) fn listen(&self, channel: Bytes) -> broadcast::Receiver<Bytes> {
        match self.channels.lock() {
            Ok(mut channels) => channels
                .entry(channel)
                .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
                .subscribe(),
            // A poisoned map (a panic elsewhere): a receiver that never
            // gets a message rather than a panic here.
            Err(_) => broadcast::channel(1).1,
        }
    }
}
