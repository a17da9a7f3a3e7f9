//! Bulk B-tree builder: sorted items are packed into leaves, leaves under nodes,
//! bottom-up, with no insert-and-split loop.
use btrfs_format::*;
use zerocopy::IntoBytes;

use crate::{Error, Result};

/// Items of one tree: keys with payloads in arenas. Pushes go to the last
/// arena; `append` moves another tree's arenas in without copying them
/// (inline file data makes a subvolume's arena tens of MiB).
#[derive(Debug, Default, Clone)]
pub struct TreeItems {
    /// Key, then arena index and offset, then payload length.
    entries: Vec<(Key, (u32, usize), u32)>,
    arenas: Vec<Vec<u8>>,
}

impl TreeItems {
    pub fn new() -> Self {
        Self::default()
    }

    /// The arena pushes go to, and its index.
    fn tail(&mut self) -> (u32, &mut Vec<u8>) {
        if self.arenas.is_empty() {
            self.arenas.push(Vec::new());
        }
        let i = self.arenas.len() - 1;
        (i as u32, &mut self.arenas[i])
    }

    /// Room for `bytes` more payload without growing the arena.
    pub fn reserve(&mut self, bytes: usize) {
        self.tail().1.reserve(bytes);
    }

    pub fn push(&mut self, key: Key, payload: &[u8]) {
        self.push_with(key, |o| o.extend_from_slice(payload));
    }

    /// Push an item whose payload is written by `f` into the arena.
    pub fn push_with(&mut self, key: Key, f: impl FnOnce(&mut Vec<u8>)) {
        let (a, data) = self.tail();
        let off = data.len();
        f(data);
        let len = (data.len() - off) as u32;
        self.entries.push((key, (a, off), len));
    }

    pub fn push_struct<T: IntoBytes + zerocopy::Immutable>(&mut self, key: Key, v: &T) {
        self.push(key, v.as_bytes());
    }

    pub fn extend(&mut self, other: &TreeItems) {
        for (k, p) in other.iter() {
            self.push(k, p);
        }
    }

    /// Append every item of `other`, moving its arenas.
    pub fn append(&mut self, other: TreeItems) {
        if self.entries.is_empty() {
            *self = other;
            return;
        }
        let base = self.arenas.len() as u32;
        self.arenas.extend(other.arenas);
        self.entries.extend(
            other
                .entries
                .into_iter()
                .map(|(k, (a, o), l)| (k, (a + base, o), l)),
        );
    }

    /// Sort the items pushed since `start` (the items of one inode, pushed
    /// in build order), so that sorted runs concatenate to a sorted tree.
    pub fn sort_from(&mut self, start: usize) {
        self.entries[start..].sort_by_key(|e| e.0);
    }

    /// Sort by key; two items with one key are a bug in the caller. Items
    /// built in order (most trees) are only checked.
    pub fn sort(&mut self) -> Result<()> {
        if !self.entries.is_sorted_by_key(|e| e.0) {
            self.entries.sort_by_key(|e| e.0);
        }
        if let Some(w) = self.entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::Internal(format!(
                "duplicate key {} in a tree",
                w[0].0
            )));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sorted by key, with no key twice.
    pub fn is_sorted(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].0 < w[1].0)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn key(&self, i: usize) -> Key {
        self.entries[i].0
    }

    pub fn payload(&self, i: usize) -> &[u8] {
        let (_, (a, off), len) = self.entries[i];
        &self.arenas[a as usize][off..off + len as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &[u8])> + '_ {
        (0..self.len()).map(|i| (self.key(i), self.payload(i)))
    }

    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|e| e.2 as usize)
    }
}

/// How a tree's items are split into blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePlan {
    /// Item index ranges of each leaf, in key order.
    pub leaves: Vec<std::ops::Range<usize>>,
    /// For each level above the leaves, child index ranges of each node.
    pub nodes: Vec<Vec<std::ops::Range<usize>>>,
}

impl TreePlan {
    /// Pack items greedily into full leaves; split nodes evenly.
    pub fn new(sizes: impl Iterator<Item = usize>, nodesize: u32) -> Result<Self> {
        let room = leaf_data_size(nodesize);
        let mut leaves = Vec::new();
        let mut start = 0;
        let mut used = 0;
        let mut n = 0;
        for (i, size) in sizes.enumerate() {
            let need = Item::SIZE + size;
            if need > room {
                return Err(Error::Internal(format!(
                    "item of {size} bytes does not fit a {nodesize}-byte leaf"
                )));
            }
            if used + need > room {
                leaves.push(start..i);
                start = i;
                used = 0;
            }
            used += need;
            n = i + 1;
        }
        if n > start || leaves.is_empty() {
            leaves.push(start..n);
        }
        let max_ptrs = node_max_ptrs(nodesize);
        let mut nodes = Vec::new();
        let mut width = leaves.len();
        while width > 1 {
            let count = width.div_ceil(max_ptrs);
            let level: Vec<_> = (0..count)
                .map(|j| (j * width / count)..((j + 1) * width / count))
                .collect();
            width = level.len();
            nodes.push(level);
            if nodes.len() >= BTRFS_MAX_LEVEL as usize {
                return Err(Error::Internal("tree deeper than 8 levels".into()));
            }
        }
        Ok(TreePlan { leaves, nodes })
    }

    pub fn block_count(&self) -> usize {
        self.leaves.len() + self.nodes.iter().map(Vec::len).sum::<usize>()
    }

    pub fn root_level(&self) -> u8 {
        self.nodes.len() as u8
    }
}

/// Identity stamped into every tree block.
#[derive(Debug, Clone, Copy)]
pub struct BlockParams {
    pub nodesize: u32,
    pub csum: CsumType,
    pub fsid: [u8; 16],
    pub chunk_tree_uuid: [u8; 16],
    pub generation: u64,
}

/// One serialized tree block.
#[derive(Debug, Clone)]
pub struct Block {
    pub bytenr: u64,
    pub level: u8,
    pub owner: u64,
    pub first_key: Key,
    pub bytes: Vec<u8>,
}

/// A built tree: its blocks (root last) and where the root is.
#[derive(Debug, Clone)]
pub struct BuiltTree {
    pub owner: u64,
    pub blocks: Vec<Block>,
}

impl BuiltTree {
    pub fn root(&self) -> &Block {
        self.blocks
            .last()
            .unwrap_or_else(|| unreachable!("a tree has at least one block"))
    }

    pub fn bytes_used(&self, nodesize: u32) -> u64 {
        self.blocks.len() as u64 * nodesize as u64
    }
}

fn header(p: &BlockParams, bytenr: u64, owner: u64, nritems: usize, level: u8) -> Header {
    Header {
        csum: [0; 32],
        fsid: p.fsid,
        bytenr: bytenr.into(),
        flags: (BTRFS_HEADER_FLAG_WRITTEN | (BTRFS_MIXED_BACKREF_REV << BTRFS_BACKREF_REV_SHIFT))
            .into(),
        chunk_tree_uuid: p.chunk_tree_uuid,
        generation: p.generation.into(),
        owner: owner.into(),
        nritems: (nritems as u32).into(),
        level,
    }
}

/// Fill in the checksum of a finished block (covers byte 32 to the end).
pub fn seal_block(bytes: &mut [u8], csum: CsumType) {
    let c = csum.compute(&bytes[BTRFS_CSUM_SIZE..]);
    bytes[..BTRFS_CSUM_SIZE].copy_from_slice(&c);
}

/// Write the items `r` into the zeroed leaf `b` under header `h`: item
/// headers from the front, payloads from the back.
fn fill_leaf(b: &mut [u8], items: &TreeItems, r: std::ops::Range<usize>, h: &Header) {
    let ns = b.len();
    b[..Header::SIZE].copy_from_slice(h.as_bytes());
    let mut data_end = ns;
    for (slot, i) in r.enumerate() {
        let payload = items.payload(i);
        data_end -= payload.len();
        b[data_end..data_end + payload.len()].copy_from_slice(payload);
        let it = Item {
            key: items.key(i).to_disk(),
            offset: ((data_end - Header::SIZE) as u32).into(),
            size: (payload.len() as u32).into(),
        };
        let at = Header::SIZE + slot * Item::SIZE;
        b[at..at + Item::SIZE].copy_from_slice(it.as_bytes());
    }
}

/// Serialize `items` as planned, at the given addresses (leaves first, root last).
pub fn build_tree(
    items: &TreeItems,
    plan: &TreePlan,
    addrs: &[u64],
    owner: u64,
    p: &BlockParams,
) -> Result<BuiltTree> {
    build_tree_into(items, plan, addrs, owner, p, true, &mut |_, _| Ok(()))
}

/// Serialize `items` as planned and hand finished blocks to `emit` (bytenr,
/// bytes: one block, or several at consecutive addresses). Unless `keep` is
/// set, the returned blocks carry no bytes: a large tree is written out as it
/// is built instead of held in memory.
pub fn build_tree_into(
    items: &TreeItems,
    plan: &TreePlan,
    addrs: &[u64],
    owner: u64,
    p: &BlockParams,
    keep: bool,
    emit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<BuiltTree> {
    if addrs.len() != plan.block_count() {
        return Err(Error::Internal(format!(
            "tree {owner}: {} addresses for {} blocks",
            addrs.len(),
            plan.block_count()
        )));
    }
    let ns = p.nodesize as usize;
    let mut blocks = Vec::with_capacity(addrs.len());
    // Leaves in windows: built and sealed in parallel, then handed to
    // `emit` as spans of consecutive addresses (one write per span).
    const WINDOW: usize = 64;
    let mut buf = Vec::new();
    for (w, window) in plan.leaves.chunks(WINDOW).enumerate() {
        let base = w * WINDOW;
        buf.clear();
        buf.resize(window.len() * ns, 0u8);
        let fill = |j: usize, b: &mut [u8]| {
            let bytenr = addrs[base + j];
            fill_leaf(
                b,
                items,
                window[j].clone(),
                &header(p, bytenr, owner, window[j].len(), 0),
            );
            seal_block(b, p.csum);
        };
        // A few leaves are not worth tasks (and the small trees of an empty
        // filesystem are built outside any pool).
        if window.len() >= 8 {
            use rayon::prelude::*;
            buf.par_chunks_mut(ns)
                .enumerate()
                .for_each(|(j, b)| fill(j, b));
        } else {
            for (j, b) in buf.chunks_mut(ns).enumerate() {
                fill(j, b);
            }
        }
        let mut j = 0;
        while j < window.len() {
            let mut k = j + 1;
            while k < window.len() && addrs[base + k] == addrs[base + k - 1] + ns as u64 {
                k += 1;
            }
            emit(addrs[base + j], &buf[j * ns..k * ns])?;
            j = k;
        }
        for (j, r) in window.iter().enumerate() {
            blocks.push(Block {
                bytenr: addrs[base + j],
                level: 0,
                owner,
                first_key: if r.is_empty() {
                    Key::MIN
                } else {
                    items.key(r.start)
                },
                bytes: if keep {
                    buf[j * ns..(j + 1) * ns].to_vec()
                } else {
                    Vec::new()
                },
            });
        }
    }
    let mut addr = addrs[plan.leaves.len()..].iter().copied();
    let mut below = 0..blocks.len();
    for (lvl, level_nodes) in plan.nodes.iter().enumerate() {
        let level = lvl as u8 + 1;
        let start = blocks.len();
        for r in level_nodes {
            let bytenr = addr.next().unwrap_or_default();
            let mut b = vec![0u8; ns];
            b[..Header::SIZE].copy_from_slice(header(p, bytenr, owner, r.len(), level).as_bytes());
            for (slot, c) in r.clone().enumerate() {
                let child = &blocks[below.start + c];
                let kp = KeyPtr {
                    key: child.first_key.to_disk(),
                    blockptr: child.bytenr.into(),
                    generation: p.generation.into(),
                };
                let at = Header::SIZE + slot * KeyPtr::SIZE;
                b[at..at + KeyPtr::SIZE].copy_from_slice(kp.as_bytes());
            }
            seal_block(&mut b, p.csum);
            emit(bytenr, &b)?;
            if !keep {
                b = Vec::new();
            }
            let first_key = blocks[below.start + r.start].first_key;
            blocks.push(Block {
                bytenr,
                level,
                owner,
                first_key,
                bytes: b,
            });
        }
        below = start..blocks.len();
    }
    Ok(BuiltTree { owner, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use btrfs_format::tree::TreeBlock;

    fn params(nodesize: u32) -> BlockParams {
        BlockParams {
            nodesize,
            csum: CsumType::Crc32c,
            fsid: [1; 16],
            chunk_tree_uuid: [2; 16],
            generation: 1,
        }
    }

    #[test]
    fn empty_tree_is_one_empty_leaf() {
        let items = TreeItems::new();
        let plan = TreePlan::new(items.sizes(), 4096).unwrap();
        assert_eq!(plan.block_count(), 1);
        let t = build_tree(&items, &plan, &[4096], 5, &params(4096)).unwrap();
        let tb = TreeBlock::parse(&t.root().bytes).unwrap();
        assert_eq!(tb.nritems(), 0);
    }

    #[test]
    fn multi_level_tree_round_trips() {
        let mut items = TreeItems::new();
        for i in 0..20_000u64 {
            items.push(Key::new(i, 1, 0), &i.to_le_bytes().repeat((i % 5) as usize));
        }
        items.sort().unwrap();
        let plan = TreePlan::new(items.sizes(), 4096).unwrap();
        assert!(plan.root_level() >= 2);
        let addrs: Vec<u64> = (0..plan.block_count() as u64)
            .map(|i| (i + 1) * 4096)
            .collect();
        let t = build_tree(&items, &plan, &addrs, 5, &params(4096)).unwrap();
        // Walk from the root and collect every key in order.
        let by_addr: std::collections::HashMap<u64, &Block> =
            t.blocks.iter().map(|b| (b.bytenr, b)).collect();
        let mut keys = Vec::new();
        let mut stack = vec![t.root().bytenr];
        while let Some(a) = stack.pop() {
            let b = by_addr[&a];
            assert_eq!(CsumType::Crc32c.compute(&b.bytes[32..]), b.bytes[..32]);
            let tb = TreeBlock::parse(&b.bytes).unwrap();
            if tb.level() == 0 {
                for i in 0..tb.nritems() {
                    let it = tb.item(i).unwrap();
                    assert_eq!(tb.payload(&it), items.payload(keys.len()));
                    keys.push(it.key);
                }
            } else {
                for i in (0..tb.nritems()).rev() {
                    let kp = tb.key_ptr(i).unwrap();
                    let child = TreeBlock::parse(&by_addr[&kp.blockptr.get()].bytes).unwrap();
                    assert_eq!(child.key_at(0).unwrap(), Key::from(kp.key));
                    assert_eq!(child.level() + 1, tb.level());
                    stack.push(kp.blockptr.get());
                }
            }
        }
        assert_eq!(keys.len(), 20_000);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let mut items = TreeItems::new();
        items.push(Key::new(1, 1, 1), b"a");
        items.push(Key::new(1, 1, 1), b"b");
        assert!(items.sort().is_err());
    }
}
