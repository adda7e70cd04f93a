//! The wire: requests out of a connection's buffer (RESP multibulk, or an
//! inline command for `telnet`/`nc`), within explicit limits, and replies
//! in RESP2 or RESP3. Frames are decoded and encoded by `redis-protocol`;
//! this module only measures a request before handing it over, so a
//! client announcing a huge frame is refused at once instead of buffered.

use bytes::{Bytes, BytesMut};
use raftify_cache::Reply;
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// Most arguments in one request (Redis's limit).
pub const MAX_MULTIBULK: usize = 1024 * 1024;
/// Longest inline command or header line.
pub const MAX_INLINE: usize = 64 * 1024;

/// What the buffer holds next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A whole command (its arguments, the name first); empty for an
    /// empty line or `*0`.
    Command(Vec<Bytes>),
    /// Not a whole request yet.
    Incomplete,
    /// A protocol error: answered with this text, then the connection is
    /// closed (as Redis does).
    Error(String),
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn number(buf: &[u8], from: usize, to: usize) -> Option<i64> {
    std::str::from_utf8(&buf[from..to]).ok()?.parse().ok()
}

/// The length of the multibulk request at the start of `buf`, if whole.
fn multibulk_len(buf: &[u8], max_bulk: usize) -> Result<Option<usize>, String> {
    let Some(eol) = line_end(buf, 0) else {
        return match buf.len() > MAX_INLINE {
            true => Err("Protocol error: too big mbulk count string".into()),
            false => Ok(None),
        };
    };
    let count = match number(buf, 1, eol) {
        Some(n) if n <= MAX_MULTIBULK as i64 => n,
        _ => return Err("Protocol error: invalid multibulk length".into()),
    };
    let mut at = eol + 2;
    for _ in 0..count.max(0) {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(format!(
                "Protocol error: expected '$', got '{}'",
                buf[at] as char
            ));
        }
        let Some(eol) = line_end(buf, at) else {
            return match buf.len() - at > MAX_INLINE {
                true => Err("Protocol error: too big bulk count string".into()),
                false => Ok(None),
            };
        };
        let len = match number(buf, at + 1, eol) {
            Some(n) if n >= 0 && n as u64 <= max_bulk as u64 => n as usize,
            _ => return Err("Protocol error: invalid bulk length".into()),
        };
        at = eol + 2 + len + 2;
    }
    Ok((at <= buf.len()).then_some(at))
}

/// Splits an inline command as Redis does (`sdssplitargs`): whitespace
/// separated, with "double" (and `\n`, `\xHH` escapes) or 'single' quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, String> {
    let unbalanced = || "Protocol error: unbalanced quotes in request".to_string();
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(unbalanced());
                    };
                    match c {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\'
                            if i + 3 < line.len()
                                && line[i + 1] == b'x'
                                && line[i + 2].is_ascii_hexdigit()
                                && line[i + 3].is_ascii_hexdigit() =>
                        {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4])
                                .map_err(|_| unbalanced())?;
                            arg.push(u8::from_str_radix(hex, 16).map_err(|_| unbalanced())?);
                            i += 4;
                        }
                        b'\\' if i + 1 < line.len() => {
                            arg.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        c => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(unbalanced());
                    };
                    if c == b'\'' {
                        i += 1;
                        break;
                    }
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        arg.push(b'\'');
                        i += 2;
                    } else {
                        arg.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        // A closing quote must be followed by a space or the end.
        if i < line.len() && !line[i].is_ascii_whitespace() {
            return Err(unbalanced());
        }
        out.push(Bytes::from(arg));
    }
    Ok(out)
}

/// Takes the next request out of `buf`, refusing bulk strings longer than
/// `max_bulk` bytes.
pub fn next_command(buf: &mut BytesMut, max_bulk: usize) -> Next {
    if buf.is_empty() {
        return Next::Incomplete;
    }
    if buf[0] != b'*' {
        let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
            return match buf.len() > MAX_INLINE {
                true => Next::Error("Protocol error: too big inline request".into()),
                false => Next::Incomplete,
            };
        };
        let line = buf.split_to(eol + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return match split_inline(line) {
            Ok(args) => Next::Command(args),
            Err(e) => Next::Error(e),
        };
    }
    match multibulk_len(buf, max_bulk) {
        Err(e) => return Next::Error(e),
        Ok(None) => return Next::Incomplete,
        Ok(Some(_)) => {}
    }
    match redis_protocol::resp2::decode::decode_bytes_mut(buf) {
        Ok(Some((Frame2::Array(items), _, _))) => {
            let mut args = Vec::with_capacity(items.len());
            for f in items {
                match f {
                    Frame2::BulkString(b) => args.push(b),
                    _ => return Next::Error("Protocol error: expected a bulk string".into()),
                }
            }
            Next::Command(args)
        }
        Ok(Some((Frame2::Null, _, _))) => Next::Command(Vec::new()),
        Ok(Some(_)) => Next::Error("Protocol error: expected an array".into()),
        Ok(None) => Next::Incomplete,
        Err(e) => Next::Error(format!("Protocol error: {e}")),
    }
}

/// Appends `reply` to `out` in the connection's protocol (2 or 3).
pub fn encode(reply: &Reply, resp3: bool, out: &mut BytesMut) {
    let r = if resp3 {
        redis_protocol::resp3::encode::complete::extend_encode(out, &to_resp3(reply), false)
            .map(|_| ())
    } else {
        redis_protocol::resp2::encode::extend_encode(out, &to_resp2(reply), false).map(|_| ())
    };
    if let Err(e) = r {
        // Only a frame the encoder cannot size reaches here; say so.
        let msg = Frame2::Error(format!("ERR cannot encode the reply: {e}").into());
        let _ = redis_protocol::resp2::encode::extend_encode(out, &msg, false);
    }
}

fn double_text(d: f64) -> Bytes {
    raftify_cache::commands::format_f64(d)
}

fn to_resp2(r: &Reply) -> Frame2 {
    match r {
        Reply::Ok => Frame2::SimpleString(Bytes::from_static(b"OK")),
        Reply::Simple(s) => Frame2::SimpleString(Bytes::from(s.clone())),
        Reply::Error(e) => Frame2::Error(e.clone().into()),
        Reply::Int(i) => Frame2::Integer(*i),
        Reply::Bulk(b) => Frame2::BulkString(b.clone()),
        Reply::Nil | Reply::NilArray => Frame2::Null,
        Reply::Array(items) | Reply::Push(items) => {
            Frame2::Array(items.iter().map(to_resp2).collect())
        }
        Reply::Double(d) => Frame2::BulkString(double_text(*d)),
        Reply::Map(pairs) | Reply::Pairs(pairs) => Frame2::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [to_resp2(k), to_resp2(v)])
                .collect(),
        ),
    }
}

fn to_resp3(r: &Reply) -> Frame3 {
    match r {
        Reply::Ok => Frame3::SimpleString {
            data: Bytes::from_static(b"OK"),
            attributes: None,
        },
        Reply::Simple(s) => Frame3::SimpleString {
            data: Bytes::from(s.clone()),
            attributes: None,
        },
        Reply::Error(e) => Frame3::SimpleError {
            data: e.clone().into(),
            attributes: None,
        },
        Reply::Int(i) => Frame3::Number {
            data: *i,
            attributes: None,
        },
        Reply::Bulk(b) => Frame3::BlobString {
            data: b.clone(),
            attributes: None,
        },
        Reply::Nil | Reply::NilArray => Frame3::Null,
        Reply::Array(items) => Frame3::Array {
            data: items.iter().map(to_resp3).collect(),
            attributes: None,
        },
        Reply::Double(d) => Frame3::Double {
            data: *d,
            attributes: None,
        },
        Reply::Map(pairs) => Frame3::Map {
            data: pairs
                .iter()
                .map(|(k, v)| (to_resp3(k), to_resp3(v)))
                .collect(),
            attributes: None,
        },
        Reply::Push(items) => Frame3::Push {
            data: items.iter().map(to_resp3).collect(),
            attributes: None,
        },
        Reply::Pairs(pairs) => Frame3::Array {
            data: pairs
                .iter()
                .map(|(k, v)| Frame3::Array {
                    data: vec![to_resp3(k), to_resp3(v)],
                    attributes: None,
                })
                .collect(),
            attributes: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(bytes: &[u8]) -> (Next, usize) {
        let mut buf = BytesMut::from(bytes);
        let n = next_command(&mut buf, 1024);
        (n, buf.len())
    }

    fn cmd(words: &[&str]) -> Next {
        Next::Command(
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn requests_are_framed_within_the_limits() {
        assert_eq!(
            next(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1"),
            (cmd(&["GET", "k"]), 2)
        );
        assert_eq!(next(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r").0, Next::Incomplete);
        assert_eq!(next(b"*2\r\n$3\r\nGE").0, Next::Incomplete);
        assert_eq!(next(b"PING\r\n"), (cmd(&["PING"]), 0));
        assert_eq!(next(b"set k \"a b\\x41\"\n").0, cmd(&["set", "k", "a bA"]));
        assert_eq!(next(b"\r\n").0, Next::Command(Vec::new()));
        assert!(matches!(next(b"set k \"open\n").0, Next::Error(e) if e.contains("unbalanced")));
        assert!(
            matches!(next(b"*1\r\n$99999\r\n").0, Next::Error(e) if e.contains("invalid bulk length"))
        );
        assert!(
            matches!(next(b"*99999999\r\n").0, Next::Error(e) if e.contains("invalid multibulk length"))
        );
        assert!(matches!(next(b"*1\r\n+OK\r\n").0, Next::Error(e) if e.contains("expected '$'")));
        assert!(
            matches!(next(&[b'x'; MAX_INLINE + 1]).0, Next::Error(e) if e.contains("too big inline"))
        );
    }

    #[test]
    fn replies_follow_the_protocol_version() {
        let r = Reply::Map(vec![(Reply::bulk("f"), Reply::Double(1.5))]);
        let mut two = BytesMut::new();
        encode(&r, false, &mut two);
        assert_eq!(&two[..], b"*2\r\n$1\r\nf\r\n$3\r\n1.5\r\n");
        let mut three = BytesMut::new();
        encode(&r, true, &mut three);
        assert_eq!(&three[..], b"%1\r\n$1\r\nf\r\n,1.5\r\n");
        let mut nil = BytesMut::new();
        encode(&Reply::Nil, false, &mut nil);
        assert_eq!(&nil[..], b"$-1\r\n");
    }
}
