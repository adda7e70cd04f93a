//! ACL users, replicated through the log so every node authenticates them
//! alike: enabled or not, SHA-256 password hashes (never the passwords:
//! the proposing node hashes `>password` rules into `#hash` before they
//! enter the log), and whether they may run every command or only reads.
//! The `default` user is each node's own (`--requirepass`), not in here.

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
    /// `+@all` (true) or `+@read` (false): whether writes are allowed.
    pub writes: bool,
    /// Whether any command at all is allowed (`+@read` or `+@all`).
    pub commands: bool,
}

impl User {
    /// Redis's `ACL LIST` line for this user.
    pub fn describe(&self, name: &str) -> String {
        let mut out = format!("user {name} {}", if self.enabled { "on" } else { "off" });
        if self.nopass {
            out.push_str(" nopass");
        }
        for p in &self.passwords {
            out.push_str(&format!(" #{p}"));
        }
        out.push_str(" ~* &*");
        out.push_str(match (self.commands, self.writes) {
            (true, true) => " +@all",
            (true, false) => " -@all +@read",
            _ => " -@all",
        });
        out
    }
}

/// The replicated users.
pub type Users = BTreeMap<String, User>;

/// Applies `ACL SETUSER name rules...` (rules already hashed: `#hex`, not
/// `>password`); the text of the error Redis gives for a bad rule.
pub fn set_user(users: &mut Users, name: &str, rules: &[Bytes]) -> Result<(), String> {
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
            "+@all" | "allcommands" => {
                user.commands = true;
                user.writes = true;
            }
            "-@all" | "nocommands" => {
                user.commands = false;
                user.writes = false;
            }
            "+@read" => user.commands = true,
            "-@write" => user.writes = false,
            "~*" | "allkeys" | "&*" | "allchannels" | "resetkeys" | "resetchannels" => {}
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
            _ => return Err(format!("Error in ACL SETUSER modifier '{r}': Syntax error")),
        }
    }
    users.insert(name.to_string(), user);
    Ok(())
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
        assert!(u.enabled && u.commands && !u.writes && u.passwords.contains(&hash));
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
        assert!(!users["reader"].writes, "a refused SETUSER changes nothing");
        assert!(set_user(&mut users, "default", &[]).is_err());
    }
}
