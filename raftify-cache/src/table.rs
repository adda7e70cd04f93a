//! The command table: each data command's name, arity, key positions and
//! whether it reads (served from a node's copy after a ReadIndex) or
//! writes (through the log), as `COMMAND` describes them.

use crate::commands::{hashes, keys, lists, sets, strings, zsets, ReadFn, WriteFn};
use std::collections::HashMap;
use std::sync::LazyLock;

/// How a command runs.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Reads the keyspace.
    Read(ReadFn),
    /// Changes it, through the log.
    Write(WriteFn),
}

/// One command of the table.
#[derive(Clone, Copy)]
pub struct Command {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (name included), `-n` at least n.
    pub arity: i32,
    /// Position of the first key (0: none).
    pub first_key: i32,
    /// Position of the last key (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// How it runs.
    pub handler: Handler,
}

impl Command {
    /// Whether it changes the keyspace.
    pub fn is_write(&self) -> bool {
        matches!(self.handler, Handler::Write(_))
    }

    /// Whether it may add data (Redis's `denyoom`): every write but those
    /// that only delete, pop, trim, rename or change TTLs.
    pub fn may_grow(&self) -> bool {
        self.is_write() && !NON_GROWING.contains(&self.name)
    }

    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        let a = i64::from(self.arity);
        if a >= 0 {
            argc == a
        } else {
            argc >= -a
        }
    }

    /// The positions of the keys in a call with `argc` arguments.
    pub fn key_positions(&self, argc: usize) -> Vec<usize> {
        if self.first_key <= 0 {
            return Vec::new();
        }
        let last = if self.last_key < 0 {
            argc as i64 + i64::from(self.last_key)
        } else {
            i64::from(self.last_key)
        };
        let step = self.step.max(1) as usize;
        (self.first_key as usize..=last.max(0) as usize)
            .step_by(step)
            .filter(|p| *p < argc)
            .collect()
    }
}

macro_rules! r {
    ($name:literal, $arity:expr, $f:expr, $l:expr, $s:expr, $h:path) => {
        Command {
            name: $name,
            arity: $arity,
            first_key: $f,
            last_key: $l,
            step: $s,
            handler: Handler::Read($h),
        }
    };
}

macro_rules! w {
    ($name:literal, $arity:expr, $f:expr, $l:expr, $s:expr, $h:path) => {
        Command {
            name: $name,
            arity: $arity,
            first_key: $f,
            last_key: $l,
            step: $s,
            handler: Handler::Write($h),
        }
    };
}

/// Writes that never add data.
const NON_GROWING: &[&str] = &[
    "del",
    "unlink",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "flushdb",
    "flushall",
    "lpop",
    "rpop",
    "spop",
    "srem",
    "hdel",
    "zrem",
    "getdel",
    "getex",
    "ltrim",
    "lrem",
    "rename",
    "renamenx",
];

/// Every data command.
pub static COMMANDS: &[Command] = &[
    // Strings.
    r!("get", 2, 1, 1, 1, strings::get),
    r!("mget", -2, 1, -1, 1, strings::mget),
    r!("strlen", 2, 1, 1, 1, strings::strlen),
    r!("getrange", 4, 1, 1, 1, strings::getrange),
    r!("substr", 4, 1, 1, 1, strings::getrange),
    w!("set", -3, 1, 1, 1, strings::set),
    w!("setnx", 3, 1, 1, 1, strings::setnx),
    w!("setex", 4, 1, 1, 1, strings::setex),
    w!("psetex", 4, 1, 1, 1, strings::psetex),
    w!("getset", 3, 1, 1, 1, strings::getset),
    w!("getdel", 2, 1, 1, 1, strings::getdel),
    w!("getex", -2, 1, 1, 1, strings::getex),
    w!("mset", -3, 1, -1, 2, strings::mset),
    w!("msetnx", -3, 1, -1, 2, strings::msetnx),
    w!("append", 3, 1, 1, 1, strings::append),
    w!("setrange", 4, 1, 1, 1, strings::setrange),
    w!("incr", 2, 1, 1, 1, strings::incr),
    w!("decr", 2, 1, 1, 1, strings::decr),
    w!("incrby", 3, 1, 1, 1, strings::incrby),
    w!("decrby", 3, 1, 1, 1, strings::decrby),
    w!("incrbyfloat", 3, 1, 1, 1, strings::incrbyfloat),
    // Keys.
    w!("del", -2, 1, -1, 1, keys::del),
    w!("unlink", -2, 1, -1, 1, keys::del),
    r!("exists", -2, 1, -1, 1, keys::exists),
    r!("type", 2, 1, 1, 1, keys::type_),
    w!("expire", -3, 1, 1, 1, keys::expire),
    w!("pexpire", -3, 1, 1, 1, keys::pexpire),
    w!("expireat", -3, 1, 1, 1, keys::expireat),
    w!("pexpireat", -3, 1, 1, 1, keys::pexpireat),
    w!("persist", 2, 1, 1, 1, keys::persist),
    r!("ttl", 2, 1, 1, 1, keys::ttl),
    r!("pttl", 2, 1, 1, 1, keys::pttl),
    r!("expiretime", 2, 1, 1, 1, keys::expiretime),
    r!("pexpiretime", 2, 1, 1, 1, keys::pexpiretime),
    r!("keys", 2, 0, 0, 0, keys::keys),
    r!("scan", -2, 0, 0, 0, keys::scan),
    w!("rename", 3, 1, 2, 1, keys::rename),
    w!("renamenx", 3, 1, 2, 1, keys::renamenx),
    r!("randomkey", 1, 0, 0, 0, keys::randomkey),
    r!("dbsize", 1, 0, 0, 0, keys::dbsize),
    w!("flushdb", -1, 0, 0, 0, keys::flushdb),
    w!("flushall", -1, 0, 0, 0, keys::flushdb),
    // Hashes.
    w!("hset", -4, 1, 1, 1, hashes::hset),
    w!("hmset", -4, 1, 1, 1, hashes::hset),
    w!("hsetnx", 4, 1, 1, 1, hashes::hsetnx),
    r!("hget", 3, 1, 1, 1, hashes::hget),
    r!("hmget", -3, 1, 1, 1, hashes::hmget),
    w!("hdel", -3, 1, 1, 1, hashes::hdel),
    r!("hgetall", 2, 1, 1, 1, hashes::hgetall),
    r!("hkeys", 2, 1, 1, 1, hashes::hkeys),
    r!("hvals", 2, 1, 1, 1, hashes::hvals),
    r!("hlen", 2, 1, 1, 1, hashes::hlen),
    r!("hstrlen", 3, 1, 1, 1, hashes::hstrlen),
    r!("hexists", 3, 1, 1, 1, hashes::hexists),
    w!("hincrby", 4, 1, 1, 1, hashes::hincrby),
    r!("hscan", -3, 1, 1, 1, hashes::hscan),
    // Lists.
    w!("lpush", -3, 1, 1, 1, lists::lpush),
    w!("rpush", -3, 1, 1, 1, lists::rpush),
    w!("lpop", -2, 1, 1, 1, lists::lpop),
    w!("rpop", -2, 1, 1, 1, lists::rpop),
    r!("lrange", 4, 1, 1, 1, lists::lrange),
    r!("llen", 2, 1, 1, 1, lists::llen),
    r!("lindex", 3, 1, 1, 1, lists::lindex),
    w!("lset", 4, 1, 1, 1, lists::lset),
    w!("lrem", 4, 1, 1, 1, lists::lrem),
    w!("ltrim", 4, 1, 1, 1, lists::ltrim),
    // Sets.
    w!("sadd", -3, 1, 1, 1, sets::sadd),
    w!("srem", -3, 1, 1, 1, sets::srem),
    r!("smembers", 2, 1, 1, 1, sets::smembers),
    r!("sismember", 3, 1, 1, 1, sets::sismember),
    r!("scard", 2, 1, 1, 1, sets::scard),
    w!("spop", -2, 1, 1, 1, sets::spop),
    r!("srandmember", -2, 1, 1, 1, sets::srandmember),
    // Sorted sets.
    w!("zadd", -4, 1, 1, 1, zsets::zadd),
    w!("zincrby", 4, 1, 1, 1, zsets::zincrby),
    w!("zrem", -3, 1, 1, 1, zsets::zrem),
    r!("zscore", 3, 1, 1, 1, zsets::zscore),
    r!("zcard", 2, 1, 1, 1, zsets::zcard),
    r!("zrank", -3, 1, 1, 1, zsets::zrank),
    r!("zrange", -4, 1, 1, 1, zsets::zrange),
];

static BY_NAME: LazyLock<HashMap<&'static [u8], &'static Command>> =
    LazyLock::new(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect());

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Command> {
    if name.len() > 32 {
        return None;
    }
    BY_NAME.get(name.to_ascii_lowercase().as_slice()).copied()
}
