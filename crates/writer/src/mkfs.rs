//! An empty filesystem: system, metadata and data block groups sized for the
//! image, every tree `mkfs.btrfs` creates, and an empty top-level directory.
use std::path::Path;

use btrfs_format::*;
use zerocopy::IntoBytes;

use crate::btree::TreeItems;
use crate::commit::{commit, internal_root_item, CommitInput, CommitReport, Identity, SubvolInput};
use crate::config::MkfsConfig;
use crate::layout::{Layout, MIB};
use crate::output::Output;
use crate::{Error, Result};

pub const SYSTEM_CHUNK_SIZE: u64 = 4 * MIB;
const MIN_META_CHUNK: u64 = 16 * MIB;
const MIN_DATA_CHUNK: u64 = 8 * MIB;

/// Result of a successful run.
pub struct MkfsReport {
    pub layout: Layout,
    pub commit: CommitReport,
    /// What was imported (with --rootdir).
    pub data: Option<DataStats>,
}

/// Totals of an import, for the summary line.
#[derive(Debug, Clone, Copy)]
pub struct DataStats {
    pub files: u64,
    /// File bytes stored (holes excluded from nothing: apparent sizes).
    pub bytes_in: u64,
    /// Bytes those files take on disk (compressed extents, inline data).
    pub bytes_on_disk: u64,
}

/// A UUID derived from the filesystem's, so that one `-U` fixes them all.
pub fn derive_uuid(fsid: &[u8; 16], purpose: &[u8]) -> [u8; 16] {
    let mut input = b"btrfs-forge uuid ".to_vec();
    input.extend_from_slice(fsid);
    input.extend_from_slice(purpose);
    let h = CsumType::Sha256.compute(&input);
    let mut u = [0u8; 16];
    u.copy_from_slice(&h[..16]);
    u[6] = (u[6] & 0x0f) | 0x40; // version 4 layout
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

pub fn random_uuid() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

/// Identity from the config: given UUIDs, else random ones; the rest derived.
pub fn identity(cfg: &MkfsConfig) -> Identity {
    let fsid = cfg.fsid.unwrap_or_else(random_uuid);
    Identity {
        fsid,
        dev_uuid: cfg.dev_uuid.unwrap_or_else(random_uuid),
        chunk_tree_uuid: derive_uuid(&fsid, b"chunk tree"),
        label: cfg.label.clone(),
        now: cfg.now,
    }
}

/// Smallest image this layout supports.
pub fn minimum_size(cfg: &MkfsConfig) -> u64 {
    BTRFS_DEVICE_RANGE_RESERVED
        + SYSTEM_CHUNK_SIZE * cfg.metadata_profile.stripes() as u64
        + MIN_META_CHUNK * cfg.metadata_profile.stripes() as u64
        + MIN_DATA_CHUNK * cfg.data_profile.stripes() as u64
}

/// Chunk sizes for an empty image of `size` bytes, after the kernel's policy:
/// a tenth of the device each, metadata up to 256 MiB (1 GiB from 50 GiB on),
/// data up to 1 GiB.
pub fn empty_layout(cfg: &MkfsConfig, size: u64) -> Result<Layout> {
    let min = minimum_size(cfg);
    if size < min {
        return Err(Error::TooSmall { size, min });
    }
    let tenth = (size / 10) / MIB * MIB;
    let meta_max = if size >= 50 << 30 { 1 << 30 } else { 256 * MIB };
    let meta = tenth.clamp(MIN_META_CHUNK, meta_max);
    let data = tenth.clamp(MIN_DATA_CHUNK, 1 << 30);
    let mut l = Layout {
        chunks: Vec::new(),
        device_size: size,
    };
    let m = cfg.metadata_profile;
    let d = cfg.data_profile;
    l.push_chunk(
        BTRFS_BLOCK_GROUP_SYSTEM | m.flag(),
        SYSTEM_CHUNK_SIZE,
        m.stripes(),
    );
    // Shrink the two big chunks if a tiny device cannot hold a tenth each.
    let left = size - l.physical_end();
    let want = meta * m.stripes() as u64 + data * d.stripes() as u64;
    let (meta, data) = if want > left {
        (MIN_META_CHUNK, MIN_DATA_CHUNK)
    } else {
        (meta, data)
    };
    l.push_chunk(BTRFS_BLOCK_GROUP_METADATA | m.flag(), meta, m.stripes());
    l.push_chunk(BTRFS_BLOCK_GROUP_DATA | d.flag(), data, d.stripes());
    Ok(l)
}

/// Items of a subvolume holding only its root directory (inode 256).
pub fn empty_subvol_items(
    generation: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    now: (u64, u32),
) -> TreeItems {
    let t = Timespec::new(now.0, now.1);
    let inode = InodeItem {
        generation: generation.into(),
        transid: generation.into(),
        nlink: 1.into(),
        uid: uid.into(),
        gid: gid.into(),
        mode: mode.into(),
        atime: t,
        ctime: t,
        mtime: t,
        otime: t,
        ..Default::default()
    };
    let mut items = TreeItems::new();
    items.push_struct(
        Key::new(BTRFS_FIRST_FREE_OBJECTID, BTRFS_INODE_ITEM_KEY, 0),
        &inode,
    );
    items.push_with(
        Key::new(
            BTRFS_FIRST_FREE_OBJECTID,
            BTRFS_INODE_REF_KEY,
            BTRFS_FIRST_FREE_OBJECTID,
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
    items
}

/// Root item of a subvolume tree (FS_TREE or a created subvolume).
pub fn subvol_root_item(nodesize: u32, uuid: [u8; 16], now: (u64, u32), transid: u64) -> RootItem {
    let mut r = internal_root_item(nodesize);
    // Without ROOT_ITEM_INIT the kernel takes the item for a legacy one and
    // clears its flags (read-only included) when it loads the subvolume.
    r.inode.flags = BTRFS_INODE_ROOT_ITEM_INIT.into();
    r.root_dirid = BTRFS_FIRST_FREE_OBJECTID.into();
    r.uuid = uuid;
    r.ctime = Timespec::new(now.0, now.1);
    r.otime = r.ctime;
    r.ctransid = transid.into();
    r.otransid = transid.into();
    r
}

/// Write an empty filesystem to `path`.
pub fn make_empty_filesystem(path: &Path, cfg: &MkfsConfig) -> Result<MkfsReport> {
    cfg.validate()?;
    // Check the size before touching the file.
    if let Some(b) = cfg.byte_count {
        empty_layout(cfg, b / cfg.sectorsize as u64 * cfg.sectorsize as u64)?;
    }
    let out = Output::create(path, cfg.byte_count, cfg.force)?;
    let size = out.size / cfg.sectorsize as u64 * cfg.sectorsize as u64;
    let layout = empty_layout(cfg, size)?;
    let ident = identity(cfg);
    let generation = 1;
    let fs_uuid = derive_uuid(&ident.fsid, b"subvolume 5");
    let input = CommitInput {
        nodesize: cfg.nodesize,
        sectorsize: cfg.sectorsize,
        csum: cfg.csum,
        features: cfg.features,
        generation,
        layout: layout.clone(),
        subvols: vec![SubvolInput {
            id: BTRFS_FS_TREE_OBJECTID,
            items: empty_subvol_items(generation, S_IFDIR | 0o755, 0, 0, cfg.now).into(),
            root_item: subvol_root_item(cfg.nodesize, fs_uuid, cfg.now, 0),
        }],
        ident,
        root_tree_extra: TreeItems::new(),
        default_subvol: BTRFS_FS_TREE_OBJECTID,
        csum_items: Default::default(),
        data_extent_items: TreeItems::new(),
        data_allocated: Vec::new(),
        extra_incompat: 0,
    };
    let commit = commit(&out, &input, None)?;
    Ok(MkfsReport {
        layout,
        commit,
        data: None,
    })
}
