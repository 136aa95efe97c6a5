//! What pgway reads from a caller's SQL text before running it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    let _ = pgway::core::sql::classify(&sql);
    let _ = pgway::core::sql::changes_identity(&sql);
});
