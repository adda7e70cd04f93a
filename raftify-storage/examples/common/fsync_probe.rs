//! The disk's raw rate of `write 4 KiB + fdatasync`, for the benchmarks to
//! print next to their own figures (measured in the same run: this
//! machine's disk swings by several times within an hour).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rate of `write 4 KiB + fdatasync` in `dir` for `secs`: appending (the
/// file grows, so every sync also commits file-size metadata) or
/// overwriting the same block (only the data is flushed; closer to what
/// LMDB does with its preallocated pages and the journal with its
/// preallocated segments).
pub fn raw_fdatasync(dir: &Path, secs: Duration, overwrite: bool) -> std::io::Result<f64> {
    let path = dir.join("fdatasync.bin");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![0x5Au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        if overwrite {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&block, 0)?;
        } else {
            f.write_all(&block)?;
        }
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}
