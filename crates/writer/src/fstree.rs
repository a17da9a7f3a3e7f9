//! Items of the subvolume trees, the data extent items and the csum items,
//! from the scanned tree and the data plan.
use std::collections::BTreeMap;

use btrfs_format::items::{encode_dir_item, InlineRef};
use btrfs_format::*;
use zerocopy::IntoBytes;

use crate::btree::TreeItems;
use crate::data::{DataPlan, FileData};
use crate::scan::{Kind, Scan, Target, Time};
use crate::{Error, Result};

/// Settings the items depend on.
#[derive(Debug, Clone, Copy)]
pub struct FsParams {
    pub generation: u64,
    pub nodesize: u32,
    pub sectorsize: u32,
    pub no_holes: bool,
    pub extref: bool,
}

fn ts(t: Time) -> Timespec {
    // Times before 1970 are stored as the u64 pattern of the negative value.
    Timespec::new(t.sec as u64, t.nsec)
}

fn max_item(nodesize: u32) -> usize {
    leaf_data_size(nodesize) - Item::SIZE
}

fn push_file_extent(items: &mut TreeItems, ino: u64, offset: u64, fe: &FileExtentItem) {
    items.push_struct(Key::new(ino, BTRFS_EXTENT_DATA_KEY, offset), fe);
}

fn hole(gen: u64, len: u64) -> FileExtentItem {
    FileExtentItem {
        generation: gen.into(),
        ram_bytes: len.into(),
        type_: BTRFS_FILE_EXTENT_REG,
        num_bytes: len.into(),
        ..Default::default()
    }
}

/// Items of subvolume `si`.
pub fn subvol_items(scan: &Scan, si: usize, plan: &DataPlan, p: &FsParams) -> Result<TreeItems> {
    use rayon::prelude::*;
    // Inodes in parallel runs; each run comes out sorted, and runs follow
    // inode order, so their concatenation is the sorted tree. The first
    // error in inode order is the one reported.
    const RUN: usize = 2048;
    let n = scan.subvols[si].nodes.len();
    let runs: Vec<Result<TreeItems>> = (0..n.div_ceil(RUN))
        .into_par_iter()
        .map(|r| subvol_items_run(scan, si, r * RUN..((r + 1) * RUN).min(n), plan, p))
        .collect();
    let mut items = TreeItems::new();
    for r in runs {
        items.append(r?);
    }
    Ok(items)
}

/// Items of the inodes `nodes` of subvolume `si`, sorted.
fn subvol_items_run(
    scan: &Scan,
    si: usize,
    nodes: std::ops::Range<usize>,
    plan: &DataPlan,
    p: &FsParams,
) -> Result<TreeItems> {
    let sv = &scan.subvols[si];
    let gen = p.generation;
    let mut items = TreeItems::new();
    // One allocation for the run's payloads: inline data, then ~100 bytes
    // of inode item, ref and extent per inode.
    items.reserve(
        nodes
            .clone()
            .map(|ni| match &plan.files[si][ni] {
                FileData::Inline { data, .. } => data.len() + 256,
                _ => 256,
            })
            .sum(),
    );
    for ni in nodes {
        let node = &sv.nodes[ni];
        let first_item = items.len();
        let ino = node.ino;
        let st = &node.stat;
        let mut size = 0u64;
        let mut nbytes = 0u64;
        // Directory entries.
        if let Kind::Dir { entries } = &node.kind {
            let mut by_hash: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for e in entries {
                let location = match e.target {
                    Target::Node(i) => Key::new(sv.nodes[i].ino, BTRFS_INODE_ITEM_KEY, 0),
                    Target::Subvol(s) => {
                        Key::new(scan.subvols[s].id, BTRFS_ROOT_ITEM_KEY, u64::MAX)
                    }
                };
                let mut one = Vec::new();
                encode_dir_item(location, gen, e.file_type, &e.name, b"", &mut one);
                items.push(Key::new(ino, BTRFS_DIR_INDEX_KEY, e.index), &one);
                by_hash
                    .entry(name_hash(&e.name))
                    .or_default()
                    .extend_from_slice(&one);
                size += 2 * e.name.len() as u64;
            }
            for (h, payload) in by_hash {
                if payload.len() > max_item(p.nodesize) {
                    return Err(Error::InvalidOption(format!(
                        "{}: too many names with one hash to fit a {}-byte tree block",
                        node.path.display(),
                        p.nodesize
                    )));
                }
                items.push(Key::new(ino, BTRFS_DIR_ITEM_KEY, h), &payload);
            }
        }
        // Xattrs (colliding name hashes share an item).
        let mut by_hash: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (name, value) in &node.xattrs {
            let mut one = Vec::new();
            encode_dir_item(Key::default(), gen, BTRFS_FT_XATTR, name, value, &mut one);
            by_hash
                .entry(name_hash(name))
                .or_default()
                .extend_from_slice(&one);
        }
        for (h, payload) in by_hash {
            if payload.len() > max_item(p.nodesize) {
                return Err(Error::InvalidOption(format!(
                    "{}: extended attributes of {} bytes do not fit a {}-byte tree block (use a larger -n)",
                    node.path.display(),
                    payload.len(),
                    p.nodesize
                )));
            }
            items.push(Key::new(ino, BTRFS_XATTR_ITEM_KEY, h), &payload);
        }
        // Content.
        let inline = |items: &mut TreeItems, data: &[u8], ram: u64, compression: u8| {
            let h = FileExtentItemHeader {
                generation: gen.into(),
                ram_bytes: ram.into(),
                compression,
                type_: BTRFS_FILE_EXTENT_INLINE,
                ..Default::default()
            };
            items.push_with(Key::new(ino, BTRFS_EXTENT_DATA_KEY, 0), |o| {
                o.extend_from_slice(h.as_bytes());
                o.extend_from_slice(data);
            });
        };
        match &node.kind {
            Kind::Dir { .. } | Kind::Special => {}
            Kind::Symlink { target } => {
                let max = max_inline_item_data(p.nodesize).min(4095);
                if target.len() > max {
                    return Err(Error::InvalidOption(format!(
                        "{}: symlink target is {} bytes; at most {max} fit with nodesize {}",
                        node.path.display(),
                        target.len(),
                        p.nodesize
                    )));
                }
                inline(&mut items, target, target.len() as u64, BTRFS_COMPRESS_NONE);
                size = target.len() as u64;
                nbytes = size;
            }
            Kind::File => {
                size = st.size;
                let sector = p.sectorsize as u64;
                let mut covered = 0u64; // for explicit holes without no-holes
                match &plan.files[si][ni] {
                    FileData::None => {}
                    FileData::Inline {
                        data,
                        ram,
                        compression,
                    } => {
                        inline(&mut items, data, *ram, *compression);
                        nbytes = *ram;
                        covered = u64::MAX;
                    }
                    FileData::Extents(r) => {
                        for e in &plan.extents[r.clone()] {
                            if !p.no_holes && e.file_offset > covered {
                                push_file_extent(
                                    &mut items,
                                    ino,
                                    covered,
                                    &hole(gen, e.file_offset - covered),
                                );
                            }
                            let fe = FileExtentItem {
                                generation: gen.into(),
                                ram_bytes: e.num_bytes.into(),
                                compression: e.compression,
                                type_: BTRFS_FILE_EXTENT_REG,
                                disk_bytenr: e.disk_bytenr.into(),
                                disk_num_bytes: e.disk_num_bytes.into(),
                                offset: 0.into(),
                                num_bytes: e.num_bytes.into(),
                                ..Default::default()
                            };
                            push_file_extent(&mut items, ino, e.file_offset, &fe);
                            nbytes += e.num_bytes;
                            covered = e.file_offset + e.num_bytes;
                        }
                    }
                }
                let end = size.div_ceil(sector) * sector;
                if !p.no_holes && covered < end {
                    push_file_extent(&mut items, ino, covered, &hole(gen, end - covered));
                }
            }
        }
        // Names.
        let nlink = match node.kind {
            Kind::Dir { .. } => 1,
            _ => node.links.len() as u32,
        };
        if nlink > 65535 {
            return Err(Error::InvalidOption(format!(
                "{}: {nlink} hard links; btrfs allows 65535",
                node.path.display()
            )));
        }
        if ni == 0 {
            items.push_with(Key::new(ino, BTRFS_INODE_REF_KEY, ino), |o| {
                o.extend_from_slice(
                    InodeRef {
                        index: 0.into(),
                        name_len: 2.into(),
                    }
                    .as_bytes(),
                );
                o.extend_from_slice(b"..");
            });
        }
        let mut refs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut extrefs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for l in &node.links {
            let r = refs.entry(l.parent).or_default();
            if r.len() + InodeRef::SIZE + l.name.len() <= max_item(p.nodesize) {
                r.extend_from_slice(
                    InodeRef {
                        index: l.index.into(),
                        name_len: (l.name.len() as u16).into(),
                    }
                    .as_bytes(),
                );
                r.extend_from_slice(&l.name);
                continue;
            }
            if !p.extref {
                return Err(Error::InvalidOption(format!(
                    "{}: too many hard links in one directory without the extref feature",
                    node.path.display()
                )));
            }
            let x = extrefs.entry(extref_hash(l.parent, &l.name)).or_default();
            x.extend_from_slice(
                InodeExtref {
                    parent_objectid: l.parent.into(),
                    index: l.index.into(),
                    name_len: (l.name.len() as u16).into(),
                }
                .as_bytes(),
            );
            x.extend_from_slice(&l.name);
        }
        for (parent, payload) in refs {
            items.push(Key::new(ino, BTRFS_INODE_REF_KEY, parent), &payload);
        }
        for (h, payload) in extrefs {
            items.push(Key::new(ino, BTRFS_INODE_EXTREF_KEY, h), &payload);
        }
        let inode = InodeItem {
            generation: gen.into(),
            transid: gen.into(),
            size: size.into(),
            nbytes: nbytes.into(),
            nlink: nlink.into(),
            uid: st.uid.into(),
            gid: st.gid.into(),
            mode: st.mode.into(),
            rdev: st.rdev.into(),
            flags: plan.inode_flags[si][ni].into(),
            atime: ts(st.atime),
            ctime: ts(st.ctime),
            mtime: ts(st.mtime),
            otime: ts(st.otime),
            ..Default::default()
        };
        items.push_struct(Key::new(ino, BTRFS_INODE_ITEM_KEY, 0), &inode);
        items.sort_from(first_item);
    }
    Ok(items)
}

/// Inline data refs per extent item; more go into keyed EXTENT_DATA_REF items.
const MAX_INLINE_DATA_REFS: usize = 8;

/// One EXTENT_ITEM per disk extent, its references counting every file
/// extent that points at it (shared extents from `--dedupe` included).
pub fn data_extent_items(scan: &Scan, plan: &DataPlan, gen: u64) -> TreeItems {
    // One row per file extent, sorted: a disk extent's users are adjacent,
    // and equal users (one file pointing twice at one extent) count once.
    let mut rows: Vec<(u64, u64, u64, u64, u64)> = plan
        .extents
        .iter()
        .map(|e| {
            let sv = &scan.subvols[e.subvol];
            (
                e.disk_bytenr,
                e.disk_num_bytes,
                sv.id,
                sv.nodes[e.node].ino,
                e.file_offset,
            )
        })
        .collect();
    rows.sort_unstable();
    let mut items = TreeItems::new();
    let mut refs: Vec<InlineRef> = Vec::new();
    for group in rows.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (bytenr, len) = (group[0].0, group[0].1);
        refs.clear();
        for users in group.chunk_by(|a, b| a == b) {
            let (_, _, root, objectid, offset) = users[0];
            refs.push(InlineRef::ExtentData {
                root,
                objectid,
                offset,
                count: users.len() as u32,
            });
        }
        // The kernel keeps inline refs of one type in descending hash order
        // (its tree checker rejects any other order).
        refs.sort_by_key(|r| std::cmp::Reverse(r.sort_offset()));
        let total: u64 = refs.iter().map(|r| r.count()).sum();
        let ei = ExtentItem {
            refs: total.into(),
            generation: gen.into(),
            flags: BTRFS_EXTENT_FLAG_DATA.into(),
        };
        let keyed = refs.split_off(refs.len().min(MAX_INLINE_DATA_REFS));
        items.push_with(Key::new(bytenr, BTRFS_EXTENT_ITEM_KEY, len), |o| {
            o.extend_from_slice(ei.as_bytes());
            for r in &refs {
                r.encode(o);
            }
        });
        let mut used = std::collections::BTreeSet::new();
        for r in keyed {
            let InlineRef::ExtentData {
                root,
                objectid,
                offset,
                count,
            } = r
            else {
                continue;
            };
            // Hash collisions take the next free offset, as the kernel does.
            let mut h = r.sort_offset();
            while !used.insert(h) {
                h = h.wrapping_add(1);
            }
            let d = ExtentDataRef {
                root: root.into(),
                objectid: objectid.into(),
                offset: offset.into(),
                count: count.into(),
            };
            items.push_struct(Key::new(bytenr, BTRFS_EXTENT_DATA_REF_KEY, h), &d);
        }
    }
    items
}

/// EXTENT_CSUM items: contiguous checksums merged, split at the kernel's item limit.
pub fn csum_items(
    extents: &[(u64, &[u8])],
    csum: CsumType,
    sectorsize: u64,
    nodesize: u32,
) -> TreeItems {
    let per_item = max_csum_items(nodesize, csum.size());
    let mut items = TreeItems::new();
    let mut run_start = 0u64;
    let mut run: Vec<u8> = Vec::new();
    let flush = |items: &mut TreeItems, start: u64, run: &mut Vec<u8>| {
        for (i, chunk) in run.chunks(per_item * csum.size()).enumerate() {
            let at = start + (i * per_item) as u64 * sectorsize;
            items.push(
                Key::new(BTRFS_EXTENT_CSUM_OBJECTID, BTRFS_EXTENT_CSUM_KEY, at),
                chunk,
            );
        }
        run.clear();
    };
    let mut sorted: Vec<&(u64, &[u8])> = extents.iter().collect();
    sorted.sort_by_key(|e| e.0);
    for &&(bytenr, sums) in &sorted {
        let run_end = run_start + (run.len() / csum.size()) as u64 * sectorsize;
        if run.is_empty() || bytenr != run_end {
            flush(&mut items, run_start, &mut run);
            run_start = bytenr;
        }
        run.extend_from_slice(sums);
    }
    flush(&mut items, run_start, &mut run);
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csum_items_merge_and_split() {
        let a = [1u8; 4 * 10];
        let b = [2u8; 4 * 5];
        let far = [3u8; 4];
        let ext = [
            (1 << 20, &a[..]),
            (1 << 20 | 40960, &b[..]),
            (8 << 20, &far[..]),
        ];
        let items = csum_items(&ext, CsumType::Crc32c, 4096, 4096);
        assert_eq!(items.len(), 2);
        assert_eq!(items.payload(0).len(), 60);
        // A run longer than one item splits at the kernel's limit.
        let big = vec![0u8; 4 * 5000];
        let items = csum_items(&[(1 << 20, &big[..])], CsumType::Crc32c, 4096, 4096);
        let per = max_csum_items(4096, 4);
        assert_eq!(items.len(), 5000usize.div_ceil(per));
        assert_eq!(items.key(1).offset, (1 << 20) + per as u64 * 4096);
    }
}
