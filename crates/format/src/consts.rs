//! Constants from `btrfs_tree.h` and the btrfs on-disk format documentation.

/// "_BHRfS_M" as a little-endian u64.
pub const BTRFS_MAGIC: u64 = 0x4D5F_5366_5248_425F;
pub const BTRFS_SUPER_INFO_OFFSET: u64 = 0x10000;
pub const BTRFS_SUPER_INFO_SIZE: usize = 4096;
/// Superblock copies: 64 KiB, 64 MiB, 256 GiB.
pub const BTRFS_SUPER_MIRROR_MAX: usize = 3;
pub const BTRFS_SUPER_MIRROR_SHIFT: u32 = 12;
pub const BTRFS_SYSTEM_CHUNK_ARRAY_SIZE: usize = 2048;
pub const BTRFS_NUM_BACKUP_ROOTS: usize = 4;
pub const BTRFS_CSUM_SIZE: usize = 32;
pub const BTRFS_FSID_SIZE: usize = 16;
pub const BTRFS_UUID_SIZE: usize = 16;
pub const BTRFS_LABEL_SIZE: usize = 256;
pub const BTRFS_MAX_LEVEL: u8 = 8;
pub const BTRFS_NAME_LEN: usize = 255;
pub const BTRFS_STRIPE_LEN: u64 = 64 * 1024;
/// Chunk-level area the kernel never allocates from on a device.
pub const BTRFS_DEVICE_RANGE_RESERVED: u64 = 1024 * 1024;
/// Largest amount of file data one compressed extent may hold.
pub const BTRFS_MAX_COMPRESSED: u64 = 128 * 1024;
/// Largest uncompressed data extent the kernel creates.
pub const BTRFS_MAX_EXTENT_SIZE: u64 = 128 * 1024 * 1024;
pub const BTRFS_MAX_INLINE_DATA_SIZE_DEFAULT: u64 = 2048;

/// Byte offset of superblock copy `mirror` (0, 1, 2).
pub const fn btrfs_sb_offset(mirror: usize) -> u64 {
    let start = 16 * 1024;
    if mirror > 0 {
        start << (BTRFS_SUPER_MIRROR_SHIFT * mirror as u32)
    } else {
        BTRFS_SUPER_INFO_OFFSET
    }
}

// Object ids.
pub const BTRFS_DEV_STATS_OBJECTID: u64 = 0;
pub const BTRFS_ROOT_TREE_OBJECTID: u64 = 1;
pub const BTRFS_EXTENT_TREE_OBJECTID: u64 = 2;
pub const BTRFS_CHUNK_TREE_OBJECTID: u64 = 3;
pub const BTRFS_DEV_TREE_OBJECTID: u64 = 4;
pub const BTRFS_FS_TREE_OBJECTID: u64 = 5;
pub const BTRFS_ROOT_TREE_DIR_OBJECTID: u64 = 6;
pub const BTRFS_CSUM_TREE_OBJECTID: u64 = 7;
pub const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
pub const BTRFS_UUID_TREE_OBJECTID: u64 = 9;
pub const BTRFS_FREE_SPACE_TREE_OBJECTID: u64 = 10;
pub const BTRFS_BLOCK_GROUP_TREE_OBJECTID: u64 = 11;
pub const BTRFS_RAID_STRIPE_TREE_OBJECTID: u64 = 12;
pub const BTRFS_BALANCE_OBJECTID: u64 = -4i64 as u64;
pub const BTRFS_ORPHAN_OBJECTID: u64 = -5i64 as u64;
pub const BTRFS_TREE_LOG_OBJECTID: u64 = -6i64 as u64;
pub const BTRFS_TREE_LOG_FIXUP_OBJECTID: u64 = -7i64 as u64;
pub const BTRFS_TREE_RELOC_OBJECTID: u64 = -8i64 as u64;
pub const BTRFS_DATA_RELOC_TREE_OBJECTID: u64 = -9i64 as u64;
pub const BTRFS_EXTENT_CSUM_OBJECTID: u64 = -10i64 as u64;
pub const BTRFS_FREE_SPACE_OBJECTID: u64 = -11i64 as u64;
pub const BTRFS_FREE_INO_OBJECTID: u64 = -12i64 as u64;
pub const BTRFS_MULTIPLE_OBJECTIDS: u64 = -255i64 as u64;
pub const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
pub const BTRFS_LAST_FREE_OBJECTID: u64 = -256i64 as u64;
pub const BTRFS_FIRST_CHUNK_TREE_OBJECTID: u64 = 256;
pub const BTRFS_DEV_ITEMS_OBJECTID: u64 = 1;

// Item (key) types.
pub const BTRFS_INODE_ITEM_KEY: u8 = 1;
pub const BTRFS_INODE_REF_KEY: u8 = 12;
pub const BTRFS_INODE_EXTREF_KEY: u8 = 13;
pub const BTRFS_XATTR_ITEM_KEY: u8 = 24;
pub const BTRFS_VERITY_DESC_ITEM_KEY: u8 = 36;
pub const BTRFS_VERITY_MERKLE_ITEM_KEY: u8 = 37;
pub const BTRFS_ORPHAN_ITEM_KEY: u8 = 48;
pub const BTRFS_DIR_LOG_ITEM_KEY: u8 = 60;
pub const BTRFS_DIR_LOG_INDEX_KEY: u8 = 72;
pub const BTRFS_DIR_ITEM_KEY: u8 = 84;
pub const BTRFS_DIR_INDEX_KEY: u8 = 96;
pub const BTRFS_EXTENT_DATA_KEY: u8 = 108;
pub const BTRFS_EXTENT_CSUM_KEY: u8 = 128;
pub const BTRFS_ROOT_ITEM_KEY: u8 = 132;
pub const BTRFS_ROOT_BACKREF_KEY: u8 = 144;
pub const BTRFS_ROOT_REF_KEY: u8 = 156;
pub const BTRFS_EXTENT_ITEM_KEY: u8 = 168;
pub const BTRFS_METADATA_ITEM_KEY: u8 = 169;
pub const BTRFS_EXTENT_OWNER_REF_KEY: u8 = 172;
pub const BTRFS_TREE_BLOCK_REF_KEY: u8 = 176;
pub const BTRFS_EXTENT_DATA_REF_KEY: u8 = 178;
pub const BTRFS_SHARED_BLOCK_REF_KEY: u8 = 182;
pub const BTRFS_SHARED_DATA_REF_KEY: u8 = 184;
pub const BTRFS_BLOCK_GROUP_ITEM_KEY: u8 = 192;
pub const BTRFS_FREE_SPACE_INFO_KEY: u8 = 198;
pub const BTRFS_FREE_SPACE_EXTENT_KEY: u8 = 199;
pub const BTRFS_FREE_SPACE_BITMAP_KEY: u8 = 200;
pub const BTRFS_DEV_EXTENT_KEY: u8 = 204;
pub const BTRFS_DEV_ITEM_KEY: u8 = 216;
pub const BTRFS_CHUNK_ITEM_KEY: u8 = 228;
pub const BTRFS_RAID_STRIPE_KEY: u8 = 230;
pub const BTRFS_QGROUP_STATUS_KEY: u8 = 240;
pub const BTRFS_QGROUP_INFO_KEY: u8 = 242;
pub const BTRFS_QGROUP_LIMIT_KEY: u8 = 244;
pub const BTRFS_QGROUP_RELATION_KEY: u8 = 246;
pub const BTRFS_TEMPORARY_ITEM_KEY: u8 = 248;
pub const BTRFS_PERSISTENT_ITEM_KEY: u8 = 249;
pub const BTRFS_DEV_REPLACE_KEY: u8 = 250;
pub const BTRFS_UUID_KEY_SUBVOL: u8 = 251;
pub const BTRFS_UUID_KEY_RECEIVED_SUBVOL: u8 = 252;
pub const BTRFS_STRING_ITEM_KEY: u8 = 253;

// Tree block header flags.
pub const BTRFS_HEADER_FLAG_WRITTEN: u64 = 1 << 0;
pub const BTRFS_HEADER_FLAG_RELOC: u64 = 1 << 1;
pub const BTRFS_BACKREF_REV_SHIFT: u32 = 56;
pub const BTRFS_MIXED_BACKREF_REV: u64 = 1;

// Superblock flags.
pub const BTRFS_SUPER_FLAG_ERROR: u64 = 1 << 2;
pub const BTRFS_SUPER_FLAG_SEEDING: u64 = 1 << 32;
pub const BTRFS_SUPER_FLAG_METADUMP: u64 = 1 << 33;
pub const BTRFS_SUPER_FLAG_METADUMP_V2: u64 = 1 << 34;
pub const BTRFS_SUPER_FLAG_CHANGING_FSID: u64 = 1 << 35;
pub const BTRFS_SUPER_FLAG_CHANGING_FSID_V2: u64 = 1 << 36;

// Feature flags.
pub const BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE: u64 = 1 << 0;
pub const BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID: u64 = 1 << 1;
pub const BTRFS_FEATURE_COMPAT_RO_VERITY: u64 = 1 << 2;
pub const BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE: u64 = 1 << 3;

pub const BTRFS_FEATURE_INCOMPAT_MIXED_BACKREF: u64 = 1 << 0;
pub const BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL: u64 = 1 << 1;
pub const BTRFS_FEATURE_INCOMPAT_MIXED_GROUPS: u64 = 1 << 2;
pub const BTRFS_FEATURE_INCOMPAT_COMPRESS_LZO: u64 = 1 << 3;
pub const BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD: u64 = 1 << 4;
pub const BTRFS_FEATURE_INCOMPAT_BIG_METADATA: u64 = 1 << 5;
pub const BTRFS_FEATURE_INCOMPAT_EXTENDED_IREF: u64 = 1 << 6;
pub const BTRFS_FEATURE_INCOMPAT_RAID56: u64 = 1 << 7;
pub const BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA: u64 = 1 << 8;
pub const BTRFS_FEATURE_INCOMPAT_NO_HOLES: u64 = 1 << 9;
pub const BTRFS_FEATURE_INCOMPAT_METADATA_UUID: u64 = 1 << 10;
pub const BTRFS_FEATURE_INCOMPAT_RAID1C34: u64 = 1 << 11;
pub const BTRFS_FEATURE_INCOMPAT_ZONED: u64 = 1 << 12;
pub const BTRFS_FEATURE_INCOMPAT_EXTENT_TREE_V2: u64 = 1 << 13;
pub const BTRFS_FEATURE_INCOMPAT_RAID_STRIPE_TREE: u64 = 1 << 14;
pub const BTRFS_FEATURE_INCOMPAT_SIMPLE_QUOTA: u64 = 1 << 16;

// Block group / chunk type flags.
pub const BTRFS_BLOCK_GROUP_DATA: u64 = 1 << 0;
pub const BTRFS_BLOCK_GROUP_SYSTEM: u64 = 1 << 1;
pub const BTRFS_BLOCK_GROUP_METADATA: u64 = 1 << 2;
pub const BTRFS_BLOCK_GROUP_RAID0: u64 = 1 << 3;
pub const BTRFS_BLOCK_GROUP_RAID1: u64 = 1 << 4;
pub const BTRFS_BLOCK_GROUP_DUP: u64 = 1 << 5;
pub const BTRFS_BLOCK_GROUP_RAID10: u64 = 1 << 6;
pub const BTRFS_BLOCK_GROUP_RAID5: u64 = 1 << 7;
pub const BTRFS_BLOCK_GROUP_RAID6: u64 = 1 << 8;
pub const BTRFS_BLOCK_GROUP_RAID1C3: u64 = 1 << 9;
pub const BTRFS_BLOCK_GROUP_RAID1C4: u64 = 1 << 10;
pub const BTRFS_BLOCK_GROUP_TYPE_MASK: u64 =
    BTRFS_BLOCK_GROUP_DATA | BTRFS_BLOCK_GROUP_SYSTEM | BTRFS_BLOCK_GROUP_METADATA;
pub const BTRFS_BLOCK_GROUP_PROFILE_MASK: u64 = BTRFS_BLOCK_GROUP_RAID0
    | BTRFS_BLOCK_GROUP_RAID1
    | BTRFS_BLOCK_GROUP_DUP
    | BTRFS_BLOCK_GROUP_RAID10
    | BTRFS_BLOCK_GROUP_RAID5
    | BTRFS_BLOCK_GROUP_RAID6
    | BTRFS_BLOCK_GROUP_RAID1C3
    | BTRFS_BLOCK_GROUP_RAID1C4;

// Extent item flags.
pub const BTRFS_EXTENT_FLAG_DATA: u64 = 1 << 0;
pub const BTRFS_EXTENT_FLAG_TREE_BLOCK: u64 = 1 << 1;
pub const BTRFS_BLOCK_FLAG_FULL_BACKREF: u64 = 1 << 8;

// File extent types and compression.
pub const BTRFS_FILE_EXTENT_INLINE: u8 = 0;
pub const BTRFS_FILE_EXTENT_REG: u8 = 1;
pub const BTRFS_FILE_EXTENT_PREALLOC: u8 = 2;
pub const BTRFS_COMPRESS_NONE: u8 = 0;
pub const BTRFS_COMPRESS_ZLIB: u8 = 1;
pub const BTRFS_COMPRESS_LZO: u8 = 2;
pub const BTRFS_COMPRESS_ZSTD: u8 = 3;

// Directory entry file types.
pub const BTRFS_FT_UNKNOWN: u8 = 0;
pub const BTRFS_FT_REG_FILE: u8 = 1;
pub const BTRFS_FT_DIR: u8 = 2;
pub const BTRFS_FT_CHRDEV: u8 = 3;
pub const BTRFS_FT_BLKDEV: u8 = 4;
pub const BTRFS_FT_FIFO: u8 = 5;
pub const BTRFS_FT_SOCK: u8 = 6;
pub const BTRFS_FT_SYMLINK: u8 = 7;
pub const BTRFS_FT_XATTR: u8 = 8;
pub const BTRFS_FT_MAX: u8 = 9;

// Inode flags.
pub const BTRFS_INODE_NODATASUM: u64 = 1 << 0;
pub const BTRFS_INODE_NODATACOW: u64 = 1 << 1;
pub const BTRFS_INODE_READONLY: u64 = 1 << 2;
pub const BTRFS_INODE_NOCOMPRESS: u64 = 1 << 3;
pub const BTRFS_INODE_PREALLOC: u64 = 1 << 4;
pub const BTRFS_INODE_SYNC: u64 = 1 << 5;
pub const BTRFS_INODE_IMMUTABLE: u64 = 1 << 6;
pub const BTRFS_INODE_APPEND: u64 = 1 << 7;
pub const BTRFS_INODE_NODUMP: u64 = 1 << 8;
pub const BTRFS_INODE_NOATIME: u64 = 1 << 9;
pub const BTRFS_INODE_DIRSYNC: u64 = 1 << 10;
pub const BTRFS_INODE_COMPRESS: u64 = 1 << 11;
pub const BTRFS_INODE_ROOT_ITEM_INIT: u64 = 1 << 31;

// Root item flags.
pub const BTRFS_ROOT_SUBVOL_RDONLY: u64 = 1 << 0;
pub const BTRFS_ROOT_SUBVOL_DEAD: u64 = 1 << 48;

// Free space info flags.
pub const BTRFS_FREE_SPACE_USING_BITMAPS: u32 = 1 << 0;

// POSIX file type bits of `mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// Directory-entry type for an inode mode.
pub fn ft_from_mode(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => BTRFS_FT_REG_FILE,
        S_IFDIR => BTRFS_FT_DIR,
        S_IFCHR => BTRFS_FT_CHRDEV,
        S_IFBLK => BTRFS_FT_BLKDEV,
        S_IFIFO => BTRFS_FT_FIFO,
        S_IFSOCK => BTRFS_FT_SOCK,
        S_IFLNK => BTRFS_FT_SYMLINK,
        _ => BTRFS_FT_UNKNOWN,
    }
}

/// Name of a key type, as `btrfs inspect-internal dump-tree` prints it.
pub fn key_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        BTRFS_INODE_ITEM_KEY => "INODE_ITEM",
        BTRFS_INODE_REF_KEY => "INODE_REF",
        BTRFS_INODE_EXTREF_KEY => "INODE_EXTREF",
        BTRFS_XATTR_ITEM_KEY => "XATTR_ITEM",
        BTRFS_VERITY_DESC_ITEM_KEY => "VERITY_DESC_ITEM",
        BTRFS_VERITY_MERKLE_ITEM_KEY => "VERITY_MERKLE_ITEM",
        BTRFS_ORPHAN_ITEM_KEY => "ORPHAN_ITEM",
        BTRFS_DIR_LOG_ITEM_KEY => "DIR_LOG_ITEM",
        BTRFS_DIR_LOG_INDEX_KEY => "DIR_LOG_INDEX",
        BTRFS_DIR_ITEM_KEY => "DIR_ITEM",
        BTRFS_DIR_INDEX_KEY => "DIR_INDEX",
        BTRFS_EXTENT_DATA_KEY => "EXTENT_DATA",
        BTRFS_EXTENT_CSUM_KEY => "EXTENT_CSUM",
        BTRFS_ROOT_ITEM_KEY => "ROOT_ITEM",
        BTRFS_ROOT_BACKREF_KEY => "ROOT_BACKREF",
        BTRFS_ROOT_REF_KEY => "ROOT_REF",
        BTRFS_EXTENT_ITEM_KEY => "EXTENT_ITEM",
        BTRFS_METADATA_ITEM_KEY => "METADATA_ITEM",
        BTRFS_EXTENT_OWNER_REF_KEY => "EXTENT_OWNER_REF",
        BTRFS_TREE_BLOCK_REF_KEY => "TREE_BLOCK_REF",
        BTRFS_EXTENT_DATA_REF_KEY => "EXTENT_DATA_REF",
        BTRFS_SHARED_BLOCK_REF_KEY => "SHARED_BLOCK_REF",
        BTRFS_SHARED_DATA_REF_KEY => "SHARED_DATA_REF",
        BTRFS_BLOCK_GROUP_ITEM_KEY => "BLOCK_GROUP_ITEM",
        BTRFS_FREE_SPACE_INFO_KEY => "FREE_SPACE_INFO",
        BTRFS_FREE_SPACE_EXTENT_KEY => "FREE_SPACE_EXTENT",
        BTRFS_FREE_SPACE_BITMAP_KEY => "FREE_SPACE_BITMAP",
        BTRFS_DEV_EXTENT_KEY => "DEV_EXTENT",
        BTRFS_DEV_ITEM_KEY => "DEV_ITEM",
        BTRFS_CHUNK_ITEM_KEY => "CHUNK_ITEM",
        BTRFS_RAID_STRIPE_KEY => "RAID_STRIPE",
        BTRFS_QGROUP_STATUS_KEY => "QGROUP_STATUS",
        BTRFS_QGROUP_INFO_KEY => "QGROUP_INFO",
        BTRFS_QGROUP_LIMIT_KEY => "QGROUP_LIMIT",
        BTRFS_QGROUP_RELATION_KEY => "QGROUP_RELATION",
        BTRFS_TEMPORARY_ITEM_KEY => "TEMPORARY_ITEM",
        BTRFS_PERSISTENT_ITEM_KEY => "PERSISTENT_ITEM",
        BTRFS_DEV_REPLACE_KEY => "DEV_REPLACE",
        BTRFS_UUID_KEY_SUBVOL => "UUID_KEY_SUBVOL",
        BTRFS_UUID_KEY_RECEIVED_SUBVOL => "UUID_KEY_RECEIVED_SUBVOL",
        BTRFS_STRING_ITEM_KEY => "STRING_ITEM",
        _ => return None,
    })
}

/// Name of a well-known tree / object id, as `dump-tree` prints it.
pub fn objectid_name(id: u64) -> Option<&'static str> {
    Some(match id {
        BTRFS_ROOT_TREE_OBJECTID => "ROOT_TREE",
        BTRFS_EXTENT_TREE_OBJECTID => "EXTENT_TREE",
        BTRFS_CHUNK_TREE_OBJECTID => "CHUNK_TREE",
        BTRFS_DEV_TREE_OBJECTID => "DEV_TREE",
        BTRFS_FS_TREE_OBJECTID => "FS_TREE",
        BTRFS_ROOT_TREE_DIR_OBJECTID => "ROOT_TREE_DIR",
        BTRFS_CSUM_TREE_OBJECTID => "CSUM_TREE",
        BTRFS_QUOTA_TREE_OBJECTID => "QUOTA_TREE",
        BTRFS_UUID_TREE_OBJECTID => "UUID_TREE",
        BTRFS_FREE_SPACE_TREE_OBJECTID => "FREE_SPACE_TREE",
        BTRFS_BLOCK_GROUP_TREE_OBJECTID => "BLOCK_GROUP_TREE",
        BTRFS_RAID_STRIPE_TREE_OBJECTID => "RAID_STRIPE_TREE",
        BTRFS_BALANCE_OBJECTID => "BALANCE",
        BTRFS_ORPHAN_OBJECTID => "ORPHAN",
        BTRFS_TREE_LOG_OBJECTID => "TREE_LOG",
        BTRFS_TREE_LOG_FIXUP_OBJECTID => "TREE_LOG_FIXUP",
        BTRFS_TREE_RELOC_OBJECTID => "TREE_RELOC",
        BTRFS_DATA_RELOC_TREE_OBJECTID => "DATA_RELOC_TREE",
        BTRFS_EXTENT_CSUM_OBJECTID => "EXTENT_CSUM",
        BTRFS_FREE_SPACE_OBJECTID => "FREE_SPACE",
        BTRFS_FREE_INO_OBJECTID => "FREE_INO",
        BTRFS_MULTIPLE_OBJECTIDS => "MULTIPLE",
        _ => return None,
    })
}

/// Feature names, as `mkfs.btrfs -O` spells them, with their bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureBit {
    Incompat(u64),
    CompatRo(u64),
}

pub const INCOMPAT_NAMES: &[(u64, &str)] = &[
    (BTRFS_FEATURE_INCOMPAT_MIXED_BACKREF, "MIXED_BACKREF"),
    (BTRFS_FEATURE_INCOMPAT_DEFAULT_SUBVOL, "DEFAULT_SUBVOL"),
    (BTRFS_FEATURE_INCOMPAT_MIXED_GROUPS, "MIXED_GROUPS"),
    (BTRFS_FEATURE_INCOMPAT_COMPRESS_LZO, "COMPRESS_LZO"),
    (BTRFS_FEATURE_INCOMPAT_COMPRESS_ZSTD, "COMPRESS_ZSTD"),
    (BTRFS_FEATURE_INCOMPAT_BIG_METADATA, "BIG_METADATA"),
    (BTRFS_FEATURE_INCOMPAT_EXTENDED_IREF, "EXTENDED_IREF"),
    (BTRFS_FEATURE_INCOMPAT_RAID56, "RAID56"),
    (BTRFS_FEATURE_INCOMPAT_SKINNY_METADATA, "SKINNY_METADATA"),
    (BTRFS_FEATURE_INCOMPAT_NO_HOLES, "NO_HOLES"),
    (BTRFS_FEATURE_INCOMPAT_METADATA_UUID, "METADATA_UUID"),
    (BTRFS_FEATURE_INCOMPAT_RAID1C34, "RAID1C34"),
    (BTRFS_FEATURE_INCOMPAT_ZONED, "ZONED"),
    (BTRFS_FEATURE_INCOMPAT_EXTENT_TREE_V2, "EXTENT_TREE_V2"),
    (BTRFS_FEATURE_INCOMPAT_RAID_STRIPE_TREE, "RAID_STRIPE_TREE"),
    (BTRFS_FEATURE_INCOMPAT_SIMPLE_QUOTA, "SIMPLE_QUOTA"),
];

pub const COMPAT_RO_NAMES: &[(u64, &str)] = &[
    (BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE, "FREE_SPACE_TREE"),
    (
        BTRFS_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID,
        "FREE_SPACE_TREE_VALID",
    ),
    (BTRFS_FEATURE_COMPAT_RO_VERITY, "VERITY"),
    (BTRFS_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE, "BLOCK_GROUP_TREE"),
];

/// Names of the set bits of `flags` from `table`, plus any unknown remainder in hex.
pub fn flag_names(flags: u64, table: &[(u64, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = flags;
    for &(bit, name) in table {
        if flags & bit != 0 {
            out.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("0x{rest:x}"));
    }
    out
}

/// Human name of a block group's type and profile, e.g. `METADATA|DUP`.
pub fn block_group_flags_name(flags: u64) -> String {
    let mut s = Vec::new();
    for (bit, name) in [
        (BTRFS_BLOCK_GROUP_DATA, "DATA"),
        (BTRFS_BLOCK_GROUP_SYSTEM, "SYSTEM"),
        (BTRFS_BLOCK_GROUP_METADATA, "METADATA"),
    ] {
        if flags & bit != 0 {
            s.push(name);
        }
    }
    let profile = match flags & BTRFS_BLOCK_GROUP_PROFILE_MASK {
        0 => "single",
        BTRFS_BLOCK_GROUP_RAID0 => "RAID0",
        BTRFS_BLOCK_GROUP_RAID1 => "RAID1",
        BTRFS_BLOCK_GROUP_DUP => "DUP",
        BTRFS_BLOCK_GROUP_RAID10 => "RAID10",
        BTRFS_BLOCK_GROUP_RAID5 => "RAID5",
        BTRFS_BLOCK_GROUP_RAID6 => "RAID6",
        BTRFS_BLOCK_GROUP_RAID1C3 => "RAID1C3",
        BTRFS_BLOCK_GROUP_RAID1C4 => "RAID1C4",
        _ => "mixed-profile",
    };
    format!("{}|{}", s.join("|"), profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_mirror_offsets() {
        assert_eq!(btrfs_sb_offset(0), 64 * 1024);
        assert_eq!(btrfs_sb_offset(1), 64 * 1024 * 1024);
        assert_eq!(btrfs_sb_offset(2), 256 * 1024 * 1024 * 1024);
    }

    #[test]
    fn magic_spells_bhrfs() {
        assert_eq!(&BTRFS_MAGIC.to_le_bytes(), b"_BHRfS_M");
    }

    #[test]
    fn data_reloc_is_minus_nine() {
        assert_eq!(BTRFS_DATA_RELOC_TREE_OBJECTID, 18446744073709551607);
        assert_eq!(BTRFS_EXTENT_CSUM_OBJECTID, u64::MAX - 9);
    }

    #[test]
    fn ft_of_modes() {
        assert_eq!(ft_from_mode(0o100644), BTRFS_FT_REG_FILE);
        assert_eq!(ft_from_mode(0o040755), BTRFS_FT_DIR);
        assert_eq!(ft_from_mode(0o120777), BTRFS_FT_SYMLINK);
        assert_eq!(ft_from_mode(0o020600), BTRFS_FT_CHRDEV);
    }
}
