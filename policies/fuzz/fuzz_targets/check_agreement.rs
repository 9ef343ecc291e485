//! Fuzz the agreement parser and checker: any bytes must give diagnostics,
//! never a panic. Run with `policies/fuzz/run` (see its header).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = joinery_policies::check::check(&text, time::OffsetDateTime::UNIX_EPOCH);
});
