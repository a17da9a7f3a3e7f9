//! Fixed little-endian on-disk layouts, field names as in `btrfs_tree.h`.
//!
//! Every struct is `repr(C)` of unaligned little-endian fields, so its size is the
//! on-disk size (asserted below each one) and any byte slice of that size is a value.
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::consts::*;

macro_rules! ondisk {
    ($(#[$m:meta])* pub struct $name:ident ($size:expr) { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        impl $name {
            /// Size on disk in bytes.
            pub const SIZE: usize = $size;
            /// Decode from the start of `bytes`; errors if too short.
            pub fn read(bytes: &[u8]) -> Result<Self, crate::FormatError> {
                crate::read_struct(bytes, stringify!($name))
            }
        }
        impl Default for $name {
            fn default() -> Self { <$name as zerocopy::FromZeros>::new_zeroed() }
        }
        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_struct(stringify!($name))$(.field(stringify!($f), &self.$f))*.finish()
            }
        }
    };
}

ondisk! {
    /// `struct btrfs_disk_key`.
    pub struct DiskKey(17) {
        pub objectid: U64,
        pub type_: u8,
        pub offset: U64,
    }
}

ondisk! {
    /// `struct btrfs_timespec`.
    pub struct Timespec(12) {
        pub sec: U64,
        pub nsec: U32,
    }
}

ondisk! {
    /// `struct btrfs_dev_item`: one device, in the superblock and the chunk tree.
    pub struct DevItem(98) {
        pub devid: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub io_align: U32,
        pub io_width: U32,
        pub sector_size: U32,
        pub type_: U64,
        pub generation: U64,
        pub start_offset: U64,
        pub dev_group: U32,
        pub seek_speed: u8,
        pub bandwidth: u8,
        pub uuid: [u8; 16],
        pub fsid: [u8; 16],
    }
}

ondisk! {
    /// `struct btrfs_root_backup`: one of the superblock's four backup root sets.
    pub struct RootBackup(168) {
        pub tree_root: U64,
        pub tree_root_gen: U64,
        pub chunk_root: U64,
        pub chunk_root_gen: U64,
        pub extent_root: U64,
        pub extent_root_gen: U64,
        pub fs_root: U64,
        pub fs_root_gen: U64,
        pub dev_root: U64,
        pub dev_root_gen: U64,
        pub csum_root: U64,
        pub csum_root_gen: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub num_devices: U64,
        pub unused_64: [U64; 4],
        pub tree_root_level: u8,
        pub chunk_root_level: u8,
        pub extent_root_level: u8,
        pub fs_root_level: u8,
        pub dev_root_level: u8,
        pub csum_root_level: u8,
        pub unused_8: [u8; 10],
    }
}

ondisk! {
    /// `struct btrfs_super_block`, 4096 bytes at 64 KiB (and mirrors).
    pub struct SuperBlock(4096) {
        pub csum: [u8; 32],
        pub fsid: [u8; 16],
        pub bytenr: U64,
        pub flags: U64,
        pub magic: U64,
        pub generation: U64,
        pub root: U64,
        pub chunk_root: U64,
        pub log_root: U64,
        pub unused_log_root_transid: U64,
        pub total_bytes: U64,
        pub bytes_used: U64,
        pub root_dir_objectid: U64,
        pub num_devices: U64,
        pub sectorsize: U32,
        pub nodesize: U32,
        pub unused_leafsize: U32,
        pub stripesize: U32,
        pub sys_chunk_array_size: U32,
        pub chunk_root_generation: U64,
        pub compat_flags: U64,
        pub compat_ro_flags: U64,
        pub incompat_flags: U64,
        pub csum_type: U16,
        pub root_level: u8,
        pub chunk_root_level: u8,
        pub log_root_level: u8,
        pub dev_item: DevItem,
        pub label: [u8; 256],
        pub cache_generation: U64,
        pub uuid_tree_generation: U64,
        pub metadata_uuid: [u8; 16],
        pub nr_global_roots: U64,
        pub reserved: [U64; 27],
        pub sys_chunk_array: [u8; 2048],
        pub super_roots: [RootBackup; 4],
        pub padding: [u8; 565],
    }
}

impl SuperBlock {
    /// The uuid stamped into tree blocks: `metadata_uuid` with METADATA_UUID, else `fsid`.
    pub fn metadata_fsid(&self) -> [u8; 16] {
        if self.incompat_flags.get() & BTRFS_FEATURE_INCOMPAT_METADATA_UUID != 0 {
            self.metadata_uuid
        } else {
            self.fsid
        }
    }

    /// The label up to its first NUL.
    pub fn label_bytes(&self) -> &[u8] {
        let end = self
            .label
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.label.len());
        &self.label[..end]
    }
}

ondisk! {
    /// `struct btrfs_header`: the start of every tree block.
    pub struct Header(101) {
        pub csum: [u8; 32],
        pub fsid: [u8; 16],
        pub bytenr: U64,
        pub flags: U64,
        pub chunk_tree_uuid: [u8; 16],
        pub generation: U64,
        pub owner: U64,
        pub nritems: U32,
        pub level: u8,
    }
}

impl Header {
    /// Backref revision kept in the top byte of `flags`.
    pub fn backref_rev(&self) -> u64 {
        self.flags.get() >> BTRFS_BACKREF_REV_SHIFT
    }
}

ondisk! {
    /// `struct btrfs_item`: a leaf slot; `offset` is from the end of the header.
    pub struct Item(25) {
        pub key: DiskKey,
        pub offset: U32,
        pub size: U32,
    }
}

ondisk! {
    /// `struct btrfs_key_ptr`: a node slot pointing at a child block.
    pub struct KeyPtr(33) {
        pub key: DiskKey,
        pub blockptr: U64,
        pub generation: U64,
    }
}

ondisk! {
    /// `struct btrfs_inode_item`.
    pub struct InodeItem(160) {
        pub generation: U64,
        pub transid: U64,
        pub size: U64,
        pub nbytes: U64,
        pub block_group: U64,
        pub nlink: U32,
        pub uid: U32,
        pub gid: U32,
        pub mode: U32,
        pub rdev: U64,
        pub flags: U64,
        pub sequence: U64,
        pub reserved: [U64; 4],
        pub atime: Timespec,
        pub ctime: Timespec,
        pub mtime: Timespec,
        pub otime: Timespec,
    }
}

ondisk! {
    /// `struct btrfs_inode_ref`, followed by `name_len` bytes of name.
    pub struct InodeRef(10) {
        pub index: U64,
        pub name_len: U16,
    }
}

ondisk! {
    /// `struct btrfs_inode_extref`, followed by `name_len` bytes of name.
    pub struct InodeExtref(18) {
        pub parent_objectid: U64,
        pub index: U64,
        pub name_len: U16,
    }
}

ondisk! {
    /// `struct btrfs_dir_item`, followed by name and (for xattrs) data.
    pub struct DirItem(30) {
        pub location: DiskKey,
        pub transid: U64,
        pub data_len: U16,
        pub name_len: U16,
        pub type_: u8,
    }
}

ondisk! {
    /// `struct btrfs_root_item`.
    pub struct RootItem(439) {
        pub inode: InodeItem,
        pub generation: U64,
        pub root_dirid: U64,
        pub bytenr: U64,
        pub byte_limit: U64,
        pub bytes_used: U64,
        pub last_snapshot: U64,
        pub flags: U64,
        pub refs: U32,
        pub drop_progress: DiskKey,
        pub drop_level: u8,
        pub level: u8,
        pub generation_v2: U64,
        pub uuid: [u8; 16],
        pub parent_uuid: [u8; 16],
        pub received_uuid: [u8; 16],
        pub ctransid: U64,
        pub otransid: U64,
        pub stransid: U64,
        pub rtransid: U64,
        pub ctime: Timespec,
        pub otime: Timespec,
        pub stime: Timespec,
        pub rtime: Timespec,
        pub reserved: [U64; 8],
    }
}

/// Size of a root item written before `generation_v2` existed.
pub const ROOT_ITEM_LEGACY_SIZE: usize = 239;

impl RootItem {
    /// Decode a root item, accepting the short legacy form (zero-filling the rest).
    pub fn read_any(bytes: &[u8]) -> Result<Self, crate::FormatError> {
        if bytes.len() >= Self::SIZE {
            return Self::read(bytes);
        }
        if bytes.len() < ROOT_ITEM_LEGACY_SIZE {
            return Err(crate::FormatError::TooShort {
                what: "RootItem",
                need: ROOT_ITEM_LEGACY_SIZE,
                have: bytes.len(),
            });
        }
        let mut buf = [0u8; Self::SIZE];
        buf[..bytes.len()].copy_from_slice(bytes);
        Self::read(&buf)
    }
}

ondisk! {
    /// `struct btrfs_root_ref` (ROOT_REF and ROOT_BACKREF), followed by the name.
    pub struct RootRef(18) {
        pub dirid: U64,
        pub sequence: U64,
        pub name_len: U16,
    }
}

ondisk! {
    /// `struct btrfs_file_extent_item` header; inline data follows it directly.
    pub struct FileExtentItemHeader(21) {
        pub generation: U64,
        pub ram_bytes: U64,
        pub compression: u8,
        pub encryption: u8,
        pub other_encoding: U16,
        pub type_: u8,
    }
}

ondisk! {
    /// `struct btrfs_file_extent_item` for regular and prealloc extents.
    pub struct FileExtentItem(53) {
        pub generation: U64,
        pub ram_bytes: U64,
        pub compression: u8,
        pub encryption: u8,
        pub other_encoding: U16,
        pub type_: u8,
        pub disk_bytenr: U64,
        pub disk_num_bytes: U64,
        pub offset: U64,
        pub num_bytes: U64,
    }
}

ondisk! {
    /// `struct btrfs_extent_item`; inline backrefs follow.
    pub struct ExtentItem(24) {
        pub refs: U64,
        pub generation: U64,
        pub flags: U64,
    }
}

ondisk! {
    /// `struct btrfs_tree_block_info`: after a non-skinny tree block's extent item.
    pub struct TreeBlockInfo(18) {
        pub key: DiskKey,
        pub level: u8,
    }
}

ondisk! {
    /// `struct btrfs_extent_inline_ref` with its 8-byte offset (TREE_BLOCK_REF,
    /// SHARED_BLOCK_REF, EXTENT_OWNER_REF; for SHARED_DATA_REF a count follows).
    pub struct ExtentInlineRef(9) {
        pub type_: u8,
        pub offset: U64,
    }
}

ondisk! {
    /// `struct btrfs_extent_data_ref`: EXTENT_DATA_REF payload (inline after the type byte).
    pub struct ExtentDataRef(28) {
        pub root: U64,
        pub objectid: U64,
        pub offset: U64,
        pub count: U32,
    }
}

ondisk! {
    /// `struct btrfs_shared_data_ref`: SHARED_DATA_REF payload.
    pub struct SharedDataRef(4) {
        pub count: U32,
    }
}

ondisk! {
    /// `struct btrfs_block_group_item`.
    pub struct BlockGroupItem(24) {
        pub used: U64,
        pub chunk_objectid: U64,
        pub flags: U64,
    }
}

ondisk! {
    /// `struct btrfs_stripe`.
    pub struct Stripe(32) {
        pub devid: U64,
        pub offset: U64,
        pub dev_uuid: [u8; 16],
    }
}

ondisk! {
    /// `struct btrfs_chunk` without its stripes; `num_stripes` stripes follow.
    pub struct Chunk(48) {
        pub length: U64,
        pub owner: U64,
        pub stripe_len: U64,
        pub type_: U64,
        pub io_align: U32,
        pub io_width: U32,
        pub sector_size: U32,
        pub num_stripes: U16,
        pub sub_stripes: U16,
    }
}

ondisk! {
    /// `struct btrfs_dev_extent`.
    pub struct DevExtent(48) {
        pub chunk_tree: U64,
        pub chunk_objectid: U64,
        pub chunk_offset: U64,
        pub length: U64,
        pub chunk_tree_uuid: [u8; 16],
    }
}

ondisk! {
    /// `struct btrfs_free_space_info`.
    pub struct FreeSpaceInfo(8) {
        pub extent_count: U32,
        pub flags: U32,
    }
}

ondisk! {
    /// `struct btrfs_dev_stats_item` (PERSISTENT_ITEM of objectid DEV_STATS).
    pub struct DevStatsItem(40) {
        pub values: [U64; 5],
    }
}

ondisk! {
    /// `struct btrfs_qgroup_status_item`.
    pub struct QgroupStatusItem(40) {
        pub version: U64,
        pub generation: U64,
        pub flags: U64,
        pub rescan: U64,
        pub enable_gen: U64,
    }
}

ondisk! {
    /// `struct btrfs_qgroup_info_item`.
    pub struct QgroupInfoItem(40) {
        pub generation: U64,
        pub rfer: U64,
        pub rfer_cmpr: U64,
        pub excl: U64,
        pub excl_cmpr: U64,
    }
}

ondisk! {
    /// `struct btrfs_qgroup_limit_item`.
    pub struct QgroupLimitItem(40) {
        pub flags: U64,
        pub max_rfer: U64,
        pub max_excl: U64,
        pub rsv_rfer: U64,
        pub rsv_excl: U64,
    }
}

/// Orphan items and EXTENT_CSUM items have no fixed struct: an orphan item is empty
/// (its key names the inode), a csum item is a run of per-sector checksums, a UUID
/// item is a list of little-endian u64 subvolume ids, and a free-space bitmap is raw bits.
pub const ORPHAN_ITEM_SIZE: usize = 0;

/// Bytes of a tree block available to items (or key pointers) after the header.
pub const fn leaf_data_size(nodesize: u32) -> usize {
    nodesize as usize - Header::SIZE
}

/// Most key pointers one node holds.
pub const fn node_max_ptrs(nodesize: u32) -> usize {
    leaf_data_size(nodesize) / KeyPtr::SIZE
}

/// Largest csum item the kernel creates (keeps room for two item headers).
pub const fn max_csum_items(nodesize: u32, csum_size: usize) -> usize {
    (leaf_data_size(nodesize) - 2 * Item::SIZE) / csum_size - 1
}

/// Bytes of inline file data a leaf can hold (one item alone in a leaf).
pub const fn max_inline_item_data(nodesize: u32) -> usize {
    leaf_data_size(nodesize) - Item::SIZE - FileExtentItemHeader::SIZE
}

impl Timespec {
    pub fn new(sec: u64, nsec: u32) -> Self {
        Timespec {
            sec: sec.into(),
            nsec: nsec.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // byte-level fixtures read better field by field
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn superblock_field_offsets() {
        // Offsets from the kernel's struct btrfs_super_block.
        let mut sb = SuperBlock::default();
        sb.magic = BTRFS_MAGIC.into();
        sb.csum_type = 0xabcd.into();
        sb.sys_chunk_array[0] = 0x77;
        sb.label[0] = b'L';
        sb.cache_generation = 0x1122.into();
        let b = sb.as_bytes();
        assert_eq!(&b[0x40..0x48], b"_BHRfS_M");
        assert_eq!(&b[0xc4..0xc6], &[0xcd, 0xab]);
        assert_eq!(b[0x12b], b'L');
        assert_eq!(&b[0x22b..0x22d], &[0x22, 0x11]);
        assert_eq!(b[0x32b], 0x77);
        assert_eq!(core::mem::offset_of!(SuperBlock, dev_item), 0xc9);
        assert_eq!(core::mem::offset_of!(SuperBlock, super_roots), 0xb2b);
    }

    #[test]
    fn item_capacity_for_16k() {
        assert_eq!(leaf_data_size(16384), 16283);
        assert_eq!(node_max_ptrs(16384), 493);
        assert_eq!(node_max_ptrs(4096), 121);
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(matches!(
            RootItem::read(&[0u8; 100]),
            Err(crate::FormatError::TooShort {
                need: 439,
                have: 100,
                ..
            })
        ));
        assert!(RootItem::read_any(&[0u8; 239]).is_ok());
        assert!(Header::read(&[]).is_err());
    }
}
