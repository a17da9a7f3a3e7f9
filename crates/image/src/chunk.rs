//! The chunk map: logical address ranges to their stripes on devices.
use std::collections::BTreeMap;

use btrfs_format::consts::*;
use btrfs_format::items::ChunkWithStripes;

use crate::error::{Error, Location, Result};

/// One stripe of a chunk: where on which device a copy (or a slice) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeMapping {
    pub devid: u64,
    pub physical: u64,
}

/// One chunk: `length` bytes of logical space from `logical`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMapping {
    pub logical: u64,
    pub length: u64,
    /// Block group type and profile bits (`BTRFS_BLOCK_GROUP_*`).
    pub type_flags: u64,
    pub stripe_len: u64,
    pub sub_stripes: u16,
    pub stripes: Vec<StripeMapping>,
}

impl ChunkMapping {
    pub fn end(&self) -> u64 {
        self.logical + self.length
    }

    pub fn profile(&self) -> u64 {
        self.type_flags & BTRFS_BLOCK_GROUP_PROFILE_MASK
    }

    /// True when every stripe holds the whole chunk (SINGLE, DUP, RAID1, RAID1C3/4).
    pub fn is_mirrored(&self) -> bool {
        matches!(
            self.profile(),
            0 | BTRFS_BLOCK_GROUP_DUP
                | BTRFS_BLOCK_GROUP_RAID1
                | BTRFS_BLOCK_GROUP_RAID1C3
                | BTRFS_BLOCK_GROUP_RAID1C4
        )
    }
}

/// Stripes each mirrored profile must have.
fn mirrored_stripes(profile: u64) -> Option<usize> {
    Some(match profile {
        0 => 1,
        BTRFS_BLOCK_GROUP_DUP | BTRFS_BLOCK_GROUP_RAID1 => 2,
        BTRFS_BLOCK_GROUP_RAID1C3 => 3,
        BTRFS_BLOCK_GROUP_RAID1C4 => 4,
        _ => return None,
    })
}

/// Logical to physical translation for the device this image is.
#[derive(Debug, Clone, Default)]
pub struct ChunkMap {
    chunks: BTreeMap<u64, ChunkMapping>,
    devid: u64,
}

impl ChunkMap {
    /// An empty map for the device `devid` (the superblock's `dev_item.devid`).
    pub fn new(devid: u64) -> Self {
        ChunkMap {
            chunks: BTreeMap::new(),
            devid,
        }
    }

    /// The device id whose stripes this image holds.
    pub fn devid(&self) -> u64 {
        self.devid
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// All chunks in logical order.
    pub fn iter(&self) -> impl Iterator<Item = &ChunkMapping> {
        self.chunks.values()
    }

    /// Add the chunk at `logical` after checking it; `at` names where it was read.
    /// An identical repeat (sys_chunk_array then chunk tree) is accepted once.
    pub fn insert(
        &mut self,
        logical: u64,
        c: &ChunkWithStripes,
        sectorsize: u32,
        at: Location,
    ) -> Result<()> {
        let length = c.chunk.length.get();
        let type_flags = c.chunk.type_.get();
        let stripe_len = c.chunk.stripe_len.get();
        let bad = |what: String| {
            Err(Error::corrupt(
                at,
                format!("chunk at logical {logical}: {what}"),
            ))
        };
        // sectorsize is a power of two (checked with the superblock).
        let mask = sectorsize as u64 - 1;
        if length == 0 || length & mask != 0 || logical & mask != 0 {
            return bad(format!(
                "length {length} or start not aligned to sector size {sectorsize}"
            ));
        }
        if logical.checked_add(length).is_none() {
            return bad(format!("length {length} overflows the address space"));
        }
        if type_flags & BTRFS_BLOCK_GROUP_TYPE_MASK == 0 {
            return bad(format!(
                "type 0x{type_flags:x} has no DATA/METADATA/SYSTEM bit"
            ));
        }
        let profile = type_flags & BTRFS_BLOCK_GROUP_PROFILE_MASK;
        if profile.count_ones() > 1 {
            return bad(format!("type 0x{type_flags:x} has more than one profile"));
        }
        if !stripe_len.is_power_of_two() {
            return bad(format!("stripe_len {stripe_len} not a power of two"));
        }
        let n = c.stripes.len();
        if let Some(want) = mirrored_stripes(profile) {
            if n != want {
                return bad(format!(
                    "profile {} needs {want} stripes, has {n}",
                    block_group_flags_name(type_flags)
                ));
            }
        }
        let mut stripes = Vec::with_capacity(n);
        for s in &c.stripes {
            let physical = s.offset.get();
            if physical.checked_add(length).is_none() {
                return bad(format!("stripe at physical {physical} overflows"));
            }
            stripes.push(StripeMapping {
                devid: s.devid.get(),
                physical,
            });
        }
        let m = ChunkMapping {
            logical,
            length,
            type_flags,
            stripe_len,
            sub_stripes: c.chunk.sub_stripes.get(),
            stripes,
        };
        // Overlap with the chunk before, or the one after?
        if let Some((_, prev)) = self.chunks.range(..=logical).next_back() {
            if prev.logical == logical && *prev == m {
                return Ok(());
            }
            if prev.end() > logical {
                return bad(format!("overlaps chunk at logical {}", prev.logical));
            }
        }
        if let Some((_, next)) = self.chunks.range(logical..).next() {
            if next.logical < m.end() {
                return bad(format!("overlaps chunk at logical {}", next.logical));
            }
        }
        self.chunks.insert(logical, m);
        Ok(())
    }

    /// The chunk containing `logical`.
    pub fn lookup(&self, logical: u64) -> Option<&ChunkMapping> {
        let (_, c) = self.chunks.range(..=logical).next_back()?;
        (logical < c.end()).then_some(c)
    }

    /// Physical offsets, one per copy held by this device, of `len` bytes at
    /// `logical`; the range must lie inside one chunk.
    pub fn map(&self, logical: u64, len: u64) -> Result<Vec<u64>> {
        let c = self
            .lookup(logical)
            .ok_or_else(|| Error::corrupt(Location::Logical(logical), "not mapped by any chunk"))?;
        logical
            .checked_add(len)
            .filter(|&e| e <= c.end())
            .ok_or_else(|| {
                Error::corrupt(
                    Location::Logical(logical),
                    format!(
                        "{len} bytes run past the end of chunk {}..{}",
                        c.logical,
                        c.end()
                    ),
                )
            })?;
        if !c.is_mirrored() {
            return Err(Error::Unsupported(format!(
                "logical {logical}: striped profile {}",
                block_group_flags_name(c.type_flags)
            )));
        }
        let off = logical - c.logical;
        let copies: Vec<u64> = c
            .stripes
            .iter()
            .filter(|s| s.devid == self.devid)
            .map(|s| s.physical + off)
            .collect();
        if copies.is_empty() {
            return Err(Error::Unsupported(format!(
                "logical {logical}: no stripe on device {} (multi-device filesystem)",
                self.devid
            )));
        }
        Ok(copies)
    }

    /// How many copies of `logical` this device holds.
    pub fn num_copies(&self, logical: u64) -> Result<usize> {
        Ok(self.map(logical, 1)?.len())
    }

    /// Split `[logical, logical+len)` at chunk boundaries: (start, len) pieces.
    pub(crate) fn split(&self, logical: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let end = logical.checked_add(len).ok_or_else(|| {
            Error::corrupt(Location::Logical(logical), format!("{len} bytes overflow"))
        })?;
        let mut out = Vec::new();
        let mut cur = logical;
        while cur < end {
            let c = self
                .lookup(cur)
                .ok_or_else(|| Error::corrupt(Location::Logical(cur), "not mapped by any chunk"))?;
            let n = (c.end() - cur).min(end - cur);
            out.push((cur, n));
            cur += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use btrfs_format::{Chunk, Stripe};

    fn chunk(length: u64, flags: u64, stripes: &[(u64, u64)]) -> ChunkWithStripes {
        ChunkWithStripes {
            chunk: Chunk {
                length: length.into(),
                owner: 2.into(),
                stripe_len: BTRFS_STRIPE_LEN.into(),
                type_: flags.into(),
                io_align: 4096.into(),
                io_width: 4096.into(),
                sector_size: 4096.into(),
                num_stripes: (stripes.len() as u16).into(),
                sub_stripes: 1.into(),
            },
            stripes: stripes
                .iter()
                .map(|&(devid, offset)| Stripe {
                    devid: devid.into(),
                    offset: offset.into(),
                    dev_uuid: [0; 16],
                })
                .collect(),
        }
    }

    #[test]
    fn dup_maps_to_both_copies_and_rejects_overlap() {
        let mut m = ChunkMap::new(1);
        let at = Location::Logical(0);
        let meta = BTRFS_BLOCK_GROUP_METADATA | BTRFS_BLOCK_GROUP_DUP;
        m.insert(
            1 << 20,
            &chunk(1 << 20, meta, &[(1, 1 << 22), (1, 1 << 23)]),
            4096,
            at,
        )
        .unwrap();
        assert_eq!(
            m.map((1 << 20) + 4096, 4096).unwrap(),
            vec![(1 << 22) + 4096, (1 << 23) + 4096]
        );
        assert!(m.map((2 << 20) - 4096, 8192).is_err());
        assert!(m.map(0, 1).is_err());
        // Identical repeat is fine; an overlapping one is not.
        m.insert(
            1 << 20,
            &chunk(1 << 20, meta, &[(1, 1 << 22), (1, 1 << 23)]),
            4096,
            at,
        )
        .unwrap();
        let single = BTRFS_BLOCK_GROUP_DATA;
        assert!(m
            .insert((1 << 20) + 4096, &chunk(4096, single, &[(1, 0)]), 4096, at)
            .is_err());
        assert!(m
            .insert(0, &chunk(2 << 20, single, &[(1, 0)]), 4096, at)
            .is_err());
        // DUP needs two stripes.
        assert!(m
            .insert(8 << 20, &chunk(4096, meta, &[(1, 0)]), 4096, at)
            .is_err());
    }

    #[test]
    fn striped_is_unsupported_and_foreign_devices_skipped() {
        let mut m = ChunkMap::new(1);
        let at = Location::Logical(0);
        let r0 = BTRFS_BLOCK_GROUP_DATA | BTRFS_BLOCK_GROUP_RAID0;
        m.insert(0, &chunk(1 << 20, r0, &[(1, 0), (2, 0)]), 4096, at)
            .unwrap();
        assert!(matches!(m.map(0, 10), Err(Error::Unsupported(_))));
        let r1 = BTRFS_BLOCK_GROUP_DATA | BTRFS_BLOCK_GROUP_RAID1;
        m.insert(
            1 << 20,
            &chunk(1 << 20, r1, &[(2, 0), (1, 5 << 20)]),
            4096,
            at,
        )
        .unwrap();
        assert_eq!(m.map(1 << 20, 10).unwrap(), vec![5 << 20]);
        assert_eq!(
            m.split((1 << 20) - 10, 20).unwrap(),
            vec![((1 << 20) - 10, 10), (1 << 20, 10)]
        );
    }
}
