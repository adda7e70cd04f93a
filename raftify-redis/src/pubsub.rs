//! Publish/subscribe. `PUBLISH` goes through the log; as each node applies
//! it, the node hands the message to its own subscribers ([`Hub::publish`]),
//! so a subscriber on any node receives every message published on any
//! node, in log order. A subscriber that does not read keeps at most
//! [`QUEUE`] messages queued; past that it is disconnected (Redis's
//! pubsub output-buffer limit), never slowing the node down.
//!
//! On a sharded node (`--sharded`) the message goes through the metadata
//! group's log instead ([`raftify_shard::ShardHost::broadcast`], every node
//! is a member), encoded by [`encode_broadcast`] and handed to the hub by
//! [`Hub::broadcast_hook`]: the same guarantee across all the cluster's
//! nodes, whatever groups they host.

use bytes::Bytes;
use raftify_cache::commands::glob_match;
use raftify_cache::Reply;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Most messages queued for one subscriber.
pub const QUEUE: usize = 4096;

/// A message for a subscriber.
#[derive(Debug, Clone)]
pub enum Message {
    /// On a channel it subscribed to.
    Message {
        /// The channel.
        channel: Bytes,
        /// The payload.
        data: Bytes,
    },
    /// On a channel matching a pattern it subscribed to.
    PMessage {
        /// The pattern.
        pattern: Bytes,
        /// The channel.
        channel: Bytes,
        /// The payload.
        data: Bytes,
    },
}

impl Message {
    /// The message as Redis pushes it.
    pub fn reply(self) -> Reply {
        match self {
            Message::Message { channel, data } => Reply::Push(vec![
                Reply::bulk("message"),
                Reply::Bulk(channel),
                Reply::Bulk(data),
            ]),
            Message::PMessage {
                pattern,
                channel,
                data,
            } => Reply::Push(vec![
                Reply::bulk("pmessage"),
                Reply::Bulk(pattern),
                Reply::Bulk(channel),
                Reply::Bulk(data),
            ]),
        }
    }
}

/// Where a subscriber's messages go.
pub type Sender = mpsc::Sender<Message>;

#[derive(Default)]
struct Subs {
    channels: HashMap<Bytes, HashMap<u64, Sender>>,
    patterns: HashMap<Bytes, HashMap<u64, Sender>>,
}

/// This node's subscribers.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<Subs>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers a message applied from the log to this node's
    /// subscribers; returns how many got it. A subscriber whose queue is
    /// full loses all its subscriptions (its connection then closes).
    pub fn publish(&self, channel: &Bytes, data: &Bytes) -> i64 {
        let mut subs = self.lock();
        let mut delivered = 0;
        let mut overflowed = Vec::new();
        let mut deliver = |clients: &HashMap<u64, Sender>, m: Message| {
            for (id, tx) in clients {
                match tx.try_send(m.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => overflowed.push(*id),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        };
        if let Some(clients) = subs.channels.get(channel) {
            let m = Message::Message {
                channel: channel.clone(),
                data: data.clone(),
            };
            deliver(clients, m);
        }
        for (pattern, clients) in &subs.patterns {
            if glob_match(pattern, channel) {
                let m = Message::PMessage {
                    pattern: pattern.clone(),
                    channel: channel.clone(),
                    data: data.clone(),
                };
                deliver(clients, m);
            }
        }
        for id in overflowed {
            remove_client(&mut subs, id);
        }
        delivered
    }

    /// Subscribes client `id` to a channel (`pattern`: a glob).
    pub fn subscribe(&self, id: u64, name: Bytes, pattern: bool, tx: Sender) {
        let mut subs = self.lock();
        let map = if pattern {
            &mut subs.patterns
        } else {
            &mut subs.channels
        };
        map.entry(name).or_default().insert(id, tx);
    }

    /// Unsubscribes client `id` from a channel or pattern.
    pub fn unsubscribe(&self, id: u64, name: &Bytes, pattern: bool) {
        let mut subs = self.lock();
        let map = if pattern {
            &mut subs.patterns
        } else {
            &mut subs.channels
        };
        if let Some(clients) = map.get_mut(name) {
            clients.remove(&id);
            if clients.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Drops every subscription of client `id` (its connection ended).
    pub fn remove(&self, id: u64) {
        remove_client(&mut self.lock(), id);
    }

    /// `PUBSUB CHANNELS [pattern] | NUMSUB [channel ...] | NUMPAT |
    /// HELP`: this node's subscriptions (as a Redis Cluster node answers
    /// for its own clients).
    pub fn introspect(&self, argv: &[Bytes]) -> Reply {
        let sub = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
        let subs = self.lock();
        match (sub.as_str(), argv.len()) {
            ("channels", 2 | 3) => {
                let mut names: Vec<&Bytes> = subs
                    .channels
                    .keys()
                    .filter(|c| argv.get(2).is_none_or(|p| glob_match(p, c)))
                    .collect();
                names.sort();
                Reply::Array(names.into_iter().map(|c| Reply::Bulk(c.clone())).collect())
            }
            ("numsub", _) => Reply::Array(
                argv[2..]
                    .iter()
                    .flat_map(|c| {
                        let n = subs.channels.get(c).map_or(0, HashMap::len);
                        [Reply::Bulk(c.clone()), Reply::Int(n as i64)]
                    })
                    .collect(),
            ),
            ("numpat", 2) => Reply::Int(subs.patterns.len() as i64),
            ("help", 2) => Reply::bulks(
                [
                    "PUBSUB <subcommand> [<arg> ...]. Subcommands are:",
                    "CHANNELS [<pattern>]",
                    "    Return the currently active channels matching a <pattern> (default: '*').",
                    "NUMPAT",
                    "    Return number of subscriptions to patterns.",
                    "NUMSUB [<channel> ...]",
                    "    Return the number of subscribers for the specified channels, excluding",
                    "    pattern subscriptions(default: no channels).",
                    "HELP",
                    "    Print this help.",
                ]
                .map(|l: &'static str| Bytes::from_static(l.as_bytes()))
                .to_vec(),
            ),
            ("channels" | "numpat" | "help", _) => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{sub}'. Try PUBSUB HELP."
            )),
            _ => Reply::err(format!("unknown subcommand '{sub}'. Try PUBSUB HELP.")),
        }
    }

    /// Channels with subscribers, and pattern subscriptions.
    pub fn counts(&self) -> (usize, usize) {
        let subs = self.lock();
        (
            subs.channels.len(),
            subs.patterns.values().map(HashMap::len).sum(),
        )
    }
}

/// The first byte of a published message in a broadcast (other kinds of
/// broadcast may come; a node ignores kinds it does not know).
const PUBLISHED: u8 = b'P';

/// `PUBLISH channel message` as a sharded cluster's broadcast: the kind,
/// the channel's length (4 bytes, big-endian), the channel, the message.
pub fn encode_broadcast(channel: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    let len = u32::try_from(channel.len()).ok()?;
    let mut out = Vec::with_capacity(5 + channel.len() + message.len());
    out.push(PUBLISHED);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(channel);
    out.extend_from_slice(message);
    Some(out)
}

/// The channel and message of a broadcast [`encode_broadcast`] made; None
/// for anything else.
pub fn decode_broadcast(b: &[u8]) -> Option<(Bytes, Bytes)> {
    let (&kind, rest) = b.split_first()?;
    if kind != PUBLISHED || rest.len() < 4 {
        return None;
    }
    let (len, rest) = rest.split_at(4);
    let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (channel, message) = rest.split_at(len);
    Some((
        Bytes::copy_from_slice(channel),
        Bytes::copy_from_slice(message),
    ))
}

impl Hub {
    /// The hook a sharded node gives its metadata group: each published
    /// message to this node's subscribers (answers how many got it; 0 for
    /// a broadcast that is not a published message).
    pub fn broadcast_hook(self: &std::sync::Arc<Self>) -> raftify_shard::BroadcastHook {
        let hub = self.clone();
        std::sync::Arc::new(move |b: &[u8]| match decode_broadcast(b) {
            Some((channel, message)) => u64::try_from(hub.publish(&channel, &message)).unwrap_or(0),
            None => 0,
        })
    }
}

fn remove_client(subs: &mut Subs, id: u64) {
    for map in [&mut subs.channels, &mut subs.patterns] {
        map.retain(|_, clients| {
            clients.remove(&id);
            !clients.is_empty()
        });
    }
}

/// A connection's subscriptions and its message queue.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Channels subscribed to.
    pub channels: std::collections::BTreeSet<Bytes>,
    /// Patterns subscribed to.
    pub patterns: std::collections::BTreeSet<Bytes>,
    /// The queue's receiving end (while subscribed to anything).
    pub rx: Option<mpsc::Receiver<Message>>,
    /// The queue's sending end, for more subscriptions; the hub holds the
    /// strong ones (dropped when it gives up on a slow subscriber).
    tx: Option<mpsc::WeakSender<Message>>,
}

impl Inbox {
    /// Subscriptions held.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

impl Hub {
    /// `SUBSCRIBE`/`PSUBSCRIBE` (`pattern`) of `names` by client `id`:
    /// a confirmation per name; None when the hub already dropped this
    /// client for not reading (it is then disconnected).
    pub fn add(
        &self,
        id: u64,
        inbox: &mut Inbox,
        names: &[Bytes],
        pattern: bool,
    ) -> Option<Vec<Reply>> {
        let tx = match inbox.tx.as_ref().and_then(mpsc::WeakSender::upgrade) {
            Some(tx) if inbox.count() > 0 => tx,
            Some(_) | None if inbox.count() > 0 => return None,
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                inbox.rx = Some(rx);
                inbox.tx = Some(tx.downgrade());
                tx
            }
        };
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let set = if pattern {
                &mut inbox.patterns
            } else {
                &mut inbox.channels
            };
            set.insert(name.clone());
            self.subscribe(id, name.clone(), pattern, tx.clone());
            out.push(Reply::Push(vec![
                Reply::bulk(kind),
                Reply::Bulk(name.clone()),
                Reply::Int(inbox.count() as i64),
            ]));
        }
        Some(out)
    }

    /// `UNSUBSCRIBE`/`PUNSUBSCRIBE` of `names` (none: all of that kind).
    pub fn drop_subs(
        &self,
        id: u64,
        inbox: &mut Inbox,
        names: &[Bytes],
        pattern: bool,
    ) -> Vec<Reply> {
        let kind = if pattern {
            "punsubscribe"
        } else {
            "unsubscribe"
        };
        let names: Vec<Bytes> = if names.is_empty() {
            let set = if pattern {
                &inbox.patterns
            } else {
                &inbox.channels
            };
            set.iter().cloned().collect()
        } else {
            names.to_vec()
        };
        if names.is_empty() {
            return vec![Reply::Push(vec![
                Reply::bulk(kind),
                Reply::Nil,
                Reply::Int(inbox.count() as i64),
            ])];
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let set = if pattern {
                &mut inbox.patterns
            } else {
                &mut inbox.channels
            };
            set.remove(&name);
            self.unsubscribe(id, &name, pattern);
            out.push(Reply::Push(vec![
                Reply::bulk(kind),
                Reply::Bulk(name),
                Reply::Int(inbox.count() as i64),
            ]));
        }
        if inbox.count() == 0 {
            inbox.rx = None;
            inbox.tx = None;
        }
        out
    }
}

impl crate::server::Server {
    /// The subscription commands, which answer with a reply per channel;
    /// None for any other command. In RESP2, a subscribed connection may
    /// only (un)subscribe, `PING`, `QUIT` and `RESET`.
    pub async fn pubsub(
        &self,
        s: &mut crate::server::Session,
        argv: &[Bytes],
    ) -> Option<Vec<Reply>> {
        let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
        let (pattern, subscribe) = match name.as_str() {
            "subscribe" => (false, true),
            "psubscribe" => (true, true),
            "unsubscribe" => (false, false),
            "punsubscribe" => (true, false),
            "ping" if s.inbox.count() > 0 && !s.resp3 && argv.len() <= 2 => {
                if let Some(no) = self.forbidden(s, argv).await {
                    return Some(vec![no]);
                }
                let msg = argv.get(1).cloned().unwrap_or_default();
                return Some(vec![Reply::Array(vec![
                    Reply::bulk("pong"),
                    Reply::Bulk(msg),
                ])]);
            }
            "ping" | "quit" | "reset" => return None,
            _ if s.inbox.count() > 0 && !s.resp3 => {
                return Some(vec![Reply::err(format!(
                    "Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ))]);
            }
            _ => return None,
        };
        if !s.authed {
            return Some(vec![Reply::Error("NOAUTH Authentication required.".into())]);
        }
        if s.multi.is_some() {
            s.multi_failed = true;
            return Some(vec![Reply::err(format!(
                "Command not allowed inside a transaction: '{name}'"
            ))]);
        }
        if subscribe && argv.len() < 2 {
            return Some(vec![raftify_cache::errors::arity(&name)]);
        }
        if let Some(no) = self.forbidden(s, argv).await {
            return Some(vec![no]);
        }
        if subscribe {
            if let Some(no) = self.channels_forbidden(s, &argv[1..], pattern).await {
                return Some(vec![no]);
            }
            match self.hub.add(s.id, &mut s.inbox, &argv[1..], pattern) {
                Some(replies) => Some(replies),
                None => {
                    s.closing = true;
                    Some(vec![Reply::err(
                        "this subscriber fell too far behind and was disconnected",
                    )])
                }
            }
        } else {
            Some(self.hub.drop_subs(s.id, &mut s.inbox, &argv[1..], pattern))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_carries_channel_and_message_and_nothing_else_decodes() {
        for (c, m) in [
            (&b"news"[..], &b"hello"[..]),
            (b"", b""),
            (b"c", b"\x00P\xff"),
        ] {
            let b = encode_broadcast(c, m).unwrap();
            assert_eq!(
                decode_broadcast(&b),
                Some((Bytes::copy_from_slice(c), Bytes::copy_from_slice(m)))
            );
        }
        let b = encode_broadcast(b"news", b"hello").unwrap();
        for bad in [&b[..0], &b[..3], &b[..7], b"X\0\0\0\0"] {
            assert_eq!(decode_broadcast(bad), None, "{bad:?}");
        }
        let hub = std::sync::Arc::new(Hub::default());
        let (tx, mut rx) = mpsc::channel(4);
        hub.subscribe(1, Bytes::from_static(b"news"), false, tx.clone());
        hub.subscribe(2, Bytes::from_static(b"n*"), true, tx);
        let hook = hub.broadcast_hook();
        assert_eq!(hook(&b), 2);
        assert_eq!(hook(b"junk"), 0);
        assert!(matches!(rx.try_recv(), Ok(Message::Message { .. })));
        assert!(matches!(rx.try_recv(), Ok(Message::PMessage { .. })));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn pubsub_introspection_counts_this_nodes_subscribers() {
        let hub = Hub::default();
        let (tx, _rx) = mpsc::channel(4);
        for (id, name, pattern) in [
            (1, "news", false),
            (2, "news", false),
            (2, "notes", false),
            (3, "n*", true),
        ] {
            hub.subscribe(id, Bytes::from_static(name.as_bytes()), pattern, tx.clone());
        }
        let ask = |args: &[&str]| {
            let argv: Vec<Bytes> = args
                .iter()
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            hub.introspect(&argv)
        };
        assert_eq!(
            ask(&["PUBSUB", "CHANNELS"]),
            Reply::Array(vec![Reply::bulk("news"), Reply::bulk("notes")])
        );
        assert_eq!(
            ask(&["pubsub", "channels", "ne*"]),
            Reply::Array(vec![Reply::bulk("news")])
        );
        assert_eq!(
            ask(&["PUBSUB", "NUMSUB", "news", "none"]),
            Reply::Array(vec![
                Reply::bulk("news"),
                Reply::Int(2),
                Reply::bulk("none"),
                Reply::Int(0)
            ])
        );
        assert_eq!(ask(&["PUBSUB", "NUMSUB"]), Reply::Array(vec![]));
        assert_eq!(ask(&["PUBSUB", "NUMPAT"]), Reply::Int(1));
        assert!(
            matches!(ask(&["PUBSUB", "NUMPAT", "x"]), Reply::Error(e) if e.contains("wrong number"))
        );
        assert!(
            matches!(ask(&["PUBSUB", "NOPE"]), Reply::Error(e) if e.contains("unknown subcommand 'nope'"))
        );
        hub.remove(2);
        assert_eq!(
            ask(&["PUBSUB", "CHANNELS"]),
            Reply::Array(vec![Reply::bulk("news")])
        );
    }
}
