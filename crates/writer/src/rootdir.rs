//! `--rootdir`: scan a directory tree, write its data, build its trees, commit.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use btrfs_format::*;

use crate::btree::TreeItems;
use crate::commit::{commit, metadata_needed, CommitInput, SubvolInput};
use crate::compress::Compression;
use crate::config::MkfsConfig;
use crate::data::{self, DataOptions, Progress};
use crate::fstree::{csum_items, data_extent_items, subvol_items, FsParams};
use crate::layout::{Layout, MIB};
use crate::mkfs::{derive_uuid, identity, subvol_root_item, MkfsReport, SYSTEM_CHUNK_SIZE};
use crate::output::Output;
use crate::scan::{scan, Scan, ScanOptions};
use crate::{Error, Result};

/// Options of a `--rootdir` run beyond the filesystem's own.
#[derive(Debug, Clone)]
pub struct RootdirOptions {
    pub rootdir: PathBuf,
    pub scan: ScanOptions,
    /// Largest file stored inline (`--max-inline`; 2048 by default).
    pub max_inline: u64,
    /// Cut the image to its last used byte.
    pub shrink: bool,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Largest data chunk (block group) to create.
    pub data_chunk_max: u64,
    pub compression: Option<Compression>,
    /// Share one extent between files of identical content.
    pub dedupe: bool,
    /// File data in flight at once.
    pub memory: u64,
    /// Counters a caller may display while the import runs.
    pub progress: Arc<Progress>,
}

impl RootdirOptions {
    /// Defaults as `forge-mkfs` uses them.
    pub fn new(rootdir: impl Into<PathBuf>) -> Self {
        RootdirOptions {
            rootdir: rootdir.into(),
            scan: ScanOptions::default(),
            max_inline: BTRFS_MAX_INLINE_DATA_SIZE_DEFAULT,
            shrink: false,
            threads: 0,
            data_chunk_max: data::DATA_CHUNK_MAX,
            compression: None,
            dedupe: false,
            memory: 256 * MIB,
            progress: Arc::default(),
        }
    }
}

/// The largest inline file: below one sector, within the leaf, at most `max_inline`.
pub fn inline_limit(max_inline: u64, nodesize: u32, sectorsize: u32) -> u64 {
    max_inline
        .min(sectorsize as u64 - 1)
        .min(max_inline_item_data(nodesize) as u64)
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Build the filesystem of `opts.rootdir` into `path`.
pub fn make_rootdir_filesystem(
    path: &Path,
    cfg: &MkfsConfig,
    opts: &RootdirOptions,
) -> Result<MkfsReport> {
    cfg.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
    build(path, cfg, opts, &pool)
}

fn build(
    path: &Path,
    cfg: &MkfsConfig,
    opts: &RootdirOptions,
    pool: &rayon::ThreadPool,
) -> Result<MkfsReport> {
    let mut timing = crate::Timing::new(false);
    let scan_opts = ScanOptions {
        progress: opts.progress.clone(),
        ..opts.scan.clone()
    };
    let tree = pool.install(|| scan(&opts.rootdir, &scan_opts))?;
    timing.mark("scan");
    let m = cfg.metadata_profile;
    let mut layout = Layout {
        chunks: Vec::new(),
        device_size: 0,
    };
    layout.push_chunk(
        BTRFS_BLOCK_GROUP_SYSTEM | m.flag(),
        SYSTEM_CHUNK_SIZE,
        m.stripes(),
    );
    let est_meta = estimate_metadata(&tree, cfg);
    let dopts = DataOptions {
        sectorsize: cfg.sectorsize as u64,
        csum: cfg.csum,
        inline_limit: inline_limit(opts.max_inline, cfg.nodesize, cfg.sectorsize),
        compression: opts.compression,
        dedupe: opts.dedupe,
        chunk_max: opts.data_chunk_max.max(MIB),
        data_flags: BTRFS_BLOCK_GROUP_DATA | cfg.data_profile.flag(),
        data_stripes: cfg.data_profile.stripes(),
        memory: opts.memory,
        data_end_max: cfg
            .byte_count
            .map(|b| b.saturating_sub(est_meta * m.stripes() as u64)),
    };
    let mut reserved = 0;
    // The output is opened once the data chunks are laid out: a too-small -b
    // is refused before anything is written.
    let mut open = |l: &Layout, _data: u64| -> Result<Output> {
        let est_end = l.physical_end() + est_meta * m.stripes() as u64;
        if let Some(b) = cfg.byte_count {
            if est_end > b {
                return Err(Error::NoSpace(format!(
                    "the tree needs about {est_end} bytes ({}) but -b gives {b}",
                    crate::summary::human(est_end)
                )));
            }
        }
        let out = Output::create(path, cfg.byte_count.or(Some(est_end)), cfg.force)?;
        // The data chunks now; the metadata once its size is known. Space
        // reserved and not used would be given back at the end, and on a
        // filesystem mounted with `discard` that waits for the disk to
        // finish every write queued before it. Compressed data is laid out
        // for the worst case (nothing compresses): its space is reserved as
        // it is written (one stripe; DUP data reserves all up front).
        let lazy = dopts.compression.is_some() && dopts.data_stripes == 1;
        let data_start = l
            .chunks
            .iter()
            .filter(|c| c.flags & BTRFS_BLOCK_GROUP_DATA != 0)
            .flat_map(|c| c.stripes.iter().copied())
            .min()
            .filter(|_| lazy)
            .unwrap_or(l.physical_end());
        if out.reserve(0, data_start)? {
            reserved = data_start;
            if lazy {
                out.reserve_lazily(data_start, l.physical_end());
            }
        }
        Ok(out)
    };
    let (mut out, plan) =
        data::write_all(pool, &tree, &mut layout, &mut open, &dopts, &opts.progress)?;
    timing.mark("data");

    // Items of every tree.
    let ident = identity(cfg);
    let generation = 1;
    let p = FsParams {
        generation,
        nodesize: cfg.nodesize,
        sectorsize: cfg.sectorsize,
        no_holes: cfg.features.no_holes,
        extref: cfg.features.extref,
    };
    // The subvolume trees, the csum tree and the data extent items are
    // independent: build them in parallel.
    let csum_src: Vec<(u64, &[u8])> = plan.csums.iter().map(|(a, s)| (*a, &s[..])).collect();
    let (sv_items, (csum_items, data_extent_items)) = pool.install(|| {
        use rayon::prelude::*;
        rayon::join(
            || {
                (0..tree.subvols.len())
                    .into_par_iter()
                    .map(|si| subvol_items(&tree, si, &plan, &p))
                    .collect::<Result<Vec<_>>>()
            },
            || {
                rayon::join(
                    || csum_items(&csum_src, cfg.csum, cfg.sectorsize as u64, cfg.nodesize),
                    || data_extent_items(&tree, &plan, generation),
                )
            },
        )
    });
    let mut sv_items = sv_items?.into_iter();
    let mut subvols = Vec::new();
    let mut root_tree_extra = TreeItems::new();
    for sv in tree.subvols.iter() {
        let items = sv_items
            .next()
            .ok_or_else(|| Error::Internal("subvolume items".into()))?;
        let uuid = derive_uuid(&ident.fsid, format!("subvolume {}", sv.id).as_bytes());
        let transid = if sv.id == BTRFS_FS_TREE_OBJECTID {
            0
        } else {
            generation
        };
        let mut root_item = subvol_root_item(cfg.nodesize, uuid, cfg.now, transid);
        if sv.readonly {
            root_item.flags = BTRFS_ROOT_SUBVOL_RDONLY.into();
        }
        if let Some((parent, dirid, index, name)) = &sv.parent {
            let parent_id = tree.subvols[*parent].id;
            let rr = RootRef {
                dirid: (*dirid).into(),
                sequence: (*index).into(),
                name_len: (name.len() as u16).into(),
            };
            for key in [
                Key::new(parent_id, BTRFS_ROOT_REF_KEY, sv.id),
                Key::new(sv.id, BTRFS_ROOT_BACKREF_KEY, parent_id),
            ] {
                root_tree_extra.push_with(key, |o| {
                    o.extend_from_slice(zerocopy::IntoBytes::as_bytes(&rr));
                    o.extend_from_slice(name);
                });
            }
        }
        subvols.push(SubvolInput {
            id: sv.id,
            items: Arc::new(items),
            root_item,
        });
    }
    let default_subvol = tree
        .default_subvol
        .map(|i| tree.subvols[i].id)
        .unwrap_or(BTRFS_FS_TREE_OBJECTID);
    let mut extra_incompat = plan.incompat;
    if default_subvol != BTRFS_FS_TREE_OBJECTID {
        extra_incompat |= BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL;
    }
    let mut input = CommitInput {
        nodesize: cfg.nodesize,
        sectorsize: cfg.sectorsize,
        csum: cfg.csum,
        features: cfg.features,
        ident,
        generation,
        layout: layout.clone(),
        subvols,
        root_tree_extra,
        default_subvol,
        csum_items: Arc::new(csum_items),
        data_extent_items,
        data_allocated: plan.allocated.clone(),
        extra_incompat,
    };
    // Only the items are needed from here on: free the scan and the plan
    // before the metadata is built (peak memory).
    let stats = crate::mkfs::DataStats {
        files: tree.node_count() as u64,
        bytes_in: plan.bytes_in,
        bytes_on_disk: plan.bytes_on_disk,
    };
    drop(csum_src);
    drop(plan);
    drop(tree);
    timing.mark("items");
    // Size the metadata chunk: a dry run in a roomy chunk, then the real one.
    let meta_flags = BTRFS_BLOCK_GROUP_METADATA | m.flag();
    let mut trial = align(est_meta * 2 + 8 * MIB, BTRFS_STRIPE_LEN);
    let (needed, seed) = loop {
        let mut l = layout.clone();
        l.push_chunk(meta_flags, trial, m.stripes());
        l.device_size = l.physical_end();
        input.layout = l;
        match metadata_needed(&input) {
            Ok(solved) => break solved,
            Err(Error::NoSpace(_)) if trial < 1 << 40 => trial *= 2,
            Err(e) => return Err(e),
        }
    };
    // Room for the kernel after a read-write mount: its metadata reservations
    // grow with the node size (nodesize * 8 levels * 2 per item).
    let slack = if opts.shrink {
        MIB
    } else {
        (needed / 4).max(16 * MIB).max(cfg.nodesize as u64 * 1024)
    };
    let mut meta_len = align(needed + slack, BTRFS_STRIPE_LEN);
    if let Some(b) = cfg.byte_count {
        // Under -b the metadata chunk takes at most half of what is left,
        // the rest left for the kernel's new chunks (and at least what it
        // needs: else the check below refuses).
        let room = b.saturating_sub(layout.physical_end()) / m.stripes() as u64 / 2;
        let least = align(needed + MIB.min(slack), BTRFS_STRIPE_LEN);
        meta_len = meta_len
            .min(room / BTRFS_STRIPE_LEN * BTRFS_STRIPE_LEN)
            .max(least);
    }
    layout.push_chunk(meta_flags, meta_len, m.stripes());
    let end = layout.physical_end();
    layout.device_size = match cfg.byte_count {
        Some(b) if b < end => {
            return Err(Error::NoSpace(format!(
                "the tree needs {end} bytes ({}) but -b gives {b} ({})",
                crate::summary::human(end),
                crate::summary::human(b)
            )))
        }
        Some(b) => b / cfg.sectorsize as u64 * cfg.sectorsize as u64,
        None if opts.shrink => end,
        None => align(end + (end / 10).clamp(64 * MIB, 1 << 30), MIB),
    };
    timing.mark("metadata dry run");
    input.layout = layout.clone();
    out.set_size(layout.device_size)?;
    // Reserved for sure so far, and the furthest a reservation may reach.
    let (sure, reach) = out.lazily_reserved().unwrap_or((reserved, reserved));
    // Give back what was reserved past the last chunk (data reserved a step
    // ahead of its writes, or data that compressed).
    if reach > end {
        let _ = rustix::fs::fallocate(
            out.file(),
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            end,
            reach - end,
        );
    }
    if sure > 0 {
        // The metadata chunk's space, where the data's reservation ends
        // before it, and the superblock copies past the last chunk.
        out.reserve(sure, end)?;
        for mirror in 1..BTRFS_SUPER_MIRROR_MAX {
            let at = btrfs_sb_offset(mirror);
            if at >= end && at + BTRFS_SUPER_INFO_SIZE as u64 <= layout.device_size {
                out.reserve(at, at + BTRFS_SUPER_INFO_SIZE as u64)?;
            }
        }
    }
    // In the pool: tree leaves are built in parallel.
    let report = pool.install(|| commit(&out, &input, Some(seed)))?;
    timing.mark("commit");
    Ok(MkfsReport {
        layout,
        commit: report,
        data: Some(stats),
    })
}

/// Rough metadata bytes, for the early size check and space reservation.
fn estimate_metadata(tree: &Scan, cfg: &MkfsConfig) -> u64 {
    let mut bytes = 0u64;
    for n in tree.subvols.iter().flat_map(|s| s.nodes.iter()) {
        bytes += 300;
        bytes += n
            .links
            .iter()
            .map(|l| 3 * l.name.len() as u64 + 100)
            .sum::<u64>();
        bytes += n
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64 + 60)
            .sum::<u64>();
        if matches!(n.kind, crate::scan::Kind::File) {
            let sz = n.stat.size;
            if sz < cfg.sectorsize as u64 {
                bytes += sz + 50;
            } else {
                // Extent items (≤128 KiB each when compressing) and checksums.
                bytes += sz.div_ceil(BTRFS_MAX_COMPRESSED) * 170
                    + sz / cfg.sectorsize as u64 * cfg.csum.size() as u64;
            }
        }
    }
    let blocks = bytes / (cfg.nodesize as u64 - 200) + 16;
    blocks * cfg.nodesize as u64 * 11 / 10 + 4 * MIB
}
