//! The ACL categories of each command (what `+@category` rules name):
//! Redis 7.0's own for the commands raftify-redis shares with it (read
//! from `COMMAND INFO` of a `redis-server` 7.0.15), by subcommand for the
//! commands that have them; `CLIENT SETINFO` (Redis 7.2) as 7.2 files it,
//! and `RAFT`, raftify-redis's own: `LEADER`, `INFO` and `HELP` slow,
//! the rest `admin` and `dangerous`.

use crate::server::{lower, SERVER_COMMANDS};
use bytes::Bytes;
use raftify_cache::command_rules::command_rule;
use raftify_cache::table::lookup;

/// Commands checked by subcommand.
const CONTAINERS: &[&str] = &[
    "client", "config", "command", "pubsub", "cluster", "acl", "raft",
];

/// `RAFT`'s subcommands.
const RAFT_SUBCOMMANDS: &[&str] = &[
    "leader",
    "info",
    "help",
    "server",
    "transfer",
    "snapshot",
    "rebalance",
];

/// `(command or command|subcommand, categories)`.
const TABLE: &[(&str, &[&str])] = &[
    ("get", &["read", "string", "fast"]),
    ("mget", &["read", "string", "fast"]),
    ("strlen", &["read", "string", "fast"]),
    ("getrange", &["read", "string", "slow"]),
    ("substr", &["read", "string", "slow"]),
    ("set", &["write", "string", "slow"]),
    ("setnx", &["write", "string", "fast"]),
    ("setex", &["write", "string", "slow"]),
    ("psetex", &["write", "string", "slow"]),
    ("getset", &["write", "string", "fast"]),
    ("getdel", &["write", "string", "fast"]),
    ("getex", &["write", "string", "fast"]),
    ("mset", &["write", "string", "slow"]),
    ("msetnx", &["write", "string", "slow"]),
    ("append", &["write", "string", "fast"]),
    ("setrange", &["write", "string", "slow"]),
    ("incr", &["write", "string", "fast"]),
    ("decr", &["write", "string", "fast"]),
    ("incrby", &["write", "string", "fast"]),
    ("decrby", &["write", "string", "fast"]),
    ("incrbyfloat", &["write", "string", "fast"]),
    ("del", &["keyspace", "write", "slow"]),
    ("unlink", &["keyspace", "write", "fast"]),
    ("exists", &["keyspace", "read", "fast"]),
    ("type", &["keyspace", "read", "fast"]),
    ("expire", &["keyspace", "write", "fast"]),
    ("pexpire", &["keyspace", "write", "fast"]),
    ("expireat", &["keyspace", "write", "fast"]),
    ("pexpireat", &["keyspace", "write", "fast"]),
    ("persist", &["keyspace", "write", "fast"]),
    ("ttl", &["keyspace", "read", "fast"]),
    ("pttl", &["keyspace", "read", "fast"]),
    ("expiretime", &["keyspace", "read", "fast"]),
    ("pexpiretime", &["keyspace", "read", "fast"]),
    ("keys", &["keyspace", "read", "slow", "dangerous"]),
    ("scan", &["keyspace", "read", "slow"]),
    ("rename", &["keyspace", "write", "slow"]),
    ("renamenx", &["keyspace", "write", "fast"]),
    ("randomkey", &["keyspace", "read", "slow"]),
    ("dbsize", &["keyspace", "read", "fast"]),
    ("flushdb", &["keyspace", "write", "slow", "dangerous"]),
    ("flushall", &["keyspace", "write", "slow", "dangerous"]),
    ("hset", &["write", "hash", "fast"]),
    ("hmset", &["write", "hash", "fast"]),
    ("hsetnx", &["write", "hash", "fast"]),
    ("hget", &["read", "hash", "fast"]),
    ("hmget", &["read", "hash", "fast"]),
    ("hdel", &["write", "hash", "fast"]),
    ("hgetall", &["read", "hash", "slow"]),
    ("hkeys", &["read", "hash", "slow"]),
    ("hvals", &["read", "hash", "slow"]),
    ("hlen", &["read", "hash", "fast"]),
    ("hstrlen", &["read", "hash", "fast"]),
    ("hexists", &["read", "hash", "fast"]),
    ("hincrby", &["write", "hash", "fast"]),
    ("hscan", &["read", "hash", "slow"]),
    ("lpush", &["write", "list", "fast"]),
    ("rpush", &["write", "list", "fast"]),
    ("lpop", &["write", "list", "fast"]),
    ("rpop", &["write", "list", "fast"]),
    ("lrange", &["read", "list", "slow"]),
    ("llen", &["read", "list", "fast"]),
    ("lindex", &["read", "list", "slow"]),
    ("lset", &["write", "list", "slow"]),
    ("lrem", &["write", "list", "slow"]),
    ("ltrim", &["write", "list", "slow"]),
    ("sadd", &["write", "set", "fast"]),
    ("srem", &["write", "set", "fast"]),
    ("smembers", &["read", "set", "slow"]),
    ("sismember", &["read", "set", "fast"]),
    ("scard", &["read", "set", "fast"]),
    ("spop", &["write", "set", "fast"]),
    ("srandmember", &["read", "set", "slow"]),
    ("zadd", &["write", "sortedset", "fast"]),
    ("zincrby", &["write", "sortedset", "fast"]),
    ("zrem", &["write", "sortedset", "fast"]),
    ("zscore", &["read", "sortedset", "fast"]),
    ("zcard", &["read", "sortedset", "fast"]),
    ("zrank", &["read", "sortedset", "fast"]),
    ("zrange", &["read", "sortedset", "slow"]),
    ("ping", &["fast", "connection"]),
    ("echo", &["fast", "connection"]),
    ("quit", &["fast", "connection"]),
    ("reset", &["fast", "connection"]),
    ("auth", &["fast", "connection"]),
    ("hello", &["fast", "connection"]),
    ("select", &["fast", "connection"]),
    ("client|id", &["slow", "connection"]),
    ("client|setname", &["slow", "connection"]),
    ("client|getname", &["slow", "connection"]),
    ("client|info", &["slow", "connection"]),
    ("client|list", &["admin", "slow", "dangerous", "connection"]),
    ("command|count", &["slow", "connection"]),
    ("command|info", &["slow", "connection"]),
    ("command|docs", &["slow", "connection"]),
    ("command|getkeys", &["slow", "connection"]),
    ("info", &["slow", "dangerous"]),
    ("config|get", &["admin", "slow", "dangerous"]),
    ("time", &["fast"]),
    ("multi", &["fast", "transaction"]),
    ("exec", &["slow", "transaction"]),
    ("discard", &["fast", "transaction"]),
    ("readonly", &["fast", "connection"]),
    ("readwrite", &["fast", "connection"]),
    ("asking", &["fast", "connection"]),
    ("publish", &["pubsub", "fast"]),
    ("pubsub|channels", &["pubsub", "slow"]),
    ("pubsub|numsub", &["pubsub", "slow"]),
    ("pubsub|numpat", &["pubsub", "slow"]),
    ("cluster|info", &["slow"]),
    ("cluster|nodes", &["slow"]),
    ("cluster|slots", &["slow"]),
    ("cluster|shards", &["slow"]),
    ("cluster|myid", &["slow"]),
    ("cluster|keyslot", &["slow"]),
    ("cluster|help", &["slow"]),
    ("cluster|countkeysinslot", &["slow"]),
    ("cluster|getkeysinslot", &["slow"]),
    ("watch", &["fast", "transaction"]),
    ("acl|whoami", &["slow"]),
    ("acl|users", &["admin", "slow", "dangerous"]),
    ("acl|list", &["admin", "slow", "dangerous"]),
    ("acl|getuser", &["admin", "slow", "dangerous"]),
    ("acl|setuser", &["admin", "slow", "dangerous"]),
    ("acl|deluser", &["admin", "slow", "dangerous"]),
    ("acl|cat", &["slow"]),
    ("unwatch", &["fast", "transaction"]),
    ("subscribe", &["pubsub", "slow"]),
    ("unsubscribe", &["pubsub", "slow"]),
    ("psubscribe", &["pubsub", "slow"]),
    ("punsubscribe", &["pubsub", "slow"]),
    ("client|setinfo", &["slow", "connection"]),
    ("command", &["slow", "connection"]),
];

/// Commands every connection may run, before authenticating and whatever
/// its user's rules (as in Redis): authenticating and leaving.
pub(crate) const ALWAYS: &[&str] = &["auth", "hello", "quit", "reset"];

/// The command and (for the commands that have them) subcommand `argv`
/// runs, lowercase: what command rules name.
pub(crate) fn command_of(argv: &[Bytes]) -> (String, Option<String>) {
    let name = argv.first().map(|a| lower(a)).unwrap_or_default();
    let sub = CONTAINERS
        .contains(&name.as_str())
        .then(|| argv.get(1).map(|a| lower(a)))
        .flatten();
    (name, sub)
}

/// The categories of `command` (`sub`: its subcommand); none for a
/// command not known.
pub(crate) fn categories(command: &str, sub: Option<&str>) -> &'static [&'static str] {
    if command == "raft" {
        return match sub {
            Some("leader" | "info" | "help") => &["slow"],
            _ => &["admin", "slow", "dangerous"],
        };
    }
    // Asked on every command of an ACL user: no string is built.
    let entry = |want: Option<&str>| {
        TABLE
            .iter()
            .find(|(n, _)| match (n.split_once('|'), want) {
                (Some((c, s)), Some(w)) => c == command && s == w,
                (None, None) => *n == command,
                _ => false,
            })
            .map(|(_, c)| *c)
    };
    sub.and_then(|s| entry(Some(s)))
        .or_else(|| entry(None))
        .unwrap_or(&[])
}

/// Whether a command rule (`+name`, `-name|sub`, `+@category`, ...) names
/// a command raftify-redis knows (categories are checked by the rules
/// themselves); other rules pass.
pub(crate) fn names_known_command(rule: &[u8]) -> bool {
    let text = String::from_utf8_lossy(rule).to_ascii_lowercase();
    let Some((_, what)) = command_rule(&text) else {
        return true;
    };
    if what.starts_with('@') {
        return true;
    }
    let known = |c: &str| {
        lookup(c.as_bytes()).is_some()
            || SERVER_COMMANDS.iter().any(|(n, _)| *n == c)
            || matches!(
                c,
                "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe"
            )
    };
    match what.split_once('|') {
        None => known(what),
        Some(("raft", s)) => RAFT_SUBCOMMANDS.contains(&s),
        Some((c, s)) => {
            CONTAINERS.contains(&c) && TABLE.iter().any(|(n, _)| *n == format!("{c}|{s}"))
        }
    }
}

/// Every category, and the commands of one (`ACL CAT [category]`).
pub(crate) fn commands_in(category: &str) -> Vec<String> {
    let mut out: Vec<String> = TABLE
        .iter()
        .filter(|(_, c)| c.contains(&category))
        .map(|(n, _)| n.to_string())
        .collect();
    for s in RAFT_SUBCOMMANDS {
        if categories("raft", Some(s)).contains(&category) {
            out.push(format!("raft|{s}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_categories_and_rules_name_known_ones() {
        for c in raftify_cache::table::COMMANDS {
            let cats = categories(c.name, None);
            assert!(!cats.is_empty(), "{}", c.name);
            let rw = if c.is_write() { "write" } else { "read" };
            assert!(cats.contains(&rw), "{} is {rw}: {cats:?}", c.name);
        }
        for (n, _) in SERVER_COMMANDS {
            let sub = CONTAINERS.contains(n).then_some("help");
            if *n != "cluster" && *n != "raft" && sub.is_some() {
                continue;
            }
            assert!(!categories(n, sub).is_empty() || *n == "cluster", "{n}");
        }
        assert_eq!(categories("client", Some("kill")), &[] as &[&str]);
        assert!(categories("client", Some("list")).contains(&"dangerous"));
        assert!(categories("raft", Some("server")).contains(&"admin"));
        for ok in ["+get", "-client|id", "+@read", "-raft|snapshot", "~*", "on"] {
            assert!(names_known_command(ok.as_bytes()), "{ok}");
        }
        for bad in ["+nosuch", "-client|nosuch", "+get|x", "-raft|nosuch"] {
            assert!(!names_known_command(bad.as_bytes()), "{bad}");
        }
        assert!(commands_in("dangerous").contains(&"flushall".to_string()));
        assert!(commands_in("dangerous").contains(&"raft|server".to_string()));
    }
}
