//! ACL users over the Redis protocol: `AUTH user pass`, `HELLO ... AUTH`,
//! `ACL SETUSER / DELUSER / GETUSER / LIST / USERS / WHOAMI`, and the check
//! that a read-only user runs reads only. Users are replicated (see
//! `raftify_cache::acl`); a `>password` rule is hashed here, on the node
//! that received it, so the log and snapshots hold SHA-256 hashes only.
//! Permission changes apply to connected users at their next command.
//! On a sharded node the users are the cluster's, kept by the metadata
//! group, so a user set on any node authenticates on every node.

use crate::server::{error_reply, lower, Server, Session};
use bytes::Bytes;
use raftify_cache::acl::Users;
use raftify_cache::{errors, CacheEntry, Op, Reply};
use raftify_core::{unix_ms, AbstractLogEntry, Payload};
use subtle::ConstantTimeEq;

/// SHA-256 of `pass`, lowercase hex (Redis's `#<hash>` form).
pub fn sha256_hex(pass: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, pass)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn wrongpass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

impl Server {
    /// `AUTH [user] pass`.
    pub(crate) async fn auth(&self, s: &mut Session, args: &[Bytes]) -> Reply {
        let (user, pass) = match args {
            [p] => ("default".to_string(), p),
            [u, p] => (String::from_utf8_lossy(u).into_owned(), p),
            _ => return errors::syntax(),
        };
        if user == "default" {
            return match &self.requirepass {
                None if args.len() == 1 => Reply::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ),
                None => {
                    s.authed = true;
                    s.user = None;
                    Reply::Ok
                }
                Some(want) if bool::from(want.as_bytes().ct_eq(&pass[..])) => {
                    s.authed = true;
                    s.user = None;
                    Reply::Ok
                }
                Some(_) => wrongpass(),
            };
        }
        let hash = sha256_hex(pass);
        let ok = self
            .users(|users| {
                users
                    .get(&user)
                    .is_some_and(|u| u.enabled && (u.nopass || u.passwords.contains(&hash)))
            })
            .await;
        if !ok.unwrap_or(false) {
            return wrongpass();
        }
        s.authed = true;
        s.user = Some(user);
        Reply::Ok
    }

    /// `-NOPERM` (Redis's text) when the connection's user may not run
    /// the command `argv` (its command rules, judged against the command's
    /// categories, by subcommand where it has them); None when it may.
    /// The default user may run anything; so may everyone `AUTH`,
    /// `HELLO`, `QUIT` and `RESET`.
    pub(crate) async fn forbidden(&self, s: &Session, argv: &[Bytes]) -> Option<Reply> {
        let user = s.user.as_ref()?;
        let (name, sub) = crate::acl_categories::command_of(argv);
        if crate::acl_categories::ALWAYS.contains(&name.as_str()) {
            return None;
        }
        let cats = crate::acl_categories::categories(&name, sub.as_deref());
        let allowed = self
            .users(|users| {
                users
                    .get(user)
                    .is_some_and(|u| u.enabled && u.commands.allows(&name, sub.as_deref(), cats))
            })
            .await;
        let allowed = match allowed {
            Ok(a) => a,
            Err(r) => return Some(r),
        };
        let shown = match &sub {
            Some(sub) if !cats.is_empty() || name == "raft" => format!("{name}|{sub}"),
            _ => name.clone(),
        };
        (!allowed).then(|| {
            Reply::Error(format!(
                "NOPERM this user has no permissions to run the '{shown}' command"
            ))
        })
    }

    /// `-NOPERM` when the connection's user may not run `argv` or touch
    /// one of its `keys` ([`Server::forbidden`], then
    /// [`Server::keys_forbidden`]); None when it may.
    pub(crate) async fn refused(
        &self,
        s: &Session,
        argv: &[Bytes],
        keys: &[&Bytes],
    ) -> Option<Reply> {
        match self.forbidden(s, argv).await {
            Some(no) => Some(no),
            None => self.keys_forbidden(s, keys).await,
        }
    }

    /// `-NOPERM` when the connection's user may not touch one of `keys`
    /// (its `~pattern`s); None when it may.
    pub(crate) async fn keys_forbidden(&self, s: &Session, keys: &[&Bytes]) -> Option<Reply> {
        let user = s.user.as_ref()?;
        if keys.is_empty() {
            return None;
        }
        let allowed = self
            .users(|users| {
                users
                    .get(user)
                    .is_some_and(|u| keys.iter().all(|k| u.may_access(k)))
            })
            .await;
        match allowed {
            Ok(true) => None,
            Ok(false) => Some(Reply::Error("NOPERM No permissions to access a key".into())),
            Err(r) => Some(r),
        }
    }

    /// `-NOPERM` when the connection's user may not use one of `names`:
    /// channels (to publish or subscribe), or with `pattern` the patterns
    /// of a `PSUBSCRIBE` (which must be among its own, literally).
    pub(crate) async fn channels_forbidden(
        &self,
        s: &Session,
        names: &[Bytes],
        pattern: bool,
    ) -> Option<Reply> {
        let user = s.user.as_ref()?;
        let allowed = self
            .users(|users| {
                users.get(user).is_some_and(|u| {
                    // The user may run commands at all (as `forbidden`).
                    u.enabled
                        && u.commands.any()
                        && names.iter().all(|n| {
                            if pattern {
                                u.may_use_pattern(n)
                            } else {
                                u.may_use_channel(n)
                            }
                        })
                })
            })
            .await;
        match allowed {
            Ok(true) => None,
            Ok(false) => Some(Reply::Error(
                "NOPERM No permissions to access a channel".into(),
            )),
            Err(r) => Some(r),
        }
    }

    /// Whether the connection's `user` may still receive `m`: its channel
    /// patterns may have narrowed, or the user been disabled or deleted,
    /// since it subscribed (Redis then disconnects the client; so does
    /// [`crate::conn`]). The default user always may.
    pub(crate) async fn may_receive(&self, user: Option<&str>, m: &crate::pubsub::Message) -> bool {
        use crate::pubsub::Message;
        let Some(user) = user else {
            return true;
        };
        self.users(|users| {
            users.get(user).is_some_and(|u| {
                u.enabled
                    && u.commands.any()
                    && match m {
                        Message::Message { channel, .. } => u.may_use_channel(channel),
                        Message::PMessage { pattern, .. } => u.may_use_pattern(pattern),
                    }
            })
        })
        .await
        .unwrap_or(false)
    }

    /// `ACL ...`.
    pub(crate) async fn acl_command(&self, s: &mut Session, argv: &[Bytes]) -> Reply {
        let sub = lower(&argv[1]);
        match (sub.as_str(), argv.len()) {
            ("whoami", 2) => Reply::bulk(s.user.clone().unwrap_or_else(|| "default".into())),
            ("cat", 2) => Reply::bulks(
                raftify_cache::command_rules::CATEGORIES
                    .iter()
                    .map(|c| Bytes::from_static(c.as_bytes())),
            ),
            ("cat", 3) => {
                let cat = lower(&argv[2]);
                if !raftify_cache::command_rules::CATEGORIES.contains(&cat.as_str()) {
                    return Reply::err(format!("Unknown category '{cat}'"));
                }
                Reply::bulks(
                    crate::acl_categories::commands_in(&cat)
                        .into_iter()
                        .map(Bytes::from),
                )
            }
            ("users", 2) => {
                let mut names = vec![Bytes::from_static(b"default")];
                match self
                    .users(|users| users.keys().cloned().map(Bytes::from).collect::<Vec<_>>())
                    .await
                {
                    Ok(more) => names.extend(more),
                    Err(r) => return r,
                }
                Reply::bulks(names)
            }
            ("list", 2) => {
                let default = match &self.requirepass {
                    None => "user default on nopass ~* &* +@all".to_string(),
                    Some(p) => format!("user default on #{} ~* &* +@all", sha256_hex(p.as_bytes())),
                };
                let mut lines = vec![Bytes::from(default)];
                let more = self
                    .users(|users| {
                        users
                            .iter()
                            .map(|(n, u)| Bytes::from(u.describe(n)))
                            .collect::<Vec<_>>()
                    })
                    .await;
                match more {
                    Ok(more) => lines.extend(more),
                    Err(r) => return r,
                }
                Reply::bulks(lines)
            }
            ("getuser", 3) => {
                let name = String::from_utf8_lossy(&argv[2]).into_owned();
                match self.users(|users| users.get(&name).cloned()).await {
                    Err(r) => r,
                    Ok(None) => Reply::Nil,
                    Ok(Some(u)) => {
                        let mut flags = vec![Reply::bulk(if u.enabled { "on" } else { "off" })];
                        if u.nopass {
                            flags.push(Reply::bulk("nopass"));
                        }
                        Reply::Map(vec![
                            (Reply::bulk("flags"), Reply::Array(flags)),
                            (
                                Reply::bulk("passwords"),
                                Reply::bulks(u.passwords.iter().cloned().map(Bytes::from)),
                            ),
                            (Reply::bulk("commands"), Reply::bulk(u.commands.text())),
                            (Reply::bulk("keys"), Reply::bulk(u.key_rules())),
                            (Reply::bulk("channels"), Reply::bulk(u.channel_rules())),
                        ])
                    }
                }
            }
            ("setuser", n) if n >= 3 => {
                // Command rules must name commands this server has.
                if let Some(bad) = argv[3..]
                    .iter()
                    .find(|r| !crate::acl_categories::names_known_command(r))
                {
                    return Reply::err(raftify_cache::command_rules::unknown(
                        &String::from_utf8_lossy(bad),
                    ));
                }
                let rules = argv[3..]
                    .iter()
                    .map(|r| match r.first() {
                        Some(b'>') => Bytes::from(format!("#{}", sha256_hex(&r[1..]))),
                        Some(b'<') => Bytes::from(format!("!{}", sha256_hex(&r[1..]))),
                        _ => r.clone(),
                    })
                    .collect();
                self.propose_acl(Op::SetUser {
                    name: argv[2].clone(),
                    rules,
                    legacy: false,
                })
                .await
            }
            ("deluser", n) if n >= 3 => {
                if argv[2..].iter().any(|n| &n[..] == b"default") {
                    return Reply::err("The 'default' user cannot be removed");
                }
                self.propose_acl(Op::DelUser(argv[2..].to_vec())).await
            }
            _ => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{sub}'. Try ACL HELP."
            )),
        }
    }

    /// Reads the ACL users: a single group's, or on a sharded node the
    /// cluster's ([`raftify_cache::acl::SharedUsers`]).
    async fn users<T>(&self, f: impl FnOnce(&Users) -> T) -> Result<T, Reply> {
        match (&self.node, &self.shard) {
            (Some(node), _) => Ok(node.stale_read(|sm| f(sm.users())).await),
            (None, Some(shard)) => Ok(shard.users.read(f)),
            (None, None) => Err(crate::sharded::unsupported()),
        }
    }

    /// Proposes an ACL change: to the group's log, or on a sharded node
    /// to the metadata group's (every node's users).
    async fn propose_acl(&self, op: Op) -> Reply {
        let entry = CacheEntry {
            clock_ms: unix_ms(),
            op,
        };
        match (&self.node, &self.shard) {
            (Some(node), _) => match node.propose(&entry).await {
                Ok(r) => r,
                Err(e) => error_reply(&e),
            },
            (None, Some(shard)) => propose_shared(&shard.host, &entry).await,
            (None, None) => crate::sharded::unsupported(),
        }
    }
}

/// Proposes an ACL change (`entry`) to a sharded cluster's metadata
/// group, where its users are kept: the group's answer, or the failure as
/// a Redis error reply.
pub(crate) async fn propose_shared(
    host: &raftify_shard::ShardHost<CacheEntry, raftify_cache::CacheState>,
    entry: &CacheEntry,
) -> Reply {
    let command = match entry.encode() {
        Ok(c) => c,
        Err(e) => return Reply::err(e),
    };
    match host.propose_shared(command).await {
        Ok(answer) => Reply::decode(&answer).unwrap_or_else(|e| Reply::err(format!("ACL: {e}"))),
        Err(e) => crate::server::shard_error_reply(&e),
    }
}
