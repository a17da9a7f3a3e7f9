//! Chunks on the one device, the logical→physical map, and a bump allocator
//! that steps around the superblock copies.
use btrfs_format::*;

pub const MIB: u64 = 1024 * 1024;

/// One chunk (= one block group): a logical range and its stripes on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpec {
    pub logical: u64,
    pub length: u64,
    /// Block group type and profile bits.
    pub flags: u64,
    /// Physical start of each stripe; each stripe holds the whole chunk (single/DUP).
    pub stripes: Vec<u64>,
}

impl ChunkSpec {
    pub fn end(&self) -> u64 {
        self.logical + self.length
    }

    pub fn contains(&self, logical: u64) -> bool {
        logical >= self.logical && logical < self.end()
    }

    pub fn is_system(&self) -> bool {
        self.flags & BTRFS_BLOCK_GROUP_SYSTEM != 0
    }

    /// Logical ranges the kernel never allocates in this chunk: the 64 KiB stripe
    /// holding each superblock copy that falls in any stripe (whether or not
    /// the device is large enough to hold that copy, as the kernel does).
    pub fn excluded(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for mirror in 0..BTRFS_SUPER_MIRROR_MAX {
            let sb = btrfs_sb_offset(mirror);
            for &phys in &self.stripes {
                if sb >= phys && sb < phys + self.length {
                    let off = (sb - phys) / BTRFS_STRIPE_LEN * BTRFS_STRIPE_LEN;
                    let start = self.logical + off;
                    let len = BTRFS_STRIPE_LEN.min(self.end() - start);
                    out.push((start, len));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// All chunks of the image, sorted by logical address.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub chunks: Vec<ChunkSpec>,
    pub device_size: u64,
}

impl Layout {
    pub fn chunk_for(&self, logical: u64) -> Option<&ChunkSpec> {
        self.chunks.iter().find(|c| c.contains(logical))
    }

    /// Every physical copy of `logical`.
    pub fn physical(&self, logical: u64) -> Option<Vec<u64>> {
        let c = self.chunk_for(logical)?;
        Some(
            c.stripes
                .iter()
                .map(|s| s + (logical - c.logical))
                .collect(),
        )
    }

    /// Bytes of device space all chunks occupy.
    pub fn dev_bytes_used(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.length * c.stripes.len() as u64)
            .sum()
    }

    /// First physical byte after every stripe.
    pub fn physical_end(&self) -> u64 {
        self.chunks
            .iter()
            .flat_map(|c| c.stripes.iter().map(move |s| s + c.length))
            .max()
            .unwrap_or(BTRFS_DEVICE_RANGE_RESERVED)
    }

    /// Append a chunk at the next free physical offset; its logical address is
    /// its first stripe's physical offset, which keeps logical ranges disjoint.
    pub fn push_chunk(&mut self, flags: u64, length: u64, stripes: usize) -> ChunkSpec {
        let mut phys = self.physical_end();
        let mut s = Vec::with_capacity(stripes);
        for _ in 0..stripes {
            s.push(phys);
            phys += length;
        }
        let chunk = ChunkSpec {
            logical: s[0],
            length,
            flags,
            stripes: s,
        };
        self.chunks.push(chunk.clone());
        self.chunks.sort_by_key(|c| c.logical);
        chunk
    }
}

/// Bump allocator over one chunk; remembers what it handed out (merged ranges).
#[derive(Debug, Clone)]
pub struct BumpAlloc {
    pub start: u64,
    pub end: u64,
    cursor: u64,
    excluded: Vec<(u64, u64)>,
    pub allocated: Vec<(u64, u64)>,
}

impl BumpAlloc {
    pub fn new(chunk: &ChunkSpec) -> Self {
        BumpAlloc {
            start: chunk.logical,
            end: chunk.end(),
            cursor: chunk.logical,
            excluded: chunk.excluded(),
            allocated: Vec::new(),
        }
    }

    /// Reserve `len` bytes (aligned to `align`), or `None` when the chunk is full.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let mut pos = self.cursor.div_ceil(align) * align;
        loop {
            let end = pos.checked_add(len)?;
            if end > self.end {
                return None;
            }
            match self.excluded.iter().find(|&&(s, l)| pos < s + l && s < end) {
                Some(&(s, l)) => pos = (s + l).div_ceil(align) * align,
                None => break,
            }
        }
        self.cursor = pos + len;
        match self.allocated.last_mut() {
            Some((s, l)) if *s + *l == pos => *l += len,
            _ => self.allocated.push((pos, len)),
        }
        Some(pos)
    }

    pub fn used(&self) -> u64 {
        self.allocated.iter().map(|r| r.1).sum()
    }

    /// Bytes from the chunk start to the end of the last allocation.
    pub fn high_water(&self) -> u64 {
        self.cursor - self.start
    }
}

/// Free ranges of `[start, end)` given sorted, disjoint allocated ranges.
pub fn complement(start: u64, end: u64, allocated: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    for &(s, l) in allocated {
        if s > pos {
            out.push((pos, s - pos));
        }
        pos = pos.max(s + l);
    }
    if pos < end {
        out.push((pos, end - pos));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_skips_superblock_mirror() {
        let chunk = ChunkSpec {
            logical: 60 * MIB,
            length: 16 * MIB,
            flags: BTRFS_BLOCK_GROUP_METADATA,
            stripes: vec![60 * MIB],
        };
        let ex = chunk.excluded();
        assert_eq!(ex, vec![(64 * MIB, 64 * 1024)]);
        let mut a = BumpAlloc::new(&chunk);
        let mut last = 0;
        for _ in 0..(5 * MIB / 16384) {
            last = a.alloc(16384, 16384).unwrap();
            assert!(last + 16384 <= 64 * MIB || last >= 64 * MIB + 65536);
        }
        assert!(last > 64 * MIB);
        assert_eq!(a.allocated.len(), 2);
        let free = complement(a.start, a.end, &a.allocated);
        assert_eq!(free[0], (64 * MIB, 65536));
    }

    #[test]
    fn dup_stripe_exclusion_maps_to_logical() {
        // Second stripe covers 64 MiB: the excluded logical range is where that copy sits.
        let chunk = ChunkSpec {
            logical: 40 * MIB,
            length: 20 * MIB,
            flags: BTRFS_BLOCK_GROUP_METADATA | BTRFS_BLOCK_GROUP_DUP,
            stripes: vec![40 * MIB, 60 * MIB],
        };
        assert_eq!(chunk.excluded(), vec![(44 * MIB, 65536)]);
    }

    #[test]
    fn layout_places_chunks_back_to_back() {
        let mut l = Layout {
            chunks: vec![],
            device_size: 1 << 30,
        };
        l.push_chunk(BTRFS_BLOCK_GROUP_SYSTEM | BTRFS_BLOCK_GROUP_DUP, 4 * MIB, 2);
        let d = l.push_chunk(BTRFS_BLOCK_GROUP_DATA, 8 * MIB, 1);
        assert_eq!(d.logical, 9 * MIB);
        assert_eq!(l.physical(MIB + 5).unwrap(), vec![MIB + 5, 5 * MIB + 5]);
        assert_eq!(l.dev_bytes_used(), 16 * MIB);
    }
}
