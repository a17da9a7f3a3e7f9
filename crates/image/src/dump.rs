//! Readable dumps of the superblock and of tree blocks, in the layout of
//! `btrfs inspect-internal dump-super -f` and `dump-tree`, stable enough for
//! snapshot tests.
//!
//! Every item type is decoded; a payload that does not decode prints an `ERROR:`
//! line and its bytes in hex instead. Nothing here panics on hostile input: all
//! lengths come from bounds-checked parsers and all arithmetic on disk values
//! saturates. Names are printed with [`escape_bytes`] (non-UTF-8 and control
//! bytes as `\xNN`), times in UTC.
use std::fmt::Write as _;
use std::io::Write;

use btrfs_format::consts::*;
use btrfs_format::items::{
    parse_dir_items, parse_extent_item, parse_file_extent, parse_inode_extrefs, parse_inode_refs,
    parse_root_ref, parse_sys_chunk_array, ChunkWithStripes, FileExtent, InlineRef,
};
use btrfs_format::tree::TreeBlock;
use btrfs_format::*;

use crate::error::{Error, Location, Result};
use crate::image::Image;
use crate::tree::Root;

/// `name` bytes as text: UTF-8 kept, backslash doubled, control characters and
/// bytes that are not UTF-8 as `\xNN`.
pub fn escape_bytes(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A UUID in its usual 8-4-4-4-12 form.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (year, month, day) of day `days` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of seconds since the epoch; on-disk seconds are
/// signed 64-bit values stored unsigned.
pub fn format_date(sec: u64) -> String {
    let s = sec as i64 as i128;
    let days = s.div_euclid(86_400);
    let rem = s.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `SEC.NSEC (DATE)` as dump-tree prints inode times.
pub fn format_timespec(t: &Timespec) -> String {
    format!(
        "{}.{} ({})",
        t.sec.get() as i64,
        t.nsec.get(),
        format_date(t.sec.get())
    )
}

/// Name of a compression type.
pub fn compression_name(c: u8) -> String {
    match c {
        BTRFS_COMPRESS_NONE => "none".into(),
        BTRFS_COMPRESS_ZLIB => "zlib".into(),
        BTRFS_COMPRESS_LZO => "lzo".into(),
        BTRFS_COMPRESS_ZSTD => "zstd".into(),
        other => format!("unknown.{other}"),
    }
}

/// Name of a directory entry type, as dump-tree prints it.
pub fn file_type_name(t: u8) -> String {
    match t {
        BTRFS_FT_REG_FILE => "FILE".into(),
        BTRFS_FT_DIR => "DIR".into(),
        BTRFS_FT_CHRDEV => "CHRDEV".into(),
        BTRFS_FT_BLKDEV => "BLKDEV".into(),
        BTRFS_FT_FIFO => "FIFO".into(),
        BTRFS_FT_SOCK => "SOCK".into(),
        BTRFS_FT_SYMLINK => "SYMLINK".into(),
        BTRFS_FT_XATTR => "XATTR".into(),
        other => format!("UNKNOWN.{other}"),
    }
}

const INODE_FLAG_NAMES: &[(u64, &str)] = &[
    (BTRFS_INODE_NODATASUM, "NODATASUM"),
    (BTRFS_INODE_NODATACOW, "NODATACOW"),
    (BTRFS_INODE_READONLY, "READONLY"),
    (BTRFS_INODE_NOCOMPRESS, "NOCOMPRESS"),
    (BTRFS_INODE_PREALLOC, "PREALLOC"),
    (BTRFS_INODE_SYNC, "SYNC"),
    (BTRFS_INODE_IMMUTABLE, "IMMUTABLE"),
    (BTRFS_INODE_APPEND, "APPEND"),
    (BTRFS_INODE_NODUMP, "NODUMP"),
    (BTRFS_INODE_NOATIME, "NOATIME"),
    (BTRFS_INODE_DIRSYNC, "DIRSYNC"),
    (BTRFS_INODE_COMPRESS, "COMPRESS"),
    (BTRFS_INODE_ROOT_ITEM_INIT, "ROOT_ITEM_INIT"),
];

const EXTENT_FLAG_NAMES: &[(u64, &str)] = &[
    (BTRFS_EXTENT_FLAG_DATA, "DATA"),
    (BTRFS_EXTENT_FLAG_TREE_BLOCK, "TREE_BLOCK"),
    (BTRFS_BLOCK_FLAG_FULL_BACKREF, "FULL_BACKREF"),
];

const ROOT_FLAG_NAMES: &[(u64, &str)] = &[
    (BTRFS_ROOT_SUBVOL_RDONLY, "RDONLY"),
    (BTRFS_ROOT_SUBVOL_DEAD, "DEAD"),
];

const HEADER_FLAG_NAMES: &[(u64, &str)] = &[
    (BTRFS_HEADER_FLAG_WRITTEN, "WRITTEN"),
    (BTRFS_HEADER_FLAG_RELOC, "RELOC"),
];

const SUPER_FLAG_NAMES: &[(u64, &str)] = &[
    (BTRFS_HEADER_FLAG_WRITTEN, "WRITTEN"),
    (BTRFS_SUPER_FLAG_ERROR, "ERROR"),
    (BTRFS_SUPER_FLAG_SEEDING, "SEEDING"),
    (BTRFS_SUPER_FLAG_METADUMP, "METADUMP"),
    (BTRFS_SUPER_FLAG_METADUMP_V2, "METADUMP_V2"),
    (BTRFS_SUPER_FLAG_CHANGING_FSID, "CHANGING_FSID"),
    (BTRFS_SUPER_FLAG_CHANGING_FSID_V2, "CHANGING_FSID_V2"),
];

/// `0xFLAGS(NAME|NAME)`, `(none)` when zero.
fn flags_str(flags: u64, table: &[(u64, &str)]) -> String {
    let names = flag_names(flags, table);
    if names.is_empty() {
        format!("0x{flags:x}(none)")
    } else {
        format!("0x{flags:x}({})", names.join("|"))
    }
}

/// Inode flags as dump-tree prints them: `0x3(NODATASUM|NODATACOW)`.
pub fn inode_flags_str(flags: u64) -> String {
    flags_str(flags, INODE_FLAG_NAMES)
}

/// Tree / object id as dump-tree prints an owner: a name for the well-known ones.
pub fn tree_name(id: u64) -> String {
    match objectid_name(id) {
        Some(n) if !(BTRFS_FIRST_FREE_OBJECTID..=BTRFS_LAST_FREE_OBJECTID).contains(&id) => {
            n.to_string()
        }
        _ => id.to_string(),
    }
}

fn qgroup_id(v: u64) -> String {
    format!("{}/{}", v >> 48, v & ((1 << 48) - 1))
}

/// A key as `(OBJECTID TYPE OFFSET)`, with the context-dependent names
/// dump-tree uses (DEV_ITEMS, FIRST_CHUNK_TREE, qgroup ids, hex UUID halves).
pub fn key_str(k: &Key) -> String {
    let t = k.item_type;
    let obj = match t {
        BTRFS_DEV_EXTENT_KEY => k.objectid.to_string(),
        BTRFS_DEV_ITEM_KEY if k.objectid == BTRFS_DEV_ITEMS_OBJECTID => "DEV_ITEMS".into(),
        BTRFS_CHUNK_ITEM_KEY if k.objectid == BTRFS_FIRST_CHUNK_TREE_OBJECTID => {
            "FIRST_CHUNK_TREE".into()
        }
        BTRFS_PERSISTENT_ITEM_KEY if k.objectid == BTRFS_DEV_STATS_OBJECTID => "DEV_STATS".into(),
        BTRFS_QGROUP_RELATION_KEY | BTRFS_QGROUP_INFO_KEY | BTRFS_QGROUP_LIMIT_KEY => {
            qgroup_id(k.objectid)
        }
        BTRFS_UUID_KEY_SUBVOL | BTRFS_UUID_KEY_RECEIVED_SUBVOL => format!("0x{:016x}", k.objectid),
        _ => tree_name(k.objectid),
    };
    let ty = match key_type_name(t) {
        Some(n) => n.to_string(),
        None => format!("UNKNOWN.{t}"),
    };
    let off = match t {
        BTRFS_QGROUP_RELATION_KEY | BTRFS_QGROUP_INFO_KEY | BTRFS_QGROUP_LIMIT_KEY => {
            qgroup_id(k.offset)
        }
        BTRFS_UUID_KEY_SUBVOL | BTRFS_UUID_KEY_RECEIVED_SUBVOL => format!("0x{:016x}", k.offset),
        _ => k.offset.to_string(),
    };
    format!("({obj} {ty} {off})")
}

/// Hex of at most 64 bytes of `data`, with `...` when cut.
fn hex_prefix(data: &[u8]) -> String {
    let n = data.len().min(64);
    let more = if data.len() > n { "..." } else { "" };
    format!("{}{more}", hex(&data[..n]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// What the dump of an item needs from the filesystem.
#[derive(Debug, Clone, Copy)]
pub struct DumpContext {
    pub csum_size: usize,
    pub sectorsize: u32,
    pub nodesize: u32,
}

impl DumpContext {
    pub fn of(img: &Image) -> Self {
        DumpContext {
            csum_size: img.csum_type().size(),
            sectorsize: img.sectorsize(),
            nodesize: img.nodesize(),
        }
    }
}

fn inode_lines(out: &mut String, ii: &InodeItem, ind: &str) {
    let _ = writeln!(
        out,
        "{ind}generation {} transid {} size {} nbytes {}",
        ii.generation.get(),
        ii.transid.get(),
        ii.size.get(),
        ii.nbytes.get()
    );
    let _ = writeln!(
        out,
        "{ind}block group {} mode {:o} links {} uid {} gid {} rdev {}",
        ii.block_group.get(),
        ii.mode.get(),
        ii.nlink.get(),
        ii.uid.get(),
        ii.gid.get(),
        ii.rdev.get()
    );
    let _ = writeln!(
        out,
        "{ind}sequence {} flags {}",
        ii.sequence.get(),
        flags_str(ii.flags.get(), INODE_FLAG_NAMES)
    );
    for (n, t) in [
        ("atime", &ii.atime),
        ("ctime", &ii.ctime),
        ("mtime", &ii.mtime),
        ("otime", &ii.otime),
    ] {
        let _ = writeln!(out, "{ind}{n} {}", format_timespec(t));
    }
}

fn chunk_lines(out: &mut String, c: &ChunkWithStripes, ind: &str) {
    let ch = &c.chunk;
    let _ = writeln!(
        out,
        "{ind}length {} owner {} stripe_len {} type {}",
        ch.length.get(),
        ch.owner.get(),
        ch.stripe_len.get(),
        block_group_flags_name(ch.type_.get())
    );
    let _ = writeln!(
        out,
        "{ind}io_align {} io_width {} sector_size {}",
        ch.io_align.get(),
        ch.io_width.get(),
        ch.sector_size.get()
    );
    let _ = writeln!(
        out,
        "{ind}num_stripes {} sub_stripes {}",
        ch.num_stripes.get(),
        ch.sub_stripes.get()
    );
    for (i, s) in c.stripes.iter().enumerate() {
        let _ = writeln!(
            out,
            "{ind}\tstripe {i} devid {} offset {}",
            s.devid.get(),
            s.offset.get()
        );
        let _ = writeln!(out, "{ind}\tdev_uuid {}", format_uuid(&s.dev_uuid));
    }
}

fn dev_item_lines(out: &mut String, d: &DevItem, ind: &str) {
    let _ = writeln!(
        out,
        "{ind}devid {} total_bytes {} bytes_used {}",
        d.devid.get(),
        d.total_bytes.get(),
        d.bytes_used.get()
    );
    let _ = writeln!(
        out,
        "{ind}io_align {} io_width {} sector_size {} type {}",
        d.io_align.get(),
        d.io_width.get(),
        d.sector_size.get(),
        d.type_.get()
    );
    let _ = writeln!(
        out,
        "{ind}generation {} start_offset {} dev_group {}",
        d.generation.get(),
        d.start_offset.get(),
        d.dev_group.get()
    );
    let _ = writeln!(
        out,
        "{ind}seek_speed {} bandwidth {}",
        d.seek_speed, d.bandwidth
    );
    let _ = writeln!(out, "{ind}uuid {}", format_uuid(&d.uuid));
    let _ = writeln!(out, "{ind}fsid {}", format_uuid(&d.fsid));
}

fn root_item_lines(out: &mut String, data: &[u8]) -> Result<(), FormatError> {
    let ri = RootItem::read_any(data)?;
    let legacy = data.len() < RootItem::SIZE;
    let _ = writeln!(
        out,
        "\t\tgeneration {} root_dirid {} bytenr {} byte_limit {} bytes_used {}",
        ri.generation.get(),
        ri.root_dirid.get(),
        ri.bytenr.get(),
        ri.byte_limit.get(),
        ri.bytes_used.get()
    );
    let _ = writeln!(
        out,
        "\t\tlast_snapshot {} flags {} refs {}",
        ri.last_snapshot.get(),
        flags_str(ri.flags.get(), ROOT_FLAG_NAMES),
        ri.refs.get()
    );
    let _ = writeln!(
        out,
        "\t\tdrop_progress key {} drop_level {}",
        key_str(&Key::from(ri.drop_progress)),
        ri.drop_level
    );
    if legacy {
        let _ = writeln!(
            out,
            "\t\tlevel {} (legacy {} byte root item)",
            ri.level,
            data.len()
        );
        return Ok(());
    }
    let _ = writeln!(
        out,
        "\t\tlevel {} generation_v2 {}",
        ri.level,
        ri.generation_v2.get()
    );
    let _ = writeln!(out, "\t\tuuid {}", format_uuid(&ri.uuid));
    let _ = writeln!(out, "\t\tparent_uuid {}", format_uuid(&ri.parent_uuid));
    let _ = writeln!(out, "\t\treceived_uuid {}", format_uuid(&ri.received_uuid));
    let _ = writeln!(
        out,
        "\t\tctransid {} otransid {} stransid {} rtransid {}",
        ri.ctransid.get(),
        ri.otransid.get(),
        ri.stransid.get(),
        ri.rtransid.get()
    );
    for (n, t) in [
        ("ctime", &ri.ctime),
        ("otime", &ri.otime),
        ("stime", &ri.stime),
        ("rtime", &ri.rtime),
    ] {
        let _ = writeln!(out, "\t\t{n} {}", format_timespec(t));
    }
    Ok(())
}

fn inline_ref_line(out: &mut String, r: &InlineRef) {
    let _ = match *r {
        InlineRef::TreeBlock { root } => {
            writeln!(out, "\t\ttree block backref root {}", tree_name(root))
        }
        InlineRef::SharedBlock { parent } => {
            writeln!(out, "\t\tshared block backref parent {parent}")
        }
        InlineRef::ExtentData {
            root,
            objectid,
            offset,
            count,
        } => writeln!(
            out,
            "\t\textent data backref root {} objectid {objectid} offset {offset} count {count}",
            tree_name(root)
        ),
        InlineRef::SharedData { parent, count } => {
            writeln!(out, "\t\tshared data backref parent {parent} count {count}")
        }
        InlineRef::ExtentOwner { root } => {
            writeln!(out, "\t\textent owner root {}", tree_name(root))
        }
    };
}

/// Decoded fields of one item (lines indented by two tabs).
fn item_body(
    out: &mut String,
    key: &Key,
    data: &[u8],
    ctx: &DumpContext,
) -> Result<(), FormatError> {
    match key.item_type {
        BTRFS_INODE_ITEM_KEY => inode_lines(out, &InodeItem::read(data)?, "\t\t"),
        BTRFS_INODE_REF_KEY => {
            for n in parse_inode_refs(key.offset, data)? {
                let _ = writeln!(
                    out,
                    "\t\tindex {} namelen {} name: {}",
                    n.index,
                    n.name.len(),
                    escape_bytes(n.name)
                );
            }
        }
        BTRFS_INODE_EXTREF_KEY => {
            for n in parse_inode_extrefs(data)? {
                let _ = writeln!(
                    out,
                    "\t\tindex {} parent {} namelen {} name: {}",
                    n.index,
                    n.parent,
                    n.name.len(),
                    escape_bytes(n.name)
                );
            }
        }
        BTRFS_DIR_ITEM_KEY | BTRFS_DIR_INDEX_KEY | BTRFS_XATTR_ITEM_KEY => {
            for e in parse_dir_items(data)? {
                let _ = writeln!(
                    out,
                    "\t\tlocation key {} type {}",
                    key_str(&e.location),
                    file_type_name(e.file_type)
                );
                let _ = writeln!(
                    out,
                    "\t\ttransid {} data_len {} name_len {}",
                    e.transid,
                    e.data.len(),
                    e.name.len()
                );
                let _ = writeln!(out, "\t\tname: {}", escape_bytes(e.name));
                if !e.data.is_empty() {
                    let _ = writeln!(out, "\t\tdata {}", escape_bytes(e.data));
                }
            }
        }
        BTRFS_DIR_LOG_ITEM_KEY | BTRFS_DIR_LOG_INDEX_KEY => {
            let end = u64_at(data, 0).ok_or(FormatError::TooShort {
                what: "dir log item",
                need: 8,
                have: data.len(),
            })?;
            let _ = writeln!(out, "\t\tdir log end {end}");
        }
        BTRFS_ORPHAN_ITEM_KEY => {
            let _ = writeln!(out, "\t\torphan item");
        }
        BTRFS_EXTENT_DATA_KEY => match parse_file_extent(data)? {
            FileExtent::Inline { header, data: d } => {
                let _ = writeln!(
                    out,
                    "\t\tgeneration {} type 0 (inline)",
                    header.generation.get()
                );
                let _ = writeln!(
                    out,
                    "\t\tinline extent data size {} ram_bytes {} compression {} ({})",
                    d.len(),
                    header.ram_bytes.get(),
                    header.compression,
                    compression_name(header.compression)
                );
                if header.encryption != 0 || header.other_encoding.get() != 0 {
                    let _ = writeln!(
                        out,
                        "\t\tencryption {} other_encoding {}",
                        header.encryption,
                        header.other_encoding.get()
                    );
                }
            }
            FileExtent::Regular(r) => {
                let kind = if r.type_ == BTRFS_FILE_EXTENT_PREALLOC {
                    "prealloc"
                } else {
                    "regular"
                };
                let _ = writeln!(
                    out,
                    "\t\tgeneration {} type {} ({kind})",
                    r.generation.get(),
                    r.type_
                );
                if r.type_ == BTRFS_FILE_EXTENT_PREALLOC {
                    let _ = writeln!(
                        out,
                        "\t\tprealloc data disk byte {} nr {}",
                        r.disk_bytenr.get(),
                        r.disk_num_bytes.get()
                    );
                    let _ = writeln!(
                        out,
                        "\t\tprealloc data offset {} nr {}",
                        r.offset.get(),
                        r.num_bytes.get()
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "\t\textent data disk byte {} nr {}",
                        r.disk_bytenr.get(),
                        r.disk_num_bytes.get()
                    );
                    let _ = writeln!(
                        out,
                        "\t\textent data offset {} nr {} ram {}",
                        r.offset.get(),
                        r.num_bytes.get(),
                        r.ram_bytes.get()
                    );
                    let _ = writeln!(
                        out,
                        "\t\textent compression {} ({})",
                        r.compression,
                        compression_name(r.compression)
                    );
                }
                if r.encryption != 0 || r.other_encoding.get() != 0 {
                    let _ = writeln!(
                        out,
                        "\t\tencryption {} other_encoding {}",
                        r.encryption,
                        r.other_encoding.get()
                    );
                }
            }
        },
        BTRFS_EXTENT_CSUM_KEY => {
            let n = data.len() / ctx.csum_size.max(1);
            let len = (n as u64).saturating_mul(ctx.sectorsize as u64);
            let _ = writeln!(
                out,
                "\t\trange start {} end {} length {len} csums {n}",
                key.offset,
                key.offset.saturating_add(len)
            );
            if !data.len().is_multiple_of(ctx.csum_size.max(1)) {
                let _ = writeln!(
                    out,
                    "\t\tERROR: {} bytes is not a multiple of the checksum size {}",
                    data.len(),
                    ctx.csum_size
                );
            }
        }
        BTRFS_ROOT_ITEM_KEY => root_item_lines(out, data)?,
        BTRFS_ROOT_REF_KEY | BTRFS_ROOT_BACKREF_KEY => {
            let (r, name) = parse_root_ref(data)?;
            let what = if key.item_type == BTRFS_ROOT_REF_KEY {
                "root ref"
            } else {
                "root backref"
            };
            let _ = writeln!(
                out,
                "\t\t{what} key dirid {} sequence {} name {}",
                r.dirid.get(),
                r.sequence.get(),
                escape_bytes(name)
            );
        }
        BTRFS_EXTENT_ITEM_KEY | BTRFS_METADATA_ITEM_KEY => {
            let rec = parse_extent_item(key.item_type, data)?;
            let _ = writeln!(
                out,
                "\t\trefs {} gen {} flags {}",
                rec.item.refs.get(),
                rec.item.generation.get(),
                flag_names(rec.item.flags.get(), EXTENT_FLAG_NAMES).join("|")
            );
            if let Some(info) = rec.tree_block_info {
                let _ = writeln!(
                    out,
                    "\t\ttree block key {} level {}",
                    key_str(&Key::from(info.key)),
                    info.level
                );
            } else if key.item_type == BTRFS_METADATA_ITEM_KEY {
                let _ = writeln!(out, "\t\ttree block skinny level {}", key.offset);
            }
            for r in &rec.refs {
                inline_ref_line(out, r);
            }
        }
        BTRFS_TREE_BLOCK_REF_KEY => {
            let _ = writeln!(out, "\t\ttree block backref root {}", tree_name(key.offset));
        }
        BTRFS_SHARED_BLOCK_REF_KEY => {
            let _ = writeln!(out, "\t\tshared block backref parent {}", key.offset);
        }
        BTRFS_EXTENT_OWNER_REF_KEY => {
            let _ = writeln!(out, "\t\textent owner root {}", tree_name(key.offset));
        }
        BTRFS_EXTENT_DATA_REF_KEY => {
            let d = ExtentDataRef::read(data)?;
            let _ = writeln!(
                out,
                "\t\textent data backref root {} objectid {} offset {} count {}",
                tree_name(d.root.get()),
                d.objectid.get(),
                d.offset.get(),
                d.count.get()
            );
        }
        BTRFS_SHARED_DATA_REF_KEY => {
            let d = SharedDataRef::read(data)?;
            let _ = writeln!(
                out,
                "\t\tshared data backref parent {} count {}",
                key.offset,
                d.count.get()
            );
        }
        BTRFS_BLOCK_GROUP_ITEM_KEY => {
            let bg = BlockGroupItem::read(data)?;
            let _ = writeln!(
                out,
                "\t\tblock group used {} chunk_objectid {} flags {}",
                bg.used.get(),
                bg.chunk_objectid.get(),
                block_group_flags_name(bg.flags.get())
            );
        }
        BTRFS_FREE_SPACE_INFO_KEY => {
            let fi = FreeSpaceInfo::read(data)?;
            let _ = writeln!(
                out,
                "\t\tfree space info extent count {} flags {}",
                fi.extent_count.get(),
                fi.flags.get()
            );
        }
        BTRFS_FREE_SPACE_EXTENT_KEY => {
            let _ = writeln!(out, "\t\tfree space extent");
        }
        BTRFS_FREE_SPACE_BITMAP_KEY => {
            let bits: u32 = data.iter().map(|b| b.count_ones()).sum();
            let _ = writeln!(
                out,
                "\t\tfree space bitmap {} bytes, {bits} sectors free",
                data.len()
            );
        }
        BTRFS_DEV_EXTENT_KEY => {
            let de = DevExtent::read(data)?;
            let _ = writeln!(out, "\t\tdev extent chunk_tree {}", de.chunk_tree.get());
            let _ = writeln!(
                out,
                "\t\tchunk_objectid {} chunk_offset {} length {}",
                de.chunk_objectid.get(),
                de.chunk_offset.get(),
                de.length.get()
            );
            let _ = writeln!(
                out,
                "\t\tchunk_tree_uuid {}",
                format_uuid(&de.chunk_tree_uuid)
            );
        }
        BTRFS_DEV_ITEM_KEY => dev_item_lines(out, &DevItem::read(data)?, "\t\t"),
        BTRFS_CHUNK_ITEM_KEY => chunk_lines(out, &ChunkWithStripes::parse(data)?, "\t\t"),
        BTRFS_QGROUP_STATUS_KEY => {
            // The 32-byte form predates enable_gen.
            let mut buf = [0u8; QgroupStatusItem::SIZE];
            if data.len() < 32 {
                return Err(FormatError::TooShort {
                    what: "qgroup status item",
                    need: 32,
                    have: data.len(),
                });
            }
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            let q = QgroupStatusItem::read(&buf)?;
            let _ = write!(
                out,
                "\t\tversion {} generation {} flags 0x{:x} scan {}",
                q.version.get(),
                q.generation.get(),
                q.flags.get(),
                q.rescan.get()
            );
            if data.len() >= QgroupStatusItem::SIZE {
                let _ = write!(out, " enable_gen {}", q.enable_gen.get());
            }
            out.push('\n');
        }
        BTRFS_QGROUP_INFO_KEY => {
            let q = QgroupInfoItem::read(data)?;
            let _ = writeln!(out, "\t\tgeneration {}", q.generation.get());
            let _ = writeln!(
                out,
                "\t\treferenced {} referenced_compressed {}",
                q.rfer.get(),
                q.rfer_cmpr.get()
            );
            let _ = writeln!(
                out,
                "\t\texclusive {} exclusive_compressed {}",
                q.excl.get(),
                q.excl_cmpr.get()
            );
        }
        BTRFS_QGROUP_LIMIT_KEY => {
            let q = QgroupLimitItem::read(data)?;
            let _ = writeln!(out, "\t\tflags 0x{:x}", q.flags.get());
            let _ = writeln!(
                out,
                "\t\tmax_referenced {} max_exclusive {}",
                q.max_rfer.get() as i64,
                q.max_excl.get() as i64
            );
            let _ = writeln!(
                out,
                "\t\trsv_referenced {} rsv_exclusive {}",
                q.rsv_rfer.get() as i64,
                q.rsv_excl.get() as i64
            );
        }
        BTRFS_QGROUP_RELATION_KEY => {
            let _ = writeln!(
                out,
                "\t\tqgroup relation {} -> {}",
                qgroup_id(key.objectid),
                qgroup_id(key.offset)
            );
        }
        BTRFS_PERSISTENT_ITEM_KEY if key.objectid == BTRFS_DEV_STATS_OBJECTID => {
            let s = DevStatsItem::read(data)?;
            let v = s.values;
            let _ = writeln!(
                out,
                "\t\tpersistent item objectid DEV_STATS offset {}",
                key.offset
            );
            let _ = writeln!(out, "\t\tdevice stats");
            let _ = writeln!(
                out,
                "\t\twrite_errs {} read_errs {} flush_errs {} corruption_errs {} generation {}",
                v[0].get(),
                v[1].get(),
                v[2].get(),
                v[3].get(),
                v[4].get()
            );
        }
        BTRFS_UUID_KEY_SUBVOL | BTRFS_UUID_KEY_RECEIVED_SUBVOL => {
            if !data.len().is_multiple_of(8) {
                return Err(FormatError::invalid(
                    "uuid item",
                    format!("{} bytes is not a multiple of 8", data.len()),
                ));
            }
            for c in data.chunks_exact(8) {
                let id = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                let _ = writeln!(out, "\t\tsubvol_id {id}");
            }
        }
        BTRFS_STRING_ITEM_KEY => {
            let _ = writeln!(out, "\t\tstring: {}", escape_bytes(data));
        }
        t => {
            let what = key_type_name(t)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("unknown item type {t}"));
            let _ = writeln!(
                out,
                "\t\t{what}: {} bytes: {}",
                data.len(),
                hex_prefix(data)
            );
        }
    }
    Ok(())
}

/// Append the decoded fields of one item to `out`, or an `ERROR:` line and its
/// bytes in hex when the payload does not decode.
pub fn dump_item(out: &mut String, key: &Key, data: &[u8], ctx: &DumpContext) {
    let mark = out.len();
    if let Err(e) = item_body(out, key, data, ctx) {
        out.truncate(mark);
        let _ = writeln!(out, "\t\tERROR: cannot decode item: {e}");
        let _ = writeln!(out, "\t\traw {} bytes: {}", data.len(), hex_prefix(data));
    }
}

/// Free bytes of a leaf as btrfs-progs counts them (saturating on hostile items).
fn leaf_free_space(tb: &TreeBlock<'_>) -> u64 {
    let total = tb.bytes.len().saturating_sub(Header::SIZE) as u64;
    let n = tb.nritems();
    if n == 0 {
        return total;
    }
    let first = tb.item(0).map(|i| (i.start + i.size) as u64).unwrap_or(0);
    let last = tb.item(n - 1).map(|i| i.start as u64).unwrap_or(0);
    let used = first
        .saturating_sub(last)
        .saturating_add(n as u64 * Item::SIZE as u64);
    total.saturating_sub(used)
}

/// Append a whole tree block: header lines, then each item (leaf) or pointer (node).
pub fn dump_block(out: &mut String, bytenr: u64, tb: &TreeBlock<'_>, ctx: &DumpContext) {
    let h = &tb.header;
    let n = tb.nritems();
    let kind = if tb.level() == 0 { "leaf" } else { "node" };
    if tb.level() == 0 {
        let _ = writeln!(
            out,
            "leaf {bytenr} items {n} free space {} generation {} owner {}",
            leaf_free_space(tb),
            h.generation.get(),
            tree_name(h.owner.get())
        );
    } else {
        let room = tb.bytes.len().saturating_sub(Header::SIZE) / KeyPtr::SIZE;
        let _ = writeln!(
            out,
            "node {bytenr} level {} items {n} free space {} generation {} owner {}",
            tb.level(),
            room.saturating_sub(n),
            h.generation.get(),
            tree_name(h.owner.get())
        );
    }
    let flags = h.flags.get() & ((1u64 << BTRFS_BACKREF_REV_SHIFT) - 1);
    let _ = writeln!(
        out,
        "{kind} {bytenr} flags {} backref revision {}",
        flags_str(flags, HEADER_FLAG_NAMES),
        h.backref_rev()
    );
    let _ = writeln!(out, "fs uuid {}", format_uuid(&h.fsid));
    let _ = writeln!(out, "chunk uuid {}", format_uuid(&h.chunk_tree_uuid));
    for i in 0..n {
        if tb.level() == 0 {
            match tb.item(i) {
                Ok(it) => {
                    let _ = writeln!(
                        out,
                        "\titem {i} key {} itemoff {} itemsize {}",
                        key_str(&it.key),
                        it.start - Header::SIZE,
                        it.size
                    );
                    dump_item(out, &it.key, tb.payload(&it), ctx);
                }
                Err(e) => {
                    let _ = writeln!(out, "\titem {i} ERROR: {e}");
                }
            }
        } else {
            match tb.key_ptr(i) {
                Ok(p) => {
                    let _ = writeln!(
                        out,
                        "\tkey {} block {} gen {}",
                        key_str(&Key::from(p.key)),
                        p.blockptr.get(),
                        p.generation.get()
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "\tptr {i} ERROR: {e}");
                }
            }
        }
    }
}

fn backup_line(out: &mut String, name: &str, root: u64, gen: u64, level: u8) {
    let _ = writeln!(
        out,
        "\t\t{:<22}{root:<12} gen: {gen:<8} level: {level}",
        format!("{name}:")
    );
}

fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name:<32}{value}");
}

fn flag_field(out: &mut String, name: &str, v: u64, table: &[(u64, &str)]) {
    let names = flag_names(v, table);
    if names.is_empty() {
        field(out, name, format_args!("0x{v:x}"));
    } else {
        field(out, name, format_args!("0x{v:x} ( {} )", names.join(" | ")));
    }
}

/// Every field of a superblock copy (`raw`: its 4096 bytes read from `bytenr`),
/// with the checksum and magic checked, the `sys_chunk_array` decoded and the
/// four backup roots, like `btrfs inspect-internal dump-super -f`.
pub fn dump_superblock(raw: &[u8], bytenr: u64) -> std::result::Result<String, FormatError> {
    let sb = SuperBlock::read(raw)?;
    let mut out = String::new();
    let _ = writeln!(out, "superblock: bytenr={bytenr}");
    let _ = writeln!(out, "{}", "-".repeat(57));
    let ct = sb.csum_type.get();
    let csum = CsumType::from_disk(ct);
    field(
        &mut out,
        "csum_type",
        format_args!("{ct} ({})", csum.map(|c| c.name()).unwrap_or("unknown")),
    );
    let csize = csum.map(|c| c.size()).unwrap_or(BTRFS_CSUM_SIZE);
    field(&mut out, "csum_size", csize);
    let matches = match csum {
        Some(c) => {
            let want = c.compute(
                raw.get(BTRFS_CSUM_SIZE..BTRFS_SUPER_INFO_SIZE)
                    .unwrap_or(&[]),
            );
            if want[..csize] == sb.csum[..csize] {
                "[match]"
            } else {
                "[DON'T MATCH]"
            }
        }
        None => "[unknown checksum type]",
    };
    field(
        &mut out,
        "csum",
        format_args!("0x{} {matches}", hex(&sb.csum[..csize])),
    );
    field(&mut out, "bytenr", sb.bytenr.get());
    flag_field(&mut out, "flags", sb.flags.get(), SUPER_FLAG_NAMES);
    let magic = sb.magic.get().to_le_bytes();
    field(
        &mut out,
        "magic",
        format_args!(
            "{} {}",
            escape_bytes(&magic),
            if sb.magic.get() == BTRFS_MAGIC {
                "[match]"
            } else {
                "[DON'T MATCH]"
            }
        ),
    );
    field(&mut out, "fsid", format_uuid(&sb.fsid));
    field(&mut out, "metadata_uuid", format_uuid(&sb.metadata_fsid()));
    field(&mut out, "label", escape_bytes(sb.label_bytes()));
    field(&mut out, "generation", sb.generation.get());
    field(&mut out, "root", sb.root.get());
    field(&mut out, "sys_array_size", sb.sys_chunk_array_size.get());
    field(
        &mut out,
        "chunk_root_generation",
        sb.chunk_root_generation.get(),
    );
    field(&mut out, "root_level", sb.root_level);
    field(&mut out, "chunk_root", sb.chunk_root.get());
    field(&mut out, "chunk_root_level", sb.chunk_root_level);
    field(&mut out, "log_root", sb.log_root.get());
    field(
        &mut out,
        "log_root_transid (deprecated)",
        sb.unused_log_root_transid.get(),
    );
    field(&mut out, "log_root_level", sb.log_root_level);
    field(&mut out, "total_bytes", sb.total_bytes.get());
    field(&mut out, "bytes_used", sb.bytes_used.get());
    field(&mut out, "sectorsize", sb.sectorsize.get());
    field(&mut out, "nodesize", sb.nodesize.get());
    field(&mut out, "leafsize (deprecated)", sb.unused_leafsize.get());
    field(&mut out, "stripesize", sb.stripesize.get());
    field(&mut out, "root_dir", sb.root_dir_objectid.get());
    field(&mut out, "num_devices", sb.num_devices.get());
    flag_field(&mut out, "compat_flags", sb.compat_flags.get(), &[]);
    flag_field(
        &mut out,
        "compat_ro_flags",
        sb.compat_ro_flags.get(),
        COMPAT_RO_NAMES,
    );
    flag_field(
        &mut out,
        "incompat_flags",
        sb.incompat_flags.get(),
        INCOMPAT_NAMES,
    );
    field(&mut out, "cache_generation", sb.cache_generation.get());
    field(
        &mut out,
        "uuid_tree_generation",
        sb.uuid_tree_generation.get(),
    );
    field(&mut out, "nr_global_roots", sb.nr_global_roots.get());
    let d = &sb.dev_item;
    field(&mut out, "dev_item.uuid", format_uuid(&d.uuid));
    field(
        &mut out,
        "dev_item.fsid",
        format_args!(
            "{} {}",
            format_uuid(&d.fsid),
            if d.fsid == sb.metadata_fsid() || d.fsid == sb.fsid {
                "[match]"
            } else {
                "[DON'T MATCH]"
            }
        ),
    );
    field(&mut out, "dev_item.type", d.type_.get());
    field(&mut out, "dev_item.total_bytes", d.total_bytes.get());
    field(&mut out, "dev_item.bytes_used", d.bytes_used.get());
    field(&mut out, "dev_item.io_align", d.io_align.get());
    field(&mut out, "dev_item.io_width", d.io_width.get());
    field(&mut out, "dev_item.sector_size", d.sector_size.get());
    field(&mut out, "dev_item.devid", d.devid.get());
    field(&mut out, "dev_item.dev_group", d.dev_group.get());
    field(&mut out, "dev_item.seek_speed", d.seek_speed);
    field(&mut out, "dev_item.bandwidth", d.bandwidth);
    field(&mut out, "dev_item.generation", d.generation.get());
    field(&mut out, "dev_item.start_offset", d.start_offset.get());
    let size = sb.sys_chunk_array_size.get() as usize;
    let _ = writeln!(out, "sys_chunk_array[{BTRFS_SYSTEM_CHUNK_ARRAY_SIZE}]:");
    match parse_sys_chunk_array(&sb.sys_chunk_array, size) {
        Ok(entries) => {
            for (i, (key, c)) in entries.iter().enumerate() {
                let _ = writeln!(out, "\titem {i} key {}", key_str(key));
                chunk_lines(&mut out, c, "\t\t");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "\tERROR: {e}");
        }
    }
    let _ = writeln!(out, "backup_roots[{BTRFS_NUM_BACKUP_ROOTS}]:");
    for (i, b) in sb.super_roots.iter().enumerate() {
        let _ = writeln!(out, "\tbackup {i}:");
        backup_line(
            &mut out,
            "backup_tree_root",
            b.tree_root.get(),
            b.tree_root_gen.get(),
            b.tree_root_level,
        );
        backup_line(
            &mut out,
            "backup_chunk_root",
            b.chunk_root.get(),
            b.chunk_root_gen.get(),
            b.chunk_root_level,
        );
        backup_line(
            &mut out,
            "backup_extent_root",
            b.extent_root.get(),
            b.extent_root_gen.get(),
            b.extent_root_level,
        );
        backup_line(
            &mut out,
            "backup_fs_root",
            b.fs_root.get(),
            b.fs_root_gen.get(),
            b.fs_root_level,
        );
        backup_line(
            &mut out,
            "backup_dev_root",
            b.dev_root.get(),
            b.dev_root_gen.get(),
            b.dev_root_level,
        );
        backup_line(
            &mut out,
            "backup_csum_root",
            b.csum_root.get(),
            b.csum_root_gen.get(),
            b.csum_root_level,
        );
        let _ = writeln!(
            out,
            "\t\t{:<22}{}",
            "backup_total_bytes:",
            b.total_bytes.get()
        );
        let _ = writeln!(
            out,
            "\t\t{:<22}{}",
            "backup_bytes_used:",
            b.bytes_used.get()
        );
        let _ = writeln!(
            out,
            "\t\t{:<22}{}",
            "backup_num_devices:",
            b.num_devices.get()
        );
    }
    Ok(out)
}

/// Name of a tree as dump-tree heads its section ("fs tree", "extent tree", ...).
pub fn tree_title(id: u64) -> String {
    match id {
        BTRFS_ROOT_TREE_OBJECTID => "root tree".into(),
        BTRFS_EXTENT_TREE_OBJECTID => "extent tree".into(),
        BTRFS_CHUNK_TREE_OBJECTID => "chunk tree".into(),
        BTRFS_DEV_TREE_OBJECTID => "device tree".into(),
        BTRFS_FS_TREE_OBJECTID => "fs tree".into(),
        BTRFS_CSUM_TREE_OBJECTID => "checksum tree".into(),
        BTRFS_QUOTA_TREE_OBJECTID => "quota tree".into(),
        BTRFS_UUID_TREE_OBJECTID => "uuid tree".into(),
        BTRFS_FREE_SPACE_TREE_OBJECTID => "free space tree".into(),
        BTRFS_BLOCK_GROUP_TREE_OBJECTID => "block group tree".into(),
        BTRFS_RAID_STRIPE_TREE_OBJECTID => "raid stripe tree".into(),
        BTRFS_DATA_RELOC_TREE_OBJECTID => "data reloc tree".into(),
        BTRFS_TREE_LOG_OBJECTID => "log root tree".into(),
        BTRFS_TREE_RELOC_OBJECTID => "tree reloc tree".into(),
        _ => "file tree".into(),
    }
}

fn out_err(e: std::io::Error) -> Error {
    Error::Io {
        path: "<dump output>".into(),
        source: e,
    }
}

impl Image {
    /// Write every block of the tree at `root`, parents before children. A block
    /// that cannot be read ends the walk with an `ERROR:` line and the error.
    pub fn dump_tree(&self, root: &Root, w: &mut dyn Write) -> Result<()> {
        let ctx = DumpContext::of(self);
        let mut s = String::new();
        for b in self.tree_blocks(root) {
            match b {
                Ok(b) => {
                    s.clear();
                    dump_block(&mut s, b.bytenr, &b.block, &ctx);
                    w.write_all(s.as_bytes()).map_err(out_err)?;
                }
                Err(e) => {
                    writeln!(w, "ERROR: {e}").map_err(out_err)?;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The one tree block at `bytenr` (checksum and structure verified).
    pub fn dump_block(&self, bytenr: u64, w: &mut dyn Write) -> Result<()> {
        let tb = self.read_tree_block(bytenr)?;
        let mut s = String::new();
        dump_block(&mut s, bytenr, &tb, &DumpContext::of(self));
        w.write_all(s.as_bytes()).map_err(out_err)
    }

    /// The tree block at `bytenr` and every block below it.
    pub fn dump_subtree(&self, bytenr: u64, w: &mut dyn Write) -> Result<()> {
        let tb = self.read_tree_block(bytenr)?;
        let root = Root {
            tree_id: tb.header.owner.get(),
            bytenr,
            level: tb.level(),
            generation: tb.header.generation.get(),
        };
        self.dump_tree(&root, w)
    }

    /// Tree `tree_id` with its title line, as `dump-tree -t ID` prints it.
    pub fn dump_tree_id(&self, tree_id: u64, w: &mut dyn Write) -> Result<()> {
        let root = self.require_tree_root(tree_id)?;
        writeln!(w, "{}", tree_title(tree_id)).map_err(out_err)?;
        self.dump_tree(&root, w)
    }

    /// Every tree: root tree, chunk tree, the log tree if there is one, then each
    /// tree the root tree has a ROOT_ITEM for, like `dump-tree` with no option.
    /// Goes on past a damaged tree and returns the first error at the end.
    pub fn dump_all_trees(&self, w: &mut dyn Write) -> Result<()> {
        let mut first_err: Option<Error> = None;
        fn note(e: Error, first: &mut Option<Error>) {
            if first.is_none() {
                *first = Some(e);
            }
        }
        for (title, root) in [
            ("root tree", self.root_tree()),
            ("chunk tree", self.chunk_root()),
        ] {
            writeln!(w, "{title}").map_err(out_err)?;
            if let Err(e) = self.dump_tree(&root, w) {
                if matches!(e, Error::Io { .. }) {
                    return Err(e);
                }
                note(e, &mut first_err);
            }
        }
        let sb = self.superblock();
        if sb.log_root.get() != 0 {
            writeln!(w, "log root tree").map_err(out_err)?;
            let root = Root {
                tree_id: BTRFS_TREE_LOG_OBJECTID,
                bytenr: sb.log_root.get(),
                level: sb.log_root_level,
                generation: sb.generation.get().saturating_add(1),
            };
            // The log tree's generation is the next transaction's: do not insist.
            let res = self.read_tree_block(root.bytenr).and_then(|tb| {
                let r = Root {
                    generation: tb.header.generation.get(),
                    level: tb.level(),
                    ..root
                };
                self.dump_tree(&r, w)
            });
            if let Err(e) = res {
                writeln!(w, "ERROR: {e}").map_err(out_err)?;
                note(e, &mut first_err);
            }
        }
        let rt = self.root_tree();
        let mut roots = Vec::new();
        for it in self.iter(&rt) {
            match it {
                Ok(it) if it.key.item_type == BTRFS_ROOT_ITEM_KEY => {
                    let at = Location::Item {
                        tree: BTRFS_ROOT_TREE_OBJECTID,
                        key: it.key,
                    };
                    match RootItem::read_any(it.data) {
                        Ok(ri) => roots.push((it.key, ri)),
                        Err(e) => note(Error::corrupt(at, e.to_string()), &mut first_err),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    note(e, &mut first_err);
                    break;
                }
            }
        }
        for (key, ri) in roots {
            writeln!(w, "{} key {} ", tree_title(key.objectid), key_str(&key)).map_err(out_err)?;
            let root = Root {
                tree_id: key.objectid,
                bytenr: ri.bytenr.get(),
                level: ri.level,
                generation: ri.generation.get(),
            };
            if let Err(e) = self.dump_tree(&root, w) {
                if matches!(e, Error::Io { .. }) {
                    return Err(e);
                }
                note(e, &mut first_err);
            }
        }
        writeln!(w, "total bytes {}", sb.total_bytes.get()).map_err(out_err)?;
        writeln!(w, "bytes used {}", sb.bytes_used.get()).map_err(out_err)?;
        writeln!(w, "uuid {}", format_uuid(&sb.fsid)).map_err(out_err)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escapes() {
        assert_eq!(format_date(0), "1970-01-01 00:00:00");
        assert_eq!(format_date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_date(-1i64 as u64), "1969-12-31 23:59:59");
        // Extremes neither panic nor overflow.
        let _ = format_date(u64::MAX / 2);
        let _ = format_date(i64::MIN as u64);
        assert_eq!(escape_bytes(b"a/b\\c"), "a/b\\\\c");
        assert_eq!(escape_bytes(b"x\xff\n"), "x\\xff\\x0a");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
    }

    #[test]
    fn keys_print_like_dump_tree() {
        assert_eq!(
            key_str(&Key::new(1, BTRFS_DEV_ITEM_KEY, 1)),
            "(DEV_ITEMS DEV_ITEM 1)"
        );
        assert_eq!(
            key_str(&Key::new(1, BTRFS_DEV_EXTENT_KEY, 1 << 20)),
            "(1 DEV_EXTENT 1048576)"
        );
        assert_eq!(
            key_str(&Key::new(5, BTRFS_ROOT_ITEM_KEY, 0)),
            "(FS_TREE ROOT_ITEM 0)"
        );
        assert_eq!(key_str(&Key::new(256, 1, 0)), "(256 INODE_ITEM 0)");
        assert_eq!(key_str(&Key::new(256, 99, 0)), "(256 UNKNOWN.99 0)");
        assert_eq!(
            key_str(&Key::new((1 << 48) | 5, BTRFS_QGROUP_INFO_KEY, 5)),
            "(1/5 QGROUP_INFO 0/5)"
        );
    }

    #[test]
    fn undecodable_items_print_errors_not_panics() {
        let ctx = DumpContext {
            csum_size: 4,
            sectorsize: 4096,
            nodesize: 16384,
        };
        for t in 0..=255u8 {
            for len in [0usize, 1, 7, 17, 33, 100, 500] {
                let data: Vec<u8> = (0..len).map(|i| (i * 37 + t as usize) as u8).collect();
                let mut s = String::new();
                dump_item(&mut s, &Key::new(0, t, u64::MAX), &data, &ctx);
                dump_item(&mut s, &Key::new(u64::MAX, t, 0), &data, &ctx);
            }
        }
        let mut s = String::new();
        dump_item(
            &mut s,
            &Key::new(257, BTRFS_INODE_ITEM_KEY, 0),
            &[1, 2],
            &ctx,
        );
        assert!(s.contains("ERROR: cannot decode item"), "{s}");
        assert!(s.contains("raw 2 bytes: 0102"), "{s}");
    }

    #[test]
    fn superblock_of_garbage_never_panics() {
        let mut raw = vec![0xa5u8; 4096];
        let s = dump_superblock(&raw, 65536).unwrap();
        assert!(s.contains("[DON'T MATCH]"));
        raw.truncate(100);
        assert!(dump_superblock(&raw, 65536).is_err());
    }
}
