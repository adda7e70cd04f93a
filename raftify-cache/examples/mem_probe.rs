use bytes::Bytes;
use raftify_cache::{CacheEntry, CacheState, Op};
fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("RssAnon"))
        .collect()
}
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut sm = CacheState::new();
    println!(
        "start {} item {} value {} bytes {}",
        rss(),
        std::mem::size_of::<raftify_cache::keyspace::Item>(),
        std::mem::size_of::<raftify_cache::keyspace::Value>(),
        std::mem::size_of::<Bytes>()
    );
    let v = "x".repeat(100);
    for b in 0..1000u64 {
        let mut argv = vec![Bytes::from_static(b"MSET")];
        for j in b * 1000..(b + 1) * 1000 {
            argv.push(Bytes::from(format!("key:{j:08}")));
            argv.push(Bytes::from(v.clone()));
        }
        let entry = CacheEntry {
            clock_ms: 1,
            op: Op::Exec {
                commands: vec![argv],
                transaction: false,
                watched: vec![],
            },
        };
        let entry = if mode == "encoded" {
            let enc = raftify_core::AbstractLogEntry::encode(&entry).unwrap();
            <CacheEntry as raftify_core::AbstractLogEntry>::decode(&enc).unwrap()
        } else {
            entry
        };
        sm.apply_entry(b + 1, &entry);
    }
    println!("loaded {} keys {}", sm.keyspace().raw_len(), rss());
}
#[allow(dead_code)]
fn sizes() {}
