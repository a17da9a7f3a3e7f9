//! Walk every tree: read every copy of every tree block, check headers, key order,
//! item bounds and payload sizes, and record every reference a block makes (child
//! pointers, file extents) for the extent tree check.
//!
//! Trees are walked level by level, each level's blocks in parallel. A block is
//! claimed by the first walk that reaches it; later walks record the reference and
//! do not descend again, so shared (snapshot) subtrees are read once and a hostile
//! image cannot make the walk loop or explode: work is bounded by the number of
//! distinct blocks.
use std::collections::HashMap;
use std::sync::Mutex;

use btrfs_format::consts::*;
use btrfs_format::items::*;
use btrfs_format::tree::TreeBlock;
use btrfs_format::*;
use btrfs_image::dump::hex;
use btrfs_image::Root;
use rayon::prelude::*;

use crate::finding::{Finding, Kind};
use crate::Ctx;

/// How a tree's blocks are owned and referenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TreeKind {
    /// A tree whose blocks all carry its own id as owner.
    Normal,
    /// A subvolume tree (FS_TREE or a subvolume/snapshot): blocks may be shared.
    Subvol,
    /// A relocation tree: any owner, full backrefs.
    Reloc,
    /// The log root tree and log trees: not in the extent tree.
    Log,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeSpec {
    /// Tree id as blocks and references name it.
    pub id: u64,
    pub root: Root,
    pub kind: TreeKind,
    /// A subvolume being deleted: walked (its blocks are still allocated) but
    /// its contents are not judged.
    pub dead: bool,
    /// Where an interrupted deletion stopped: subtrees wholly left of this key
    /// are freed already.
    pub drop: Option<(Key, u8)>,
}

/// A verified leaf: where it is and which physical copy was good.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafRef {
    pub bytenr: u64,
    pub phys: u64,
}

pub(crate) struct WalkedTree {
    pub spec: TreeSpec,
    /// Leaves in key order.
    pub leaves: Vec<LeafRef>,
}

/// What a good tree block says about itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockMeta {
    pub level: u8,
    pub generation: u64,
    pub owner: u64,
    pub first: Option<Key>,
    pub last: Option<Key>,
    pub backref_rev: u64,
}

/// A reference to a tree block: a node's pointer or a root item.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeRefRaw {
    pub child: u64,
    /// The node holding the pointer; None for a tree root.
    pub parent: Option<u64>,
    /// Owner of the parent block (root: the tree id).
    pub owner: u64,
    /// Index of the walked tree (into `Walk::trees`).
    pub tree: usize,
    pub kind: TreeKind,
}

/// A file extent's reference to a data extent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataRefRaw {
    pub bytenr: u64,
    pub num_bytes: u64,
    pub leaf: u64,
    pub leaf_owner: u64,
    pub ino: u64,
    /// File offset minus extent offset: the backref's `offset`.
    pub offset: u64,
    pub tree: u64,
}

/// A pointer to a block another walk claimed first: checked at the end.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    child: u64,
    parent: Option<u64>,
    tree: u64,
    kind: TreeKind,
    level: u8,
    generation: u64,
    lo: Option<Key>,
    hi: Option<Key>,
}

const SHARDS: usize = 64;

struct Claim {
    tree: usize,
    meta: Option<BlockMeta>,
    content: Option<Content>,
}

/// What a good block holds, for listing the leaves of every tree through it.
#[derive(Clone)]
enum Content {
    Leaf(u64),
    Node(u8, Vec<u64>),
}

/// Blocks claimed so far, sharded by address.
pub(crate) struct Shared {
    shards: Vec<Mutex<HashMap<u64, Claim>>>,
    deferred: Mutex<Vec<Deferred>>,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            deferred: Mutex::new(Vec::new()),
        }
    }

    fn shard(&self, b: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Claim>> {
        let i = ((b >> 12) as usize).wrapping_mul(0x9e37_79b9) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim `b` for tree `tree`; Err(first claimer's tree) if already claimed.
    fn claim(&self, b: u64, tree: usize) -> Result<(), usize> {
        let mut s = self.shard(b);
        match s.get(&b) {
            Some(c) => Err(c.tree),
            None => {
                s.insert(
                    b,
                    Claim {
                        tree,
                        meta: None,
                        content: None,
                    },
                );
                Ok(())
            }
        }
    }

    fn set_content(&self, b: u64, c: Content) {
        if let Some(cl) = self.shard(b).get_mut(&b) {
            cl.content = Some(c);
        }
    }

    fn content(&self, b: u64) -> Option<Content> {
        self.shard(b).get(&b).and_then(|c| c.content.clone())
    }

    /// The leaves of the tree rooted at `root` (level `level`), in key order,
    /// through blocks whichever walk verified them: a snapshot's shared subtrees
    /// belong to every tree that reaches them. Each block is listed once per
    /// tree, levels must descend, and `budget` bounds the total work.
    pub fn leaves_of(&self, root: u64, level: u8, budget: &mut u64) -> Result<Vec<LeafRef>, ()> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(root, level)];
        while let Some((b, lvl)) = stack.pop() {
            if !seen.insert(b) {
                continue;
            }
            if *budget == 0 {
                return Err(());
            }
            *budget -= 1;
            match self.content(b) {
                Some(Content::Leaf(phys)) if lvl == 0 => out.push(LeafRef { bytenr: b, phys }),
                Some(Content::Node(l, children)) if l == lvl && l > 0 => {
                    stack.extend(children.iter().rev().map(|&c| (c, l - 1)));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    pub fn blocks(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum()
    }

    fn set_meta(&self, b: u64, m: BlockMeta) {
        if let Some(c) = self.shard(b).get_mut(&b) {
            c.meta = Some(m);
        }
    }

    fn into_metas(self) -> (HashMap<u64, BlockMeta>, Vec<Deferred>) {
        let mut out = HashMap::new();
        for s in self.shards {
            for (b, c) in s.into_inner().unwrap_or_else(|e| e.into_inner()) {
                if let Some(m) = c.meta {
                    out.insert(b, m);
                }
            }
        }
        (
            out,
            self.deferred
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}

/// One block waiting to be visited.
#[derive(Clone)]
struct Pending {
    bytenr: u64,
    parent: Option<u64>,
    level: u8,
    generation: u64,
    lo: Option<Key>,
    hi: Option<Key>,
    /// Ancestors, root first: `path[..depth]` (at most 8, no allocation).
    path: [u64; BTRFS_MAX_LEVEL as usize],
    depth: u8,
}

enum Visit {
    Leaf(LeafRef),
    Node(Vec<Pending>),
    Skip,
}

/// Per-tree output of a visit: references and data refs found in the block.
#[derive(Default)]
struct Out {
    tree_refs: Vec<TreeRefRaw>,
    data_refs: Vec<DataRefRaw>,
}

pub(crate) fn is_subvol_id(id: u64) -> bool {
    id == BTRFS_FS_TREE_OBJECTID
        || (BTRFS_FIRST_FREE_OBJECTID..=BTRFS_LAST_FREE_OBJECTID).contains(&id)
}

/// Walk one tree completely; returns its leaves and the references it makes.
fn walk_tree(ctx: &Ctx<'_>, idx: usize, spec: &TreeSpec, shared: &Shared) -> (WalkedTree, Out) {
    let mut out = Out::default();
    let mut leaves = Vec::new();
    if spec.kind != TreeKind::Log {
        out.tree_refs.push(TreeRefRaw {
            child: spec.root.bytenr,
            parent: None,
            owner: spec.id,
            tree: idx,
            kind: spec.kind,
        });
    }
    let mut level = vec![Pending {
        bytenr: spec.root.bytenr,
        parent: None,
        level: spec.root.level,
        generation: spec.root.generation,
        lo: None,
        hi: None,
        path: [0; BTRFS_MAX_LEVEL as usize],
        depth: 0,
    }];
    let mut depth = 0;
    while !level.is_empty() && depth <= BTRFS_MAX_LEVEL as usize {
        let results: Vec<(Visit, Out)> = level
            .par_iter()
            .map(|p| visit(ctx, idx, spec, p, shared))
            .collect();
        let mut next = Vec::new();
        for (v, o) in results {
            out.tree_refs.extend(o.tree_refs);
            out.data_refs.extend(o.data_refs);
            match v {
                Visit::Leaf(l) => leaves.push(l),
                Visit::Node(children) => next.extend(children),
                Visit::Skip => {}
            }
        }
        level = dedup_level(ctx, spec, next);
        depth += 1;
    }
    (
        WalkedTree {
            spec: *spec,
            leaves,
        },
        out,
    )
}

/// One tree reaches each block once: drop repeated pointers of a level before
/// visiting it (reporting them), so a damaged image whose nodes all point at
/// the same blocks costs no more than the blocks it has.
fn dedup_level(ctx: &Ctx<'_>, spec: &TreeSpec, mut next: Vec<Pending>) -> Vec<Pending> {
    let mut order: Vec<(u64, usize)> = next
        .iter()
        .enumerate()
        .map(|(i, p)| (p.bytenr, i))
        .collect();
    order.sort_unstable();
    let mut drop = vec![false; next.len()];
    for w in order.windows(2) {
        if w[0].0 == w[1].0 {
            drop[w[1].1] = true;
            let p = &next[w[1].1];
            ctx.sink.push(
                Finding::error(
                    Kind::BlockReachedTwice,
                    format!(
                        "tree block {} is reached twice in this tree (again from node {})",
                        p.bytenr,
                        p.parent.unwrap_or(0)
                    ),
                )
                .tree(spec.id)
                .bytenr(p.bytenr),
            );
        }
    }
    if drop.iter().any(|&d| d) {
        let mut i = 0;
        next.retain(|_| {
            i += 1;
            !drop[i - 1]
        });
    }
    next
}

/// Problems of one physical copy that make it unusable.
fn verify_copy(ctx: &Ctx<'_>, b: &[u8], bytenr: u64) -> Result<(), (Kind, String)> {
    let h = Header::read(b).map_err(|e| (Kind::TreeBlockUnreadable, e.to_string()))?;
    let n = ctx.csum.size();
    let want = ctx.csum.compute(&b[BTRFS_CSUM_SIZE..]);
    if want[..n] != h.csum[..n] {
        return Err((
            Kind::TreeBlockChecksum,
            format!(
                "{} checksum mismatch: stored {}, computed {}",
                ctx.csum,
                hex(&h.csum[..n]),
                hex(&want[..n])
            ),
        ));
    }
    if h.bytenr.get() != bytenr {
        return Err((
            Kind::TreeBlockHeader,
            format!(
                "header says bytenr {}, block is at {bytenr}",
                h.bytenr.get()
            ),
        ));
    }
    if h.fsid != ctx.img.metadata_fsid() {
        return Err((
            Kind::TreeBlockHeader,
            format!("fsid {} is not this filesystem's", hex(&h.fsid)),
        ));
    }
    if let Some(u) = ctx.chunk_tree_uuid {
        if h.chunk_tree_uuid != u {
            return Err((
                Kind::TreeBlockHeader,
                format!(
                    "chunk tree uuid {} is not this filesystem's",
                    hex(&h.chunk_tree_uuid)
                ),
            ));
        }
    }
    if h.level >= BTRFS_MAX_LEVEL {
        return Err((
            Kind::TreeBlockHeader,
            format!("level {} is not below {BTRFS_MAX_LEVEL}", h.level),
        ));
    }
    TreeBlock::parse(b).map_err(|e| (Kind::ItemOffset, e.to_string()))?;
    Ok(())
}

/// Whether a block owned by `owner` may sit in tree `id` of this kind.
fn owner_ok(kind: TreeKind, id: u64, owner: u64) -> bool {
    match kind {
        TreeKind::Reloc => true,
        TreeKind::Log => owner == BTRFS_TREE_LOG_OBJECTID,
        TreeKind::Subvol => is_subvol_id(owner) || owner == BTRFS_TREE_RELOC_OBJECTID,
        TreeKind::Normal => owner == id,
    }
}

fn visit(ctx: &Ctx<'_>, idx: usize, spec: &TreeSpec, p: &Pending, shared: &Shared) -> (Visit, Out) {
    let mut out = Out::default();
    let b = p.bytenr;
    let tree = spec.id;
    let err = |kind: Kind, msg: String| {
        let mut f = Finding::error(kind, msg).tree(tree).bytenr(b);
        if let Some(k) = p.lo {
            f = f.key(k);
        }
        ctx.sink.push(f);
    };
    if p.path[..p.depth as usize].contains(&b) {
        err(
            Kind::TreeCycle,
            format!(
                "node {} points back at its ancestor {b}: the tree has a cycle",
                p.parent.unwrap_or(0)
            ),
        );
        return (Visit::Skip, out);
    }
    if let Err(first) = shared.claim(b, idx) {
        if first == idx {
            err(
                Kind::BlockReachedTwice,
                format!(
                    "tree block {b} is reached twice in this tree (again from node {})",
                    p.parent.unwrap_or(0)
                ),
            );
        } else {
            shared
                .deferred
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Deferred {
                    child: b,
                    parent: p.parent,
                    tree,
                    kind: spec.kind,
                    level: p.level,
                    generation: p.generation,
                    lo: p.lo,
                    hi: p.hi,
                });
        }
        return (Visit::Skip, out);
    }
    let nodesize = ctx.nodesize;
    if b == 0 || !b.is_multiple_of(ctx.sectorsize) {
        err(
            Kind::TreeBlockUnreadable,
            format!("tree block address {b} is zero or not sector aligned"),
        );
        return (Visit::Skip, out);
    }
    let copies = match ctx.img.chunk_map().map(b, nodesize) {
        Ok(c) => c,
        Err(btrfs_image::Error::Unsupported(m)) => {
            crate::unsupported(ctx, tree, b, format!("tree block {b} is not checked: {m}"));
            return (Visit::Skip, out);
        }
        Err(e) => {
            err(
                Kind::TreeBlockUnreadable,
                format!("tree block {b} cannot be mapped: {e}"),
            );
            return (Visit::Skip, out);
        }
    };
    ctx.progress_inc(1);
    let mut goods: Vec<(usize, u64, &[u8])> = Vec::new();
    let mut bad = Vec::new();
    for (i, &phys) in copies.iter().enumerate() {
        ctx.stats_copy();
        match ctx.img.read_physical(phys, nodesize) {
            Err(e) => bad.push((i, phys, Kind::TreeBlockUnreadable, e.to_string())),
            Ok(bytes) => match verify_copy(ctx, bytes, b) {
                Ok(()) => goods.push((i, phys, bytes)),
                Err((k, m)) => bad.push((i, phys, k, m)),
            },
        }
    }
    // Prefer a copy that is what the parent promises; a valid copy that is not
    // (a stale or misplaced write) is damage too.
    let promised = |bytes: &[u8]| {
        Header::read(bytes).is_ok_and(|h| h.level == p.level && h.generation.get() == p.generation)
    };
    let chosen = goods
        .iter()
        .position(|g| promised(g.2))
        .or(if goods.is_empty() { None } else { Some(0) });
    for (n, &(i, phys, bytes)) in goods.iter().enumerate() {
        if Some(n) != chosen && !promised(bytes) {
            if let Ok(h) = Header::read(bytes) {
                bad.push((
                    i,
                    phys,
                    Kind::TreeBlockHeader,
                    format!(
                        "a valid but different block (level {}, generation {}) where level {} generation {} is expected",
                        h.level,
                        h.generation.get(),
                        p.level,
                        p.generation
                    ),
                ));
            }
        }
    }
    let good = chosen.map(|n| (goods[n].1, goods[n].2));
    for (i, phys, kind, msg) in bad {
        let which = if copies.len() > 1 {
            format!("copy {} (physical {phys}) of ", i + 1)
        } else {
            String::new()
        };
        err(kind, format!("{which}tree block {b}: {msg}"));
    }
    let Some((phys, bytes)) = good else {
        return (Visit::Skip, out);
    };
    let Ok(tb) = TreeBlock::parse(bytes) else {
        return (Visit::Skip, out);
    };
    let h = tb.header;
    let owner = h.owner.get();
    if h.level != p.level {
        err(
            Kind::TreeBlockHeader,
            format!(
                "tree block {b} has level {} where its parent{} says {}",
                h.level,
                p.parent
                    .map(|x| format!(" {x}"))
                    .unwrap_or_else(|| " (root item)".into()),
                p.level
            ),
        );
        return (Visit::Skip, out);
    }
    let gen = h.generation.get();
    if gen != p.generation {
        err(
            Kind::TreeBlockHeader,
            format!(
                "tree block {b} has generation {gen} where its parent{} says {} (parent transid mismatch)",
                p.parent.map(|x| format!(" {x}")).unwrap_or_else(|| " (root item)".into()),
                p.generation
            ),
        );
    }
    let max_gen = ctx
        .super_gen
        .saturating_add(u64::from(spec.kind == TreeKind::Log));
    if gen > max_gen {
        err(
            Kind::TreeBlockHeader,
            format!("tree block {b} has generation {gen}, newer than the superblock's {max_gen}"),
        );
    }
    if !owner_ok(spec.kind, spec.id, owner) {
        err(
            Kind::TreeBlockHeader,
            format!(
                "tree block {b} has owner {owner}, not a block of {}",
                crate::finding::tree_name(tree)
            ),
        );
    }
    let n = tb.nritems();
    let structure_ok = check_structure(ctx, spec, &tb, b, p);
    let mut keys = Vec::with_capacity(if tb.level() > 0 { n } else { 0 });
    let (first, last) = if n > 0 {
        (tb.key_at(0).ok(), tb.key_at(n - 1).ok())
    } else {
        (None, None)
    };
    shared.set_meta(
        b,
        BlockMeta {
            level: h.level,
            generation: gen,
            owner,
            first,
            last,
            backref_rev: h.backref_rev(),
        },
    );
    if !structure_ok {
        return (Visit::Skip, out);
    }
    if tb.level() == 0 {
        if spec.kind != TreeKind::Log {
            data_refs(&tb, b, owner, tree, &mut out.data_refs);
        }
        shared.set_content(b, Content::Leaf(phys));
        return (Visit::Leaf(LeafRef { bytenr: b, phys }), out);
    }
    for i in 0..n {
        if let Ok(kp) = tb.key_ptr(i) {
            keys.push((Key::from(kp.key), kp.blockptr.get(), kp.generation.get()));
        }
    }
    let mut path = p.path;
    let depth = (p.depth as usize).min(path.len() - 1);
    path[depth] = b;
    let depth = depth as u8 + 1;
    let mut children = Vec::with_capacity(keys.len());
    for (i, &(k, child, cgen)) in keys.iter().enumerate() {
        let hi = keys.get(i + 1).map(|x| x.0).or(p.hi);
        if let (Some((dk, _)), Some(h)) = (spec.drop, hi) {
            if h <= dk {
                continue; // freed by the deletion in progress
            }
        }
        if spec.kind != TreeKind::Log {
            out.tree_refs.push(TreeRefRaw {
                child,
                parent: Some(b),
                owner,
                tree: idx,
                kind: spec.kind,
            });
        }
        if cgen > max_gen {
            ctx.sink.push(
                Finding::error(
                    Kind::TreeBlockHeader,
                    format!("node {b} slot {i} points at {child} with generation {cgen}, newer than the superblock's {max_gen}"),
                )
                .tree(tree)
                .bytenr(b)
                .key(k),
            );
        }
        children.push(Pending {
            bytenr: child,
            parent: Some(b),
            level: h.level - 1,
            generation: cgen,
            lo: Some(k),
            hi,
            path,
            depth,
        });
    }
    shared.set_content(
        b,
        Content::Node(h.level, children.iter().map(|c| c.bytenr).collect()),
    );
    (Visit::Node(children), out)
}

/// Key order, item bounds, payload sizes and parent/child key bounds of one block.
/// Returns false when the block's items cannot be trusted at all.
fn check_structure(
    ctx: &Ctx<'_>,
    spec: &TreeSpec,
    tb: &TreeBlock<'_>,
    b: u64,
    p: &Pending,
) -> bool {
    let tree = spec.id;
    let n = tb.nritems();
    let push = |kind: Kind, msg: String, key: Option<Key>| {
        let mut f = Finding::error(kind, msg).tree(tree).bytenr(b);
        if let Some(k) = key {
            f = f.key(k);
        }
        ctx.sink.push(f);
    };
    if n == 0 {
        if tb.level() > 0 {
            push(
                Kind::TreeBlockHeader,
                format!("node {b} has no pointers"),
                None,
            );
            return false;
        }
        if p.parent.is_some() {
            push(
                Kind::TreeBlockHeader,
                format!("leaf {b} is empty but is not a root"),
                None,
            );
        }
        return true;
    }
    if tb.level() == 0 {
        let data_size = leaf_data_size(ctx.nodesize as u32);
        let mut expect_end = data_size;
        for i in 0..n {
            let off = Header::SIZE + i * Item::SIZE;
            let Ok(it) = Item::read(tb.bytes.get(off..).unwrap_or(&[])) else {
                push(
                    Kind::ItemOffset,
                    format!("leaf {b}: item header {i} is cut off"),
                    None,
                );
                return false;
            };
            let (o, s) = (it.offset.get() as usize, it.size.get() as usize);
            let key = Key::from(it.key);
            if o.checked_add(s) != Some(expect_end) {
                push(
                    Kind::ItemOffset,
                    format!(
                        "leaf {b} slot {i}: payload {o}..{} does not end where the previous one starts ({expect_end})",
                        o as u64 + s as u64
                    ),
                    Some(key),
                );
                return false;
            }
            if o < (i + 1) * Item::SIZE {
                push(
                    Kind::ItemOffset,
                    format!("leaf {b} slot {i}: payload at {o} overlaps the item headers"),
                    Some(key),
                );
                return false;
            }
            expect_end = o;
        }
    }
    let mut prev: Option<Key> = None;
    for i in 0..n {
        let Ok(k) = tb.key_at(i) else {
            push(
                Kind::ItemOffset,
                format!("block {b} slot {i} unreadable"),
                None,
            );
            return false;
        };
        if let Some(pk) = prev {
            if pk >= k {
                push(
                    Kind::KeyOrder,
                    format!("block {b} slot {i}: key {k} is not above the previous key {pk}"),
                    Some(k),
                );
            }
        }
        if i == 0 {
            if let Some(lo) = p.lo {
                if k != lo {
                    push(
                        Kind::KeyOrder,
                        format!(
                            "block {b}: first key {k} differs from the key {lo} in parent {}",
                            p.parent.unwrap_or(0)
                        ),
                        Some(k),
                    );
                }
            }
        }
        if let Some(hi) = p.hi {
            if k >= hi {
                push(
                    Kind::KeyOrder,
                    format!(
                        "block {b} slot {i}: key {k} is not below {hi}, the next key in parent {}",
                        p.parent.unwrap_or(0)
                    ),
                    Some(k),
                );
            }
        }
        prev = Some(k);
        if tb.level() > 0 {
            if let Ok(kp) = tb.key_ptr(i) {
                let c = kp.blockptr.get();
                if c == 0 || c % ctx.sectorsize != 0 {
                    push(
                        Kind::TreeBlockHeader,
                        format!("node {b} slot {i} points at invalid address {c}"),
                        Some(k),
                    );
                }
            }
        } else if let Ok(it) = tb.item(i) {
            if let Err(msg) = check_item_size(ctx, it.key, tb.payload(&it)) {
                push(
                    Kind::ItemSize,
                    format!(
                        "leaf {b} slot {i}: {} item: {msg}",
                        type_name(it.key.item_type)
                    ),
                    Some(it.key),
                );
            }
        }
    }
    if tb.level() > 0 && n > node_max_ptrs(ctx.nodesize as u32) {
        push(
            Kind::ItemOffset,
            format!("node {b} has {n} pointers, more than fit"),
            None,
        );
        return false;
    }
    // Out-of-order items are reported; the block's items are still used.
    true
}

pub(crate) fn type_name(t: u8) -> String {
    key_type_name(t)
        .map(str::to_string)
        .unwrap_or_else(|| format!("type {t}"))
}

/// Payload size rules for each item type. Err describes the problem.
pub(crate) fn check_item_size(ctx: &Ctx<'_>, key: Key, p: &[u8]) -> Result<(), String> {
    let len = p.len();
    let exact = |want: usize| {
        if len == want {
            Ok(())
        } else {
            Err(format!("{len} bytes, expected {want}"))
        }
    };
    let fe = |e: FormatError| Err(e.to_string());
    match key.item_type {
        BTRFS_INODE_ITEM_KEY => exact(InodeItem::SIZE),
        BTRFS_INODE_REF_KEY => match parse_inode_refs(key.offset, p) {
            Ok(v) if v.is_empty() => Err("empty".into()),
            Ok(_) => Ok(()),
            Err(e) => fe(e),
        },
        BTRFS_INODE_EXTREF_KEY => match parse_inode_extrefs(p) {
            Ok(v) if v.is_empty() => Err("empty".into()),
            Ok(_) => Ok(()),
            Err(e) => fe(e),
        },
        BTRFS_DIR_ITEM_KEY | BTRFS_XATTR_ITEM_KEY | BTRFS_DIR_INDEX_KEY => match parse_dir_items(p)
        {
            Ok(v) if v.is_empty() => Err("empty".into()),
            Ok(v) if key.item_type == BTRFS_DIR_INDEX_KEY && v.len() != 1 => {
                Err(format!("{} entries in one DIR_INDEX", v.len()))
            }
            Ok(v) => {
                for e in &v {
                    if e.name.is_empty()
                        || e.name.len() > BTRFS_NAME_LEN && key.item_type != BTRFS_XATTR_ITEM_KEY
                    {
                        return Err(format!("name of {} bytes", e.name.len()));
                    }
                    if key.item_type != BTRFS_XATTR_ITEM_KEY && !e.data.is_empty() {
                        return Err(format!("directory entry with {} data bytes", e.data.len()));
                    }
                }
                Ok(())
            }
            Err(e) => fe(e),
        },
        BTRFS_EXTENT_DATA_KEY => match parse_file_extent(p) {
            Ok(FileExtent::Inline { .. }) => Ok(()),
            Ok(FileExtent::Regular(_)) => exact(FileExtentItem::SIZE),
            Err(e) => fe(e),
        },
        BTRFS_EXTENT_CSUM_KEY => {
            if len == 0 || !len.is_multiple_of(ctx.csum.size()) {
                Err(format!(
                    "{len} bytes, not a multiple of the {}-byte checksum",
                    ctx.csum.size()
                ))
            } else {
                Ok(())
            }
        }
        BTRFS_ROOT_ITEM_KEY => {
            if len == RootItem::SIZE || len == ROOT_ITEM_LEGACY_SIZE {
                Ok(())
            } else {
                Err(format!(
                    "{len} bytes, expected {} or {ROOT_ITEM_LEGACY_SIZE}",
                    RootItem::SIZE
                ))
            }
        }
        BTRFS_ROOT_REF_KEY | BTRFS_ROOT_BACKREF_KEY => match parse_root_ref(p) {
            Ok((r, _)) => exact(RootRef::SIZE + r.name_len.get() as usize),
            Err(e) => fe(e),
        },
        BTRFS_EXTENT_ITEM_KEY | BTRFS_METADATA_ITEM_KEY => {
            match parse_extent_item(key.item_type, p) {
                Ok(_) => Ok(()),
                Err(e) => fe(e),
            }
        }
        BTRFS_TREE_BLOCK_REF_KEY | BTRFS_SHARED_BLOCK_REF_KEY | BTRFS_ORPHAN_ITEM_KEY => exact(0),
        BTRFS_EXTENT_DATA_REF_KEY => exact(ExtentDataRef::SIZE),
        BTRFS_SHARED_DATA_REF_KEY => exact(SharedDataRef::SIZE),
        BTRFS_BLOCK_GROUP_ITEM_KEY => exact(BlockGroupItem::SIZE),
        BTRFS_FREE_SPACE_INFO_KEY => exact(FreeSpaceInfo::SIZE),
        BTRFS_FREE_SPACE_EXTENT_KEY => exact(0),
        BTRFS_FREE_SPACE_BITMAP_KEY => {
            let bits = key.offset / ctx.sectorsize;
            let want = bits.div_ceil(8);
            if want as usize == len {
                Ok(())
            } else {
                Err(format!(
                    "{len} bytes for a bitmap of {bits} sectors (expected {want})"
                ))
            }
        }
        BTRFS_DEV_EXTENT_KEY => exact(DevExtent::SIZE),
        BTRFS_DEV_ITEM_KEY => exact(DevItem::SIZE),
        BTRFS_CHUNK_ITEM_KEY => match ChunkWithStripes::parse(p) {
            Ok(c) => exact(ChunkWithStripes::size_for(c.stripes.len())),
            Err(e) => fe(e),
        },
        BTRFS_QGROUP_INFO_KEY | BTRFS_QGROUP_LIMIT_KEY => exact(40),
        BTRFS_QGROUP_STATUS_KEY => {
            if len == 32 || len == 40 {
                Ok(())
            } else {
                Err(format!("{len} bytes, expected 32 or 40"))
            }
        }
        BTRFS_QGROUP_RELATION_KEY => exact(0),
        BTRFS_UUID_KEY_SUBVOL | BTRFS_UUID_KEY_RECEIVED_SUBVOL => {
            if len == 0 || !len.is_multiple_of(8) {
                Err(format!("{len} bytes, not a list of 8-byte subvolume ids"))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// References from a leaf's file extents to data extents.
fn data_refs(tb: &TreeBlock<'_>, leaf: u64, owner: u64, tree: u64, out: &mut Vec<DataRefRaw>) {
    for i in 0..tb.nritems() {
        let Ok(it) = tb.item(i) else { continue };
        if it.key.item_type != BTRFS_EXTENT_DATA_KEY {
            continue;
        }
        let Ok(FileExtent::Regular(fe)) = parse_file_extent(tb.payload(&it)) else {
            continue;
        };
        let bytenr = fe.disk_bytenr.get();
        if bytenr == 0 {
            continue;
        }
        out.push(DataRefRaw {
            bytenr,
            num_bytes: fe.disk_num_bytes.get(),
            leaf,
            leaf_owner: owner,
            ino: it.key.objectid,
            offset: it.key.offset.wrapping_sub(fe.offset.get()),
            tree,
        });
    }
}

/// Walk the trees in `specs` in parallel, then every tree their root items name
/// (when `follow` finds them), and check deferred pointers.
pub(crate) fn walk_all(
    ctx: &Ctx<'_>,
    specs: Vec<TreeSpec>,
    shared: &Shared,
    base: usize,
) -> (Vec<WalkedTree>, Vec<TreeRefRaw>, Vec<DataRefRaw>) {
    let res: Vec<(WalkedTree, Out)> = specs
        .par_iter()
        .enumerate()
        .map(|(i, s)| walk_tree(ctx, base + i, s, shared))
        .collect();
    let mut trees = Vec::new();
    let mut trefs = Vec::new();
    let mut drefs = Vec::new();
    for (t, o) in res {
        trees.push(t);
        trefs.extend(o.tree_refs);
        drefs.extend(o.data_refs);
    }
    (trees, trefs, drefs)
}

/// Check pointers to blocks first reached by another tree against what the block says.
pub(crate) fn finish(ctx: &Ctx<'_>, shared: Shared) -> HashMap<u64, BlockMeta> {
    let (metas, deferred) = shared.into_metas();
    for d in deferred {
        let Some(m) = metas.get(&d.child) else {
            continue;
        };
        let mut probs = Vec::new();
        if !owner_ok(d.kind, d.tree, m.owner) {
            probs.push((
                Kind::TreeBlockHeader,
                format!(
                    "has owner {}, not a block of {}",
                    m.owner,
                    crate::finding::tree_name(d.tree)
                ),
            ));
        }
        if m.level != d.level {
            probs.push((
                Kind::TreeBlockHeader,
                format!(
                    "has level {} where node {} says {}",
                    m.level,
                    d.parent.unwrap_or(0),
                    d.level
                ),
            ));
        } else if m.generation != d.generation {
            probs.push((
                Kind::TreeBlockHeader,
                format!(
                    "has generation {} where node {} says {}",
                    m.generation,
                    d.parent.unwrap_or(0),
                    d.generation
                ),
            ));
        }
        if let (Some(lo), Some(first)) = (d.lo, m.first) {
            if lo != first {
                probs.push((
                    Kind::KeyOrder,
                    format!(
                        "first key {first} differs from the key {lo} in node {}",
                        d.parent.unwrap_or(0)
                    ),
                ));
            }
        }
        if let (Some(hi), Some(last)) = (d.hi, m.last) {
            if last >= hi {
                probs.push((
                    Kind::KeyOrder,
                    format!(
                        "last key {last} is not below {hi}, the next key in node {}",
                        d.parent.unwrap_or(0)
                    ),
                ));
            }
        }
        for (k, msg) in probs {
            ctx.sink.push(
                Finding::error(k, format!("shared tree block {}: {msg}", d.child))
                    .tree(d.tree)
                    .bytenr(d.child),
            );
        }
    }
    metas
}
