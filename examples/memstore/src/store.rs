//! `HashStore`: the replicated key-value map, and `KvEntry`: its commands.
//!
//! Entries and snapshots use a small length-prefixed binary format; every
//! decoder checks bounds and returns an error on anything malformed.

use raftify_core::{AbstractLogEntry, AbstractStateMachine, BoxError, Payload, SnapshotView};
use std::io::Read;
use std::sync::Arc;

/// A command replicated through the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEntry {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        key: String,
    },
    /// Set `key` to `value` only if its current value is `expected`
    /// (`None`: the key must be absent).
    Cas {
        /// Key.
        key: String,
        /// Expected current value.
        expected: Option<Vec<u8>>,
        /// New value.
        value: Vec<u8>,
    },
    /// Add `delta` to the integer (decimal string) at `key`, 0 when absent;
    /// fails, changing nothing, when the value is not an integer or the sum
    /// overflows an `i64`.
    Incr {
        /// Key.
        key: String,
        /// What to add.
        delta: i64,
    },
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;
const TAG_INCR: u8 = 4;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BoxError> {
        if self.0.len() < n {
            return Err(format!("truncated: need {n} bytes, have {}", self.0.len()).into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BoxError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BoxError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, BoxError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, BoxError> {
        Ok(i64::from_be_bytes(self.u64()?.to_be_bytes()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], BoxError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, BoxError> {
        Ok(std::str::from_utf8(self.bytes()?)?.to_string())
    }
    fn end(&self) -> Result<(), BoxError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.0.len()).into())
        }
    }
}

impl AbstractLogEntry for KvEntry {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        match self {
            KvEntry::Put { key, value } => {
                out.push(TAG_PUT);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            KvEntry::Delete { key } => {
                out.push(TAG_DELETE);
                put_bytes(&mut out, key.as_bytes());
            }
            KvEntry::Cas {
                key,
                expected,
                value,
            } => {
                out.push(TAG_CAS);
                put_bytes(&mut out, key.as_bytes());
                match expected {
                    Some(e) => {
                        out.push(1);
                        put_bytes(&mut out, e);
                    }
                    None => out.push(0),
                }
                put_bytes(&mut out, value);
            }
            KvEntry::Incr { key, delta } => {
                out.push(TAG_INCR);
                put_bytes(&mut out, key.as_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        let mut r = Reader(bytes);
        let entry = match r.u8()? {
            TAG_PUT => KvEntry::Put {
                key: r.string()?,
                value: r.bytes()?.to_vec(),
            },
            TAG_DELETE => KvEntry::Delete { key: r.string()? },
            TAG_CAS => {
                let key = r.string()?;
                let expected = match r.u8()? {
                    0 => None,
                    1 => Some(r.bytes()?.to_vec()),
                    f => return Err(format!("bad expected flag {f}").into()),
                };
                KvEntry::Cas {
                    key,
                    expected,
                    value: r.bytes()?.to_vec(),
                }
            }
            TAG_INCR => KvEntry::Incr {
                key: r.string()?,
                delta: r.i64()?,
            },
            t => return Err(format!("unknown entry tag {t}").into()),
        };
        r.end()?;
        Ok(entry)
    }
}

/// What applying an entry returns to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutput {
    /// The log index of the entry.
    pub index: u64,
    /// Put, Incr: always true. Delete: whether the key existed. Cas:
    /// whether it swapped.
    pub ok: bool,
    /// Incr: the new value.
    pub value: Option<i64>,
}

/// 8 bytes of index, one byte of `ok`, then (Incr) 8 bytes of value.
impl Payload for ApplyOutput {
    fn encode(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = self.index.to_be_bytes().to_vec();
        out.push(self.ok as u8);
        if let Some(v) = self.value {
            out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        let mut r = Reader(bytes);
        let index = r.u64()?;
        let ok = r.u8()? != 0;
        let value = if r.0.is_empty() { None } else { Some(r.i64()?) };
        r.end()?;
        Ok(ApplyOutput { index, ok, value })
    }
}

/// The map: a persistent (structurally shared) hash map, so a snapshot
/// takes a copy of it in O(1) and serializes that off the raft loop while
/// writes go on. Keys and values are reference-counted: the nodes a write
/// copies after a snapshot copy pointers, not the data.
type Map = imbl::HashMap<Arc<str>, Arc<[u8]>>;

/// The replicated map: string keys, byte values.
#[derive(Debug, Default)]
pub struct HashStore {
    map: Map,
    /// Bytes of keys and values held (for metrics).
    data_bytes: u64,
}

impl HashStore {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn insert(&mut self, key: String, value: Vec<u8>) {
        let add = (key.len() + value.len()) as u64;
        let klen = key.len() as u64;
        if let Some(old) = self.map.insert(Arc::from(key), Arc::from(value)) {
            self.data_bytes -= klen + old.len() as u64;
        }
        self.data_bytes += add;
    }

    /// Adds `delta` to the integer at `key` (0 when absent) and returns the
    /// sum; an error, changing nothing, when the value is not a decimal
    /// `i64` or the sum overflows.
    fn incr(&mut self, key: String, delta: i64) -> Result<i64, BoxError> {
        let current = match self.map.get(key.as_str()) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("the value of {key:?} is not an integer"))?,
        };
        let sum = current
            .checked_add(delta)
            .ok_or_else(|| format!("{current} + {delta} overflows the value of {key:?}"))?;
        self.insert(key, sum.to_string().into_bytes());
        Ok(sum)
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.data_bytes -= (key.len() + old.len()) as u64;
                true
            }
            None => false,
        }
    }
}

#[async_trait::async_trait]
impl AbstractStateMachine<KvEntry> for HashStore {
    type Output = ApplyOutput;

    fn size_bytes(&self) -> Option<u64> {
        Some(self.data_bytes)
    }

    async fn apply(&mut self, entry: KvEntry) -> Result<ApplyOutput, BoxError> {
        self.apply_at(0, entry).await
    }

    async fn apply_at(&mut self, index: u64, entry: KvEntry) -> Result<ApplyOutput, BoxError> {
        let ok = match entry {
            KvEntry::Incr { key, delta } => {
                let value = self.incr(key, delta)?;
                return Ok(ApplyOutput {
                    index,
                    ok: true,
                    value: Some(value),
                });
            }
            KvEntry::Put { key, value } => {
                self.insert(key, value);
                true
            }
            KvEntry::Delete { key } => self.remove(&key),
            KvEntry::Cas {
                key,
                expected,
                value,
            } => {
                if self.map.get(key.as_str()).map(|v| &v[..]) == expected.as_deref() {
                    self.insert(key, value);
                    true
                } else {
                    false
                }
            }
        };
        Ok(ApplyOutput {
            index,
            ok,
            value: None,
        })
    }

    async fn snapshot(&self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        Box::new(MapView(self.map.clone())).write_to(&mut out)?;
        Ok(out)
    }

    fn snapshot_view(&self) -> Option<Box<dyn SnapshotView>> {
        Some(Box::new(MapView(self.map.clone())))
    }

    async fn restore(&mut self, snapshot: Vec<u8>) -> Result<(), BoxError> {
        self.restore_from(&mut &snapshot[..]).await
    }

    /// Builds the map as it reads the snapshot (no copy of its bytes); a
    /// snapshot that does not parse to its end changes nothing.
    async fn restore_from(&mut self, reader: &mut (dyn Read + Send)) -> Result<(), BoxError> {
        let n = u64::from_be_bytes(read_array(reader)?);
        let mut next = HashStore::default();
        for _ in 0..n {
            let key = String::from_utf8(read_field(reader)?)?;
            let value = read_field(reader)?;
            next.insert(key, value);
        }
        let mut extra = [0u8; 1];
        if reader.read(&mut extra)? != 0 {
            return Err("trailing bytes after the snapshot's entries".into());
        }
        *self = next;
        Ok(())
    }
}

fn read_array<const N: usize>(reader: &mut dyn Read) -> Result<[u8; N], BoxError> {
    let mut b = [0u8; N];
    reader
        .read_exact(&mut b)
        .map_err(|e| format!("truncated snapshot: {e}"))?;
    Ok(b)
}

/// A length-prefixed field. The length is not trusted for allocation: the
/// buffer grows with what is actually read.
fn read_field(reader: &mut dyn Read) -> Result<Vec<u8>, BoxError> {
    let len = u32::from_be_bytes(read_array(reader)?) as u64;
    let mut out = Vec::new();
    Read::take(reader, len).read_to_end(&mut out)?;
    if out.len() as u64 != len {
        return Err(format!(
            "truncated snapshot: a field of {len} bytes has {}",
            out.len()
        )
        .into());
    }
    Ok(out)
}

/// A snapshot's copy of the map: `u64` count, then length-prefixed key and
/// value of each entry.
struct MapView(Map);

impl SnapshotView for MapView {
    fn write_to(self: Box<Self>, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let bytes: usize = self.0.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        out.reserve(bytes + 8);
        self.write_into(out)
    }

    /// What the node calls: the entries go straight to the snapshot file
    /// (buffered by the store), never all in memory at once.
    fn write_into(self: Box<Self>, out: &mut dyn std::io::Write) -> Result<(), BoxError> {
        out.write_all(&(self.0.len() as u64).to_be_bytes())?;
        for (k, v) in &self.0 {
            for b in [k.as_bytes(), &v[..]] {
                let n = u32::try_from(b.len()).map_err(|_| "an entry over 4 GiB")?;
                out.write_all(&n.to_be_bytes())?;
                out.write_all(b)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<KvEntry> {
        vec![
            KvEntry::Put {
                key: "k".into(),
                value: b"v".to_vec(),
            },
            KvEntry::Put {
                key: "".into(),
                value: vec![],
            },
            KvEntry::Delete { key: "é".into() },
            KvEntry::Cas {
                key: "k".into(),
                expected: None,
                value: b"x".to_vec(),
            },
            KvEntry::Cas {
                key: "k".into(),
                expected: Some(b"v".to_vec()),
                value: vec![0, 255],
            },
            KvEntry::Incr {
                key: "n".into(),
                delta: -3,
            },
        ]
    }

    #[test]
    fn entries_round_trip_and_every_truncation_fails() {
        for e in samples() {
            let bytes = e.encode().unwrap();
            assert_eq!(KvEntry::decode(&bytes).unwrap(), e);
            for cut in 0..bytes.len() {
                assert!(
                    KvEntry::decode(&bytes[..cut]).is_err(),
                    "{e:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(KvEntry::decode(&longer).is_err());
        }
        assert!(KvEntry::decode(&[9]).is_err());
        assert!(
            KvEntry::decode(&[TAG_PUT, 0, 0, 0, 1, 0xff, 0, 0, 0, 0]).is_err(),
            "invalid UTF-8 key"
        );
    }

    #[tokio::test]
    async fn apply_snapshot_restore() {
        let mut s = HashStore::default();
        let out = s
            .apply_at(
                5,
                KvEntry::Put {
                    key: "a".into(),
                    value: b"1".to_vec(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            out,
            ApplyOutput {
                index: 5,
                ok: true,
                value: None
            }
        );
        let cas = KvEntry::Cas {
            key: "a".into(),
            expected: Some(b"2".to_vec()),
            value: b"3".to_vec(),
        };
        assert!(!s.apply_at(6, cas).await.unwrap().ok);
        let cas = KvEntry::Cas {
            key: "a".into(),
            expected: Some(b"1".to_vec()),
            value: b"3".to_vec(),
        };
        assert!(s.apply_at(7, cas).await.unwrap().ok);
        s.apply_at(
            8,
            KvEntry::Put {
                key: "b".into(),
                value: b"22".to_vec(),
            },
        )
        .await
        .unwrap();
        assert_eq!(s.data_bytes(), 2 + 3);
        let snap = s.snapshot().await.unwrap();
        // The view taken at the same point serializes the same state, even
        // after the map moved on.
        let view = s.snapshot_view().unwrap();
        s.apply_at(
            9,
            KvEntry::Put {
                key: "c".into(),
                value: b"later".to_vec(),
            },
        )
        .await
        .unwrap();
        let mut from_view = Vec::new();
        view.write_to(&mut from_view).unwrap();
        assert_eq!(from_view.len(), snap.len());
        let mut u = HashStore::default();
        u.restore(from_view).await.unwrap();
        assert_eq!((u.len(), u.get("c")), (2, None));
        s.apply_at(10, KvEntry::Delete { key: "c".into() })
            .await
            .unwrap();
        let mut t = HashStore::default();
        t.restore(snap.clone()).await.unwrap();
        assert_eq!(t.get("a"), Some(&b"3"[..]));
        assert_eq!(t.data_bytes(), s.data_bytes());
        let mut bad = snap;
        bad.pop();
        assert!(t.restore(bad).await.is_err());
        assert_eq!(t.len(), 2, "a failed restore changes nothing");
        let del = s
            .apply_at(11, KvEntry::Delete { key: "a".into() })
            .await
            .unwrap();
        assert!(del.ok);
        let del = s
            .apply_at(12, KvEntry::Delete { key: "a".into() })
            .await
            .unwrap();
        assert!(!del.ok);
    }

    #[tokio::test]
    async fn incr_counts_from_zero_and_refuses_non_integers_and_overflow() {
        let mut s = HashStore::default();
        let incr = |delta| KvEntry::Incr {
            key: "n".into(),
            delta,
        };
        let out = s.apply_at(1, incr(5)).await.unwrap();
        assert_eq!((out.index, out.value), (1, Some(5)));
        assert_eq!(s.apply_at(2, incr(-7)).await.unwrap().value, Some(-2));
        assert_eq!(s.get("n"), Some(&b"-2"[..]));
        let out = ApplyOutput::decode(&out.encode().unwrap()).unwrap();
        assert_eq!(out.value, Some(5));
        s.apply_at(3, incr(i64::MAX - 1)).await.unwrap();
        let err = s.apply_at(4, incr(4)).await.unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        assert_eq!(s.get("n"), Some(&b"9223372036854775804"[..]));
        let put = KvEntry::Put {
            key: "n".into(),
            value: b"abc".to_vec(),
        };
        s.apply_at(5, put).await.unwrap();
        let err = s.apply_at(6, incr(1)).await.unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
        assert_eq!(s.get("n"), Some(&b"abc"[..]));
    }
}
