//! ACL users, replicated through the log so every node authenticates them
//! alike: enabled or not, SHA-256 password hashes (never the passwords:
//! the proposing node hashes `>password` rules into `#hash` before they
//! enter the log), the commands they may run ([`CommandRules`]), and the
//! keys and channels they may use.
//! The `default` user is each node's own (`--requirepass`), not in here.

use crate::command_rules::CommandRules;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

/// One user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// `on`: may authenticate.
    pub enabled: bool,
    /// `nopass`: any password authenticates.
    pub nopass: bool,
    /// SHA-256 of each accepted password, lowercase hex.
    pub passwords: BTreeSet<String>,
    /// The commands it may run ([`CommandRules`]).
    pub commands: CommandRules,
    /// The keys it may touch: `None` every key (`~*`, `allkeys`, and a
    /// user given no key rule), else those matching one of these globs
    /// (`~pattern`; `resetkeys`: none).
    pub keys: Option<Vec<Bytes>>,
    /// The pub/sub channels it may use: `None` every channel (`&*`,
    /// `allchannels`, and a user given no channel rule), else those
    /// matching one of these globs (`&pattern`; `resetchannels`: none).
    pub channels: Option<Vec<Bytes>>,
}

impl User {
    /// Whether the user may touch `key` (its key patterns).
    pub fn may_access(&self, key: &[u8]) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| crate::commands::glob_match(p, key)))
    }

    /// Whether the user may publish to or subscribe to `channel`.
    pub fn may_use_channel(&self, channel: &[u8]) -> bool {
        self.channels.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| crate::commands::glob_match(p, channel))
        })
    }

    /// Whether the user may `PSUBSCRIBE` to `pattern`: one of its channel
    /// patterns, literally (as Redis checks it).
    pub fn may_use_pattern(&self, pattern: &[u8]) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| &p[..] == pattern))
    }

    /// Its key rules as `ACL GETUSER` shows them: `~*`, or each pattern.
    pub fn key_rules(&self) -> String {
        rules_text(&self.keys, '~')
    }

    /// Its channel rules as `ACL GETUSER` shows them: `&*`, or each pattern.
    pub fn channel_rules(&self) -> String {
        rules_text(&self.channels, '&')
    }

    /// The rules that make this user when given to `ACL SETUSER`, from
    /// whatever the name held before: `reset`, then its `ACL LIST` line's
    /// (what snapshots keep, and a restore into a sharded cluster carries).
    pub fn as_rules(&self, name: &str) -> Vec<Bytes> {
        std::iter::once(Bytes::from_static(b"reset"))
            .chain(rules_of_line(self.describe(name).as_bytes()))
            .collect()
    }

    /// Redis's `ACL LIST` line for this user.
    pub fn describe(&self, name: &str) -> String {
        let mut out = format!("user {name} {}", if self.enabled { "on" } else { "off" });
        if self.nopass {
            out.push_str(" nopass");
        }
        for p in &self.passwords {
            out.push_str(&format!(" #{p}"));
        }
        // A list from empty (`reset...` first), so that the line read back
        // is this user.
        for (list, reset, rules) in [
            (&self.keys, " resetkeys", self.key_rules()),
            (&self.channels, " resetchannels", self.channel_rules()),
        ] {
            if list.is_some() {
                out.push_str(reset);
            }
            if !rules.is_empty() {
                out.push(' ');
                out.push_str(&rules);
            }
        }
        out.push(' ');
        out.push_str(&self.commands.text());
        out
    }
}

/// A `~pattern` or `&pattern` rule: its sigil and pattern (non-empty,
/// UTF-8, no whitespace).
fn pattern(rule: &Bytes) -> Option<(u8, Bytes)> {
    let (&sigil, rest) = rule.split_first()?;
    let text = std::str::from_utf8(rest).ok()?;
    (matches!(sigil, b'~' | b'&') && !text.is_empty() && !text.contains(char::is_whitespace))
        .then(|| (sigil, Bytes::copy_from_slice(rest)))
}

fn rules_text(list: &Option<Vec<Bytes>>, sigil: char) -> String {
    match list {
        None => format!("{sigil}*"),
        Some(patterns) => patterns
            .iter()
            .map(|p| format!("{sigil}{}", String::from_utf8_lossy(p)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The rules of an `ACL LIST` line (`user NAME` then its rules).
pub(crate) fn rules_of_line(line: &[u8]) -> Vec<Bytes> {
    line.split(|b| *b == b' ')
        .skip(2)
        .map(Bytes::copy_from_slice)
        .collect()
}

/// The replicated users.
pub type Users = BTreeMap<String, User>;

/// Applies `ACL SETUSER name rules...` (rules already hashed: `#hex`, not
/// `>password`); the text of the error Redis gives for a bad rule.
pub fn set_user(users: &mut Users, name: &str, rules: &[Bytes]) -> Result<(), String> {
    set_user_as(users, name, rules, false)
}

/// [`set_user`]; `legacy`: an `ACL SETUSER` proposed before command
/// rules ([`crate::Op::SetUser`]'s `legacy`), whose `+@read` and `-@write`
/// mean what they meant then (a user allowed every command or reads only)
/// and whose other command rules are refused as they were.
pub fn set_user_as(
    users: &mut Users,
    name: &str,
    rules: &[Bytes],
    legacy: bool,
) -> Result<(), String> {
    if name.is_empty() || name == "default" || name.contains(char::is_whitespace) {
        return Err(format!(
            "invalid user name '{name}' (the default user is set with --requirepass)"
        ));
    }
    let mut user = users.get(name).cloned().unwrap_or_default();
    for rule in rules {
        let r = String::from_utf8_lossy(rule).into_owned();
        let lower = r.to_ascii_lowercase();
        match lower.as_str() {
            "on" => user.enabled = true,
            "off" => user.enabled = false,
            "nopass" => {
                user.nopass = true;
                user.passwords.clear();
            }
            "resetpass" => {
                user.nopass = false;
                user.passwords.clear();
            }
            "~*" | "allkeys" => user.keys = None,
            "resetkeys" => user.keys = Some(Vec::new()),
            "&*" | "allchannels" => user.channels = None,
            "resetchannels" => user.channels = Some(Vec::new()),
            // A key (`~`) or channel (`&`) pattern narrows "every one" to
            // the patterns given. UTF-8 only: the user's ACL LIST line (what
            // snapshots keep) must read back as the same pattern.
            _ if pattern(rule).is_some() => {
                if let Some((sigil, p)) = pattern(rule) {
                    let list = if sigil == b'~' {
                        &mut user.keys
                    } else {
                        &mut user.channels
                    };
                    list.get_or_insert_with(Vec::new).push(p);
                }
            }
            "reset" => user = User::default(),
            _ if lower.starts_with('#')
                && lower.len() == 65
                && lower[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                user.nopass = false;
                user.passwords.insert(lower[1..].to_string());
            }
            _ if lower.starts_with('!') && lower.len() == 65 => {
                user.passwords.remove(&lower[1..]);
            }
            _ => {
                let applied = if legacy {
                    user.commands.apply_legacy(&r)
                } else {
                    user.commands.apply(&r)?
                };
                if !applied {
                    return Err(format!("Error in ACL SETUSER modifier '{r}': Syntax error"));
                }
            }
        }
    }
    users.insert(name.to_string(), user);
    Ok(())
}

/// Applies `ACL SETUSER` or `ACL DELUSER` (any other op: an error) —
/// what every copy of the users does with them, in log order.
pub fn apply(users: &mut Users, op: &crate::Op) -> crate::Reply {
    use crate::{Op, Reply};
    match op {
        Op::SetUser {
            name,
            rules,
            legacy,
        } => match set_user_as(users, &String::from_utf8_lossy(name), rules, *legacy) {
            Ok(()) => Reply::Ok,
            Err(e) => Reply::err(e),
        },
        Op::DelUser(names) => Reply::Int(
            names
                .iter()
                .filter(|n| users.remove(String::from_utf8_lossy(n).as_ref()).is_some())
                .count() as i64,
        ),
        _ => Reply::err("not an ACL change"),
    }
}

/// The users of a sharded cluster, shared by all its nodes: kept by the
/// metadata group ([`raftify_shard::SharedState`]) rather than by each
/// data group, so a user set on any node authenticates on every node. Its
/// commands are [`crate::CacheEntry`]s of `Op::SetUser`/`Op::DelUser`
/// (passwords already hashed), its answers encoded [`crate::Reply`]s.
#[derive(Debug, Default)]
pub struct SharedUsers {
    users: std::sync::RwLock<Users>,
}

impl SharedUsers {
    /// Reads the users as applied on this node.
    pub fn read<T>(&self, f: impl FnOnce(&Users) -> T) -> T {
        f(&self.users.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl raftify_shard::SharedState for SharedUsers {
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        use raftify_core::{AbstractLogEntry, Payload};
        let reply = match crate::CacheEntry::decode(command) {
            Ok(entry) => apply(
                &mut self.users.write().unwrap_or_else(|p| p.into_inner()),
                &entry.op,
            ),
            Err(e) => crate::Reply::err(format!("not an ACL change: {e}")),
        };
        reply.encode().unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if users.is_empty() || crate::snapshot::put_users(&mut out, &users).is_err() {
            return Vec::new();
        }
        out
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), raftify_core::BoxError> {
        let users = if snapshot.is_empty() {
            Users::new()
        } else {
            crate::snapshot::read_users(&mut &snapshot[..])?
        };
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_build_users_and_bad_ones_change_nothing() {
        let mut users = Users::new();
        let hash = "a".repeat(64);
        let rules: Vec<Bytes> = ["on", &format!("#{hash}"), "~*", "+@read"]
            .iter()
            .map(|r| Bytes::from(r.to_string()))
            .collect();
        set_user(&mut users, "reader", &rules).unwrap();
        let u = &users["reader"];
        assert!(
            u.enabled
                && u.commands.allows("get", None, &["read"])
                && !u.commands.allows("set", None, &["write"])
                && u.passwords.contains(&hash)
        );
        assert_eq!(
            u.describe("reader"),
            format!("user reader on #{hash} ~* &* -@all +@read")
        );
        assert!(set_user(
            &mut users,
            "reader",
            &[Bytes::from("+@all"), Bytes::from("bogus")]
        )
        .is_err());
        assert!(
            !users["reader"].commands.allows("set", None, &["write"]),
            "a refused SETUSER changes nothing"
        );
        assert!(set_user(&mut users, "default", &[]).is_err());
    }

    #[test]
    fn key_patterns_narrow_a_user_and_survive_its_acl_line() {
        let mut users = Users::new();
        let rules =
            |r: &[&str]| -> Vec<Bytes> { r.iter().map(|r| Bytes::from(r.to_string())).collect() };
        set_user(&mut users, "svc", &rules(&["on", "nopass", "+@all"])).unwrap();
        assert!(
            users["svc"].may_access(b"anything"),
            "no key rule: every key"
        );
        set_user(&mut users, "svc", &rules(&["~svc:*", "~shared"])).unwrap();
        let u = &users["svc"];
        assert!(u.may_access(b"svc:1") && u.may_access(b"shared"));
        assert!(!u.may_access(b"other:1") && !u.may_access(b"shared2"));
        let line = u.describe("svc");
        assert_eq!(line, "user svc on nopass resetkeys ~svc:* ~shared &* +@all");
        // The line read back (as snapshots do) is the same user.
        let mut back = Users::new();
        let words: Vec<&str> = line.split(' ').skip(2).collect();
        set_user(&mut back, "svc", &rules(&words)).unwrap();
        assert_eq!(back["svc"], users["svc"]);
        let not_utf8 = [Bytes::from_static(b"~\xff*")];
        assert!(
            set_user(&mut users, "svc", &not_utf8).is_err(),
            "a pattern must read back"
        );
        set_user(&mut users, "svc", &rules(&["resetkeys"])).unwrap();
        assert!(!users["svc"].may_access(b"svc:1"), "resetkeys: none");
        set_user(&mut users, "svc", &rules(&["&news.*"])).unwrap();
        let u = &users["svc"];
        assert!(u.may_use_channel(b"news.sport") && !u.may_use_channel(b"chat"));
        assert!(u.may_use_pattern(b"news.*") && !u.may_use_pattern(b"*"));
        let line = u.describe("svc");
        assert!(line.ends_with("resetchannels &news.* +@all"), "{line}");
        let mut back = Users::new();
        let words: Vec<&str> = line.split(' ').skip(2).collect();
        set_user(&mut back, "svc", &rules(&words)).unwrap();
        assert_eq!(back["svc"], users["svc"]);
        set_user(&mut users, "svc", &rules(&["allkeys", "allchannels"])).unwrap();
        assert!(users["svc"].may_access(b"other"));
        assert_eq!(
            users["svc"].describe("svc"),
            "user svc on nopass ~* &* +@all"
        );
    }

    #[test]
    fn a_users_rules_make_it_again_over_whatever_the_name_held() {
        let rules =
            |r: &[&str]| -> Vec<Bytes> { r.iter().map(|r| Bytes::from(r.to_string())).collect() };
        let hash = "c".repeat(64);
        let mut source = Users::new();
        let made = [
            "on",
            &format!("#{hash}"),
            "~svc:*",
            "&news.*",
            "-@all",
            "+@read",
            "+set",
        ];
        set_user(&mut source, "svc", &rules(&made)).unwrap();
        set_user(&mut source, "off-one", &rules(&["off", "nopass"])).unwrap();
        // A copy where the names held other users: given the rules (twice,
        // as a restore that resumes does), each is the source's again.
        let mut copy = Users::new();
        set_user(
            &mut copy,
            "svc",
            &rules(&["on", "nopass", "~other", "+@all"]),
        )
        .unwrap();
        for _ in 0..2 {
            for (name, user) in &source {
                set_user(&mut copy, name, &user.as_rules(name)).unwrap();
            }
        }
        assert_eq!(copy, source);
        assert_eq!(
            source["svc"].as_rules("svc")[0],
            Bytes::from_static(b"reset")
        );
    }

    #[test]
    fn shared_users_apply_changes_and_survive_a_snapshot() {
        use crate::{CacheEntry, Op, Reply};
        use raftify_core::{AbstractLogEntry, Payload};
        use raftify_shard::SharedState;
        let shared = SharedUsers::default();
        assert!(shared.snapshot().is_empty(), "no users: nothing to keep");
        let hash = "b".repeat(64);
        let set = |name: &str, rules: &[&str]| {
            let op = Op::SetUser {
                name: Bytes::from(name.to_string()),
                rules: rules.iter().map(|r| Bytes::from(r.to_string())).collect(),
                legacy: false,
            };
            CacheEntry { clock_ms: 1, op }.encode().unwrap()
        };
        let answer = |b: Vec<u8>| Reply::decode(&b).unwrap();
        assert_eq!(
            answer(shared.apply(&set("app", &["on", &format!("#{hash}"), "+@all"]))),
            Reply::Ok
        );
        assert!(matches!(
            answer(shared.apply(&set("bad", &["nonsense"]))),
            Reply::Error(_)
        ));
        assert!(matches!(answer(shared.apply(b"garbage")), Reply::Error(_)));
        shared.read(|u| {
            assert!(
                u["app"].commands.allows("set", None, &["write"])
                    && u["app"].passwords.contains(&hash)
            )
        });

        let other = SharedUsers::default();
        other.restore(&shared.snapshot()).unwrap();
        assert_eq!(other.read(Users::clone), shared.read(Users::clone));
        assert!(other.restore(b"\xff").is_err());
        let del = CacheEntry {
            clock_ms: 1,
            op: Op::DelUser(vec![Bytes::from_static(b"app")]),
        };
        assert_eq!(answer(other.apply(&del.encode().unwrap())), Reply::Int(1));
        other.restore(&[]).unwrap();
        assert!(other.read(Users::is_empty));
    }
}
