//! The checker never panics on damaged images: a short, deterministic run of the
//! structure-aware mutator (`cargo xtask fuzz` runs the long one).
mod common;

use btrfs_check::fuzzing::Mutator;
use btrfs_image::btrfs_format::CsumType;
use common::*;

#[test]
fn mutated_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = writer_image(
        dir.path(),
        "r",
        &config(CsumType::Crc32c, 4096, true),
        60,
        true,
    );
    let m = Mutator::new(std::fs::read(&p).unwrap());
    assert!(m.tree_blocks() > 10);
    let mut found = 0;
    for seed in 0..150 {
        let img = m.mutate(seed);
        let r = btrfs_check::fuzz_one(&img);
        found += r.findings.len();
    }
    assert!(found > 100, "mutations are found ({found} findings)");
}

#[test]
fn tiny_and_empty_inputs() {
    for len in [0usize, 1, 4096, 65536, 69632, 1 << 20] {
        let r = btrfs_check::fuzz_one(&vec![0u8; len]);
        assert_eq!(r.exit_code(), 4, "{len} zero bytes");
    }
}
