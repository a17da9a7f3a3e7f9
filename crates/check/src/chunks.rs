//! Chunk tree, `sys_chunk_array`, dev extents, device items and block groups.
use std::collections::{BTreeMap, HashMap};

use btrfs_format::consts::*;
use btrfs_format::items::{parse_sys_chunk_array, ChunkWithStripes};
use btrfs_format::*;

use crate::finding::{Finding, Kind};
use crate::{items, Ctx, Walked};

/// A block group item.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockGroup {
    pub start: u64,
    pub len: u64,
    pub used: u64,
    pub flags: u64,
    /// Tree holding the item (2 or 11).
    pub tree: u64,
}

impl BlockGroup {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Block groups sorted by start, overlapping ones reported and dropped.
pub(crate) struct BlockGroups {
    pub list: Vec<BlockGroup>,
}

impl BlockGroups {
    /// The block group containing `at`.
    pub fn find(&self, at: u64) -> Option<&BlockGroup> {
        let i = self.list.partition_point(|b| b.start <= at);
        let bg = self.list.get(i.checked_sub(1)?)?;
        (at < bg.end()).then_some(bg)
    }
}

pub(crate) fn block_groups(ctx: &Ctx<'_>, w: &Walked) -> BlockGroups {
    let bgt = ctx.compat_ro(BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE);
    let mut list = Vec::new();
    for tree in [BTRFS_EXTENT_TREE_OBJECTID, BTRFS_BLOCK_GROUP_TREE_OBJECTID] {
        let Some(t) = w.tree(tree) else {
            continue;
        };
        let want_here = (tree == BTRFS_BLOCK_GROUP_TREE_OBJECTID) == bgt;
        for it in items(ctx, t) {
            if it.key.item_type != BTRFS_BLOCK_GROUP_ITEM_KEY {
                continue;
            }
            let Ok(bi) = BlockGroupItem::read(it.data) else {
                continue;
            };
            if !want_here {
                ctx.sink.push(
                    Finding::error(
                        Kind::BlockGroupMismatch,
                        format!(
                            "block group item in the {} although the block-group-tree feature is {}",
                            crate::finding::tree_name(tree),
                            if bgt { "on" } else { "off" }
                        ),
                    )
                    .tree(tree)
                    .key(it.key),
                );
            }
            list.push(BlockGroup {
                start: it.key.objectid,
                len: it.key.offset,
                used: bi.used.get(),
                flags: bi.flags.get(),
                tree,
            });
        }
    }
    if bgt && w.tree(BTRFS_BLOCK_GROUP_TREE_OBJECTID).is_none() {
        ctx.sink.push(Finding::error(
            Kind::BlockGroupMismatch,
            "the block-group-tree feature is on but there is no block group tree",
        ));
    }
    list.sort_by_key(|b| (b.start, b.len));
    let mut out: Vec<BlockGroup> = Vec::with_capacity(list.len());
    for bg in list {
        if let Some(prev) = out.last() {
            if bg.start < prev.end() {
                ctx.sink.push(
                    Finding::error(
                        Kind::BlockGroupMismatch,
                        format!(
                            "block group {}..{} overlaps block group {}..{}",
                            bg.start,
                            bg.end(),
                            prev.start,
                            prev.end()
                        ),
                    )
                    .tree(bg.tree)
                    .bytenr(bg.start),
                );
                continue;
            }
        }
        out.push(bg);
    }
    BlockGroups { list: out }
}

/// Bytes each stripe of a chunk occupies on its device.
fn stripe_length(c: &Chunk) -> Option<u64> {
    let len = c.length.get();
    let n = c.num_stripes.get() as u64;
    let profile = c.type_.get() & BTRFS_BLOCK_GROUP_PROFILE_MASK;
    Some(match profile {
        BTRFS_BLOCK_GROUP_RAID0 => len / n.max(1),
        BTRFS_BLOCK_GROUP_RAID10 => len.checked_mul(c.sub_stripes.get().max(1) as u64)? / n.max(1),
        BTRFS_BLOCK_GROUP_RAID5 => len / n.checked_sub(1).filter(|&d| d > 0)?,
        BTRFS_BLOCK_GROUP_RAID6 => len / n.checked_sub(2).filter(|&d| d > 0)?,
        _ => len,
    })
}

pub(crate) fn check(ctx: &Ctx<'_>, w: &Walked, bgs: &BlockGroups) {
    let ct = BTRFS_CHUNK_TREE_OBJECTID;
    let err = |kind: Kind, msg: String, key: Option<Key>| {
        let mut f = Finding::error(kind, msg);
        if let Some(k) = key {
            f = f.key(k);
        }
        f
    };
    let mut chunks: BTreeMap<u64, ChunkWithStripes> = BTreeMap::new();
    let mut dev_items: HashMap<u64, DevItem> = HashMap::new();
    if let Some(t) = w.tree(ct) {
        for it in items(ctx, t) {
            match it.key.item_type {
                BTRFS_CHUNK_ITEM_KEY => {
                    let Ok(c) = ChunkWithStripes::parse(it.data) else {
                        continue;
                    };
                    if it.key.objectid != BTRFS_FIRST_CHUNK_TREE_OBJECTID {
                        ctx.sink.push(
                            err(
                                Kind::ChunkInvalid,
                                format!("chunk item with objectid {}", it.key.objectid),
                                Some(it.key),
                            )
                            .tree(ct),
                        );
                    }
                    let logical = it.key.offset;
                    let len = c.chunk.length.get();
                    let ty = c.chunk.type_.get();
                    if len == 0 || len % ctx.sectorsize != 0 || logical % ctx.sectorsize != 0 {
                        ctx.sink.push(
                            err(
                                Kind::ChunkInvalid,
                                format!(
                                    "chunk {logical}: length {len} or start not sector aligned"
                                ),
                                Some(it.key),
                            )
                            .tree(ct),
                        );
                    }
                    if ty & BTRFS_BLOCK_GROUP_TYPE_MASK == 0 {
                        ctx.sink.push(err(Kind::ChunkInvalid, format!("chunk {logical}: type 0x{ty:x} has no data/metadata/system bit"), Some(it.key)).tree(ct));
                    }
                    if let Some((&pl, pc)) = chunks.range(..logical).next_back() {
                        if pl.saturating_add(pc.chunk.length.get()) > logical {
                            ctx.sink.push(
                                err(
                                    Kind::ChunkInvalid,
                                    format!("chunk {logical} overlaps chunk {pl}"),
                                    Some(it.key),
                                )
                                .tree(ct),
                            );
                        }
                    }
                    chunks.insert(logical, c);
                }
                BTRFS_DEV_ITEM_KEY => {
                    if let Ok(d) = DevItem::read(it.data) {
                        dev_items.insert(it.key.offset, d);
                    }
                }
                _ => {}
            }
        }
    }
    // sys_chunk_array <-> SYSTEM chunks of the chunk tree.
    let sb = ctx.img.superblock();
    match parse_sys_chunk_array(&sb.sys_chunk_array, sb.sys_chunk_array_size.get() as usize) {
        Err(e) => ctx.sink.push(err(
            Kind::ChunkInvalid,
            format!("sys_chunk_array: {e}"),
            None,
        )),
        Ok(arr) => {
            for (k, c) in &arr {
                match chunks.get(&k.offset) {
                    None => ctx.sink.push(err(
                        Kind::ChunkInvalid,
                        format!(
                            "sys_chunk_array chunk {} is not in the chunk tree",
                            k.offset
                        ),
                        Some(*k),
                    )),
                    Some(tc) if tc != c => ctx.sink.push(err(
                        Kind::ChunkInvalid,
                        format!(
                            "sys_chunk_array chunk {} differs from the chunk tree's",
                            k.offset
                        ),
                        Some(*k),
                    )),
                    _ => {}
                }
            }
            for (&l, c) in &chunks {
                if c.chunk.type_.get() & BTRFS_BLOCK_GROUP_SYSTEM != 0
                    && !arr.iter().any(|(k, _)| k.offset == l)
                {
                    ctx.sink.push(
                        err(
                            Kind::ChunkInvalid,
                            format!(
                                "SYSTEM chunk {l} is missing from the superblock's sys_chunk_array"
                            ),
                            None,
                        )
                        .tree(ct)
                        .bytenr(l),
                    );
                }
            }
        }
    }
    // Dev extents <-> chunk stripes.
    let mut expected: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for (&l, c) in &chunks {
        let Some(slen) = stripe_length(&c.chunk) else {
            ctx.sink.push(
                err(
                    Kind::ChunkInvalid,
                    format!(
                        "chunk {l}: {} stripes cannot hold its profile",
                        c.stripes.len()
                    ),
                    None,
                )
                .tree(ct)
                .bytenr(l),
            );
            continue;
        };
        for s in &c.stripes {
            if expected
                .insert((s.devid.get(), s.offset.get()), (l, slen))
                .is_some()
            {
                ctx.sink.push(
                    err(
                        Kind::DevExtent,
                        format!(
                            "two chunk stripes at device {} offset {}",
                            s.devid.get(),
                            s.offset.get()
                        ),
                        None,
                    )
                    .tree(ct)
                    .bytenr(l),
                );
            }
        }
    }
    let dt = BTRFS_DEV_TREE_OBJECTID;
    let mut found: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    if let Some(t) = w.tree(dt) {
        for it in items(ctx, t) {
            if it.key.item_type != BTRFS_DEV_EXTENT_KEY {
                continue;
            }
            let Ok(de) = DevExtent::read(it.data) else {
                continue;
            };
            if de.chunk_tree.get() != BTRFS_CHUNK_TREE_OBJECTID
                || de.chunk_objectid.get() != BTRFS_FIRST_CHUNK_TREE_OBJECTID
            {
                ctx.sink.push(
                    err(
                        Kind::DevExtent,
                        "dev extent names another chunk tree".into(),
                        Some(it.key),
                    )
                    .tree(dt),
                );
            }
            if let Some(u) = ctx.chunk_tree_uuid {
                if de.chunk_tree_uuid != u && de.chunk_tree_uuid != [0; 16] {
                    ctx.sink.push(
                        err(
                            Kind::DevExtent,
                            "dev extent names another chunk tree uuid".into(),
                            Some(it.key),
                        )
                        .tree(dt),
                    );
                }
            }
            found.insert(
                (it.key.objectid, it.key.offset),
                (de.chunk_offset.get(), de.length.get()),
            );
        }
    } else {
        ctx.sink
            .push(err(Kind::DevExtent, "there is no device tree".into(), None));
    }
    for (&(dev, off), &(l, len)) in &expected {
        match found.get(&(dev, off)) {
            None => ctx.sink.push(err(Kind::DevExtent, format!("chunk {l}: its stripe at device {dev} offset {off} has no dev extent"), None).tree(dt).bytenr(l)),
            Some(&(fl, flen)) if fl != l || flen != len => ctx.sink.push(err(Kind::DevExtent, format!("dev extent at device {dev} offset {off} says chunk {fl} length {flen}, the chunk tree chunk {l} length {len}"), Some(Key::new(dev, BTRFS_DEV_EXTENT_KEY, off))).tree(dt)),
            _ => {}
        }
    }
    let mut used: HashMap<u64, u64> = HashMap::new();
    let mut prev: Option<(u64, u64, u64)> = None;
    for (&(dev, off), &(l, len)) in &found {
        if !expected.contains_key(&(dev, off)) {
            ctx.sink.push(err(Kind::DevExtent, format!("dev extent at device {dev} offset {off} (chunk {l}) matches no chunk stripe"), Some(Key::new(dev, BTRFS_DEV_EXTENT_KEY, off))).tree(dt));
        }
        if let Some((pd, po, pl)) = prev {
            if pd == dev && po.saturating_add(pl) > off {
                ctx.sink.push(
                    err(
                        Kind::DevExtent,
                        format!("dev extents at device {dev} offsets {po} and {off} overlap"),
                        Some(Key::new(dev, BTRFS_DEV_EXTENT_KEY, off)),
                    )
                    .tree(dt),
                );
            }
        }
        prev = Some((dev, off, len));
        let u = used.entry(dev).or_default();
        *u = u.saturating_add(len);
        if let Some(d) = dev_items.get(&dev) {
            if off.saturating_add(len) > d.total_bytes.get() {
                ctx.sink.push(err(Kind::DevExtent, format!("dev extent at device {dev} offset {off} ends past the device's {} bytes", d.total_bytes.get()), Some(Key::new(dev, BTRFS_DEV_EXTENT_KEY, off))).tree(dt));
            }
        }
    }
    for (&devid, d) in &dev_items {
        let u = used.get(&devid).copied().unwrap_or(0);
        if d.bytes_used.get() != u {
            ctx.sink.push(
                err(
                    Kind::DevItem,
                    format!(
                        "device {devid}: bytes_used {} but its dev extents add up to {u}",
                        d.bytes_used.get()
                    ),
                    Some(Key::new(
                        BTRFS_DEV_ITEMS_OBJECTID,
                        BTRFS_DEV_ITEM_KEY,
                        devid,
                    )),
                )
                .tree(ct),
            );
        }
    }
    let sd = &sb.dev_item;
    match dev_items.get(&sd.devid.get()) {
        None => ctx.sink.push(
            err(
                Kind::DevItem,
                format!(
                    "the superblock's device {} has no device item in the chunk tree",
                    sd.devid.get()
                ),
                None,
            )
            .tree(ct),
        ),
        Some(d) => {
            if d.total_bytes.get() != sd.total_bytes.get()
                || d.bytes_used.get() != sd.bytes_used.get()
                || d.uuid != sd.uuid
            {
                ctx.sink.push(err(Kind::DevItem, format!(
                    "the superblock's device item (size {}, used {}) differs from the chunk tree's (size {}, used {})",
                    sd.total_bytes.get(), sd.bytes_used.get(), d.total_bytes.get(), d.bytes_used.get()
                ), Some(Key::new(BTRFS_DEV_ITEMS_OBJECTID, BTRFS_DEV_ITEM_KEY, sd.devid.get()))).tree(ct));
            }
        }
    }
    // Chunks <-> block groups.
    for (&l, c) in &chunks {
        let len = c.chunk.length.get();
        let ty = c.chunk.type_.get();
        match bgs.list.binary_search_by_key(&l, |b| b.start) {
            Err(_) => ctx.sink.push(
                err(
                    Kind::BlockGroupMismatch,
                    format!(
                        "chunk {l} ({}) has no block group item",
                        block_group_flags_name(ty)
                    ),
                    None,
                )
                .bytenr(l),
            ),
            Ok(i) => {
                let bg = &bgs.list[i];
                if bg.len != len || bg.flags != ty {
                    ctx.sink.push(
                        err(
                            Kind::BlockGroupMismatch,
                            format!(
                        "block group {l} has length {} type {}, its chunk length {len} type {}",
                        bg.len, block_group_flags_name(bg.flags), block_group_flags_name(ty)
                    ),
                            Some(Key::new(l, BTRFS_BLOCK_GROUP_ITEM_KEY, bg.len)),
                        )
                        .tree(bg.tree),
                    );
                }
            }
        }
    }
    for bg in &bgs.list {
        if !chunks.contains_key(&bg.start) {
            ctx.sink.push(
                err(
                    Kind::BlockGroupMismatch,
                    format!("block group {}..{} has no chunk", bg.start, bg.end()),
                    Some(Key::new(bg.start, BTRFS_BLOCK_GROUP_ITEM_KEY, bg.len)),
                )
                .tree(bg.tree),
            );
        }
    }
}
