//! `Snapshot::decode` on arbitrary bytes: no panic, and an accepted snapshot re-encodes to
//! its input.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pixel_fuzz::check_snapshot(bytes));
