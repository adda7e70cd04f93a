//! Command conformance: the same command scripts run against a real
//! `redis-server` (started here) and a raftify-redis node, reply by reply.
//! Replies whose order Redis leaves unspecified (set members, hash
//! fields, `KEYS`) are sorted first; nothing else is adjusted. TTLs are
//! compared in seconds only (`PTTL` moves with the clock between the two).

mod common;

use common::*;
use redis_protocol::resp2::types::BytesFrame as Frame;
use std::process::{Child, Command, Stdio};

/// Commands whose reply is an unordered collection.
const UNORDERED: &[&str] = &["smembers", "hkeys", "hvals", "keys", "hgetall", "sinter"];

/// Scripts: each line a command, words split on spaces.
const SCRIPTS: &[&str] = &[
    // Strings.
    "SET k v|GET k|GET missing|SET k v2 XX GET|SET k v3 NX|SET n 10|INCR n|INCRBY n -3|DECR n|DECRBY n 2|INCRBYFLOAT n 1.5|INCRBYFLOAT n 10|APPEND s abc|APPEND s def|STRLEN s|GETRANGE s 1 3|GETRANGE s -2 -1|GETRANGE s 5 1|SETRANGE s 1 XY|GET s|SETRANGE s 8 Z|GET s|MSET a 1 b 2|MGET a b nope|MSETNX a 9 c 3|MSETNX c 3 d 4|GETSET a 5|GETDEL b|GET b|SETNX a 1|SETNX e 1|INCR s|SET big 9223372036854775807|INCR big|SET k v EX 0|SET k v EX abc|SET k v NX XX|SET k|GET k extra|RPUSH wl a|SET wl v GET|SET wl v NX|SET wl v XX|GET wl",
    // TTLs (no waits: only what holds at once).
    "SET t v EX 100|TTL t|PERSIST t|TTL t|TTL nope|EXPIRE t 50|TTL t|EXPIRE t 10 NX|EXPIRE t 10 GT|EXPIRE t 100 GT|TTL t|EXPIRE nope 10|SETEX se 100 v|TTL se|SETEX se -1 v|PSETEX pe 100000 v|TTL pe|GETEX t PERSIST|TTL t|GETEX t EX 30|TTL t|EXPIRE t -1|EXISTS t|SET kt v EX 100|SET kt w KEEPTTL|TTL kt",
    // Keys.
    "SET a 1|SET b 2|RPUSH l x|EXISTS a b nope|TYPE a|TYPE l|TYPE nope|DEL a nope|EXISTS a|RENAME b c|GET c|RENAME nope x|RENAMENX c l|RENAMENX c d|KEYS *|KEYS d*|DBSIZE|UNLINK d l|DBSIZE|FLUSHDB|DBSIZE|FLUSHALL ASYNC",
    // Hashes.
    "HSET h f1 a f2 b|HSET h f1 c|HGET h f1|HGET h nope|HMGET h f1 nope f2|HLEN h|HEXISTS h f2|HEXISTS h nope|HDEL h f2 nope|HKEYS h|HVALS h|HGETALL h|HINCRBY h n 5|HINCRBY h n -7|HINCRBY h f1 1|HSETNX h f1 x|HSETNX h f9 x|HSTRLEN h f9|HSET h odd|SET str v|HGET str f|HSET str f v|HDEL h f1 n f9|EXISTS h",
    // HSCAN (one field: the order of several is Redis's listpack order).
    "HSET h1 f v|HSCAN h1 0|HSCAN h1 0 MATCH f*|HSCAN h1 0 MATCH x*|HSCAN h1 x|HSCAN h1 -1|HSCAN h1 +0|HSCAN h1 18446744073709551616|HSCAN nope 0|SET str v|HSCAN str 0|HSCAN h1 0 COUNT 0|HSCAN h1 0 COUNT|HSCAN h1 0 NOPE 1",
    // Lists.
    "RPUSH l a b c|LPUSH l z|LRANGE l 0 -1|LRANGE l 1 2|LRANGE l -100 100|LLEN l|LINDEX l 0|LINDEX l -1|LINDEX l 9|LPOP l|RPOP l|RPUSH l b b x b|LREM l 2 b|LRANGE l 0 -1|LREM l -1 b|LRANGE l 0 -1|LSET l 0 q|LSET l 99 q|LRANGE l 0 -1|LTRIM l 1 -1|LRANGE l 0 -1|LPOP l 5|LPOP l|LPOP nope 2|RPOP nope|SET s v|LPUSH s a|LLEN s",
    // Sets.
    "SADD s a b c|SADD s a d|SCARD s|SISMEMBER s a|SISMEMBER s z|SMEMBERS s|SREM s a z|SMEMBERS s|SCARD nope|SPOP nope|SRANDMEMBER nope|SET str v|SADD str a",
    // Sorted sets.
    "ZADD z 1 a 2 b 3 c|ZADD z 1.5 a|ZADD z NX 9 a 4 d|ZADD z XX CH 5 d 9 e|ZADD z GT 1 d|ZADD z LT 1 d|ZSCORE z d|ZCARD z|ZRANK z c|ZRANK z nope|ZRANGE z 0 -1|ZRANGE z 0 -1 WITHSCORES|ZRANGE z 0 1 REV|ZRANGE z 2 4 BYSCORE|ZRANGE z (1.5 +inf BYSCORE LIMIT 0 1|ZRANGE z +inf -inf BYSCORE REV|ZINCRBY z 2.5 a|ZADD z INCR 1 b|ZREM z a nope|ZRANGE z 0 -1 WITHSCORES|ZADD z nan x|ZADD z 1|ZADD z NX XX 1 a",
    // Transactions: UNWATCH is queued and answers OK; WATCH inside MULTI
    // is refused without aborting; a queued error aborts.
    "MULTI|SET a 1|UNWATCH|WATCH a|EXEC|MULTI|INCR a|UNWATCH|GET a|EXEC|MULTI|UNWATCH|EXEC|MULTI|GET|EXEC|EXEC|DISCARD|WATCH a|UNWATCH|MULTI|DISCARD",
    // Arity and unknown commands.
    "GET|SET a|HSET h|LRANGE l 0|NOSUCHCOMMAND a b|ZADD",
    // ACL command rules, judged by Redis's categories (last: it switches
    // users, then RESETs back to the default one).
    "ACL SETUSER u on >p ~* +@all -@dangerous -client|id|AUTH u p|ACL WHOAMI|SET a 1|GET a|INFO|KEYS *|FLUSHALL|CONFIG GET maxclients|CLIENT ID|PING|ACL CAT|ACL SETUSER w on|MULTI|SET a 2|EXEC|RESET|ACL SETUSER r on >p ~* +@read|AUTH r p|GET a|SET a 3|PING|SUBSCRIBE x|MULTI|ECHO x|RESET|ACL SETUSER c on >p ~* -@all +get +@connection -echo|AUTH c p|GET a|PING|ECHO x|CLIENT GETNAME|SET a 4|RESET|ACL SETUSER t on >p ~* +@all -incr|AUTH t p|MULTI|SET k1 1|INCR k1|EXEC|GET k1|RESET|ACL SETUSER bad +@nosuch|ACL SETUSER bad +nosuch|ACL SETUSER bad -client|nosuch|ACL SETUSER bad +@read|x",
];

fn start_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

fn normalized(cmd: &str, f: Frame) -> String {
    let name = cmd.split(' ').next().unwrap_or("").to_ascii_lowercase();
    match f {
        Frame::Array(items) if UNORDERED.contains(&name.as_str()) => {
            let mut shown: Vec<String> = if name == "hgetall" {
                items
                    .chunks(2)
                    .map(|p| p.iter().map(show).collect::<Vec<_>>().join("="))
                    .collect()
            } else {
                items.iter().map(show).collect()
            };
            shown.sort();
            format!("[{}]", shown.join(", "))
        }
        f => show(&f),
    }
}

#[test]
fn every_script_gets_redis_replies() {
    if !have("redis-server") {
        return;
    }
    let port = free_port();
    let mut redis = start_redis(port);
    let cluster = Cluster::start(1, &["--no-sync"]);
    cluster.wait_leader();
    let mut theirs = wait_for("redis-server", T, || {
        Client::connect(&format!("127.0.0.1:{port}")).ok()
    });
    let mut ours = cluster.node(1).client();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for script in SCRIPTS {
        theirs.cmd(&["FLUSHALL"]);
        ours.cmd(&["FLUSHALL"]);
        for cmd in script.split('|') {
            let words: Vec<&str> = cmd.split(' ').collect();
            let want = normalized(cmd, theirs.cmd(&words));
            let got = normalized(cmd, ours.cmd(&words));
            checked += 1;
            if want != got {
                mismatches.push(format!("{cmd}\n  redis:   {want}\n  raftify: {got}"));
            }
        }
    }
    eprintln!("{checked} replies compared");
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(
        mismatches.is_empty(),
        "{} of {checked} replies differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
