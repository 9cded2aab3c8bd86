//! `UpdateFrame::decode` on arbitrary bytes: no panic, and an accepted frame re-encodes to
//! its input and covers one version per update.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pixel_fuzz::check_frame(bytes));
