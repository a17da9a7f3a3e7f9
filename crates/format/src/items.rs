//! Variable-length item payloads: several entries per item, names, inline refs.
use crate::consts::*;
use crate::structs::*;
use crate::{FormatError, Key};

/// A directory entry or xattr from a DIR_ITEM / DIR_INDEX / XATTR_ITEM payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub location: Key,
    pub transid: u64,
    pub file_type: u8,
    pub name: &'a [u8],
    pub data: &'a [u8],
}

/// All entries packed in a DIR_ITEM / XATTR_ITEM payload (hash collisions share one).
pub fn parse_dir_items(mut p: &[u8]) -> Result<Vec<DirEntry<'_>>, FormatError> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let d = DirItem::read(p)?;
        let nl = d.name_len.get() as usize;
        let dl = d.data_len.get() as usize;
        let end = DirItem::SIZE + nl + dl;
        if end > p.len() {
            return Err(FormatError::TooShort {
                what: "dir item name/data",
                need: end,
                have: p.len(),
            });
        }
        out.push(DirEntry {
            location: d.location.into(),
            transid: d.transid.get(),
            file_type: d.type_,
            name: &p[DirItem::SIZE..DirItem::SIZE + nl],
            data: &p[DirItem::SIZE + nl..end],
        });
        p = &p[end..];
    }
    Ok(out)
}

/// Encode one directory entry / xattr payload.
pub fn encode_dir_item(
    location: Key,
    transid: u64,
    file_type: u8,
    name: &[u8],
    data: &[u8],
    out: &mut Vec<u8>,
) {
    let d = DirItem {
        location: location.to_disk(),
        transid: transid.into(),
        data_len: (data.len() as u16).into(),
        name_len: (name.len() as u16).into(),
        type_: file_type,
    };
    out.extend_from_slice(zerocopy::IntoBytes::as_bytes(&d));
    out.extend_from_slice(name);
    out.extend_from_slice(data);
}

/// One back-reference name of an inode (from INODE_REF or INODE_EXTREF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeName<'a> {
    pub parent: u64,
    pub index: u64,
    pub name: &'a [u8],
}

/// Names in an INODE_REF payload; `parent` is the key offset.
pub fn parse_inode_refs(parent: u64, mut p: &[u8]) -> Result<Vec<InodeName<'_>>, FormatError> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let r = InodeRef::read(p)?;
        let end = InodeRef::SIZE + r.name_len.get() as usize;
        if end > p.len() {
            return Err(FormatError::TooShort {
                what: "inode ref name",
                need: end,
                have: p.len(),
            });
        }
        out.push(InodeName {
            parent,
            index: r.index.get(),
            name: &p[InodeRef::SIZE..end],
        });
        p = &p[end..];
    }
    Ok(out)
}

/// Names in an INODE_EXTREF payload.
pub fn parse_inode_extrefs(mut p: &[u8]) -> Result<Vec<InodeName<'_>>, FormatError> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let r = InodeExtref::read(p)?;
        let end = InodeExtref::SIZE + r.name_len.get() as usize;
        if end > p.len() {
            return Err(FormatError::TooShort {
                what: "inode extref name",
                need: end,
                have: p.len(),
            });
        }
        out.push(InodeName {
            parent: r.parent_objectid.get(),
            index: r.index.get(),
            name: &p[InodeExtref::SIZE..end],
        });
        p = &p[end..];
    }
    Ok(out)
}

/// A ROOT_REF / ROOT_BACKREF payload.
pub fn parse_root_ref(p: &[u8]) -> Result<(RootRef, &[u8]), FormatError> {
    let r = RootRef::read(p)?;
    let end = RootRef::SIZE + r.name_len.get() as usize;
    let name = p.get(RootRef::SIZE..end).ok_or(FormatError::TooShort {
        what: "root ref name",
        need: end,
        have: p.len(),
    })?;
    Ok((r, name))
}

/// A chunk item with its stripes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkWithStripes {
    pub chunk: Chunk,
    pub stripes: Vec<Stripe>,
}

impl ChunkWithStripes {
    /// Bytes of a chunk item with `n` stripes.
    pub fn size_for(n: usize) -> usize {
        Chunk::SIZE + n * Stripe::SIZE
    }

    pub fn parse(p: &[u8]) -> Result<Self, FormatError> {
        let chunk = Chunk::read(p)?;
        let n = chunk.num_stripes.get() as usize;
        if n == 0 {
            return Err(FormatError::invalid("chunk", "zero stripes"));
        }
        let need = Self::size_for(n);
        if p.len() < need {
            return Err(FormatError::TooShort {
                what: "chunk stripes",
                need,
                have: p.len(),
            });
        }
        let stripes = (0..n)
            .map(|i| Stripe::read(&p[Chunk::SIZE + i * Stripe::SIZE..]))
            .collect::<Result<_, _>>()?;
        Ok(ChunkWithStripes { chunk, stripes })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(zerocopy::IntoBytes::as_bytes(&self.chunk));
        for s in &self.stripes {
            out.extend_from_slice(zerocopy::IntoBytes::as_bytes(s));
        }
    }
}

/// The superblock's `sys_chunk_array`: (key, chunk) pairs of the SYSTEM chunks.
pub fn parse_sys_chunk_array(
    array: &[u8],
    size: usize,
) -> Result<Vec<(Key, ChunkWithStripes)>, FormatError> {
    if size > array.len() {
        return Err(FormatError::invalid(
            "sys_chunk_array",
            format!("size {size} exceeds {}", array.len()),
        ));
    }
    let mut p = &array[..size];
    let mut out = Vec::new();
    while !p.is_empty() {
        let key: Key = DiskKey::read(p)?.into();
        if key.item_type != BTRFS_CHUNK_ITEM_KEY {
            return Err(FormatError::invalid(
                "sys_chunk_array",
                format!(
                    "entry {} has key type {}, not CHUNK_ITEM",
                    out.len(),
                    key.item_type
                ),
            ));
        }
        p = &p[DiskKey::SIZE..];
        let c = ChunkWithStripes::parse(p)?;
        p = &p[ChunkWithStripes::size_for(c.stripes.len())..];
        out.push((key, c));
    }
    Ok(out)
}

/// One inline back-reference inside an EXTENT_ITEM / METADATA_ITEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InlineRef {
    TreeBlock {
        root: u64,
    },
    SharedBlock {
        parent: u64,
    },
    ExtentData {
        root: u64,
        objectid: u64,
        offset: u64,
        count: u32,
    },
    SharedData {
        parent: u64,
        count: u32,
    },
    ExtentOwner {
        root: u64,
    },
}

impl InlineRef {
    pub fn type_(&self) -> u8 {
        match self {
            InlineRef::TreeBlock { .. } => BTRFS_TREE_BLOCK_REF_KEY,
            InlineRef::SharedBlock { .. } => BTRFS_SHARED_BLOCK_REF_KEY,
            InlineRef::ExtentData { .. } => BTRFS_EXTENT_DATA_REF_KEY,
            InlineRef::SharedData { .. } => BTRFS_SHARED_DATA_REF_KEY,
            InlineRef::ExtentOwner { .. } => BTRFS_EXTENT_OWNER_REF_KEY,
        }
    }

    /// References this entry accounts for.
    pub fn count(&self) -> u64 {
        match self {
            InlineRef::ExtentData { count, .. } | InlineRef::SharedData { count, .. } => {
                *count as u64
            }
            InlineRef::ExtentOwner { .. } => 0,
            _ => 1,
        }
    }

    /// The within-type sort value of inline refs: in an extent item, types
    /// ascend and, within one type, this value descends (the kernel's tree
    /// checker rejects any other order).
    pub fn sort_offset(&self) -> u64 {
        match *self {
            InlineRef::TreeBlock { root } => root,
            InlineRef::SharedBlock { parent } => parent,
            InlineRef::ExtentData {
                root,
                objectid,
                offset,
                ..
            } => crate::hash::extent_data_ref_hash(root, objectid, offset),
            InlineRef::SharedData { parent, .. } => parent,
            InlineRef::ExtentOwner { root } => root,
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            InlineRef::ExtentData { .. } => 1 + ExtentDataRef::SIZE,
            InlineRef::SharedData { .. } => ExtentInlineRef::SIZE + SharedDataRef::SIZE,
            _ => ExtentInlineRef::SIZE,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.type_());
        match *self {
            InlineRef::TreeBlock { root: v }
            | InlineRef::SharedBlock { parent: v }
            | InlineRef::ExtentOwner { root: v } => out.extend_from_slice(&v.to_le_bytes()),
            InlineRef::ExtentData {
                root,
                objectid,
                offset,
                count,
            } => {
                out.extend_from_slice(&root.to_le_bytes());
                out.extend_from_slice(&objectid.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            InlineRef::SharedData { parent, count } => {
                out.extend_from_slice(&parent.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
        }
    }
}

/// A parsed EXTENT_ITEM / METADATA_ITEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentRecord {
    pub item: ExtentItem,
    /// Present for non-skinny tree block extent items.
    pub tree_block_info: Option<TreeBlockInfo>,
    pub refs: Vec<InlineRef>,
}

/// Parse an extent item payload; `key_type` tells skinny METADATA_ITEM from EXTENT_ITEM.
pub fn parse_extent_item(key_type: u8, p: &[u8]) -> Result<ExtentRecord, FormatError> {
    let item = ExtentItem::read(p)?;
    let mut rest = &p[ExtentItem::SIZE..];
    let is_tree = item.flags.get() & BTRFS_EXTENT_FLAG_TREE_BLOCK != 0;
    let tree_block_info = if is_tree && key_type == BTRFS_EXTENT_ITEM_KEY {
        let info = TreeBlockInfo::read(rest)?;
        rest = &rest[TreeBlockInfo::SIZE..];
        Some(info)
    } else {
        None
    };
    let mut refs = Vec::new();
    while !rest.is_empty() {
        let t = rest[0];
        let body = &rest[1..];
        let need_u64 = |b: &[u8]| -> Result<u64, FormatError> {
            b.get(..8)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
                .ok_or(FormatError::TooShort {
                    what: "inline ref",
                    need: 8,
                    have: b.len(),
                })
        };
        let (r, len) = match t {
            BTRFS_TREE_BLOCK_REF_KEY => (
                InlineRef::TreeBlock {
                    root: need_u64(body)?,
                },
                9,
            ),
            BTRFS_SHARED_BLOCK_REF_KEY => (
                InlineRef::SharedBlock {
                    parent: need_u64(body)?,
                },
                9,
            ),
            BTRFS_EXTENT_OWNER_REF_KEY => (
                InlineRef::ExtentOwner {
                    root: need_u64(body)?,
                },
                9,
            ),
            BTRFS_EXTENT_DATA_REF_KEY => {
                let d = ExtentDataRef::read(body)?;
                (
                    InlineRef::ExtentData {
                        root: d.root.get(),
                        objectid: d.objectid.get(),
                        offset: d.offset.get(),
                        count: d.count.get(),
                    },
                    1 + ExtentDataRef::SIZE,
                )
            }
            BTRFS_SHARED_DATA_REF_KEY => {
                let parent = need_u64(body)?;
                let c = SharedDataRef::read(&body[8..])?;
                (
                    InlineRef::SharedData {
                        parent,
                        count: c.count.get(),
                    },
                    13,
                )
            }
            other => {
                return Err(FormatError::invalid(
                    "extent item",
                    format!("unknown inline ref type {other}"),
                ))
            }
        };
        refs.push(r);
        rest = &rest[len..];
    }
    Ok(ExtentRecord {
        item,
        tree_block_info,
        refs,
    })
}

/// The inline payload of a file extent: header plus the data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileExtent<'a> {
    Inline {
        header: FileExtentItemHeader,
        data: &'a [u8],
    },
    Regular(FileExtentItem),
}

pub fn parse_file_extent(p: &[u8]) -> Result<FileExtent<'_>, FormatError> {
    let header = FileExtentItemHeader::read(p)?;
    match header.type_ {
        BTRFS_FILE_EXTENT_INLINE => Ok(FileExtent::Inline {
            header,
            data: &p[FileExtentItemHeader::SIZE..],
        }),
        BTRFS_FILE_EXTENT_REG | BTRFS_FILE_EXTENT_PREALLOC => {
            Ok(FileExtent::Regular(FileExtentItem::read(p)?))
        }
        t => Err(FormatError::invalid(
            "file extent",
            format!("unknown extent type {t}"),
        )),
    }
}

/// Key of a UUID tree entry for `uuid`: the two halves as little-endian u64s.
pub fn uuid_key(uuid: &[u8; 16], key_type: u8) -> Key {
    let (a, b) = uuid.split_at(8);
    Key::new(
        u64::from_le_bytes(a.try_into().unwrap_or([0; 8])),
        key_type,
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dir_items_round_trip() {
        let mut buf = Vec::new();
        encode_dir_item(
            Key::new(257, 1, 0),
            7,
            BTRFS_FT_REG_FILE,
            b"a",
            b"",
            &mut buf,
        );
        encode_dir_item(
            Key::new(258, 1, 0),
            7,
            BTRFS_FT_XATTR,
            b"user.x",
            b"val",
            &mut buf,
        );
        let e = parse_dir_items(&buf).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, b"user.x");
        assert_eq!(e[1].data, b"val");
        assert!(parse_dir_items(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn extent_item_inline_refs() {
        let mut p = Vec::new();
        let ei = ExtentItem {
            refs: 3.into(),
            generation: 1.into(),
            flags: BTRFS_EXTENT_FLAG_DATA.into(),
        };
        p.extend_from_slice(zerocopy::IntoBytes::as_bytes(&ei));
        let refs = [
            InlineRef::ExtentData {
                root: 5,
                objectid: 257,
                offset: 0,
                count: 2,
            },
            InlineRef::SharedData {
                parent: 30408704,
                count: 1,
            },
        ];
        for r in refs {
            r.encode(&mut p);
        }
        let rec = parse_extent_item(BTRFS_EXTENT_ITEM_KEY, &p).unwrap();
        assert_eq!(rec.refs, refs);
        assert_eq!(rec.refs.iter().map(|r| r.count()).sum::<u64>(), 3);
        assert!(parse_extent_item(BTRFS_EXTENT_ITEM_KEY, &p[..p.len() - 2]).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_dir_items(&bytes);
            let _ = parse_inode_refs(5, &bytes);
            let _ = parse_inode_extrefs(&bytes);
            let _ = parse_root_ref(&bytes);
            let _ = ChunkWithStripes::parse(&bytes);
            let _ = parse_sys_chunk_array(&bytes, bytes.len());
            let _ = parse_extent_item(BTRFS_EXTENT_ITEM_KEY, &bytes);
            let _ = parse_extent_item(BTRFS_METADATA_ITEM_KEY, &bytes);
            let _ = parse_file_extent(&bytes);
            if let Ok(tb) = crate::tree::TreeBlock::parse(&bytes) {
                for i in 0..tb.nritems() { let _ = tb.key_at(i); }
            }
        }

        #[test]
        fn inline_ref_round_trip(root in any::<u64>(), obj in any::<u64>(), off in any::<u64>(), count in any::<u32>()) {
            let r = InlineRef::ExtentData { root, objectid: obj, offset: off, count };
            let mut p = zerocopy::IntoBytes::as_bytes(&ExtentItem::default()).to_vec();
            r.encode(&mut p);
            prop_assert_eq!(p.len() - ExtentItem::SIZE, r.encoded_len());
            let rec = parse_extent_item(BTRFS_EXTENT_ITEM_KEY, &p).unwrap();
            prop_assert_eq!(rec.refs, vec![r]);
        }
    }
}
