//! Filesystem view: subvolumes, inodes, directories, xattrs, symlinks, file data.
use btrfs_format::consts::*;
use btrfs_format::items::{parse_dir_items, parse_file_extent, parse_root_ref, FileExtent};
use btrfs_format::{name_hash, InodeItem, Key};

use crate::compress;
use crate::error::{fmt_err, Error, Location, Result};
use crate::image::Image;
use crate::tree::Root;

/// Largest `read_file` request; larger reads go in pieces.
pub const MAX_READ: u64 = 256 << 20;
/// Longest symlink target (PATH_MAX - 1).
pub const MAX_SYMLINK: u64 = 4095;

/// A directory entry, from a DIR_INDEX (or DIR_ITEM) item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryOwned {
    pub name: Vec<u8>,
    /// (inode, INODE_ITEM, 0) or, for a subvolume, (subvol id, ROOT_ITEM, ...).
    pub location: Key,
    pub file_type: u8,
    /// DIR_INDEX sequence number (0 when found through a DIR_ITEM).
    pub index: u64,
    pub transid: u64,
}

impl DirEntryOwned {
    /// True when the entry is a subvolume root rather than an inode.
    pub fn is_subvolume(&self) -> bool {
        self.location.item_type == BTRFS_ROOT_ITEM_KEY
    }
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Where one EXTENT_DATA item says a range of the file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileExtentKind {
    /// Data in the item itself (compressed if `compression` is set).
    Inline { data: Vec<u8> },
    /// `num_bytes` of file data from byte `offset` of the (decompressed) extent at
    /// `disk_bytenr`; `disk_bytenr` 0 is a hole.
    Regular {
        disk_bytenr: u64,
        disk_num_bytes: u64,
        offset: u64,
        num_bytes: u64,
    },
    /// Allocated but unwritten: reads as zeros.
    Prealloc {
        disk_bytenr: u64,
        disk_num_bytes: u64,
        offset: u64,
        num_bytes: u64,
    },
}

/// One EXTENT_DATA item of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileExtentInfo {
    pub file_offset: u64,
    pub generation: u64,
    pub ram_bytes: u64,
    pub compression: u8,
    pub encryption: u8,
    pub other_encoding: u16,
    pub kind: FileExtentKind,
}

impl FileExtentInfo {
    /// Bytes of the file this extent covers.
    pub fn len(&self) -> u64 {
        match &self.kind {
            FileExtentKind::Inline { data } => {
                if self.compression == BTRFS_COMPRESS_NONE {
                    data.len() as u64
                } else {
                    self.ram_bytes
                }
            }
            FileExtentKind::Regular { num_bytes, .. }
            | FileExtentKind::Prealloc { num_bytes, .. } => *num_bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn parse(key: Key, data: &[u8], at: Location) -> Result<Self> {
        let fe = parse_file_extent(data).map_err(fmt_err(at))?;
        let (h, kind) = match fe {
            FileExtent::Inline { header, data } => (
                header,
                FileExtentKind::Inline {
                    data: data.to_vec(),
                },
            ),
            FileExtent::Regular(r) => {
                let h = btrfs_format::FileExtentItemHeader {
                    generation: r.generation,
                    ram_bytes: r.ram_bytes,
                    compression: r.compression,
                    encryption: r.encryption,
                    other_encoding: r.other_encoding,
                    type_: r.type_,
                };
                let (disk_bytenr, disk_num_bytes, offset, num_bytes) = (
                    r.disk_bytenr.get(),
                    r.disk_num_bytes.get(),
                    r.offset.get(),
                    r.num_bytes.get(),
                );
                let kind = if r.type_ == BTRFS_FILE_EXTENT_PREALLOC {
                    FileExtentKind::Prealloc {
                        disk_bytenr,
                        disk_num_bytes,
                        offset,
                        num_bytes,
                    }
                } else {
                    FileExtentKind::Regular {
                        disk_bytenr,
                        disk_num_bytes,
                        offset,
                        num_bytes,
                    }
                };
                (h, kind)
            }
        };
        Ok(FileExtentInfo {
            file_offset: key.offset,
            generation: h.generation.get(),
            ram_bytes: h.ram_bytes.get(),
            compression: h.compression,
            encryption: h.encryption,
            other_encoding: h.other_encoding.get(),
            kind,
        })
    }
}

fn item_at(tree: u64, key: Key) -> Location {
    Location::Item { tree, key }
}

impl Image {
    /// The subvolume mounted by default: the "default" entry of the root tree
    /// directory, else the top-level FS tree (5).
    pub fn default_subvol(&self) -> Result<u64> {
        let dir = self.superblock().root_dir_objectid.get();
        let key = Key::new(dir, BTRFS_DIR_ITEM_KEY, name_hash(b"default"));
        let rt = self.root_tree();
        let Some(it) = self.search(&rt, key)? else {
            return Ok(BTRFS_FS_TREE_OBJECTID);
        };
        let entries =
            parse_dir_items(it.data).map_err(fmt_err(item_at(BTRFS_ROOT_TREE_OBJECTID, key)))?;
        Ok(entries
            .iter()
            .find(|e| e.name == b"default")
            .map(|e| e.location.objectid)
            .unwrap_or(BTRFS_FS_TREE_OBJECTID))
    }

    /// Root of subvolume `subvol`'s tree.
    pub fn fs_root(&self, subvol: u64) -> Result<Root> {
        self.tree_root(subvol)?
            .ok_or_else(|| Error::NotFound(format!("subvolume {subvol}")))
    }

    /// The inode number of subvolume `subvol`'s top directory (256).
    pub fn subvol_root_dir(&self, subvol: u64) -> Result<u64> {
        let (_, ri) = self
            .root_item(subvol)?
            .ok_or_else(|| Error::NotFound(format!("subvolume {subvol}")))?;
        Ok(match ri.root_dirid.get() {
            0 => BTRFS_FIRST_FREE_OBJECTID,
            d => d,
        })
    }

    /// Ids of all subvolumes: the FS tree and every ROOT_ITEM in the subvolume id range.
    pub fn subvolumes(&self) -> Result<Vec<u64>> {
        let rt = self.root_tree();
        let mut out = Vec::new();
        for it in self.range(
            &rt,
            Key::new(BTRFS_FS_TREE_OBJECTID, 0, 0),
            Key::new(BTRFS_LAST_FREE_OBJECTID, u8::MAX, u64::MAX),
        ) {
            let it = it?;
            let id = it.key.objectid;
            let is_subvol = id == BTRFS_FS_TREE_OBJECTID || id >= BTRFS_FIRST_FREE_OBJECTID;
            if it.key.item_type == BTRFS_ROOT_ITEM_KEY && is_subvol && out.last() != Some(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The INODE_ITEM of `ino`.
    pub fn inode(&self, subvol: u64, ino: u64) -> Result<InodeItem> {
        self.inode_in(&self.fs_root(subvol)?, ino)
    }

    fn inode_in(&self, root: &Root, ino: u64) -> Result<InodeItem> {
        let subvol = root.tree_id;
        let key = Key::new(ino, BTRFS_INODE_ITEM_KEY, 0);
        let it = self
            .search(root, key)?
            .ok_or_else(|| Error::NotFound(format!("inode {ino} in subvolume {subvol}")))?;
        InodeItem::read(it.data).map_err(fmt_err(item_at(subvol, key)))
    }

    /// Entries of directory `ino`, in DIR_INDEX (creation) order.
    pub fn read_dir(&self, subvol: u64, ino: u64) -> Result<Vec<DirEntryOwned>> {
        let root = self.fs_root(subvol)?;
        let mut out = Vec::new();
        for it in self.range(
            &root,
            Key::new(ino, BTRFS_DIR_INDEX_KEY, 0),
            Key::new(ino, BTRFS_DIR_INDEX_KEY, u64::MAX),
        ) {
            let it = it?;
            let entries = parse_dir_items(it.data).map_err(fmt_err(item_at(subvol, it.key)))?;
            for e in entries {
                out.push(DirEntryOwned {
                    name: e.name.to_vec(),
                    location: e.location,
                    file_type: e.file_type,
                    index: it.key.offset,
                    transid: e.transid,
                });
            }
        }
        Ok(out)
    }

    /// The entry `name` of directory `dir`, through its DIR_ITEM (name hash).
    pub fn lookup_name(&self, subvol: u64, dir: u64, name: &[u8]) -> Result<Option<DirEntryOwned>> {
        if name.is_empty() || name.len() > BTRFS_NAME_LEN {
            return Ok(None);
        }
        let root = self.fs_root(subvol)?;
        let key = Key::new(dir, BTRFS_DIR_ITEM_KEY, name_hash(name));
        let Some(it) = self.search(&root, key)? else {
            return Ok(None);
        };
        let entries = parse_dir_items(it.data).map_err(fmt_err(item_at(subvol, key)))?;
        Ok(entries
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| DirEntryOwned {
                name: e.name.to_vec(),
                location: e.location,
                file_type: e.file_type,
                index: 0,
                transid: e.transid,
            }))
    }

    /// Resolve `path` (components split on '/') from the top directory of `subvol`,
    /// entering subvolumes as it crosses them; `..` goes up, also out of a subvolume.
    /// Symlinks are not followed. Returns (subvolume, inode).
    pub fn lookup(&self, subvol: u64, path: &[u8]) -> Result<(u64, u64)> {
        let mut cur = (subvol, self.subvol_root_dir(subvol)?);
        for comp in path.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => cur = self.parent_of(cur.0, cur.1)?,
                name => {
                    let (sv, ino) = cur;
                    let inode = self.inode(sv, ino)?;
                    if inode.mode.get() & S_IFMT != S_IFDIR {
                        return Err(Error::NotFound(format!(
                            "{}: inode {ino} in subvolume {sv} is not a directory",
                            String::from_utf8_lossy(path)
                        )));
                    }
                    let e = self.lookup_name(sv, ino, name)?.ok_or_else(|| {
                        Error::NotFound(format!(
                            "{}: no entry {:?} in directory {ino} of subvolume {sv}",
                            String::from_utf8_lossy(path),
                            String::from_utf8_lossy(name)
                        ))
                    })?;
                    cur = if e.is_subvolume() {
                        let id = e.location.objectid;
                        (id, self.subvol_root_dir(id)?)
                    } else {
                        (sv, e.location.objectid)
                    };
                }
            }
        }
        Ok(cur)
    }

    /// The directory holding `ino` (crossing out of a subvolume at its top).
    fn parent_of(&self, subvol: u64, ino: u64) -> Result<(u64, u64)> {
        if ino == self.subvol_root_dir(subvol)? {
            if subvol == BTRFS_FS_TREE_OBJECTID {
                return Ok((subvol, ino));
            }
            // (subvol, ROOT_BACKREF, parent subvol) names the directory it lives in.
            let rt = self.root_tree();
            let first = self
                .range(
                    &rt,
                    Key::new(subvol, BTRFS_ROOT_BACKREF_KEY, 0),
                    Key::new(subvol, BTRFS_ROOT_BACKREF_KEY, u64::MAX),
                )
                .next()
                .transpose()?
                .ok_or_else(|| Error::NotFound(format!("parent of subvolume {subvol}")))?;
            let (r, _) = parse_root_ref(first.data)
                .map_err(fmt_err(item_at(BTRFS_ROOT_TREE_OBJECTID, first.key)))?;
            return Ok((first.key.offset, r.dirid.get()));
        }
        let root = self.fs_root(subvol)?;
        let r = self
            .range(
                &root,
                Key::new(ino, BTRFS_INODE_REF_KEY, 0),
                Key::new(ino, BTRFS_INODE_EXTREF_KEY, u64::MAX),
            )
            .next()
            .transpose()?
            .ok_or_else(|| {
                Error::NotFound(format!("parent of inode {ino} in subvolume {subvol}"))
            })?;
        if r.key.item_type == BTRFS_INODE_REF_KEY {
            return Ok((subvol, r.key.offset));
        }
        let names = btrfs_format::items::parse_inode_extrefs(r.data)
            .map_err(fmt_err(item_at(subvol, r.key)))?;
        let n = names
            .first()
            .ok_or_else(|| Error::corrupt(item_at(subvol, r.key), "empty INODE_EXTREF"))?;
        Ok((subvol, n.parent))
    }

    /// All extended attributes of `ino`, in key (name hash) order.
    pub fn xattrs(&self, subvol: u64, ino: u64) -> Result<Vec<Xattr>> {
        let root = self.fs_root(subvol)?;
        let mut out = Vec::new();
        for it in self.range(
            &root,
            Key::new(ino, BTRFS_XATTR_ITEM_KEY, 0),
            Key::new(ino, BTRFS_XATTR_ITEM_KEY, u64::MAX),
        ) {
            let it = it?;
            for e in parse_dir_items(it.data).map_err(fmt_err(item_at(subvol, it.key)))? {
                out.push(Xattr {
                    name: e.name.to_vec(),
                    value: e.data.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// The EXTENT_DATA items of `ino`, in file offset order.
    pub fn file_extents(&self, subvol: u64, ino: u64) -> Result<Vec<FileExtentInfo>> {
        let root = self.fs_root(subvol)?;
        let mut out = Vec::new();
        for it in self.range(
            &root,
            Key::new(ino, BTRFS_EXTENT_DATA_KEY, 0),
            Key::new(ino, BTRFS_EXTENT_DATA_KEY, u64::MAX),
        ) {
            let it = it?;
            out.push(FileExtentInfo::parse(
                it.key,
                it.data,
                item_at(subvol, it.key),
            )?);
        }
        Ok(out)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, subvol: u64, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(subvol, ino)?;
        let at = Location::Inode { subvol, ino };
        if inode.mode.get() & S_IFMT != S_IFLNK {
            return Err(Error::NotFound(format!("{at} is not a symlink")));
        }
        let size = inode.size.get();
        if size > MAX_SYMLINK {
            return Err(Error::corrupt(
                at,
                format!("symlink target of {size} bytes"),
            ));
        }
        self.read_file(subvol, ino, 0, size)
    }

    /// All of file `ino`, refusing files larger than `limit` bytes.
    pub fn read_file_all(&self, subvol: u64, ino: u64, limit: u64) -> Result<Vec<u8>> {
        let size = self.inode(subvol, ino)?.size.get();
        if size > limit {
            return Err(Error::TooLarge {
                what: format!("{}", Location::Inode { subvol, ino }),
                size,
                limit,
            });
        }
        self.read_file(subvol, ino, 0, size)
    }

    /// Up to `len` bytes of file `ino` from `offset`, stopping at its size. Holes,
    /// prealloc extents and ranges no extent covers read as zeros. `len` above
    /// [`MAX_READ`] (after clipping to the file size) is refused.
    pub fn read_file(&self, subvol: u64, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>> {
        let root = self.fs_root(subvol)?;
        let inode = self.inode_in(&root, ino)?;
        let size = inode.size.get();
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len).min(size);
        let want = end - offset;
        if want > MAX_READ {
            return Err(Error::TooLarge {
                what: format!("read of {}", Location::Inode { subvol, ino }),
                size: want,
                limit: MAX_READ,
            });
        }
        let mut out = vec![0u8; want as usize];
        // Start at the extent covering `offset`, if one starts before it.
        let start = match self.find_le(&root, Key::new(ino, BTRFS_EXTENT_DATA_KEY, offset))? {
            Some(it) if it.key.objectid == ino && it.key.item_type == BTRFS_EXTENT_DATA_KEY => {
                it.key
            }
            _ => Key::new(ino, BTRFS_EXTENT_DATA_KEY, 0),
        };
        let last = Key::new(ino, BTRFS_EXTENT_DATA_KEY, end - 1);
        for it in self.range(&root, start, last) {
            let it = it?;
            let at = item_at(subvol, it.key);
            let fe = FileExtentInfo::parse(it.key, it.data, at)?;
            self.fill_from_extent(&fe, offset, &mut out, at)?;
        }
        Ok(out)
    }

    /// Copy the part of extent `fe` that overlaps `out` (file bytes from `offset`).
    fn fill_from_extent(
        &self,
        fe: &FileExtentInfo,
        offset: u64,
        out: &mut [u8],
        at: Location,
    ) -> Result<()> {
        let ext_start = fe.file_offset;
        let ext_end = ext_start.saturating_add(fe.len());
        let lo = ext_start.max(offset);
        let hi = ext_end.min(offset + out.len() as u64);
        if lo >= hi {
            return Ok(());
        }
        if fe.encryption != 0 || fe.other_encoding != 0 {
            return Err(Error::Unsupported(format!(
                "{at}: encryption {} / other encoding {}",
                fe.encryption, fe.other_encoding
            )));
        }
        let dst = &mut out[(lo - offset) as usize..(hi - offset) as usize];
        let skip = lo - ext_start; // bytes of this extent before `lo`
        match &fe.kind {
            FileExtentKind::Inline { data } => {
                let plain;
                let src: &[u8] = if fe.compression == BTRFS_COMPRESS_NONE {
                    data
                } else {
                    plain = self.decompress_extent(fe, data, skip + dst.len() as u64, at)?;
                    &plain
                };
                copy_or_zero(dst, src, skip);
            }
            FileExtentKind::Prealloc { .. } => dst.fill(0),
            FileExtentKind::Regular {
                disk_bytenr,
                disk_num_bytes,
                offset: ext_off,
                num_bytes,
            } => {
                if *disk_bytenr == 0 {
                    dst.fill(0);
                    return Ok(());
                }
                if fe.compression == BTRFS_COMPRESS_NONE {
                    let fits = ext_off
                        .checked_add(*num_bytes)
                        .is_some_and(|e| e <= *disk_num_bytes);
                    if !fits {
                        return Err(Error::corrupt(
                            at,
                            format!("offset {ext_off} + num_bytes {num_bytes} beyond disk_num_bytes {disk_num_bytes}"),
                        ));
                    }
                    let src_at = disk_bytenr.checked_add(ext_off + skip).ok_or_else(|| {
                        Error::corrupt(at, format!("disk_bytenr {disk_bytenr} + offset overflows"))
                    })?;
                    let src = self.read_logical(src_at, dst.len() as u64)?;
                    dst.copy_from_slice(&src);
                } else {
                    if *disk_num_bytes > BTRFS_MAX_COMPRESSED {
                        return Err(Error::corrupt(
                            at,
                            format!(
                                "compressed extent of {disk_num_bytes} bytes on disk (max 128 KiB)"
                            ),
                        ));
                    }
                    let fits = ext_off
                        .checked_add(*num_bytes)
                        .is_some_and(|e| e <= fe.ram_bytes);
                    if !fits {
                        return Err(Error::corrupt(
                            at,
                            format!(
                                "offset {ext_off} + num_bytes {num_bytes} beyond ram_bytes {}",
                                fe.ram_bytes
                            ),
                        ));
                    }
                    let raw = self.read_logical(*disk_bytenr, *disk_num_bytes)?;
                    // Decompress only as far as this read needs.
                    let need = ext_off + skip + dst.len() as u64;
                    let plain = self.decompress_extent(fe, &raw, need, at)?;
                    copy_or_zero(dst, &plain, ext_off + skip);
                }
            }
        }
        Ok(())
    }

    /// The first `need` bytes (at most `ram_bytes`) of a compressed extent.
    fn decompress_extent(
        &self,
        fe: &FileExtentInfo,
        raw: &[u8],
        need: u64,
        at: Location,
    ) -> Result<Vec<u8>> {
        if fe.ram_bytes > BTRFS_MAX_COMPRESSED {
            return Err(Error::corrupt(
                at,
                format!(
                    "compressed extent claims {} bytes uncompressed (max 128 KiB)",
                    fe.ram_bytes
                ),
            ));
        }
        let limit = need.min(fe.ram_bytes) as usize;
        compress::decompress(fe.compression, raw, limit, self.sectorsize())
            .map_err(|e| Error::corrupt(at, e))
    }
}

/// Fill `dst` from `src[skip..]`, with zeros where `src` is too short.
fn copy_or_zero(dst: &mut [u8], src: &[u8], skip: u64) {
    let avail = src
        .get(skip.min(src.len() as u64) as usize..)
        .unwrap_or(&[]);
    let n = avail.len().min(dst.len());
    dst[..n].copy_from_slice(&avail[..n]);
    dst[n..].fill(0);
}
