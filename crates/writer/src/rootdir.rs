//! `--rootdir`: scan a directory tree, write its data, build its trees, commit.
use std::path::{Path, PathBuf};

use btrfs_format::*;

use crate::btree::TreeItems;
use crate::commit::{commit, metadata_needed, CommitInput, SubvolInput};
use crate::config::MkfsConfig;
use crate::data;
use crate::fstree::{csum_items, subvol_items, FsParams};
use crate::layout::{ChunkSpec, Layout, MIB};
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
    pool.install(|| build(path, cfg, opts))
}

fn build(path: &Path, cfg: &MkfsConfig, opts: &RootdirOptions) -> Result<MkfsReport> {
    let tree = scan(&opts.rootdir, &opts.scan)?;
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
    let plan = data::plan(
        &tree,
        &mut layout,
        cfg.sectorsize as u64,
        inline_limit(opts.max_inline, cfg.nodesize, cfg.sectorsize),
        BTRFS_BLOCK_GROUP_DATA | cfg.data_profile.flag(),
        cfg.data_profile.stripes(),
        opts.data_chunk_max.max(MIB),
    )?;
    // A first estimate of metadata, to refuse a too-small -b before writing.
    let est_meta = estimate_metadata(&tree, &plan, cfg);
    let est_end = layout.physical_end() + est_meta * m.stripes() as u64;
    if let Some(b) = cfg.byte_count {
        if est_end > b {
            return Err(Error::NoSpace(format!(
                "the tree needs about {est_end} bytes ({}) but -b gives {b}",
                crate::summary::human(est_end)
            )));
        }
    }
    let mut out = Output::create(path, cfg.byte_count.or(Some(est_end)), cfg.force)?;
    let sums = data::write(&tree, &plan, &layout, &out, cfg.csum, cfg.sectorsize as u64)?;

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
    let mut data_extent_items = TreeItems::new();
    let mut subvols = Vec::new();
    let mut root_tree_extra = TreeItems::new();
    for (si, sv) in tree.subvols.iter().enumerate() {
        let items = subvol_items(&tree, si, &plan, &p, &mut data_extent_items)?;
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
            items,
            root_item,
        });
    }
    let csum_src: Vec<(u64, &[u8])> = plan
        .extents
        .iter()
        .zip(&sums)
        .map(|(e, s)| (e.disk_bytenr, &s[..]))
        .collect();
    let csum_items = csum_items(&csum_src, cfg.csum, cfg.sectorsize as u64, cfg.nodesize);
    let default_subvol = tree
        .default_subvol
        .map(|i| tree.subvols[i].id)
        .unwrap_or(BTRFS_FS_TREE_OBJECTID);
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
        csum_items,
        data_extent_items,
        data_allocated: plan.allocated.clone(),
        extra_incompat: if default_subvol != BTRFS_FS_TREE_OBJECTID {
            BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL
        } else {
            0
        },
    };
    // Size the metadata chunk: a dry run in a roomy chunk, then the real one.
    let meta_flags = BTRFS_BLOCK_GROUP_METADATA | m.flag();
    let mut trial = align(est_meta * 2 + 8 * MIB, BTRFS_STRIPE_LEN);
    let needed = loop {
        let mut l = layout.clone();
        l.push_chunk(meta_flags, trial, m.stripes());
        l.device_size = l.physical_end();
        input.layout = l;
        match metadata_needed(&input) {
            Ok(n) => break n,
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
    let meta_len = align(needed + slack, BTRFS_STRIPE_LEN);
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
    input.layout = layout.clone();
    out.set_size(layout.device_size)?;
    let report = commit(&out, &input)?;
    Ok(MkfsReport {
        layout,
        commit: report,
    })
}

/// Rough metadata bytes for the pre-flight size check.
fn estimate_metadata(tree: &Scan, plan: &data::DataPlan, cfg: &MkfsConfig) -> u64 {
    let nodes = tree.node_count() as u64;
    let names: u64 = tree
        .subvols
        .iter()
        .flat_map(|s| s.nodes.iter())
        .map(|n| {
            n.links
                .iter()
                .map(|l| l.name.len() as u64 + 100)
                .sum::<u64>()
                + n.xattrs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64 + 60)
                    .sum::<u64>()
                + 200
        })
        .sum();
    let inline: u64 = tree
        .subvols
        .iter()
        .zip(&plan.files)
        .flat_map(|(s, f)| s.nodes.iter().zip(f))
        .filter(|(_, f)| matches!(f, data::FileData::Inline))
        .map(|(n, _)| n.stat.size + 50)
        .sum();
    let extents = plan.extents.len() as u64 * (80 + 90);
    let csums: u64 = plan
        .extents
        .iter()
        .map(|e| e.len / cfg.sectorsize as u64)
        .sum::<u64>()
        * cfg.csum.size() as u64;
    let bytes = names + inline + extents + csums + nodes * 8;
    // Leaves are full; count nodes and extent items of blocks on top.
    let blocks = bytes / (cfg.nodesize as u64 - 200) + 16;
    blocks * cfg.nodesize as u64 * 11 / 10 + 4 * MIB
}

#[allow(dead_code)]
fn _unused(_: &ChunkSpec) {}
