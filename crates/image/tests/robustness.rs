//! Damaged images must give errors, never panics, hangs or huge allocations.
//!
//! Mutates the committed fixtures in place (and restores them) for a bounded time:
//! byte changes inside tree blocks with the checksum recomputed (so the damage gets
//! past checksum verification into the parsers), without it, in the superblock
//! (checksum recomputed), in compressed data extents, and truncations. Each damaged
//! image is opened and every tree, directory and file is walked and read.
mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use btrfs_image::btrfs_format::consts::*;
use btrfs_image::btrfs_format::CsumType;
use btrfs_image::{FileExtentKind, Image};
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

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Physical ranges worth damaging in a clean image.
struct Targets {
    csum: CsumType,
    nodesize: usize,
    /// (physical offset, nritems) of every tree block copy.
    blocks: Vec<(usize, usize)>,
    /// (physical offset, length) of compressed data extents.
    compressed: Vec<(usize, usize)>,
}

fn targets(img: &Image) -> Targets {
    let mut blocks = Vec::new();
    let mut roots = vec![img.root_tree(), img.chunk_root()];
    for it in img.iter(&img.root_tree()) {
        let it = it.unwrap();
        if it.key.item_type == BTRFS_ROOT_ITEM_KEY {
            roots.push(img.tree_root(it.key.objectid).unwrap().unwrap());
        }
    }
    for r in &roots {
        for b in img.tree_blocks(r) {
            let b = b.unwrap();
            for phys in img
                .chunk_map()
                .map(b.bytenr, img.nodesize() as u64)
                .unwrap()
            {
                blocks.push((phys as usize, b.block.nritems()));
            }
        }
    }
    let mut compressed = Vec::new();
    for sv in img.subvolumes().unwrap() {
        let fs = img.fs_root(sv).unwrap();
        for it in img.iter(&fs) {
            let it = it.unwrap();
            if it.key.item_type != BTRFS_EXTENT_DATA_KEY {
                continue;
            }
            for e in img.file_extents(sv, it.key.objectid).unwrap() {
                if let FileExtentKind::Regular {
                    disk_bytenr,
                    disk_num_bytes,
                    ..
                } = e.kind
                {
                    if e.compression != 0 && disk_bytenr != 0 {
                        let p = img.chunk_map().map(disk_bytenr, disk_num_bytes).unwrap()[0];
                        compressed.push((p as usize, disk_num_bytes as usize));
                    }
                }
            }
        }
    }
    compressed.sort();
    compressed.dedup();
    Targets {
        csum: img.csum_type(),
        nodesize: img.nodesize() as usize,
        blocks,
        compressed,
    }
}

/// Change one byte in some way a parser might trip over.
fn damage_byte(rng: &mut Rng, b: u8) -> u8 {
    match rng.below(5) {
        0 => b ^ (1 << rng.below(8)),
        1 => 0,
        2 => 0xff,
        3 => b.wrapping_add(1),
        _ => rng.next() as u8,
    }
}

fn poke(buf: &mut [u8], undo: &mut Vec<(usize, u8)>, at: usize, r: &mut Rng) {
    undo.push((at, buf[at]));
    buf[at] = damage_byte(r, buf[at]);
}

fn fix_csum(buf: &mut [u8], start: usize, len: usize, csum: CsumType) {
    let c = csum.compute(&buf[start + 32..start + len]);
    buf[start..start + csum.size()].copy_from_slice(&c[..csum.size()]);
}

fn fuzz(name: &str, budget: Duration, seed: u64) -> usize {
    let mut shared = Arc::new(fixture_bytes(name));
    let t = {
        let img = Image::from_shared(shared.clone(), 0).unwrap();
        exercise(&img).unwrap();
        targets(&img)
    };
    assert!(!t.blocks.is_empty());
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut iters = 0usize;
    let mut truncations = 0;
    while start.elapsed() < budget {
        iters += 1;
        let case_seed = rng.next();
        let mut r = Rng(case_seed);
        let buf = Arc::get_mut(&mut shared).expect("no image alive");
        let mut undo: Vec<(usize, u8)> = Vec::new();
        let what = r.below(100);
        let mut truncate_to = None;
        // Full reads only when compressed data was damaged: decoding is the slow part.
        let mut read_len = 8192;
        if what < 60 {
            // Inside a tree block, checksum fixed so the damage reaches the parsers.
            let (blk, nritems) = t.blocks[r.below(t.blocks.len() as u64) as usize];
            let hot = 101 + nritems * 25; // header and item/pointer slots
            for _ in 0..1 + r.below(3) {
                let off = if r.below(2) == 0 {
                    32 + r.below((hot - 32) as u64) as usize
                } else {
                    32 + r.below((t.nodesize - 32) as u64) as usize
                };
                poke(buf, &mut undo, blk + off.min(t.nodesize - 1), &mut r);
            }
            for i in 0..t.csum.size() {
                undo.push((blk + i, buf[blk + i]));
            }
            fix_csum(buf, blk, t.nodesize, t.csum);
        } else if what < 70 {
            // Inside a tree block, checksum left stale: must be caught (or the DUP copy used).
            let (blk, _) = t.blocks[r.below(t.blocks.len() as u64) as usize];
            poke(
                buf,
                &mut undo,
                blk + r.below(t.nodesize as u64) as usize,
                &mut r,
            );
        } else if what < 82 {
            // Superblock fields and sys_chunk_array, checksum fixed.
            let sb = 0x10000;
            for _ in 0..1 + r.below(2) {
                let off = 32 + r.below(0x32b + 200 - 32) as usize;
                poke(buf, &mut undo, sb + off, &mut r);
            }
            for i in 0..t.csum.size() {
                undo.push((sb + i, buf[sb + i]));
            }
            fix_csum(buf, sb, 4096, t.csum);
        } else if what < 97 && !t.compressed.is_empty() {
            // Compressed data: decoders must reject or cap it.
            read_len = 4 << 20;
            let (p, len) = t.compressed[r.below(t.compressed.len() as u64) as usize];
            for _ in 0..1 + r.below(4) {
                poke(buf, &mut undo, p + r.below(len as u64) as usize, &mut r);
            }
        } else if truncations < 8 {
            truncations += 1;
            truncate_to = Some(r.below(buf.len() as u64) as usize);
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let img = match truncate_to {
                Some(n) => Image::from_bytes(shared[..n].to_vec()),
                None => Image::from_shared(shared.clone(), 0),
            };
            if let Ok(img) = img {
                let _ = exercise_with(&img, read_len);
            }
        }));
        if result.is_err() {
            panic!("{name}: panic on damaged image, fuzz seed {seed} case seed {case_seed}: {undo:?} truncate {truncate_to:?}");
        }
        let buf = Arc::get_mut(&mut shared).expect("no image alive");
        for &(at, old) in undo.iter().rev() {
            buf[at] = old;
        }
    }
    iters
}

#[test]
fn damaged_images_never_panic() {
    let seed = std::env::var("BTRFS_IMAGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let secs = std::env::var("BTRFS_IMAGE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let a = fuzz("kernel-compressed", budget, seed);
    let b = fuzz("mkfs-6.2-rootdir", budget, seed ^ 1);
    eprintln!("robustness: {a} + {b} damaged images opened and walked");
    assert!(a > 10 && b > 10);
}
