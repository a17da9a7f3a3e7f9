//! Hashes that place items in trees.
//!
//! btrfs uses the raw CRC32C update (no pre/post inversion) with a chosen seed.
//! `crc32c::crc32c_append(c, d)` computes `!raw(!c, d)`, so `raw(s, d)` is
//! `!crc32c_append(!s, d)`.

fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Hash of a directory entry or xattr name: the offset of DIR_ITEM / XATTR_ITEM keys.
pub fn name_hash(name: &[u8]) -> u64 {
    crc32c_raw(!1u32, name) as u64
}

/// Offset of an INODE_EXTREF key: the name hashed with the parent inode as seed.
pub fn extref_hash(parent_objectid: u64, name: &[u8]) -> u64 {
    crc32c_raw(parent_objectid as u32, name) as u64
}

/// Offset of a keyed EXTENT_DATA_REF, and the order of inline data refs.
pub fn extent_data_ref_hash(root: u64, objectid: u64, offset: u64) -> u64 {
    let high = crc32c_raw(!0u32, &root.to_le_bytes());
    let mut low = crc32c_raw(!0u32, &objectid.to_le_bytes());
    low = crc32c_raw(low, &offset.to_le_bytes());
    ((high as u64) << 31) ^ (low as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_item_hash_matches_mkfs() {
        // mkfs.btrfs writes (ROOT_TREE_DIR DIR_ITEM 2378154706) for "default".
        assert_eq!(name_hash(b"default"), 2378154706);
    }

    #[test]
    fn raw_crc_matches_definition() {
        // raw with seed !0 then inverted is the standard crc32c.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xe3069283);
    }
}
