#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| percore::fuzzing::config_toml(data));
