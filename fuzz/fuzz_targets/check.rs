//! Raw bytes as an image: `btrfs_check::fuzz_one` and
//! `forge_inspect::inspect_all` must never panic, hang or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = btrfs_check::fuzz_one(data);
    let _ = forge_inspect::inspect_all(data.to_vec());
});
