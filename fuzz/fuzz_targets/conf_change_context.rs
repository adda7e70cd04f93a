#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftify_reliability::fuzz_targets::conf_change_context(data);
});
