#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| menet::api::fuzz_request(data));
