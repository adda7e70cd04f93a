//! The commands: how each reads or changes the keyspace, with Redis's
//! replies and error texts. The table ([`crate::table`]) says which are
//! reads and which go through the log.

pub(crate) mod hashes;
pub(crate) mod keys;
pub(crate) mod lists;
pub(crate) mod sets;
pub(crate) mod strings;
pub(crate) mod zsets;

use crate::keyspace::{Keyspace, Value};
use crate::reply::{errors, Reply};
use bytes::Bytes;

/// What a write command sees besides the keyspace: a deterministic source
/// of randomness (the same on every node: seeded from the entry).
pub struct WriteCtx {
    rng: u64,
}

impl WriteCtx {
    /// A context seeded with `seed` (the log index and clock of the entry).
    pub fn new(seed: u64) -> Self {
        WriteCtx { rng: seed | 1 }
    }

    /// The next pseudo-random number (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One step of a xorshift64 generator (`seed` must not be 0): for choices
/// that need not be the same on every node (SRANDMEMBER, eviction samples).
pub fn xorshift(mut seed: u64) -> u64 {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    seed
}

/// A read command: the keyspace as of a consistent point.
pub type ReadFn = fn(&Keyspace, &[Bytes]) -> Reply;
/// A write command, applied through the log on every node.
pub type WriteFn = fn(&mut Keyspace, &[Bytes], &mut WriteCtx) -> Reply;

/// Parses a Redis integer argument (decimal, optional `-`, no spaces or
/// `+`, no leading zeros but `0` itself).
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with('+') || s.len() > 20 {
        return None;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || (digits.len() > 1 && digits.starts_with('0'))
        || digits == "0" && s.starts_with('-')
    {
        return None;
    }
    s.parse().ok()
}

/// Parses a Redis float argument (`inf`, `-inf`, `+inf` included; never NaN).
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.trim() != s {
        return None;
    }
    let v = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse::<f64>().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// Formats a float as Redis replies with it (shortest round-trip form,
/// `inf`/`-inf`).
pub fn format_f64(v: f64) -> Bytes {
    if v.is_infinite() {
        return Bytes::from(if v > 0.0 { "inf" } else { "-inf" });
    }
    if v == v.trunc() && v.abs() < 1e17 {
        return Bytes::from(format!("{}", v as i64));
    }
    Bytes::from(format!("{v}"))
}

/// Whether argument `b` is `word`, ignoring ASCII case.
pub fn is(b: &[u8], word: &str) -> bool {
    b.eq_ignore_ascii_case(word.as_bytes())
}

/// The string at `key`: `Ok(None)` when missing, `Err` (WRONGTYPE) for
/// another type.
pub fn get_str<'a>(ks: &'a Keyspace, key: &[u8]) -> Result<Option<&'a Bytes>, Reply> {
    match ks.get(key).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(errors::wrong_type()),
    }
}

/// Runs `f` on the value at `key` after checking its type with `pick`,
/// creating it with `new` when missing (if given); settles the key after.
pub fn with_value<T>(
    ks: &mut Keyspace,
    key: &Bytes,
    new: Option<fn() -> Value>,
    pick: fn(&Value) -> bool,
    f: impl FnOnce(&mut Value) -> T,
) -> Result<Option<T>, Reply> {
    if let Some(item) = ks.get(key) {
        if !pick(&item.value) {
            return Err(errors::wrong_type());
        }
    } else {
        match new {
            Some(make) => {
                ks.insert(key.clone(), make(), None);
            }
            None => return Ok(None),
        }
    }
    let out = match ks.get_mut(key) {
        Some(item) => f(&mut item.value),
        None => return Ok(None),
    };
    ks.settle(key);
    Ok(Some(out))
}

/// The options of `SCAN`-family commands: `MATCH pattern`, `COUNT n`
/// and, where `with_type`, `TYPE name`.
pub struct ScanOpts<'a> {
    /// `MATCH`.
    pub pattern: Option<&'a Bytes>,
    /// `COUNT` (default 10).
    pub count: usize,
    /// `TYPE`.
    pub type_: Option<&'a Bytes>,
}

/// A key's position in `SCAN`'s order (what its cursors count in): a
/// front-end that merges the `SCAN`s of several keyspaces (a sharded
/// node's groups) orders their keys by it.
pub fn scan_position(key: &[u8]) -> u64 {
    crate::scan_order::scan_hash(key)
}

/// A `SCAN`/`HSCAN` cursor as Redis reads one (`strtoul`): digits with an
/// optional sign, a negative one wrapping (`-1` is 2^64 - 1); out of range
/// or anything else: `ERR invalid cursor`.
pub fn parse_cursor(b: &[u8]) -> Result<u64, Reply> {
    let invalid = || Reply::err("invalid cursor");
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    Ok(if negative { n.wrapping_neg() } else { n })
}

/// Parses [`ScanOpts`] from `a[from..]`.
pub fn scan_opts(a: &[Bytes], from: usize, with_type: bool) -> Result<ScanOpts<'_>, Reply> {
    let mut o = ScanOpts {
        pattern: None,
        count: 10,
        type_: None,
    };
    let mut i = from;
    while i < a.len() {
        let Some(v) = a.get(i + 1) else {
            return Err(errors::syntax());
        };
        if is(&a[i], "MATCH") {
            o.pattern = Some(v);
        } else if is(&a[i], "COUNT") {
            match parse_i64(v) {
                Some(n) if n >= 1 => o.count = n as usize,
                Some(_) => return Err(errors::syntax()),
                None => return Err(errors::not_integer()),
            }
        } else if with_type && is(&a[i], "TYPE") {
            o.type_ = Some(v);
        } else {
            return Err(errors::syntax());
        }
        i += 2;
    }
    Ok(o)
}

/// Resolves a Redis index range (`start`, `stop` inclusive, negatives from
/// the end) over `len` items to a half-open range; None when empty.
pub fn index_range(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut s = if start < 0 {
        len.saturating_add(start)
    } else {
        start
    };
    let mut e = if stop < 0 {
        len.saturating_add(stop)
    } else {
        stop
    };
    if s < 0 {
        s = 0;
    }
    if e >= len {
        e = len - 1;
    }
    (s <= e && s < len && e >= 0).then(|| (s as usize, e as usize + 1))
}

/// Redis's glob matching (`*`, `?`, `[...]` with `^` and ranges, `\`
/// escapes), as `KEYS` and `SCAN MATCH` use it.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    fn go(p: &[u8], s: &[u8], depth: usize) -> bool {
        if depth > 1000 {
            return false;
        }
        let (mut pi, mut si) = (0, 0);
        while pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi + 1 < p.len() && p[pi + 1] == b'*' {
                        pi += 1;
                    }
                    if pi + 1 == p.len() {
                        return true;
                    }
                    return (si..=s.len()).any(|k| go(&p[pi + 1..], &s[k..], depth + 1));
                }
                b'?' => {
                    if si >= s.len() {
                        return false;
                    }
                    si += 1;
                    pi += 1;
                }
                b'[' => {
                    if si >= s.len() {
                        return false;
                    }
                    let c = s[si];
                    pi += 1;
                    let not = pi < p.len() && p[pi] == b'^';
                    if not {
                        pi += 1;
                    }
                    let mut matched = false;
                    while pi < p.len() && p[pi] != b']' {
                        if p[pi] == b'\\' && pi + 1 < p.len() {
                            pi += 1;
                            matched |= p[pi] == c;
                            pi += 1;
                        } else if pi + 2 < p.len() && p[pi + 1] == b'-' && p[pi + 2] != b']' {
                            let (lo, hi) = (p[pi].min(p[pi + 2]), p[pi].max(p[pi + 2]));
                            matched |= lo <= c && c <= hi;
                            pi += 3;
                        } else {
                            matched |= p[pi] == c;
                            pi += 1;
                        }
                    }
                    if pi < p.len() {
                        pi += 1; // the ']'
                    }
                    if matched == not {
                        return false;
                    }
                    si += 1;
                }
                b'\\' if pi + 1 < p.len() => {
                    if si >= s.len() || s[si] != p[pi + 1] {
                        return false;
                    }
                    pi += 2;
                    si += 1;
                }
                c => {
                    if si >= s.len() || s[si] != c {
                        return false;
                    }
                    pi += 1;
                    si += 1;
                }
            }
        }
        si == s.len()
    }
    go(pattern, s, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_as_redis_does() {
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        for bad in [
            &b""[..],
            b"+1",
            b" 1",
            b"01",
            b"-0",
            b"1.0",
            b"99999999999999999999",
            b"x",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_f64(b"1.5"), Some(1.5));
        assert_eq!(parse_f64(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_f64(b"nan"), None);
        assert_eq!(&format_f64(10.5)[..], b"10.5");
        assert_eq!(&format_f64(3000.0)[..], b"3000");
    }

    #[test]
    fn scan_options_parse_once_for_every_scan_command() {
        let a: Vec<Bytes> = ["SCAN", "0", "match", "k*", "COUNT", "5", "TYPE", "hash"]
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        let o = scan_opts(&a, 2, true)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        assert_eq!(
            (o.pattern.map(|p| &p[..]), o.count, o.type_.map(|t| &t[..])),
            (Some(&b"k*"[..]), 5, Some(&b"hash"[..]))
        );
        assert!(scan_opts(&a, 2, false).is_err(), "TYPE only where allowed");
        assert!(
            scan_opts(&a[..5], 2, true).is_err(),
            "an option without its value"
        );
        let zero: Vec<Bytes> = ["COUNT", "0"]
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        assert!(scan_opts(&zero, 0, true).is_err());
    }

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"user:*:name", b"user:42:name"));
        assert!(!glob_match(b"user:*:name", b"user:42:age"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(&b"*a".repeat(50), &b"b".repeat(60)));
    }

    #[test]
    fn index_ranges_clamp_like_lrange() {
        assert_eq!(index_range(0, -1, 3), Some((0, 3)));
        assert_eq!(index_range(-2, -1, 3), Some((1, 3)));
        assert_eq!(index_range(5, 10, 3), None);
        assert_eq!(index_range(-100, 0, 3), Some((0, 1)));
        assert_eq!(index_range(2, 1, 3), None);
        assert_eq!(index_range(0, -1, 0), None);
        assert_eq!(index_range(i64::MIN, i64::MAX, 3), Some((0, 3)));
        assert_eq!(index_range(i64::MIN, i64::MIN, 3), None);
    }
}
