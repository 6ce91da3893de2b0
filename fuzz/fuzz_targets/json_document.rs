#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| percore::fuzzing::json_document(data));
