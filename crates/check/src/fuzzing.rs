//! Structure-aware mutation of images, for fuzzing the checker on stable Rust.
//!
//! Random bytes rarely get past tree block checksums, so most mutations here hit
//! tree blocks (found by their fsid) and then fix the block's checksum, to reach
//! the semantic checks; others flip data bytes, edit the superblock (fixed or
//! not), or cut the image short. The same (base, seed) always gives the same
//! image, so a failure is reproduced from two numbers.
use btrfs_format::consts::*;
use btrfs_format::{CsumType, SuperBlock};

/// A base image and where its tree blocks are.
pub struct Mutator {
    base: Vec<u8>,
    blocks: Vec<usize>,
    nodesize: usize,
    csum: CsumType,
}

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
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x4000,
    0x10000,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    1 << 40,
];

impl Mutator {
    /// Index the tree blocks of `base` (a valid image: its primary superblock must parse).
    pub fn new(base: Vec<u8>) -> Self {
        let sb = base
            .get(BTRFS_SUPER_INFO_OFFSET as usize..)
            .and_then(|b| SuperBlock::read(b).ok());
        let (fsid, nodesize, csum) = match sb {
            Some(sb) => (
                sb.metadata_fsid(),
                (sb.nodesize.get() as usize).clamp(4096, 65536),
                CsumType::from_disk(sb.csum_type.get()).unwrap_or(CsumType::Crc32c),
            ),
            None => ([0; 16], 4096, CsumType::Crc32c),
        };
        let mut blocks = Vec::new();
        let mut off = 0;
        while off + nodesize <= base.len() {
            if base[off + 32..off + 48] == fsid && off != BTRFS_SUPER_INFO_OFFSET as usize {
                blocks.push(off);
            }
            off += 4096;
        }
        Mutator {
            base,
            blocks,
            nodesize,
            csum,
        }
    }

    pub fn base(&self) -> &[u8] {
        &self.base
    }

    pub fn tree_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn fix(&self, img: &mut [u8], at: usize, len: usize) {
        if at + len <= img.len() {
            let s = self.csum.compute(&img[at + 32..at + len]);
            img[at..at + self.csum.size()].copy_from_slice(&s[..self.csum.size()]);
        }
    }

    /// The image for mutation seed `seed`.
    pub fn mutate(&self, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut img = self.base.clone();
        let n = 1 + rng.below(6);
        for _ in 0..n {
            let what = rng.below(100);
            if what < 75 && !self.blocks.is_empty() {
                let b = self.blocks[rng.below(self.blocks.len())];
                self.mutate_block(&mut img, b, &mut rng);
                if rng.below(10) < 8 {
                    self.fix(&mut img, b, self.nodesize);
                }
            } else if what < 85 {
                // Superblock field.
                let sb = BTRFS_SUPER_INFO_OFFSET as usize;
                if img.len() >= sb + 4096 {
                    let at = sb + 32 + rng.below(4096 - 40);
                    write_interesting(&mut img, at, &mut rng);
                    if rng.below(10) < 8 {
                        self.fix(&mut img, sb, 4096);
                    }
                }
            } else if what < 95 {
                // Any byte (data, free space, headers).
                if !img.is_empty() {
                    let at = rng.below(img.len());
                    img[at] ^= 1 << rng.below(8);
                }
            } else if what < 98 {
                let cut = rng.below(img.len().max(1));
                img.truncate(cut);
            } else if self.blocks.len() >= 2 {
                // Copy one block over another (duplicate, stale or foreign blocks).
                let a = self.blocks[rng.below(self.blocks.len())];
                let b = self.blocks[rng.below(self.blocks.len())];
                if a + self.nodesize <= img.len() && b + self.nodesize <= img.len() {
                    let tmp = img[a..a + self.nodesize].to_vec();
                    img[b..b + self.nodesize].copy_from_slice(&tmp);
                }
            }
        }
        img
    }

    fn mutate_block(&self, img: &mut [u8], b: usize, rng: &mut Rng) {
        let ns = self.nodesize;
        if b + ns > img.len() {
            return;
        }
        let blk = &mut img[b..b + ns];
        match rng.below(6) {
            // Header fields: bytenr, flags, generation, owner, nritems, level.
            0 => {
                let at = [48, 56, 80, 88, 96, 100][rng.below(6)];
                write_interesting(blk, at, rng);
            }
            // Item header / key pointer area.
            1 | 2 => {
                let at = 101 + rng.below(25 * 8);
                write_interesting(blk, at, rng);
            }
            // Payload area (the end of a leaf).
            3 => {
                let at = ns - 1 - rng.below(ns / 4);
                write_interesting(blk, at, rng);
            }
            // Random bit anywhere past the checksum.
            4 => {
                let at = 32 + rng.below(ns - 32);
                blk[at] ^= 1 << rng.below(8);
            }
            // Bytes copied from elsewhere in the block.
            _ => {
                let len = 1 + rng.below(64);
                let from = 101 + rng.below(ns - 101 - len);
                let to = 101 + rng.below(ns - 101 - len);
                let tmp = blk[from..from + len].to_vec();
                blk[to..to + len].copy_from_slice(&tmp);
            }
        }
    }
}

fn write_interesting(b: &mut [u8], at: usize, rng: &mut Rng) {
    let width = [1usize, 2, 4, 8][rng.below(4)];
    let v = if rng.below(3) == 0 {
        rng.next()
    } else {
        let base = INTERESTING[rng.below(INTERESTING.len())];
        let cur = b
            .get(at..at + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        match rng.below(3) {
            0 => base,
            1 => cur.wrapping_add(base % 17),
            _ => cur.wrapping_sub(base % 17),
        }
    };
    let bytes = v.to_le_bytes();
    for (i, &v) in bytes.iter().enumerate().take(width) {
        if let Some(x) = b.get_mut(at + i) {
            *x = v;
        }
    }
}
