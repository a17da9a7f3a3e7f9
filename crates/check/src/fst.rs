//! The free space tree: for each block group, its free extents and bitmaps must be
//! the complement of the allocated extents. The 64 KiB around each superblock copy
//! (and the first MiB) may be listed either way: the kernel's and mkfs's own
//! population list it as free, while allocation never uses it.
use std::collections::BTreeMap;

use btrfs_format::consts::*;
use btrfs_format::*;

use crate::chunks::BlockGroups;
use crate::extents::Extents;
use crate::finding::{Finding, Kind};
use crate::{items, Ctx, Walked};

/// Sorted, disjoint, non-empty half-open ranges.
pub(crate) type Ranges = Vec<(u64, u64)>;

pub(crate) fn normalize(mut v: Ranges) -> Ranges {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a` minus `b` (both normalized).
pub(crate) fn subtract(a: &Ranges, b: &Ranges) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// The first few ranges of `r`, for a finding's message.
pub(crate) fn show(r: &Ranges) -> String {
    let mut s: Vec<String> = r.iter().take(4).map(|(a, b)| format!("{a}..{b}")).collect();
    if r.len() > 4 {
        s.push(format!("and {} more", r.len() - 4));
    }
    s.join(", ")
}

/// Logical ranges of the superblock copies (64 KiB stripes), from the chunk map.
pub(crate) fn super_stripes(ctx: &Ctx<'_>) -> Ranges {
    let mut out = Vec::new();
    for m in 0..BTRFS_SUPER_MIRROR_MAX {
        let phys = btrfs_sb_offset(m);
        for c in ctx.img.chunk_map().iter() {
            if !c.is_mirrored() {
                continue;
            }
            for s in &c.stripes {
                if phys >= s.physical && phys < s.physical.saturating_add(c.length) {
                    let off = (phys - s.physical) / BTRFS_STRIPE_LEN * BTRFS_STRIPE_LEN;
                    let l = c.logical.saturating_add(off);
                    out.push((l, l.saturating_add(BTRFS_STRIPE_LEN).min(c.end())));
                }
            }
        }
    }
    out.push((0, 1024 * 1024));
    normalize(out)
}

#[derive(Default)]
struct BgFst {
    info: Option<(u32, u32, Key)>,
    free: Ranges,
    extents: usize,
    bitmaps: usize,
}

pub(crate) fn check(ctx: &Ctx<'_>, w: &Walked, ext: &Extents, bgs: &BlockGroups) {
    let ft = BTRFS_FREE_SPACE_TREE_OBJECTID;
    if !ctx.compat_ro(BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE) {
        return;
    }
    if !ctx.compat_ro(BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID) {
        ctx.sink.push(Finding::warning(
            Kind::FreeSpaceInfo,
            "the free space tree is not marked valid; it is not checked",
        ));
        return;
    }
    let Some(t) = w.tree(ft) else {
        ctx.sink.push(Finding::error(
            Kind::FreeSpaceInfo,
            "the free-space-tree feature is on but there is no free space tree",
        ));
        return;
    };
    let mut per: BTreeMap<u64, BgFst> = BTreeMap::new();
    // Stale entries: (start, end) of the range, the first key, and how many items.
    let mut stale: Vec<(u64, u64, Key, usize)> = Vec::new();
    let mut note_stale = |k: Key| {
        let end = k.objectid.saturating_add(k.offset);
        if let Some(s) = stale.last_mut() {
            if k.objectid >= s.0 && end <= s.1 {
                s.3 += 1;
                return;
            }
        }
        stale.push((k.objectid, end, k, 1));
    };
    for it in items(ctx, t) {
        let k = it.key;
        let bg = match k.item_type {
            BTRFS_FREE_SPACE_INFO_KEY => bgs
                .find(k.objectid)
                .filter(|b| b.start == k.objectid && b.len == k.offset),
            BTRFS_FREE_SPACE_EXTENT_KEY | BTRFS_FREE_SPACE_BITMAP_KEY => bgs
                .find(k.objectid)
                .filter(|b| k.objectid.saturating_add(k.offset) <= b.end() && k.offset > 0),
            _ => {
                ctx.sink.push(
                    Finding::error(
                        Kind::FreeSpaceMismatch,
                        format!(
                            "unexpected item type {} in the free space tree",
                            k.item_type
                        ),
                    )
                    .tree(ft)
                    .key(k),
                );
                continue;
            }
        };
        let Some(bg) = bg else {
            note_stale(k);
            continue;
        };
        let e = per.entry(bg.start).or_default();
        match k.item_type {
            BTRFS_FREE_SPACE_INFO_KEY => {
                if let Ok(fi) = FreeSpaceInfo::read(it.data) {
                    e.info = Some((fi.extent_count.get(), fi.flags.get(), k));
                }
            }
            BTRFS_FREE_SPACE_EXTENT_KEY => {
                e.extents += 1;
                e.free
                    .push((k.objectid, k.objectid.saturating_add(k.offset)));
            }
            _ => {
                e.bitmaps += 1;
                // Never more bits than the item holds (a damaged key may claim any length).
                let bits = (k.offset / ctx.sectorsize).min(it.data.len() as u64 * 8);
                let mut run: Option<u64> = None;
                for i in 0..bits {
                    let set = it
                        .data
                        .get((i / 8) as usize)
                        .is_some_and(|b| b & (1 << (i % 8)) != 0);
                    match (set, run) {
                        (true, None) => run = Some(i),
                        (false, Some(s)) => {
                            e.free.push((
                                k.objectid.saturating_add(s * ctx.sectorsize),
                                k.objectid.saturating_add(i * ctx.sectorsize),
                            ));
                            run = None;
                        }
                        _ => {}
                    }
                }
                if let Some(s) = run {
                    e.free.push((
                        k.objectid.saturating_add(s * ctx.sectorsize),
                        k.objectid.saturating_add(bits * ctx.sectorsize),
                    ));
                }
            }
        }
    }
    for (s, e, k, n) in stale {
        ctx.sink.push(
            Finding::error(
                Kind::FreeSpaceStale,
                format!(
                    "{n} free space tree item(s) for {s}..{e}, where there is no block group (left behind when it was removed)"
                ),
            )
            .tree(ft)
            .key(k),
        );
    }
    let either = super_stripes(ctx);
    for bg in &bgs.list {
        let fst = per.remove(&bg.start).unwrap_or_default();
        let at = |f: Finding| f.tree(ft).bytenr(bg.start);
        let Some((count, flags, ikey)) = fst.info else {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceInfo,
                format!(
                    "block group {}..{} has no FREE_SPACE_INFO item",
                    bg.start,
                    bg.end()
                ),
            )));
            continue;
        };
        let bitmaps = flags & BTRFS_FREE_SPACE_USING_BITMAPS != 0;
        if (bitmaps && fst.extents > 0) || (!bitmaps && fst.bitmaps > 0) {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceInfo,
                format!(
                    "block group {}: FREE_SPACE_INFO says {}, but {} extent and {} bitmap items follow",
                    bg.start,
                    if bitmaps { "bitmaps" } else { "extents" },
                    fst.extents,
                    fst.bitmaps
                ),
            ).key(ikey)));
        }
        let mut sorted = fst.free.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|p| p[0].1 > p[1].0) {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceMismatch,
                format!("block group {}: free space entries overlap", bg.start),
            )));
        }
        let listed = normalize(fst.free);
        if listed.len() as u64 != count as u64 {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceInfo,
                format!(
                    "block group {}: FREE_SPACE_INFO counts {count} free extents, the tree holds {}",
                    bg.start,
                    listed.len()
                ),
            ).key(ikey)));
        }
        // Allocated extents in this block group.
        let i0 = ext
            .extents
            .partition_point(|e| e.start < bg.start)
            .saturating_sub(1);
        let mut alloc = Vec::new();
        for e in &ext.extents[i0.min(ext.extents.len())..] {
            if e.start >= bg.end() {
                break;
            }
            alloc.push((e.start.max(bg.start), e.end().min(bg.end())));
        }
        let alloc = normalize(alloc);
        let expected = subtract(&vec![(bg.start, bg.end())], &alloc);
        let maybe: Ranges = normalize(
            either
                .iter()
                .map(|&(s, e)| (s.max(bg.start), e.min(bg.end())))
                .collect(),
        );
        let must = subtract(&expected, &maybe);
        let missing = subtract(&must, &listed);
        let extra = subtract(&listed, &expected);
        let extra = subtract(&extra, &subtract(&maybe, &alloc));
        if !missing.is_empty() {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceMismatch,
                format!(
                    "block group {}..{}: free space not in the free space tree: {}",
                    bg.start,
                    bg.end(),
                    show(&missing)
                ),
            )));
        }
        if !extra.is_empty() {
            ctx.sink.push(at(Finding::error(
                Kind::FreeSpaceMismatch,
                format!(
                    "block group {}..{}: the free space tree lists allocated space as free: {}",
                    bg.start,
                    bg.end(),
                    show(&extra)
                ),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        let a = normalize(vec![(0, 10), (5, 20), (30, 40)]);
        assert_eq!(a, vec![(0, 20), (30, 40)]);
        assert_eq!(
            subtract(&a, &vec![(5, 8), (15, 35)]),
            vec![(0, 5), (8, 15), (35, 40)]
        );
        assert_eq!(subtract(&a, &vec![]), a);
        assert!(subtract(&a, &vec![(0, 100)]).is_empty());
    }
}
