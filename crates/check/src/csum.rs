//! The checksum tree and the data: checksum items ordered, not overlapping, inside
//! data extents; every sector that needs a checksum has one; and (unless
//! metadata-only) every checksummed sector of every copy is read with large
//! sequential reads and compared, and every compressed extent is decompressed.
use std::cell::RefCell;

use btrfs_format::consts::*;
use rayon::prelude::*;

use crate::extents::Extents;
use crate::finding::{Finding, Kind};
use crate::fs::FsOut;
use crate::fst::{normalize, show, subtract, Ranges};
use crate::{items, Ctx, Walked};

/// One csum item: checksums of the sectors from `start`.
struct CsumItem<'a> {
    start: u64,
    sums: &'a [u8],
}

/// Bytes read per unit of verification work.
const UNIT: u64 = 4 << 20;

struct Unit<'a> {
    start: u64,
    len: u64,
    sums: &'a [u8],
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A data problem found while the metadata checks still run: its users and path
/// are attached afterwards.
pub(crate) struct DataProblem {
    kind: Kind,
    at: u64,
    msg: String,
}

/// Most data problems kept (the sink caps findings per kind anyway).
const MAX_PROBLEMS: usize = 10_000;

/// The csum items that can be used: (start, checksums), in key order.
fn csum_items<'a>(ctx: &'a Ctx<'a>, w: &'a Walked) -> Vec<CsumItem<'a>> {
    let cs = ctx.csum.size();
    let Some(t) = w.tree(BTRFS_CSUM_TREE_OBJECTID) else {
        return Vec::new();
    };
    items(ctx, t)
        .filter(|it| {
            it.key.objectid == BTRFS_EXTENT_CSUM_OBJECTID
                && it.key.item_type == BTRFS_EXTENT_CSUM_KEY
                && !it.data.is_empty()
                && it.data.len() % cs == 0
                && it.key.offset % ctx.sectorsize == 0
        })
        .map(|it| CsumItem {
            start: it.key.offset,
            sums: it.data,
        })
        .collect()
}

/// Read every checksummed sector of every copy and compare (the I/O-bound part,
/// run beside the metadata checks).
pub(crate) fn verify_data(ctx: &Ctx<'_>, w: &Walked) -> Vec<DataProblem> {
    let ss = ctx.sectorsize;
    let cs = ctx.csum.size();
    let list = csum_items(ctx, w);
    // Units of at most UNIT bytes inside one chunk.
    let mut units: Vec<Unit<'_>> = Vec::new();
    for it in &list {
        let mut start = it.start;
        let mut sums = it.sums;
        while !sums.is_empty() {
            let chunk_end = ctx
                .img
                .chunk_map()
                .lookup(start)
                .map_or(start.saturating_add(UNIT), |c| c.end());
            let max = UNIT.min(chunk_end.saturating_sub(start)).max(ss);
            let n = ((max / ss) as usize).min(sums.len() / cs).max(1);
            units.push(Unit {
                start,
                len: n as u64 * ss,
                sums: &sums[..n * cs],
            });
            sums = &sums[n * cs..];
            start = start.saturating_add(n as u64 * ss);
        }
    }
    let total: u64 = units.iter().map(|u| u.len).sum();
    ctx.phase("data", total);
    let depth = if ctx.opts.io_depth == 0 {
        8
    } else {
        ctx.opts.io_depth
    };
    let file = ctx.img.path().and_then(|p| std::fs::File::open(p).ok());
    if let Some(f) = &file {
        // Each worker reads its own run of units front to back: ask for
        // aggressive readahead.
        let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::Sequential);
    }
    let problems = std::sync::Mutex::new(Vec::new());
    let run = || {
        units
            .par_iter()
            .with_max_len(1)
            .for_each(|u| verify_unit(ctx, file.as_ref(), u, &problems));
    };
    match rayon::ThreadPoolBuilder::new().num_threads(depth).build() {
        Ok(p) => p.install(run),
        Err(_) => run(),
    }
    problems.into_inner().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn check(
    ctx: &Ctx<'_>,
    w: &Walked,
    ext: &Extents,
    fs: &FsOut,
    problems: Vec<DataProblem>,
) {
    let ct = BTRFS_CSUM_TREE_OBJECTID;
    let ss = ctx.sectorsize;
    let cs = ctx.csum.size();
    let mut covered: Ranges = Vec::new();
    if let Some(t) = w.tree(ct) {
        let mut prev_end = 0u64;
        for it in items(ctx, t) {
            let k = it.key;
            if k.objectid != BTRFS_EXTENT_CSUM_OBJECTID || k.item_type != BTRFS_EXTENT_CSUM_KEY {
                ctx.sink.push(
                    Finding::error(
                        Kind::CsumOverlap,
                        format!("unexpected item {k} in the checksum tree"),
                    )
                    .tree(ct)
                    .key(k)
                    .bytenr(it.leaf),
                );
                continue;
            }
            if it.data.is_empty() || it.data.len() % cs != 0 {
                continue; // reported by the item size check
            }
            if k.offset % ss != 0 {
                ctx.sink.push(
                    Finding::error(
                        Kind::CsumOverlap,
                        format!("checksums start at {}, not sector aligned", k.offset),
                    )
                    .tree(ct)
                    .key(k)
                    .bytenr(it.leaf),
                );
                continue;
            }
            let n = (it.data.len() / cs) as u64;
            let end = k.offset.saturating_add(n.saturating_mul(ss));
            if k.offset < prev_end {
                ctx.sink.push(Finding::error(Kind::CsumOverlap, format!(
                    "checksums for {}..{end} overlap the previous item, which reaches {prev_end}", k.offset
                )).tree(ct).key(k).bytenr(it.leaf));
            }
            prev_end = prev_end.max(end);
            covered.push((k.offset, end));
        }
    }
    let covered = normalize(covered);
    let data: Ranges = normalize(
        ext.extents
            .iter()
            .filter(|e| e.is_data())
            .map(|e| (e.start, e.end()))
            .collect(),
    );
    let outside = subtract(&covered, &data);
    if !outside.is_empty() {
        ctx.sink.push(
            Finding::error(
                Kind::CsumOutsideExtent,
                format!(
                    "checksums for bytes that are in no data extent: {}",
                    show(&outside)
                ),
            )
            .tree(ct)
            .bytenr(outside[0].0),
        );
    }
    // Every sector a datasum file extent uses has a checksum: what is missing
    // from the union of needs, then which file extents it belongs to (a few
    // ranges each, and no more findings than are kept: bounded work on any image).
    let missing = subtract(
        &normalize(fs.need_csum.iter().map(|n| (n.start, n.end)).collect()),
        &covered,
    );
    if !missing.is_empty() {
        let cap = ctx.opts.max_findings_per_kind.max(1);
        for n in &fs.need_csum {
            if ctx.sink.count(Kind::CsumMissing) >= cap {
                break;
            }
            let i = missing.partition_point(|r| r.1 <= n.start);
            let here: Ranges = missing[i.min(missing.len())..]
                .iter()
                .take_while(|r| r.0 < n.end)
                .take(5)
                .map(|&(s, e)| (s.max(n.start), e.min(n.end)))
                .collect();
            if !here.is_empty() {
                ctx.sink.push(
                    Finding::error(
                        Kind::CsumMissing,
                        format!(
                            "data of inode {} has no checksum for disk bytes {}",
                            n.ino,
                            show(&here)
                        ),
                    )
                    .tree(n.tree)
                    .ino(n.ino)
                    .bytenr(n.start)
                    .path(fs.path(n.tree, n.ino)),
                );
            }
        }
    }
    if ctx.opts.metadata_only {
        return;
    }
    for p in problems {
        let (user, path) = who(ext, fs, p.at);
        let mut f = Finding::error(p.kind, p.msg).bytenr(p.at).path(path);
        if let Some((t, ino)) = user {
            f = f.tree(t).ino(ino);
        }
        ctx.sink.push(f);
    }
    // Each compressed extent once, even when several file extents share it.
    let mut comp = fs.compressed.clone();
    comp.sort_by_key(|c| c.disk_bytenr);
    comp.dedup_by_key(|c| c.disk_bytenr);
    let file = ctx.img.path().and_then(|p| std::fs::File::open(p).ok());
    comp.par_iter()
        .for_each(|c| decompress_one(ctx, fs, file.as_ref(), c));
}

/// Read `len` bytes at physical `phys` into the thread's buffer and call `f`.
fn with_bytes<R>(
    ctx: &Ctx<'_>,
    file: Option<&std::fs::File>,
    phys: u64,
    len: u64,
    f: impl FnOnce(Result<&[u8], String>) -> R,
) -> R {
    if let Some(file) = file {
        use std::os::unix::fs::FileExt;
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            let Ok(n) = usize::try_from(len) else {
                return f(Err(format!("{len} bytes")));
            };
            if b.len() < n {
                b.resize(n, 0);
            }
            match file.read_exact_at(&mut b[..n], phys) {
                Ok(()) => f(Ok(&b[..n])),
                Err(e) => f(Err(format!("read of {len} bytes at physical {phys}: {e}"))),
            }
        })
    } else {
        match ctx.img.read_physical(phys, len) {
            Ok(s) => f(Ok(s)),
            Err(e) => f(Err(e.to_string())),
        }
    }
}

fn who(ext: &Extents, fs: &FsOut, at: u64) -> (Option<(u64, u64)>, Option<String>) {
    let i = ext.extents.partition_point(|e| e.start <= at);
    let Some(e) = i.checked_sub(1).and_then(|i| ext.extents.get(i)) else {
        return (None, None);
    };
    if at >= e.end() {
        return (None, None);
    }
    match fs.users.get(&e.start) {
        Some(&(t, ino)) => (Some((t, ino)), fs.path(t, ino)),
        None => (None, None),
    }
}

fn verify_unit(
    ctx: &Ctx<'_>,
    file: Option<&std::fs::File>,
    u: &Unit<'_>,
    problems: &std::sync::Mutex<Vec<DataProblem>>,
) {
    let ss = ctx.sectorsize;
    let cs = ctx.csum.size();
    let report = |kind: Kind, at: u64, msg: String| {
        let mut p = problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < MAX_PROBLEMS {
            p.push(DataProblem { kind, at, msg });
        }
    };
    let copies = match ctx.img.chunk_map().map(u.start, u.len) {
        Ok(c) => c,
        Err(btrfs_image::Error::Unsupported(m)) => {
            crate::unsupported(
                ctx,
                BTRFS_CSUM_TREE_OBJECTID,
                u.start,
                format!("data at {} is not checked: {m}", u.start),
            );
            ctx.progress_inc(u.len);
            return;
        }
        Err(e) => {
            report(
                Kind::DataUnreadable,
                u.start,
                format!(
                    "checksummed data {}..{} cannot be mapped: {e}",
                    u.start,
                    u.start.saturating_add(u.len)
                ),
            );
            ctx.progress_inc(u.len);
            return;
        }
    };
    let many = copies.len() > 1;
    for (ci, &phys) in copies.iter().enumerate() {
        let copy = if many {
            format!("copy {} of ", ci + 1)
        } else {
            String::new()
        };
        with_bytes(ctx, file, phys, u.len, |r| match r {
            Err(e) => report(
                Kind::DataUnreadable,
                u.start,
                format!(
                    "{copy}data {}..{}: {e}",
                    u.start,
                    u.start.saturating_add(u.len)
                ),
            ),
            Ok(bytes) => {
                let mut bad: Option<(u64, u64)> = None;
                let flush =
                    |b: (u64, u64)| {
                        report(
                            Kind::DataChecksum,
                            b.0,
                            format!(
                        "{copy}data at {}..{} ({} sector(s)) does not match its {} checksum",
                        b.0, b.1, (b.1 - b.0) / ss, ctx.csum
                    ),
                        );
                    };
                let mut out = [0u8; 32];
                for (i, (sector, want)) in bytes
                    .chunks_exact(ss as usize)
                    .zip(u.sums.chunks_exact(cs))
                    .enumerate()
                {
                    ctx.csum.compute_into(sector, &mut out[..cs]);
                    let at = u.start.saturating_add(i as u64 * ss);
                    if out[..cs] != *want {
                        bad = match bad {
                            Some((s, e)) if e == at => Some((s, at.saturating_add(ss))),
                            Some(b) => {
                                flush(b);
                                Some((at, at.saturating_add(ss)))
                            }
                            None => Some((at, at.saturating_add(ss))),
                        };
                    }
                }
                if let Some(b) = bad {
                    flush(b);
                }
                ctx.data_bytes
                    .fetch_add(u.len, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    ctx.progress_inc(u.len);
}

fn decompress_one(
    ctx: &Ctx<'_>,
    fs: &FsOut,
    file: Option<&std::fs::File>,
    c: &crate::fs::Compressed,
) {
    let ss = ctx.sectorsize;
    if c.disk_num_bytes > BTRFS_MAX_COMPRESSED
        || c.ram_bytes > BTRFS_MAX_COMPRESSED
        || c.disk_num_bytes == 0
    {
        return; // reported with the file extent
    }
    let at = |f: Finding| {
        f.tree(c.tree)
            .ino(c.ino)
            .bytenr(c.disk_bytenr)
            .path(fs.path(c.tree, c.ino))
    };
    let phys = match ctx.img.chunk_map().map(c.disk_bytenr, c.disk_num_bytes) {
        Ok(p) => p.first().copied(),
        Err(_) => None,
    };
    let Some(phys) = phys else { return };
    with_bytes(ctx, file, phys, c.disk_num_bytes, |r| {
        let Ok(raw) = r else { return };
        let limit = (c.ram_bytes + 1) as usize;
        match btrfs_image::decompress(c.compression, raw, limit, ss as u32) {
            Err(e) => ctx.sink.push(at(Finding::error(
                Kind::Decompress,
                format!(
                    "compressed extent {} ({} bytes on disk) does not decompress: {e}",
                    c.disk_bytenr, c.disk_num_bytes
                ),
            ))),
            Ok(v) => {
                let n = v.len() as u64;
                if n > c.ram_bytes || n.div_ceil(ss) < c.ram_bytes.div_ceil(ss) {
                    ctx.sink.push(at(Finding::error(
                        Kind::Decompress,
                        format!(
                            "compressed extent {} decompresses to {n} bytes, ram_bytes says {}",
                            c.disk_bytenr, c.ram_bytes
                        ),
                    )));
                }
            }
        }
    });
}
