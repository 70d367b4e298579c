#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dkv_fuzz::record(data));
