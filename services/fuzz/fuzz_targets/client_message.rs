//! The gateway's client-message parser on arbitrary text: no panic, and an accepted message
//! carries the values its JSON holds.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| pixel_fuzz::check_client_message(bytes));
