//! Assemble every tree from its items, place the blocks, write them, then the
//! superblock copies last.
//!
//! The trees that describe the allocation itself (root, block group, free space,
//! extent) depend on where all blocks land, the extent tree even on its own size:
//! they are solved as a fixed point, iterating until their items stop changing.
use std::collections::BTreeMap;
use std::sync::Arc;

use btrfs_format::items::{uuid_key, ChunkWithStripes, InlineRef};
use btrfs_format::*;
use zerocopy::IntoBytes;

use crate::btree::{build_tree_into, BlockParams, BuiltTree, TreeItems, TreePlan};
use crate::config::Features;
use crate::layout::{complement, BumpAlloc, Layout};
use crate::output::Output;
use crate::{Error, Result};

/// Identity of the new filesystem.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fsid: [u8; 16],
    pub dev_uuid: [u8; 16],
    pub chunk_tree_uuid: [u8; 16],
    pub label: String,
    pub now: (u64, u32),
}

/// A subvolume tree (the top-level FS_TREE included) and its root item.
#[derive(Debug, Clone)]
pub struct SubvolInput {
    pub id: u64,
    /// Shared, not copied, by the dry run and the commit.
    pub items: Arc<TreeItems>,
    /// Root item template; commit fills bytenr, level, bytes_used and generations.
    pub root_item: RootItem,
}

/// Everything the commit writes besides file data (already on disk).
#[derive(Debug, Clone)]
pub struct CommitInput {
    pub nodesize: u32,
    pub sectorsize: u32,
    pub csum: CsumType,
    pub features: Features,
    pub ident: Identity,
    pub generation: u64,
    pub layout: Layout,
    pub subvols: Vec<SubvolInput>,
    /// Extra root tree items: ROOT_REF / ROOT_BACKREF of subvolumes.
    pub root_tree_extra: TreeItems,
    /// Subvolume the `default` entry of the root tree directory points at.
    pub default_subvol: u64,
    pub csum_items: Arc<TreeItems>,
    /// EXTENT_ITEMs (and keyed backrefs) of data extents.
    pub data_extent_items: TreeItems,
    /// Sorted, disjoint logical ranges holding data extents.
    pub data_allocated: Vec<(u64, u64)>,
    /// Incompat bits implied by the content (compression, default subvolume).
    pub extra_incompat: u64,
}

/// What was written, for the summary and tests.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub superblock: SuperBlock,
    pub tree_blocks: usize,
    pub metadata_used: u64,
}

/// The trees whose content depends on the allocation, in allocation order.
const VAR_TREES: [u64; 4] = [
    BTRFS_ROOT_TREE_OBJECTID,
    BTRFS_BLOCK_GROUP_TREE_OBJECTID,
    BTRFS_FREE_SPACE_TREE_OBJECTID,
    BTRFS_EXTENT_TREE_OBJECTID,
];

/// A tree ready for allocation: its items and plan.
struct Planned {
    id: u64,
    items: Arc<TreeItems>,
    plan: TreePlan,
}

impl Planned {
    fn new(id: u64, mut items: TreeItems, nodesize: u32) -> Result<Self> {
        items.sort()?;
        let plan = TreePlan::new(items.sizes(), nodesize)?;
        Ok(Planned {
            id,
            items: Arc::new(items),
            plan,
        })
    }

    /// Plan a tree whose items are shared; they are copied only to be sorted.
    fn shared(id: u64, items: &Arc<TreeItems>, nodesize: u32) -> Result<Self> {
        if !items.is_sorted() {
            return Self::new(id, TreeItems::clone(items), nodesize);
        }
        let plan = TreePlan::new(items.sizes(), nodesize)?;
        Ok(Planned {
            id,
            items: Arc::clone(items),
            plan,
        })
    }

    /// First key of every block, in build order (leaves, then nodes bottom-up).
    fn first_keys(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .plan
            .leaves
            .iter()
            .map(|r| {
                if r.is_empty() {
                    Key::MIN
                } else {
                    self.items.key(r.start)
                }
            })
            .collect();
        let mut below = 0..keys.len();
        for level in &self.plan.nodes {
            let start = keys.len();
            for r in level {
                let k = keys[below.start + r.start];
                keys.push(k);
            }
            below = start..keys.len();
        }
        keys
    }

    fn levels(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.plan.leaves.len()];
        for (i, l) in self.plan.nodes.iter().enumerate() {
            v.extend(std::iter::repeat_n(i as u8 + 1, l.len()));
        }
        v
    }
}

/// Root item for a tree at `bytenr`.
fn root_item_for(template: &RootItem, gen: u64, bytenr: u64, level: u8, used: u64) -> RootItem {
    let mut r = *template;
    r.generation = gen.into();
    r.generation_v2 = gen.into();
    r.bytenr = bytenr.into();
    r.level = level;
    r.bytes_used = used.into();
    r.refs = 1.into();
    r
}

/// The inode embedded in root items, as `mkfs.btrfs` fills it.
pub fn internal_root_item(nodesize: u32) -> RootItem {
    let mut r = RootItem::default();
    r.inode.generation = 1.into();
    r.inode.size = 3.into();
    r.inode.nlink = 1.into();
    r.inode.nbytes = (nodesize as u64).into();
    r.inode.mode = (S_IFDIR | 0o755).into();
    r
}

fn dev_item(input: &CommitInput) -> DevItem {
    DevItem {
        devid: 1.into(),
        total_bytes: input.layout.device_size.into(),
        bytes_used: input.layout.dev_bytes_used().into(),
        io_align: input.sectorsize.into(),
        io_width: input.sectorsize.into(),
        sector_size: input.sectorsize.into(),
        uuid: input.ident.dev_uuid,
        fsid: input.ident.fsid,
        ..Default::default()
    }
}

fn chunk_item(input: &CommitInput, c: &crate::layout::ChunkSpec) -> ChunkWithStripes {
    ChunkWithStripes {
        chunk: Chunk {
            length: c.length.into(),
            owner: BTRFS_EXTENT_TREE_OBJECTID.into(),
            stripe_len: BTRFS_STRIPE_LEN.into(),
            type_: c.flags.into(),
            io_align: (BTRFS_STRIPE_LEN as u32).into(),
            io_width: (BTRFS_STRIPE_LEN as u32).into(),
            sector_size: input.sectorsize.into(),
            num_stripes: (c.stripes.len() as u16).into(),
            sub_stripes: 1.into(),
        },
        stripes: c
            .stripes
            .iter()
            .map(|&s| Stripe {
                devid: 1.into(),
                offset: s.into(),
                dev_uuid: input.ident.dev_uuid,
            })
            .collect(),
    }
}

fn inode_item(gen: u64, mode: u32, nbytes: u64, now: (u64, u32)) -> InodeItem {
    let t = Timespec::new(now.0, now.1);
    InodeItem {
        generation: gen.into(),
        transid: gen.into(),
        nlink: 1.into(),
        mode: mode.into(),
        nbytes: nbytes.into(),
        atime: t,
        ctime: t,
        mtime: t,
        otime: t,
        ..Default::default()
    }
}

/// The trees that do not depend on where metadata lands.
fn fixed_trees(input: &CommitInput) -> Result<(Planned, Vec<Planned>)> {
    let ns = input.nodesize;
    let gen = input.generation;
    // Chunk tree: the device and every chunk.
    let mut chunk = TreeItems::new();
    chunk.push_struct(
        Key::new(BTRFS_DEV_ITEMS_OBJECTID, BTRFS_DEV_ITEM_KEY, 1),
        &dev_item(input),
    );
    for c in &input.layout.chunks {
        chunk.push_with(
            Key::new(
                BTRFS_FIRST_CHUNK_TREE_OBJECTID,
                BTRFS_CHUNK_ITEM_KEY,
                c.logical,
            ),
            |out| chunk_item(input, c).encode(out),
        );
    }
    let chunk = Planned::new(BTRFS_CHUNK_TREE_OBJECTID, chunk, ns)?;

    let mut trees = Vec::new();
    for sv in &input.subvols {
        trees.push(Planned::shared(sv.id, &sv.items, ns)?);
    }
    // Data relocation tree: an empty root directory.
    let mut reloc = TreeItems::new();
    let mut dir = inode_item(gen, S_IFDIR | 0o755, 0, input.ident.now);
    dir.otime = Timespec::default();
    reloc.push_struct(Key::new(256, BTRFS_INODE_ITEM_KEY, 0), &dir);
    reloc.push_with(Key::new(256, BTRFS_INODE_REF_KEY, 256), |o| {
        o.extend_from_slice(
            InodeRef {
                index: 0.into(),
                name_len: 2.into(),
            }
            .as_bytes(),
        );
        o.extend_from_slice(b"..");
    });
    trees.push(Planned::new(BTRFS_DATA_RELOC_TREE_OBJECTID, reloc, ns)?);
    trees.push(Planned::shared(
        BTRFS_CSUM_TREE_OBJECTID,
        &input.csum_items,
        ns,
    )?);
    // UUID tree: subvolume uuid -> id.
    let mut uuid = TreeItems::new();
    for sv in &input.subvols {
        if sv.root_item.uuid != [0; 16] {
            uuid.push(
                uuid_key(&sv.root_item.uuid, BTRFS_UUID_KEY_SUBVOL),
                &sv.id.to_le_bytes(),
            );
        }
    }
    trees.push(Planned::new(BTRFS_UUID_TREE_OBJECTID, uuid, ns)?);
    // Device tree: one dev extent per stripe.
    let mut dev = TreeItems::new();
    for c in &input.layout.chunks {
        for &s in &c.stripes {
            let de = DevExtent {
                chunk_tree: BTRFS_CHUNK_TREE_OBJECTID.into(),
                chunk_objectid: BTRFS_FIRST_CHUNK_TREE_OBJECTID.into(),
                chunk_offset: c.logical.into(),
                length: c.length.into(),
                chunk_tree_uuid: input.ident.chunk_tree_uuid,
            };
            dev.push_struct(Key::new(1, BTRFS_DEV_EXTENT_KEY, s), &de);
        }
    }
    trees.push(Planned::new(BTRFS_DEV_TREE_OBJECTID, dev, ns)?);
    Ok((chunk, trees))
}

/// Addresses of every tree's blocks, given their block counts.
struct Placement {
    addrs: BTreeMap<u64, Vec<u64>>,
    sys_alloc: BumpAlloc,
    meta_alloc: BumpAlloc,
}

fn place(input: &CommitInput, chunk_blocks: usize, order: &[(u64, usize)]) -> Result<Placement> {
    let ns = input.nodesize as u64;
    let find = |flag: u64| {
        input
            .layout
            .chunks
            .iter()
            .find(|c| c.flags & BTRFS_BLOCK_GROUP_TYPE_MASK == flag)
            .ok_or_else(|| Error::Internal(format!("layout has no chunk of type {flag}")))
    };
    let mut sys_alloc = BumpAlloc::new(find(BTRFS_BLOCK_GROUP_SYSTEM)?);
    let mut meta_alloc = BumpAlloc::new(find(BTRFS_BLOCK_GROUP_METADATA)?);
    let mut addrs = BTreeMap::new();
    let mut v = Vec::with_capacity(chunk_blocks);
    for _ in 0..chunk_blocks {
        v.push(sys_alloc.alloc(ns, ns).ok_or_else(|| {
            Error::NoSpace("the system chunk is too small for the chunk tree".into())
        })?);
    }
    addrs.insert(BTRFS_CHUNK_TREE_OBJECTID, v);
    for &(id, n) in order {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(meta_alloc.alloc(ns, ns).ok_or_else(|| {
                Error::NoSpace(format!(
                    "the metadata chunk ({} bytes) is too small for the trees",
                    meta_alloc.end - meta_alloc.start
                ))
            })?);
        }
        addrs.insert(id, v);
    }
    Ok(Placement {
        addrs,
        sys_alloc,
        meta_alloc,
    })
}

/// Items of the allocation-dependent trees for one placement.
#[allow(clippy::too_many_arguments)]
fn var_tree_items(
    input: &CommitInput,
    fixed: &[Planned],
    chunk: &Planned,
    var: &BTreeMap<u64, Planned>,
    pl: &Placement,
) -> Result<BTreeMap<u64, TreeItems>> {
    let gen = input.generation;
    let ns = input.nodesize as u64;
    let f = &input.features;
    let root_of = |id: u64, p: &Planned| -> (u64, u8, u64) {
        let a = &pl.addrs[&id];
        (
            *a.last().unwrap_or(&0),
            p.plan.root_level(),
            a.len() as u64 * ns,
        )
    };

    // Block group usage.
    let mut bg_used: BTreeMap<u64, u64> = BTreeMap::new();
    bg_used.insert(pl.sys_alloc.start, pl.sys_alloc.used());
    bg_used.insert(pl.meta_alloc.start, pl.meta_alloc.used());
    for c in input
        .layout
        .chunks
        .iter()
        .filter(|c| c.flags & BTRFS_BLOCK_GROUP_DATA != 0)
    {
        let used = clip(&input.data_allocated, c.logical, c.end())
            .iter()
            .map(|r| r.1)
            .sum();
        bg_used.insert(c.logical, used);
    }
    let mut bg_items = TreeItems::new();
    for c in &input.layout.chunks {
        let bgi = BlockGroupItem {
            used: bg_used[&c.logical].into(),
            chunk_objectid: BTRFS_FIRST_CHUNK_TREE_OBJECTID.into(),
            flags: c.flags.into(),
        };
        bg_items.push_struct(
            Key::new(c.logical, BTRFS_BLOCK_GROUP_ITEM_KEY, c.length),
            &bgi,
        );
    }

    // Root tree.
    let mut root = TreeItems::new();
    let internal = internal_root_item(input.nodesize);
    let add_root = |root: &mut TreeItems, id: u64, p: &Planned, template: &RootItem| {
        let (b, l, u) = root_of(id, p);
        root.push_struct(
            Key::new(id, BTRFS_ROOT_ITEM_KEY, 0),
            &root_item_for(template, gen, b, l, u),
        );
    };
    for p in fixed {
        let template = input
            .subvols
            .iter()
            .find(|s| s.id == p.id)
            .map(|s| s.root_item)
            .unwrap_or_else(|| {
                let mut t = internal;
                if p.id == BTRFS_DATA_RELOC_TREE_OBJECTID {
                    t.root_dirid = 256.into();
                }
                if p.id == BTRFS_UUID_TREE_OBJECTID || p.id == BTRFS_DATA_RELOC_TREE_OBJECTID {
                    // mkfs.btrfs leaves these two embedded inodes empty.
                    t.inode = InodeItem::default();
                }
                t
            });
        add_root(&mut root, p.id, p, &template);
    }
    for (&id, p) in var {
        if id != BTRFS_ROOT_TREE_OBJECTID {
            add_root(&mut root, id, p, &internal);
        }
    }
    // The root tree directory with its "default" entry.
    let mut dir = inode_item(gen, S_IFDIR | 0o755, input.nodesize as u64, input.ident.now);
    dir.transid = 0.into();
    root.push_struct(
        Key::new(BTRFS_ROOT_TREE_DIR_OBJECTID, BTRFS_INODE_ITEM_KEY, 0),
        &dir,
    );
    root.push_with(
        Key::new(
            BTRFS_ROOT_TREE_DIR_OBJECTID,
            BTRFS_INODE_REF_KEY,
            BTRFS_ROOT_TREE_DIR_OBJECTID,
        ),
        |o| {
            o.extend_from_slice(
                InodeRef {
                    index: 0.into(),
                    name_len: 2.into(),
                }
                .as_bytes(),
            );
            o.extend_from_slice(b"..");
        },
    );
    root.push_with(
        Key::new(
            BTRFS_ROOT_TREE_DIR_OBJECTID,
            BTRFS_DIR_ITEM_KEY,
            name_hash(b"default"),
        ),
        |o| {
            btrfs_format::items::encode_dir_item(
                Key::new(input.default_subvol, BTRFS_ROOT_ITEM_KEY, u64::MAX),
                0,
                BTRFS_FT_DIR,
                b"default",
                b"",
                o,
            )
        },
    );
    // mkfs.btrfs also records the name of the top-level tree this way.
    root.push_with(
        Key::new(
            BTRFS_FS_TREE_OBJECTID,
            BTRFS_INODE_REF_KEY,
            BTRFS_ROOT_TREE_DIR_OBJECTID,
        ),
        |o| {
            o.extend_from_slice(
                InodeRef {
                    index: 0.into(),
                    name_len: 7.into(),
                }
                .as_bytes(),
            );
            o.extend_from_slice(b"default");
        },
    );
    root.extend(&input.root_tree_extra);

    // Free space tree: the complement of every extent, per block group.
    let mut fst = TreeItems::new();
    if f.free_space_tree {
        for c in &input.layout.chunks {
            let alloc: Vec<(u64, u64)> = if c.logical == pl.sys_alloc.start {
                pl.sys_alloc.allocated.clone()
            } else if c.logical == pl.meta_alloc.start {
                pl.meta_alloc.allocated.clone()
            } else {
                clip(&input.data_allocated, c.logical, c.end())
            };
            let free = complement(c.logical, c.end(), &alloc);
            let info = FreeSpaceInfo {
                extent_count: (free.len() as u32).into(),
                flags: 0.into(),
            };
            fst.push_struct(
                Key::new(c.logical, BTRFS_FREE_SPACE_INFO_KEY, c.length),
                &info,
            );
            for (s, l) in free {
                fst.push(Key::new(s, BTRFS_FREE_SPACE_EXTENT_KEY, l), &[]);
            }
        }
    }

    // Extent tree: one item per tree block, the data extents, and block groups
    // unless they live in their own tree.
    let mut extent = input.data_extent_items.clone();
    let mut all: Vec<&Planned> = vec![chunk];
    all.extend(fixed.iter());
    all.extend(var.values());
    for p in all {
        let keys = p.first_keys();
        let levels = p.levels();
        for (i, &bytenr) in pl.addrs[&p.id].iter().enumerate() {
            let ei = ExtentItem {
                refs: 1.into(),
                generation: gen.into(),
                flags: BTRFS_EXTENT_FLAG_TREE_BLOCK.into(),
            };
            let r = InlineRef::TreeBlock { root: p.id };
            if f.skinny_metadata {
                extent.push_with(
                    Key::new(bytenr, BTRFS_METADATA_ITEM_KEY, levels[i] as u64),
                    |o| {
                        o.extend_from_slice(ei.as_bytes());
                        r.encode(o);
                    },
                );
            } else {
                let info = TreeBlockInfo {
                    key: keys[i].to_disk(),
                    level: levels[i],
                };
                extent.push_with(Key::new(bytenr, BTRFS_EXTENT_ITEM_KEY, ns), |o| {
                    o.extend_from_slice(ei.as_bytes());
                    o.extend_from_slice(info.as_bytes());
                    r.encode(o);
                });
            }
        }
    }
    let mut bgt = TreeItems::new();
    if f.block_group_tree {
        bgt = bg_items;
    } else {
        extent.extend(&bg_items);
    }

    let mut out = BTreeMap::new();
    out.insert(BTRFS_ROOT_TREE_OBJECTID, root);
    out.insert(BTRFS_EXTENT_TREE_OBJECTID, extent);
    if f.free_space_tree {
        out.insert(BTRFS_FREE_SPACE_TREE_OBJECTID, fst);
    }
    if f.block_group_tree {
        out.insert(BTRFS_BLOCK_GROUP_TREE_OBJECTID, bgt);
    }
    Ok(out)
}

/// The parts of sorted `ranges` inside `[start, end)`: adjacent chunks are
/// contiguous in logical space, so a merged range may span two of them.
fn clip(ranges: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .filter_map(|&(s, l)| {
            let a = s.max(start);
            let b = (s + l).min(end);
            (a < b).then(|| (a, b - a))
        })
        .collect()
}

fn same_items(a: &TreeItems, b: &TreeItems) -> bool {
    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

/// The solved metadata: every tree planned and placed.
struct Solved {
    chunk: Planned,
    fixed: Vec<Planned>,
    var: BTreeMap<u64, Planned>,
    pl: Placement,
}

/// The allocation-dependent trees of an earlier solve, to start the next one
/// from: the commit after the dry run then converges in two rounds, not four.
pub struct Seed(BTreeMap<u64, Planned>);

fn solve(input: &CommitInput, seed: Option<Seed>) -> Result<Solved> {
    let ns = input.nodesize;
    let (chunk, fixed) = fixed_trees(input)?;
    let var_ids: Vec<u64> = VAR_TREES
        .iter()
        .copied()
        .filter(|&id| match id {
            BTRFS_FREE_SPACE_TREE_OBJECTID => input.features.free_space_tree,
            BTRFS_BLOCK_GROUP_TREE_OBJECTID => input.features.block_group_tree,
            _ => true,
        })
        .collect();
    // Start from the seed, or one leaf each, and iterate to the fixed point.
    let mut var: BTreeMap<u64, Planned> = seed.map(|s| s.0).unwrap_or_default();
    var.retain(|id, _| var_ids.contains(id));
    for &id in &var_ids {
        if let std::collections::btree_map::Entry::Vacant(e) = var.entry(id) {
            e.insert(Planned::new(id, TreeItems::new(), ns)?);
        }
    }
    for _ in 0..32 {
        let mut order: Vec<(u64, usize)> =
            fixed.iter().map(|p| (p.id, p.plan.block_count())).collect();
        order.extend(var_ids.iter().map(|id| (*id, var[id].plan.block_count())));
        let pl = place(input, chunk.plan.block_count(), &order)?;
        let items = var_tree_items(input, &fixed, &chunk, &var, &pl)?;
        let mut stable = true;
        let mut next = BTreeMap::new();
        for (id, it) in items {
            let p = Planned::new(id, it, ns)?;
            if p.plan != var[&id].plan || !same_items(&p.items, &var[&id].items) {
                stable = false;
            }
            next.insert(id, p);
        }
        var = next;
        if stable {
            return Ok(Solved {
                chunk,
                fixed,
                var,
                pl,
            });
        }
    }
    Err(Error::Internal(
        "metadata placement did not converge".into(),
    ))
}

/// Bytes of the metadata chunk the trees need (its high-water mark), and
/// the solution as a seed for the commit.
pub fn metadata_needed(input: &CommitInput) -> Result<(u64, Seed)> {
    let s = solve(input, None)?;
    Ok((s.pl.meta_alloc.high_water(), Seed(s.var)))
}

/// Plan, place and write all metadata, then the superblock copies.
pub fn commit(out: &Output, input: &CommitInput, seed: Option<Seed>) -> Result<CommitReport> {
    let mut timing = crate::Timing::new(true);
    let Solved {
        chunk,
        fixed,
        var,
        pl,
    } = solve(input, seed)?;
    timing.mark("solve");
    let params = BlockParams {
        nodesize: input.nodesize,
        csum: input.csum,
        fsid: input.ident.fsid,
        chunk_tree_uuid: input.ident.chunk_tree_uuid,
        generation: input.generation,
    };
    // Tree blocks go to every copy as soon as they are built, and the disk
    // starts on them at once: the flush below then has little left to wait for.
    let mut count = 0;
    let ns = input.nodesize as u64;
    let mut emit = |bytenr: u64, bytes: &[u8]| -> Result<()> {
        let last = bytenr + bytes.len() as u64 - ns;
        let chunk = input
            .layout
            .chunk_for(bytenr)
            .filter(|c| c.contains(last))
            .ok_or_else(|| {
                Error::Internal(format!(
                    "tree blocks {bytenr}..={last} not inside one chunk"
                ))
            })?;
        for s in &chunk.stripes {
            let p = s + (bytenr - chunk.logical);
            out.write_at(bytes, p)?;
            out.start_writeback(p, bytes.len() as u64);
        }
        count += bytes.len() / ns as usize;
        Ok(())
    };
    let mut built: BTreeMap<u64, BuiltTree> = BTreeMap::new();
    for p in std::iter::once(&chunk)
        .chain(fixed.iter())
        .chain(var.values())
    {
        let t = build_tree_into(
            &p.items,
            &p.plan,
            &pl.addrs[&p.id],
            p.id,
            &params,
            false,
            &mut emit,
        )?;
        built.insert(p.id, t);
    }
    timing.mark("build and write the trees");
    out.sync()?;
    timing.mark("flush");

    let sb = superblock(input, &built, &pl)?;
    out.write_superblocks(&sb, input.csum)?;
    timing.mark("superblocks and flush");
    Ok(CommitReport {
        superblock: sb,
        tree_blocks: count,
        metadata_used: pl.meta_alloc.used(),
    })
}

fn superblock(
    input: &CommitInput,
    built: &BTreeMap<u64, BuiltTree>,
    pl: &Placement,
) -> Result<SuperBlock> {
    let gen = input.generation;
    let ns = input.nodesize;
    let root = built[&BTRFS_ROOT_TREE_OBJECTID].root();
    let chunk = built[&BTRFS_CHUNK_TREE_OBJECTID].root();
    let mut sb = SuperBlock {
        fsid: input.ident.fsid,
        magic: BTRFS_MAGIC.into(),
        flags: BTRFS_HEADER_FLAG_WRITTEN.into(),
        generation: gen.into(),
        root: root.bytenr.into(),
        chunk_root: chunk.bytenr.into(),
        total_bytes: input.layout.device_size.into(),
        bytes_used: (pl.sys_alloc.used()
            + pl.meta_alloc.used()
            + input.data_allocated.iter().map(|r| r.1).sum::<u64>())
        .into(),
        root_dir_objectid: BTRFS_ROOT_TREE_DIR_OBJECTID.into(),
        num_devices: 1.into(),
        sectorsize: input.sectorsize.into(),
        nodesize: ns.into(),
        unused_leafsize: ns.into(),
        stripesize: input.sectorsize.into(),
        chunk_root_generation: gen.into(),
        compat_ro_flags: input.features.compat_ro_flags().into(),
        incompat_flags: (input.features.incompat_flags() | input.extra_incompat).into(),
        csum_type: input.csum.to_disk().into(),
        root_level: root.level,
        chunk_root_level: chunk.level,
        dev_item: dev_item(input),
        uuid_tree_generation: gen.into(),
        ..Default::default()
    };
    let label = input.ident.label.as_bytes();
    sb.label[..label.len()].copy_from_slice(label);
    // System chunks go into the superblock's bootstrap array too.
    let mut arr = Vec::new();
    for c in input.layout.chunks.iter().filter(|c| c.is_system()) {
        arr.extend_from_slice(
            Key::new(
                BTRFS_FIRST_CHUNK_TREE_OBJECTID,
                BTRFS_CHUNK_ITEM_KEY,
                c.logical,
            )
            .to_disk()
            .as_bytes(),
        );
        chunk_item(input, c).encode(&mut arr);
    }
    if arr.len() > BTRFS_SYSTEM_CHUNK_ARRAY_SIZE {
        return Err(Error::Internal("system chunk array overflow".into()));
    }
    sb.sys_chunk_array[..arr.len()].copy_from_slice(&arr);
    sb.sys_chunk_array_size = (arr.len() as u32).into();
    // Backup slot 0 records this commit, as a kernel commit would.
    let r = |id: u64| built.get(&id).map(|t| (t.root().bytenr, t.root().level));
    let (er, el) = r(BTRFS_EXTENT_TREE_OBJECTID).unwrap_or_default();
    let (fr, fl) = r(BTRFS_FS_TREE_OBJECTID).unwrap_or_default();
    let (dr, dl) = r(BTRFS_DEV_TREE_OBJECTID).unwrap_or_default();
    let (cr, cl) = r(BTRFS_CSUM_TREE_OBJECTID).unwrap_or_default();
    sb.super_roots[0] = RootBackup {
        tree_root: root.bytenr.into(),
        tree_root_gen: gen.into(),
        chunk_root: chunk.bytenr.into(),
        chunk_root_gen: gen.into(),
        extent_root: er.into(),
        extent_root_gen: gen.into(),
        fs_root: fr.into(),
        fs_root_gen: gen.into(),
        dev_root: dr.into(),
        dev_root_gen: gen.into(),
        csum_root: cr.into(),
        csum_root_gen: gen.into(),
        total_bytes: sb.total_bytes,
        bytes_used: sb.bytes_used,
        num_devices: 1.into(),
        tree_root_level: root.level,
        chunk_root_level: chunk.level,
        extent_root_level: el,
        fs_root_level: fl,
        dev_root_level: dl,
        csum_root_level: cl,
        ..Default::default()
    };
    Ok(sb)
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_splits_ranges_at_chunk_edges() {
        let r = [(0, 100), (150, 100), (300, 10)];
        assert_eq!(clip(&r, 50, 200), vec![(50, 50), (150, 50)]);
        assert_eq!(clip(&r, 200, 300), vec![(200, 50)]);
        assert!(clip(&r, 400, 500).is_empty());
    }
}
