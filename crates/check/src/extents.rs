//! The extent tree: one extent item per tree block and data extent, whose
//! reference count and backrefs equal the references that exist; no overlaps;
//! block group `used` and the superblock's `bytes_used` add up.
use std::collections::HashMap;

use btrfs_format::consts::*;
use btrfs_format::items::{parse_extent_item, InlineRef};
use btrfs_format::*;

use crate::chunks::BlockGroups;
use crate::finding::{Finding, Kind};
use crate::walk::TreeKind;
use crate::{items, Ctx, Walked};

/// One backref, inline or keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RefKey {
    Tree(u64),
    SharedBlock(u64),
    Data { root: u64, ino: u64, offset: u64 },
    SharedData(u64),
}

impl core::fmt::Display for RefKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RefKey::Tree(r) => write!(f, "TREE_BLOCK_REF root {r}"),
            RefKey::SharedBlock(p) => write!(f, "SHARED_BLOCK_REF parent {p}"),
            RefKey::Data { root, ino, offset } => {
                write!(f, "EXTENT_DATA_REF root {root} inode {ino} offset {offset}")
            }
            RefKey::SharedData(p) => write!(f, "SHARED_DATA_REF parent {p}"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ExtentRec {
    pub start: u64,
    pub len: u64,
    pub key: Key,
    pub flags: u64,
    pub refs: u64,
    pub level: Option<u8>,
    pub backrefs: Vec<(RefKey, u64)>,
}

impl ExtentRec {
    pub fn is_data(&self) -> bool {
        self.flags & BTRFS_EXTENT_FLAG_DATA != 0
    }

    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

pub(crate) struct Extents {
    /// Sorted by start.
    pub extents: Vec<ExtentRec>,
}

impl Extents {
    pub fn get(&self, start: u64) -> Option<&ExtentRec> {
        let i = self.extents.partition_point(|e| e.start < start);
        self.extents.get(i).filter(|e| e.start == start)
    }
}

pub(crate) fn parse(ctx: &Ctx<'_>, w: &Walked, bgs: &BlockGroups) -> Extents {
    let et = BTRFS_EXTENT_TREE_OBJECTID;
    let mut out: Vec<ExtentRec> = Vec::new();
    let Some(t) = w.tree(et) else {
        ctx.sink.push(Finding::error(
            Kind::ExtentItemMissing,
            "there is no extent tree (no ROOT_ITEM for tree 2)",
        ));
        return Extents { extents: out };
    };
    let skinny = ctx.incompat(BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA);
    let bad = |kind: Kind, key: Key, leaf: u64, msg: String| {
        ctx.sink
            .push(Finding::error(kind, msg).tree(et).key(key).bytenr(leaf));
    };
    for it in items(ctx, t) {
        let k = it.key;
        match k.item_type {
            BTRFS_EXTENT_ITEM_KEY | BTRFS_METADATA_ITEM_KEY => {
                let Ok(rec) = parse_extent_item(k.item_type, it.data) else {
                    continue; // reported by the item size check
                };
                let flags = rec.item.flags.get();
                let is_data = flags & BTRFS_EXTENT_FLAG_DATA != 0;
                let is_tree = flags & BTRFS_EXTENT_FLAG_TREE_BLOCK != 0;
                if is_data == is_tree {
                    bad(Kind::ExtentItemInvalid, k, it.leaf, format!("extent {} has flags 0x{flags:x}: neither or both of DATA and TREE_BLOCK", k.objectid));
                }
                if is_data && flags & BTRFS_BLOCK_FLAG_FULL_BACKREF != 0 {
                    bad(
                        Kind::ExtentItemInvalid,
                        k,
                        it.leaf,
                        format!("data extent {} has the FULL_BACKREF flag", k.objectid),
                    );
                }
                let (len, level) = if k.item_type == BTRFS_METADATA_ITEM_KEY {
                    if !skinny {
                        bad(
                            Kind::ExtentItemInvalid,
                            k,
                            it.leaf,
                            "METADATA_ITEM without the skinny-metadata feature".into(),
                        );
                    }
                    if !is_tree {
                        bad(
                            Kind::ExtentItemInvalid,
                            k,
                            it.leaf,
                            "METADATA_ITEM without the TREE_BLOCK flag".into(),
                        );
                    }
                    (ctx.nodesize, u8::try_from(k.offset).ok())
                } else {
                    (k.offset, rec.tree_block_info.map(|i| i.level))
                };
                if is_tree && len != ctx.nodesize {
                    bad(
                        Kind::ExtentItemInvalid,
                        k,
                        it.leaf,
                        format!(
                            "tree block extent {} of {len} bytes, nodesize is {}",
                            k.objectid, ctx.nodesize
                        ),
                    );
                }
                if k.objectid % ctx.sectorsize != 0 || len == 0 || len % ctx.sectorsize != 0 {
                    bad(
                        Kind::ExtentItemInvalid,
                        k,
                        it.leaf,
                        format!("extent {} of {len} bytes is not sector aligned", k.objectid),
                    );
                }
                match bgs.find(k.objectid) {
                    None => bad(
                        Kind::ExtentItemInvalid,
                        k,
                        it.leaf,
                        format!(
                            "extent {}..{} is in no block group",
                            k.objectid,
                            k.objectid.saturating_add(len)
                        ),
                    ),
                    Some(bg) => {
                        if k.objectid.saturating_add(len) > bg.end() {
                            bad(
                                Kind::ExtentItemInvalid,
                                k,
                                it.leaf,
                                format!(
                                    "extent {}..{} runs past the end of its block group {}..{}",
                                    k.objectid,
                                    k.objectid.saturating_add(len),
                                    bg.start,
                                    bg.end()
                                ),
                            );
                        }
                        let want = if is_data {
                            BTRFS_BLOCK_GROUP_DATA
                        } else {
                            BTRFS_BLOCK_GROUP_METADATA | BTRFS_BLOCK_GROUP_SYSTEM
                        };
                        if bg.flags & want == 0 {
                            bad(
                                Kind::ExtentItemInvalid,
                                k,
                                it.leaf,
                                format!(
                                    "{} extent {} is in a {} block group",
                                    if is_data { "data" } else { "tree block" },
                                    k.objectid,
                                    block_group_flags_name(bg.flags)
                                ),
                            );
                        }
                    }
                }
                if let Some(prev) = out.last() {
                    if prev.end() > k.objectid {
                        bad(
                            Kind::ExtentOverlap,
                            k,
                            it.leaf,
                            format!(
                                "extent {}..{} overlaps extent {}..{}",
                                k.objectid,
                                k.objectid.saturating_add(len),
                                prev.start,
                                prev.end()
                            ),
                        );
                    }
                }
                let backrefs = rec
                    .refs
                    .iter()
                    .filter_map(|r| match *r {
                        InlineRef::TreeBlock { root } => Some((RefKey::Tree(root), 1)),
                        InlineRef::SharedBlock { parent } => Some((RefKey::SharedBlock(parent), 1)),
                        InlineRef::ExtentData {
                            root,
                            objectid,
                            offset,
                            count,
                        } => Some((
                            RefKey::Data {
                                root,
                                ino: objectid,
                                offset,
                            },
                            count as u64,
                        )),
                        InlineRef::SharedData { parent, count } => {
                            Some((RefKey::SharedData(parent), count as u64))
                        }
                        InlineRef::ExtentOwner { .. } => None,
                    })
                    .collect();
                out.push(ExtentRec {
                    start: k.objectid,
                    len,
                    key: k,
                    flags,
                    refs: rec.item.refs.get(),
                    level,
                    backrefs,
                });
            }
            BTRFS_TREE_BLOCK_REF_KEY
            | BTRFS_SHARED_BLOCK_REF_KEY
            | BTRFS_EXTENT_DATA_REF_KEY
            | BTRFS_SHARED_DATA_REF_KEY => {
                let r = match k.item_type {
                    BTRFS_TREE_BLOCK_REF_KEY => Some((RefKey::Tree(k.offset), 1)),
                    BTRFS_SHARED_BLOCK_REF_KEY => Some((RefKey::SharedBlock(k.offset), 1)),
                    BTRFS_EXTENT_DATA_REF_KEY => ExtentDataRef::read(it.data).ok().map(|d| {
                        let (root, ino, offset) = (d.root.get(), d.objectid.get(), d.offset.get());
                        if extent_data_ref_hash(root, ino, offset) != k.offset {
                            bad(Kind::ExtentItemInvalid, k, it.leaf, format!("EXTENT_DATA_REF key offset {} is not the hash of (root {root}, inode {ino}, offset {offset})", k.offset));
                        }
                        (RefKey::Data { root, ino, offset }, d.count.get() as u64)
                    }),
                    _ => SharedDataRef::read(it.data).ok().map(|d| (RefKey::SharedData(k.offset), d.count.get() as u64)),
                };
                let Some(r) = r else { continue };
                match out.last_mut() {
                    Some(e) if e.start == k.objectid => e.backrefs.push(r),
                    _ => bad(
                        Kind::BackrefExtra,
                        k,
                        it.leaf,
                        format!("{} for extent {} which has no extent item", r.0, k.objectid),
                    ),
                }
            }
            _ => {}
        }
    }
    Extents { extents: out }
}

#[derive(Default)]
struct Expected {
    refs: Vec<(RefKey, u64)>,
    /// Data: disk_num_bytes a file extent gives, and one referrer for messages.
    data: Option<(u64, u64, u64)>,
    /// Tree block: the tree that reached it.
    tree: Option<u64>,
}

fn add(v: &mut Vec<(RefKey, u64)>, k: RefKey) {
    v.push((k, 1));
}

/// Sort and merge equal keys, adding their counts (no quadratic searches, even
/// for extents with tens of thousands of references).
fn merged(mut v: Vec<(RefKey, u64)>) -> Vec<(RefKey, u64)> {
    v.sort_unstable();
    let mut out: Vec<(RefKey, u64)> = Vec::with_capacity(v.len());
    for (k, c) in v {
        match out.last_mut() {
            Some(l) if l.0 == k => l.1 = l.1.saturating_add(c),
            _ => out.push((k, c)),
        }
    }
    out
}

pub(crate) fn check(ctx: &Ctx<'_>, w: &Walked, ext: &Extents, bgs: &BlockGroups) {
    let et = BTRFS_EXTENT_TREE_OBJECTID;
    let full = |b: u64| -> bool {
        ext.get(b)
            .is_some_and(|e| e.flags & BTRFS_BLOCK_FLAG_FULL_BACKREF != 0)
            || w.blocks
                .get(&b)
                .is_some_and(|m| m.backref_rev < BTRFS_MIXED_BACKREF_REV)
    };
    let mut exp: HashMap<u64, Expected> = HashMap::new();
    for r in &w.tree_refs {
        let key = match r.parent {
            None if r.kind == TreeKind::Reloc
                || w.blocks
                    .get(&r.child)
                    .is_some_and(|m| m.backref_rev < BTRFS_MIXED_BACKREF_REV) =>
            {
                RefKey::SharedBlock(r.child)
            }
            None => RefKey::Tree(r.owner),
            Some(p) if full(p) => RefKey::SharedBlock(p),
            Some(_) => RefKey::Tree(r.owner),
        };
        let e = exp.entry(r.child).or_default();
        add(&mut e.refs, key);
        if e.tree.is_none() {
            e.tree = Some(w.trees.get(r.tree).map_or(0, |t| t.spec.id));
        }
    }
    for d in &w.data_refs {
        let key = if full(d.leaf) {
            RefKey::SharedData(d.leaf)
        } else {
            RefKey::Data {
                root: d.leaf_owner,
                ino: d.ino,
                offset: d.offset,
            }
        };
        let e = exp.entry(d.bytenr).or_default();
        add(&mut e.refs, key);
        if e.data.is_none() {
            e.data = Some((d.num_bytes, d.tree, d.ino));
        } else if let Some((n, t, i)) = e.data {
            if n != d.num_bytes {
                ctx.sink.push(
                    Finding::error(Kind::FileExtentInvalid, format!("file extents disagree on the size of data extent {}: {n} (tree {t} inode {i}) and {}", d.bytenr, d.num_bytes))
                        .tree(d.tree)
                        .ino(d.ino)
                        .bytenr(d.bytenr),
                );
            }
        }
    }
    // Extent items against what references them.
    for rec in &ext.extents {
        let at = |f: Finding| f.tree(et).key(rec.key).bytenr(rec.start);
        let what = if rec.is_data() {
            "data extent"
        } else {
            "tree block"
        };
        let listed: u64 = rec.backrefs.iter().map(|b| b.1).sum();
        if listed != rec.refs {
            ctx.sink.push(at(Finding::error(
                Kind::ExtentRefCount,
                format!(
                "{what} {}: the extent item says {} references, its backrefs add up to {listed}",
                rec.start, rec.refs
            ),
            )));
        }
        let Some(e) = exp.get(&rec.start) else {
            ctx.sink.push(at(Finding::error(
                Kind::ExtentUnreferenced,
                format!(
                    "{what} {}..{} has an extent item ({} references) but nothing references it",
                    rec.start,
                    rec.end(),
                    rec.refs
                ),
            )));
            continue;
        };
        let real: u64 = e.refs.iter().map(|r| r.1).sum();
        if e.data.is_some() != rec.is_data() {
            ctx.sink.push(at(Finding::error(
                Kind::ExtentItemInvalid,
                format!(
                    "extent {} is referenced as {} but its item says {what}",
                    rec.start,
                    if e.data.is_some() {
                        "file data"
                    } else {
                        "a tree block"
                    }
                ),
            )));
            continue;
        }
        if let Some((n, t, i)) = e.data {
            if n != rec.len {
                ctx.sink.push(at(Finding::error(Kind::ExtentItemInvalid, format!(
                    "data extent {} is {} bytes in the extent tree, {n} bytes in the file extent of tree {t} inode {i}",
                    rec.start, rec.len
                ))));
            }
        } else if let (Some(l), Some(m)) = (rec.level, w.blocks.get(&rec.start)) {
            if l != m.level {
                ctx.sink.push(at(Finding::error(
                    Kind::ExtentItemInvalid,
                    format!(
                        "tree block {}: extent item says level {l}, the block {}",
                        rec.start, m.level
                    ),
                )));
            }
        }
        if real != rec.refs && listed == rec.refs {
            ctx.sink.push(at(Finding::error(
                Kind::ExtentRefCount,
                format!(
                    "{what} {}: the extent item says {} references, {real} exist",
                    rec.start, rec.refs
                ),
            )));
        }
        let want = merged(e.refs.clone());
        let have = merged(rec.backrefs.clone());
        let (mut i, mut j) = (0, 0);
        while i < want.len() || j < have.len() {
            let w = want.get(i).copied();
            let h = have.get(j).copied();
            match (w, h) {
                (Some((k, c)), Some((hk, hc))) if k == hk => {
                    if hc != c {
                        ctx.sink.push(at(Finding::error(
                            Kind::ExtentRefCount,
                            format!(
                                "{what} {}: backref {k} counts {hc}, {c} reference(s) exist",
                                rec.start
                            ),
                        )));
                    }
                    i += 1;
                    j += 1;
                }
                (Some((k, c)), h) if h.is_none_or(|(hk, _)| k < hk) => {
                    ctx.sink.push(at(Finding::error(
                        Kind::BackrefMissing,
                        format!(
                            "{what} {}: no backref {k} for its {c} reference(s)",
                            rec.start
                        ),
                    )));
                    i += 1;
                }
                (_, Some((hk, _))) => {
                    ctx.sink.push(at(Finding::error(
                        Kind::BackrefExtra,
                        format!("{what} {}: backref {hk} matches no reference", rec.start),
                    )));
                    j += 1;
                }
                (_, None) => i += 1,
            }
        }
    }
    let mut missing: Vec<(&u64, &Expected)> =
        exp.iter().filter(|(b, _)| ext.get(**b).is_none()).collect();
    missing.sort_by_key(|(b, _)| **b);
    for (&b, e) in missing {
        let mut f = match e.data {
            Some((n, t, i)) => Finding::error(
                Kind::ExtentItemMissing,
                format!(
                    "data extent {b} ({n} bytes) is used by a file extent but has no extent item"
                ),
            )
            .tree(t)
            .ino(i),
            None => Finding::error(
                Kind::ExtentItemMissing,
                format!("tree block {b} has no extent item"),
            )
            .tree(e.tree.unwrap_or(et)),
        };
        f = f.bytenr(b);
        ctx.sink.push(f);
    }
    // Block group `used` and the superblock's `bytes_used`.
    let mut used = vec![0u64; bgs.list.len()];
    for rec in &ext.extents {
        let i = bgs.list.partition_point(|b| b.start <= rec.start);
        if let Some(i) = i.checked_sub(1) {
            if rec.start < bgs.list[i].end() {
                used[i] = used[i].saturating_add(rec.len);
            }
        }
    }
    let mut total = 0u64;
    for (bg, &u) in bgs.list.iter().zip(&used) {
        total = total.saturating_add(u);
        if bg.used != u {
            ctx.sink.push(
                Finding::error(
                    Kind::BlockGroupUsed,
                    format!(
                        "block group {}..{} ({}) says {} bytes used, its extents add up to {u}",
                        bg.start,
                        bg.end(),
                        block_group_flags_name(bg.flags),
                        bg.used
                    ),
                )
                .tree(bg.tree)
                .key(Key::new(bg.start, BTRFS_BLOCK_GROUP_ITEM_KEY, bg.len)),
            );
        }
    }
    let sb_used = ctx.img.superblock().bytes_used.get();
    if sb_used != total && w.tree(et).is_some() {
        ctx.sink.push(Finding::error(
            Kind::SuperBytesUsed,
            format!("the superblock says {sb_used} bytes used, the extents add up to {total}"),
        ));
    }
}
