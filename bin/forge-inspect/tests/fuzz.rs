//! `inspect_all` (the fuzz target's entry point) over byte-mutated copies of
//! the committed fixtures for a bounded time: no panic, no hang.
//!
//! `FORGE_INSPECT_FUZZ_SECS` sets the time per fixture (default 2), and
//! `FORGE_INSPECT_FUZZ_SEED` the seed.
mod common;

use std::time::{Duration, Instant};

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::Image;
use common::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Physical offsets of every tree block copy of `img`.
fn tree_blocks(img: &Image) -> Vec<usize> {
    let mut roots = vec![img.root_tree(), img.chunk_root()];
    for it in img.iter(&img.root_tree()) {
        let it = it.unwrap();
        if it.key.item_type == BTRFS_ROOT_ITEM_KEY {
            roots.push(img.tree_root(it.key.objectid).unwrap().unwrap());
        }
    }
    let mut out = Vec::new();
    for r in &roots {
        for b in img.tree_blocks(r) {
            let b = b.unwrap();
            for p in img
                .chunk_map()
                .map(b.bytenr, img.nodesize() as u64)
                .unwrap()
            {
                out.push(p as usize);
            }
        }
    }
    out
}

fn fuzz(name: &str, budget: Duration, seed: u64) -> usize {
    let clean = fixture_bytes(name);
    let (blocks, nodesize) = {
        let img = Image::from_bytes(clean.clone()).unwrap();
        (tree_blocks(&img), img.nodesize() as usize)
    };
    assert!(forge_inspect::inspect_all(clean.clone()) > 0);
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        n += 1;
        let case = rng.next();
        let mut r = Rng(case);
        let mut buf = clean.clone();
        let what = r.below(10);
        if what < 8 {
            // Inside a tree block (mostly its header and item table), checksum
            // fixed so that the damage reaches the parsers.
            let blk = blocks[r.below(blocks.len())];
            for _ in 0..1 + r.below(4) {
                let off = 32
                    + if r.below(2) == 0 {
                        r.below(1200)
                    } else {
                        r.below(nodesize - 32)
                    };
                let b = &mut buf[blk + off.min(nodesize - 1)];
                *b = match r.below(4) {
                    0 => *b ^ (1 << r.below(8)),
                    1 => 0,
                    2 => 0xff,
                    _ => r.next() as u8,
                };
            }
            fix_block_csum(&mut buf, blk, nodesize);
        } else if what < 9 {
            // The superblock, checksum fixed.
            let sb = 0x10000;
            for _ in 0..1 + r.below(2) {
                buf[sb + 32 + r.below(0x32b + 200)] = r.next() as u8;
            }
            let c = btrfs_image::btrfs_format::CsumType::Crc32c.compute(&buf[sb + 32..sb + 4096]);
            buf[sb..sb + 4].copy_from_slice(&c[..4]);
        } else {
            let len = r.below(buf.len());
            buf.truncate(len);
        }
        let t = Instant::now();
        forge_inspect::inspect_all(buf);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: case {case:#x} (seed {seed:#x}) took {:?}",
            t.elapsed()
        );
    }
    n
}

#[test]
fn inspect_all_survives_damaged_images() {
    let seed = std::env::var("FORGE_INSPECT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xf0_4e5e);
    let secs = std::env::var("FORGE_INSPECT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let a = fuzz("kernel-compressed", budget, seed);
    let b = fuzz("mkfs-6.2-rootdir", budget, seed ^ 1);
    eprintln!("inspect_all: {a} + {b} damaged images");
    assert!(a >= 3 && b >= 3, "{a} {b}");
}
