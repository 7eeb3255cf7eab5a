#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| menet_actors::fuzzing::records(data));
