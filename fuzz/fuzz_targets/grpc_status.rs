#![no_main]
use libfuzzer_sys::fuzz_target;

// Input: 4 bytes of code, then message, kind, number, leader separated by 0.
fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let code = i32::from_le_bytes([data[0], data[1], data[2], data[3]]) % 20;
    let text = String::from_utf8_lossy(&data[4..]);
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or("").to_string();
    let (message, kind, number, leader) = (next(), next(), next(), next());
    raftify_reliability::fuzz_targets::grpc_status(code, &message, &kind, &number, &leader);
});
