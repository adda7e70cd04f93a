//! Decoders of user entries for `debug persisted --decode`: raftify stores
//! an application's commands as opaque bytes; a decoder turns them into a
//! line for the table and a value for `--json`.
//!
//! Built in: `memstore` (its `KvEntry` commands), `utf8`, `hex`, `json`.
//! Any other format: `--decode-cmd PROGRAM`, run through `sh -c` once per
//! entry with the entry's bytes on stdin; the first line it prints is shown
//! (a non-zero exit or no output is shown as an error for that entry). For
//! example `--decode-cmd 'protoc --decode_raw'` or `--decode-cmd 'xxd -p'`.

use memstore::store::KvEntry;
use raftify_core::AbstractLogEntry;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// A user entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// One line for the table.
    pub text: String,
    /// The same for `--json`.
    pub json: Value,
}

/// Turns a user entry's bytes into something readable.
pub trait Decoder {
    /// Decodes one entry; `Err` says why it could not.
    fn decode(&self, data: &[u8]) -> Result<Decoded, String>;
}

/// The built-in formats of `--decode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// memstore's commands: put, delete, cas with their keys and values.
    Memstore,
    /// The bytes as text (invalid UTF-8 replaced).
    Utf8,
    /// The bytes in hex.
    Hex,
    /// The bytes as a JSON document.
    Json,
}

/// The decoder for `format`.
pub fn builtin(format: Format) -> Box<dyn Decoder> {
    match format {
        Format::Memstore => Box::new(Memstore),
        Format::Utf8 => Box::new(Utf8),
        Format::Hex => Box::new(Hex),
        Format::Json => Box::new(Json),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value as text when it is UTF-8 (quoted, escaped), else `0x` + hex.
fn show(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", hex(b)),
    }
}

/// A value for JSON: `{"value": "text"}` when UTF-8, else
/// `{"value_hex": "..."}`, under `name`.
fn put_value(obj: &mut serde_json::Map<String, Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(name.to_string(), json!(s)),
        Err(_) => obj.insert(format!("{name}_hex"), json!(hex(b))),
    };
}

/// memstore's `KvEntry`, through memstore's own decoder.
struct Memstore;

impl Decoder for Memstore {
    fn decode(&self, data: &[u8]) -> Result<Decoded, String> {
        let entry = KvEntry::decode(data).map_err(|e| format!("not a memstore command: {e}"))?;
        let mut obj = serde_json::Map::new();
        let text = match &entry {
            KvEntry::Put { key, value } => {
                obj.insert("op".into(), json!("put"));
                obj.insert("key".into(), json!(key));
                put_value(&mut obj, "value", value);
                format!("put {key:?} = {}", show(value))
            }
            KvEntry::Delete { key } => {
                obj.insert("op".into(), json!("delete"));
                obj.insert("key".into(), json!(key));
                format!("delete {key:?}")
            }
            KvEntry::Cas {
                key,
                expected,
                value,
            } => {
                obj.insert("op".into(), json!("cas"));
                obj.insert("key".into(), json!(key));
                match expected {
                    Some(e) => put_value(&mut obj, "expected", e),
                    None => {
                        obj.insert("expected".into(), Value::Null);
                    }
                }
                put_value(&mut obj, "value", value);
                let was = expected.as_deref().map(show).unwrap_or("absent".into());
                format!("cas {key:?} if {was} then {}", show(value))
            }
            KvEntry::Incr { key, delta } => {
                obj.insert("op".into(), json!("incr"));
                obj.insert("key".into(), json!(key));
                obj.insert("delta".into(), json!(delta));
                format!("incr {key:?} by {delta}")
            }
        };
        Ok(Decoded {
            text,
            json: Value::Object(obj),
        })
    }
}

struct Utf8;

impl Decoder for Utf8 {
    fn decode(&self, data: &[u8]) -> Result<Decoded, String> {
        let s = String::from_utf8_lossy(data).into_owned();
        Ok(Decoded {
            text: format!("{s:?}"),
            json: json!(s),
        })
    }
}

struct Hex;

impl Decoder for Hex {
    fn decode(&self, data: &[u8]) -> Result<Decoded, String> {
        let h = hex(data);
        Ok(Decoded {
            text: h.clone(),
            json: json!(h),
        })
    }
}

struct Json;

impl Decoder for Json {
    fn decode(&self, data: &[u8]) -> Result<Decoded, String> {
        let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Decoded {
            text: v.to_string(),
            json: v,
        })
    }
}

/// `--decode-cmd PROGRAM`: a user's decoder as a program.
pub struct Program(pub String);

impl Decoder for Program {
    fn decode(&self, data: &[u8]) -> Result<Decoded, String> {
        let mut child = Command::new("sh")
            .args(["-c", &self.0])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", self.0))?;
        // Written from another thread: a program that prints before it
        // has read everything must not deadlock on a full pipe.
        let writer = child.stdin.take().map(|mut stdin| {
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            })
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{:?}: {e}", self.0))?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{:?} failed ({}): {}",
                self.0,
                out.status,
                err.lines().next().unwrap_or("")
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .next()
            .ok_or_else(|| format!("{:?} printed nothing", self.0))?;
        Ok(Decoded {
            text: line.to_string(),
            json: json!(line),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstore_commands_show_keys_and_values() {
        let d = builtin(Format::Memstore);
        let put = KvEntry::Put {
            key: "k1".into(),
            value: b"v\n1".to_vec(),
        };
        let got = d.decode(&put.encode().unwrap()).unwrap();
        assert_eq!(got.text, r#"put "k1" = "v\n1""#);
        assert_eq!(got.json, json!({"op": "put", "key": "k1", "value": "v\n1"}));
        let cas = KvEntry::Cas {
            key: "k".into(),
            expected: None,
            value: vec![0xff, 0],
        };
        let got = d.decode(&cas.encode().unwrap()).unwrap();
        assert_eq!(got.text, r#"cas "k" if absent then 0xff00"#);
        assert_eq!(
            got.json,
            json!({"op": "cas", "key": "k", "expected": null, "value_hex": "ff00"})
        );
        assert!(d.decode(b"\x09garbage").is_err());
    }

    #[test]
    fn a_program_decodes_from_stdin() {
        let got = Program("tr a-z A-Z".into()).decode(b"abc").unwrap();
        assert_eq!(got.text, "ABC");
        assert!(Program("exit 3".into()).decode(b"x").is_err());
        assert_eq!(
            builtin(Format::Hex).decode(b"\x01\xab").unwrap().text,
            "01ab"
        );
    }
}
