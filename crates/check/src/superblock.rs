//! The superblock and its mirrors: magic, checksum, sizes, flags, backup roots.
use btrfs_format::consts::*;
use btrfs_format::{CsumType, SuperBlock};
use btrfs_image::dump::hex;

use crate::finding::{Finding, Kind, Severity, Sink};
use crate::Ctx;

/// One superblock location and its bytes, when the image reaches it.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    pub mirror: usize,
    pub offset: u64,
    pub bytes: Option<Vec<u8>>,
}

/// Read the superblock copies the image holds.
pub(crate) fn read_copies(
    read_at: &dyn Fn(u64, &mut [u8]) -> std::io::Result<()>,
    len: u64,
) -> std::io::Result<Vec<Copy>> {
    let mut out = Vec::new();
    for mirror in 0..BTRFS_SUPER_MIRROR_MAX {
        let offset = btrfs_sb_offset(mirror);
        let bytes = if offset + BTRFS_SUPER_INFO_SIZE as u64 <= len {
            let mut b = vec![0u8; BTRFS_SUPER_INFO_SIZE];
            read_at(offset, &mut b)?;
            Some(b)
        } else {
            None
        };
        out.push(Copy {
            mirror,
            offset,
            bytes,
        });
    }
    Ok(out)
}

/// Magic, checksum and self-location of one copy.
pub(crate) fn validate(bytes: &[u8], offset: u64) -> Result<SuperBlock, String> {
    let sb = SuperBlock::read(bytes).map_err(|e| e.to_string())?;
    if sb.magic.get() != BTRFS_MAGIC {
        return Err(format!(
            "no btrfs magic (found 0x{:016x}): not a btrfs filesystem, or overwritten",
            sb.magic.get()
        ));
    }
    let Some(csum) = CsumType::from_disk(sb.csum_type.get()) else {
        return Err(format!("unknown checksum type {}", sb.csum_type.get()));
    };
    let want = csum.compute(&bytes[BTRFS_CSUM_SIZE..]);
    let n = csum.size();
    if want[..n] != sb.csum[..n] {
        return Err(format!(
            "{csum} checksum mismatch: stored {}, computed {}",
            hex(&sb.csum[..n]),
            hex(&want[..n])
        ));
    }
    if sb.bytenr.get() != offset {
        return Err(format!(
            "records bytenr {}, but lives at {offset}",
            sb.bytenr.get()
        ));
    }
    Ok(sb)
}

/// Check every copy; returns the mirror to open (the primary when valid).
pub(crate) fn check_copies(sink: &Sink, copies: &[Copy]) -> Option<usize> {
    let parsed: Vec<Option<Result<SuperBlock, String>>> = copies
        .iter()
        .map(|c| c.bytes.as_ref().map(|b| validate(b, c.offset)))
        .collect();
    let primary = match parsed.first() {
        Some(Some(Ok(sb))) => Some(*sb),
        Some(Some(Err(e))) => {
            sink.push(
                Finding::error(
                    Kind::SuperblockInvalid,
                    format!("primary superblock at 65536: {e}"),
                )
                .bytenr(BTRFS_SUPER_INFO_OFFSET),
            );
            None
        }
        _ => {
            sink.push(Finding::error(
                Kind::SuperblockInvalid,
                "the image is too short to hold a superblock (needs 69632 bytes)",
            ));
            None
        }
    };
    let dev_size = primary
        .map(|s| s.dev_item.total_bytes.get())
        .unwrap_or(u64::MAX);
    for (c, p) in copies.iter().zip(&parsed).skip(1) {
        if c.offset + BTRFS_SUPER_INFO_SIZE as u64 > dev_size {
            continue;
        }
        match p {
            Some(Err(e)) => sink.push(
                Finding::error(
                    Kind::SuperblockMirror,
                    format!("superblock mirror {} at {}: {e}", c.mirror, c.offset),
                )
                .bytenr(c.offset),
            ),
            Some(Ok(m)) => {
                if let Some(pr) = &primary {
                    if m.fsid != pr.fsid {
                        sink.push(
                            Finding::error(
                                Kind::SuperblockMirror,
                                format!(
                                    "superblock mirror {} belongs to another filesystem (fsid {})",
                                    c.mirror,
                                    hex(&m.fsid)
                                ),
                            )
                            .bytenr(c.offset),
                        );
                    } else if m.generation.get() != pr.generation.get() {
                        sink.push(
                            Finding::warning(
                                Kind::SuperblockMirror,
                                format!(
                                    "superblock mirror {} has generation {}, the primary {}",
                                    c.mirror,
                                    m.generation.get(),
                                    pr.generation.get()
                                ),
                            )
                            .bytenr(c.offset),
                        );
                    }
                }
            }
            None => {}
        }
    }
    if primary.is_some() {
        return Some(0);
    }
    let m = parsed.iter().position(|p| matches!(p, Some(Ok(_))))?;
    sink.push(Finding::warning(
        Kind::SuperblockInvalid,
        format!("checking with superblock mirror {m} instead of the primary"),
    ));
    Some(m)
}

/// Report an image file shorter than its device when the image cannot be opened.
pub(crate) fn truncated(sink: &Sink, copies: &[Copy], mirror: usize, len: u64) {
    let Some(Some(b)) = copies.get(mirror).map(|c| c.bytes.as_ref()) else {
        return;
    };
    if let Ok(sb) = SuperBlock::read(b) {
        let want = sb.dev_item.total_bytes.get();
        if len < want {
            sink.push(Finding::error(
                Kind::ImageTruncated,
                format!("the image file has {len} bytes, the filesystem {want}: it was cut short"),
            ));
        }
    }
}

const KNOWN_INCOMPAT: u64 = BTRFS_FEATURE_INCOMPAT_MIXED_BACKREF
    | BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL
    | BTRFS_FEATURE_INCOMPAT_MIXED_GROUPS
    | BTRFS_FEATURE_INCOMPAT_COMPRESS_LZO
    | BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD
    | BTRFS_FEATURE_INCOMPAT_BIG_METADATA
    | BTRFS_FEATURE_INCOMPAT_EXTENDED_IREF
    | BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA
    | BTRFS_FEATURE_INCOMPAT_NO_HOLES
    | BTRFS_FEATURE_INCOMPAT_METADATA_UUID
    | BTRFS_FEATURE_INCOMPAT_RAID1C34;

const KNOWN_COMPAT_RO: u64 = BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE
    | BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID
    | BTRFS_FEATURE_COMPAT_RO_VERITY
    | BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE;

fn unsupported(ctx: &Ctx<'_>, msg: String) {
    ctx.sink.push(Finding::new(
        Severity::Unsupported,
        Kind::UnsupportedFeature,
        msg,
    ));
}

/// Field ranges, flags, features, backup roots, and the file's length.
pub(crate) fn check_fields(ctx: &Ctx<'_>, file_len: u64) {
    let sb = ctx.img.superblock();
    let err = |m: String| ctx.sink.push(Finding::error(Kind::SuperblockField, m));
    let flags = sb.flags.get();
    if flags & BTRFS_SUPER_FLAG_ERROR != 0 {
        err("the filesystem is marked as having errors (super flag ERROR)".into());
    }
    if flags & (BTRFS_SUPER_FLAG_CHANGING_FSID | BTRFS_SUPER_FLAG_CHANGING_FSID_V2) != 0 {
        err("an fsid change was interrupted (super flag CHANGING_FSID)".into());
    }
    if flags & (BTRFS_SUPER_FLAG_METADUMP | BTRFS_SUPER_FLAG_METADUMP_V2) != 0 {
        unsupported(
            ctx,
            "a btrfs-image metadata dump: it holds no data to verify".into(),
        );
    }
    let incompat = sb.incompat_flags.get();
    let unknown = incompat & !KNOWN_INCOMPAT;
    if unknown != 0 {
        let names = flag_names(unknown, INCOMPAT_NAMES).join(", ");
        unsupported(
            ctx,
            format!("incompatible feature(s) this checker does not verify: {names}"),
        );
    }
    let ro = sb.compat_ro_flags.get() & !KNOWN_COMPAT_RO;
    if ro != 0 {
        let names = flag_names(ro, COMPAT_RO_NAMES).join(", ");
        unsupported(
            ctx,
            format!("read-only-compatible feature(s) this checker does not verify: {names}"),
        );
    }
    if sb.compat_flags.get() != 0 {
        unsupported(
            ctx,
            format!(
                "compat flags 0x{:x} this checker does not know",
                sb.compat_flags.get()
            ),
        );
    }
    if sb.num_devices.get() != 1 {
        unsupported(
            ctx,
            format!(
                "a filesystem of {} devices: only what this image holds is checked",
                sb.num_devices.get()
            ),
        );
    }
    if sb.stripesize.get() != sb.sectorsize.get() {
        err(format!(
            "stripesize {} differs from sectorsize {}",
            sb.stripesize.get(),
            sb.sectorsize.get()
        ));
    }
    if sb.root_dir_objectid.get() != BTRFS_ROOT_TREE_DIR_OBJECTID {
        err(format!(
            "root_dir_objectid is {}, not 6",
            sb.root_dir_objectid.get()
        ));
    }
    let dev_total = sb.dev_item.total_bytes.get();
    if sb.num_devices.get() == 1 && sb.total_bytes.get() != dev_total {
        err(format!(
            "total_bytes {} differs from the device's size {dev_total}",
            sb.total_bytes.get()
        ));
    }
    if sb.bytes_used.get() > sb.total_bytes.get() {
        err(format!(
            "bytes_used {} exceeds total_bytes {}",
            sb.bytes_used.get(),
            sb.total_bytes.get()
        ));
    }
    if file_len < dev_total {
        ctx.sink.push(Finding::error(
            Kind::ImageTruncated,
            format!(
                "the image file has {file_len} bytes, the filesystem {dev_total}: it was cut short"
            ),
        ));
    }
    if sb.dev_item.fsid != sb.metadata_fsid() && sb.dev_item.fsid != sb.fsid {
        err("the superblock's device item names another filesystem".into());
    }
    // Backup roots: the one of the current generation must match.
    let gen = sb.generation.get();
    for (i, b) in sb.super_roots.iter().enumerate() {
        let bg = b.tree_root_gen.get();
        if bg > gen {
            ctx.sink.push(Finding::warning(
                Kind::BackupRoot,
                format!("backup root {i} has generation {bg}, newer than the superblock's {gen}"),
            ));
        } else if bg == gen
            && bg != 0
            && (b.tree_root.get() != sb.root.get() || b.chunk_root.get() != sb.chunk_root.get())
        {
            ctx.sink.push(Finding::warning(
                    Kind::BackupRoot,
                    format!(
                        "backup root {i} of the current generation {gen} names root {} / chunk root {}, the superblock {} / {}",
                        b.tree_root.get(),
                        b.chunk_root.get(),
                        sb.root.get(),
                        sb.chunk_root.get()
                    ),
                ));
        }
    }
}
