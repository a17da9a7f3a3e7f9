//! A real image (the committed kernel-written fixture) with the input's byte
//! patches applied: 5-byte records (LE32 offset, value). With the first input
//! byte odd, the checksums of patched tree blocks are fixed, so the mutations
//! reach past checksum verification into the semantic checks.
#![no_main]
use std::sync::OnceLock;

use btrfs_format::{CsumType, SuperBlock};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static Vec<u8> {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let z = include_bytes!("../../testdata/kernel-compressed.img.zst");
        zstd::stream::decode_all(&z[..]).expect("fixture decompresses")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, patches)) = data.split_first() else {
        return;
    };
    let mut img = base().clone();
    let sb = SuperBlock::read(&img[65536..]).expect("fixture superblock");
    let ns = sb.nodesize.get() as usize;
    let csum = CsumType::from_disk(sb.csum_type.get()).unwrap_or(CsumType::Crc32c);
    let mut touched = Vec::new();
    for p in patches.chunks_exact(5).take(64) {
        let off = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize % img.len();
        img[off] = p[4];
        touched.push(off / ns * ns);
    }
    if flags & 1 == 1 {
        touched.sort_unstable();
        touched.dedup();
        for b in touched {
            if b + ns <= img.len() && img[b + 32..b + 48] == sb.fsid {
                let s = csum.compute(&img[b + 32..b + ns]);
                img[b..b + csum.size()].copy_from_slice(&s[..csum.size()]);
            }
        }
    }
    let _ = btrfs_check::fuzz_one(&img);
    let _ = forge_inspect::inspect_all(img);
});
