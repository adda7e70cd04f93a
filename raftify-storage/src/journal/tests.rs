//! The journal's tests. Power loss, modelled: after each append's sync,
//! the journal's files are what the disk holds for sure; a crash before
//! the next sync leaves any mix of that next write's 512-byte sectors:
//! old, new or torn (the bytes it changes partly new, partly garbage).
//! Reading any such image must give exactly the records written, in
//! order, from after the checkpointed number up to at least the last
//! acknowledged one, and never a record of an earlier life of the
//! journal.

use super::*;

/// A record buffer holding `payload`.
fn rec(payload: &[u8]) -> Vec<u8> {
    let mut r = new_record(payload.len());
    r.extend_from_slice(payload);
    r
}
use std::collections::BTreeMap;

type Image = BTreeMap<String, Vec<u8>>;

fn image(store: &Path) -> Image {
    segment_paths(store)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The crash image between `before` (synced) and `after` (the next
/// write done, not yet synced): each changed sector old, new or torn.
fn crash_image(before: &Image, after: &Image, rng: &mut Rng) -> Image {
    let mut out = Image::new();
    for (name, new) in after {
        let old = before
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![0; new.len()]);
        let mut img = old.clone();
        img.resize(new.len(), 0);
        for (i, chunk) in new.chunks(512).enumerate() {
            let at = i * 512;
            let end = at + chunk.len();
            if img[at..end] == *chunk {
                continue;
            }
            match rng.below(3) {
                0 => {}
                1 => img[at..end].copy_from_slice(chunk),
                _ => {
                    // Torn: the bytes written, up to a point new, then
                    // garbage. Bytes the write did not change stay
                    // ("powersafe overwrite", as SQLite assumes).
                    let cut = rng.below(chunk.len() as u64) as usize;
                    for (p, &b) in chunk.iter().enumerate() {
                        if img[at + p] != b {
                            img[at + p] = if p < cut { b } else { rng.next() as u8 };
                        }
                    }
                }
            }
        }
        out.insert(name.clone(), img);
    }
    out
}

fn write_image(store: &Path, img: &Image) {
    let dir = store.join(JOURNAL_DIR);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in img {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

fn payload(life: u64, seq: u64, rng: &mut Rng) -> Vec<u8> {
    let len = 1 + rng.below(1500) as usize;
    let mut p = vec![(life * 31 + seq) as u8; len];
    p[0] = life as u8;
    p
}

/// One life of a journal: appends `n` records after `after`,
/// checkpointing (as the store would) all but the last few, and
/// returns the images after each sync with the payloads written.
fn life(
    store: &Path,
    life_no: u64,
    after: u64,
    n: u64,
    rng: &mut Rng,
) -> Vec<(Image, u64, u64, Vec<u8>)> {
    let mut j = Journal::open(store, 8 * 1024, after, true).unwrap();
    let mut out = Vec::new();
    let mut checkpointed = after;
    for _ in 0..n {
        let p = payload(life_no, j.next_seq, rng);
        let seq = j.append(&mut rec(&p), checkpointed).unwrap();
        if rng.below(4) == 0 {
            checkpointed = seq.saturating_sub(rng.below(4)).max(checkpointed);
        }
        out.push((image(store), seq, checkpointed, p));
    }
    assert!(j.segment_count() >= 2, "the test switches segments");
    out
}

/// Crashes one life at a random point (a random mix of the next
/// write's sectors) and checks what is read back; returns the last
/// record the store would have applied.
fn crash_and_check(
    store: &Path,
    life: &[(Image, u64, u64, Vec<u8>)],
    life_no: u8,
    rng: &mut Rng,
) -> u64 {
    let k = rng.below(life.len() as u64 - 1) as usize;
    let (synced, acked, ckpt, _) = &life[k];
    write_image(store, &crash_image(synced, &life[k + 1].0, rng));
    let got = read_after(store, *ckpt, true).unwrap();
    let written: Vec<_> = life.iter().filter(|w| w.1 > *ckpt).collect();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    assert!(
        got.len() >= (acked - ckpt) as usize,
        "life {life_no}: lost acknowledged records: acked {acked}, checkpointed {ckpt}, read {seqs:?}"
    );
    assert!(got.len() <= written.len());
    for (r, w) in got.iter().zip(&written) {
        assert_eq!((r.seq, &r.payload), (w.1, &w.3), "life {life_no}");
        assert_eq!(r.payload[0], life_no, "a record of another life");
    }
    got.last().map_or(*ckpt, |r| r.seq)
}

#[test]
fn any_power_loss_image_reads_back_a_prefix_with_everything_acknowledged() {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    for round in 0..150 {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path();
        let l1 = life(store, 1, round * 7, 40, &mut rng);
        // The store applies what it read; life 2 starts after it.
        let after = crash_and_check(store, &l1, 1, &mut rng);
        let l2 = life(store, 2, after, 30, &mut rng);
        crash_and_check(store, &l2, 2, &mut rng);
    }
}

#[test]
fn damage_before_intact_records_is_an_error_not_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = Journal::open(tmp.path(), 64 * 1024, 0, true).unwrap();
    for i in 0..5u8 {
        j.append(&mut rec(&[i; 300]), 0).unwrap();
    }
    let path = &segment_paths(tmp.path())[0];
    let clean = fs::read(path).unwrap();
    // The last record damaged: a torn tail, the rest is read.
    let mut bytes = clean.clone();
    let last = HEADER as usize + 4 * (RECORD_HEADER as usize + 300) + 100;
    bytes[last + 50] ^= 1;
    fs::write(path, &bytes).unwrap();
    assert_eq!(read_after(tmp.path(), 0, true).unwrap().len(), 4);
    // The second one damaged: an error naming the file.
    let mut bytes = clean.clone();
    bytes[HEADER as usize + RECORD_HEADER as usize + 300 + 100] ^= 1;
    fs::write(path, &bytes).unwrap();
    let err = read_after(tmp.path(), 0, true).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("record 2 is damaged"), "{err}");
    assert!(err.to_string().contains(".jnl"), "{err}");
    // Its length field damaged too (the next record cannot be found by
    // walking): still found.
    let mut bytes = clean;
    bytes[HEADER as usize + RECORD_HEADER as usize + 300] ^= 0x40;
    fs::write(path, &bytes).unwrap();
    assert!(read_after(tmp.path(), 0, true).is_err());
}

#[test]
fn a_record_larger_than_a_segment_gets_its_own_and_it_goes_once_free() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = Journal::open(tmp.path(), 8 * 1024, 0, true).unwrap();
    j.append(&mut rec(&[1; 100]), 0).unwrap();
    let big = vec![7u8; 20_000];
    j.append(&mut rec(&big), 0).unwrap();
    j.append(&mut rec(&[3; 100]), 0).unwrap();
    let got = read_after(tmp.path(), 0, true).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].payload, big);
    assert_eq!(j.segment_count(), 2);
    // All checkpointed: the large segment is removed when the journal
    // next starts a segment.
    let mut last = 3;
    for _ in 0..200 {
        last = j.append(&mut rec(&[4; 100]), last).unwrap();
    }
    assert!(segment_paths(tmp.path())
        .iter()
        .all(|p| fs::metadata(p).unwrap().len() <= 8 * 1024));
}
