//! Which commands an ACL user may run: Redis's command rules
//! (`+@all`/`allcommands`, `-@all`/`nocommands`, `+@category`,
//! `-@category`, `+command`, `-command`, `+command|subcommand`,
//! `-command|subcommand`), applied in order as Redis applies them — each
//! rule allows or forbids the commands it names, the last one that names a
//! command decides, and `+@all`/`-@all` start over.
//!
//! The rules are kept as given (after the last `+@all`/`-@all`) and judged
//! when a command runs, against the categories the front-end knows the
//! command by (Redis's own, for the commands it shares): the replicated
//! users need no command table, and a node reads back exactly what another
//! wrote.

/// Redis's command categories (`ACL CAT`).
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// A user's command rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandRules {
    /// `+@all` (true) or `-@all` (false, a new user's): where the rules
    /// start from.
    all: bool,
    /// `(allow, what)` in order: `what` is `@category`, `command` or
    /// `command|subcommand`, lowercase.
    rules: Vec<(bool, String)>,
}

impl CommandRules {
    /// Every command (`+@all`).
    pub fn all() -> Self {
        CommandRules {
            all: true,
            rules: Vec::new(),
        }
    }

    /// Applies one rule if it is a command rule: `Ok(true)` when it was,
    /// `Ok(false)` when it is another kind of rule, `Err` (Redis's text)
    /// for a command rule naming no category. Command names are checked
    /// by the front-end, which knows them (see [`command_rule`]).
    pub fn apply(&mut self, rule: &str) -> Result<bool, String> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "+@all" | "allcommands" => {
                *self = CommandRules::all();
                return Ok(true);
            }
            "-@all" | "nocommands" => {
                *self = CommandRules::default();
                return Ok(true);
            }
            _ => {}
        }
        let Some((allow, what)) = command_rule(&lower) else {
            return Ok(false);
        };
        if let Some(cat) = what.strip_prefix('@') {
            if !CATEGORIES.contains(&cat) {
                return Err(unknown(rule));
            }
        }
        // A later rule naming the same thing overrides it for every
        // command it names: the earlier one goes (the list stays bounded).
        self.rules.retain(|(_, w)| w != what);
        self.rules.push((allow, what.to_string()));
        Ok(true)
    }

    /// Applies a command rule of before command rules existed (a logged
    /// `ACL SETUSER` of then): `+@all`, `-@all` as now; `+@read` made a
    /// user with no commands a reader, `-@write` made a user with every
    /// command one — what those users' `ACL LIST` lines (`-@all +@read`)
    /// read back as now. False for any other rule (refused then).
    pub fn apply_legacy(&mut self, rule: &str) -> bool {
        let reader = || CommandRules {
            all: false,
            rules: vec![(true, "@read".to_string())],
        };
        match rule.to_ascii_lowercase().as_str() {
            "+@all" | "allcommands" => *self = CommandRules::all(),
            "-@all" | "nocommands" => *self = CommandRules::default(),
            "+@read" if !self.any() => *self = reader(),
            "-@write" if *self == CommandRules::all() => *self = reader(),
            "+@read" | "-@write" => {}
            _ => return false,
        }
        true
    }

    /// Whether `command` (with `sub`, its subcommand, for commands that
    /// have them), of `categories`, is allowed.
    pub fn allows(&self, command: &str, sub: Option<&str>, categories: &[&str]) -> bool {
        let mut ok = self.all;
        for (allow, what) in &self.rules {
            let hit = match what.strip_prefix('@') {
                Some(cat) => categories.contains(&cat),
                None => match what.split_once('|') {
                    Some((c, s)) => c == command && sub == Some(s),
                    None => what == command,
                },
            };
            if hit {
                ok = *allow;
            }
        }
        ok
    }

    /// Whether any command at all may be allowed.
    pub fn any(&self) -> bool {
        self.all || self.rules.iter().any(|(allow, _)| *allow)
    }

    /// The rules as `ACL LIST` shows them (and reads them back):
    /// `+@all` or `-@all`, then the rest in order.
    pub fn text(&self) -> String {
        let mut out = String::from(if self.all { "+@all" } else { "-@all" });
        for (allow, what) in &self.rules {
            out.push(' ');
            out.push(if *allow { '+' } else { '-' });
            out.push_str(what);
        }
        out
    }
}

/// A command rule's sign and what it names (`@category`, `command`,
/// `command|subcommand`; lowercase ASCII letters, digits, `_`, `-`); None
/// when `rule` is not one.
pub fn command_rule(rule: &str) -> Option<(bool, &str)> {
    let (allow, what) = match rule.split_at_checked(1)? {
        ("+", w) => (true, w),
        ("-", w) => (false, w),
        _ => return None,
    };
    let name = what.strip_prefix('@').unwrap_or(what);
    let ok = !name.is_empty()
        && name.split('|').count() <= 2
        && name.split('|').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
        && !(what.starts_with('@') && name.contains('|'));
    ok.then_some((allow, what))
}

/// Redis's error for a rule naming no known command or category.
pub fn unknown(rule: &str) -> String {
    format!("Error in ACL SETUSER modifier '{rule}': Unknown command or category name in ACL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> CommandRules {
        let mut r = CommandRules::default();
        for rule in list {
            assert_eq!(r.apply(rule), Ok(true), "{rule}");
        }
        r
    }

    #[test]
    fn the_last_rule_naming_a_command_decides() {
        let get = ("get", None, &["read", "string", "fast"][..]);
        let set = ("set", None, &["write", "string", "slow"][..]);
        let info = ("info", None, &["slow", "dangerous"][..]);
        let kill = (
            "client",
            Some("kill"),
            &["admin", "slow", "dangerous", "connection"][..],
        );
        let id = ("client", Some("id"), &["slow", "connection"][..]);
        let check = |r: &CommandRules, c: (&str, Option<&str>, &[&str])| r.allows(c.0, c.1, c.2);

        let none = CommandRules::default();
        assert!(!check(&none, get) && !none.any());
        let reader = rules(&["+@read"]);
        assert!(check(&reader, get) && !check(&reader, set) && !check(&reader, info));
        let safe = rules(&["+@all", "-@dangerous"]);
        assert!(check(&safe, get) && check(&safe, set) && !check(&safe, info));
        assert!(!check(&safe, kill) && check(&safe, id));
        // Order matters: a later allow wins over an earlier deny.
        let back = rules(&["+@all", "-@dangerous", "+info"]);
        assert!(check(&back, info));
        let subs = rules(&["-@all", "+client", "-client|kill"]);
        assert!(check(&subs, id) && !check(&subs, kill));
        // +@all / -@all start over.
        let over = rules(&["+get", "-@all", "+set"]);
        assert!(!check(&over, get) && check(&over, set));
        assert_eq!(over.text(), "-@all +set");
        assert_eq!(rules(&["allcommands", "-@write"]).text(), "+@all -@write");
        // Repeats do not grow the list, and mean the same.
        let rep = rules(&["+@read", "-get", "+@read", "-get", "+@read"]);
        assert_eq!(rep.text(), "-@all -get +@read");
        assert!(check(&rep, get));
    }

    #[test]
    fn legacy_rules_mean_what_they_meant() {
        let legacy = |list: &[&str]| {
            let mut r = CommandRules::default();
            for rule in list {
                assert!(r.apply_legacy(rule), "{rule}");
            }
            r
        };
        // What old snapshots hold for these users, read back now.
        let reader = rules(&["-@all", "+@read"]);
        assert_eq!(legacy(&["+@all", "-@write"]), reader);
        assert_eq!(legacy(&["+@read"]), reader);
        assert_eq!(legacy(&["+@all", "+@read"]), CommandRules::all());
        assert_eq!(legacy(&["-@write"]), CommandRules::default());
        let mut r = CommandRules::default();
        for refused in ["+get", "-@dangerous", "+@string"] {
            assert!(!r.apply_legacy(refused), "{refused}");
        }
    }

    #[test]
    fn the_text_reads_back_and_bad_rules_are_refused() {
        let r = rules(&["+@all", "-@dangerous", "+client|id", "-flushall"]);
        let mut back = CommandRules::default();
        for rule in r.text().split(' ') {
            assert_eq!(back.apply(rule), Ok(true));
        }
        assert_eq!(back, r);
        let mut x = CommandRules::default();
        assert_eq!(x.apply("+@nosuch"), Err(unknown("+@nosuch")));
        assert_eq!(x.apply("~*"), Ok(false), "not a command rule");
        assert_eq!(x.apply("on"), Ok(false));
        for bad in ["+", "+@", "+a|b|c", "+@read|x", "+a b", "+GeT"] {
            assert!(command_rule(bad).is_none(), "{bad}");
        }
        assert_eq!(command_rule("-client|kill"), Some((false, "client|kill")));
    }
}
