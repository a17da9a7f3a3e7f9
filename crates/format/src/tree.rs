//! Tree blocks: header, leaf items and node key pointers, bounds-checked.
use crate::structs::{Header, Item, KeyPtr};
use crate::{FormatError, Key};

/// One leaf item: its key and the byte range of its payload inside the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafItem {
    pub key: Key,
    /// Offset of the payload from the start of the block.
    pub start: usize,
    pub size: usize,
}

/// A tree block as read from disk: header plus raw bytes.
#[derive(Clone, Copy)]
pub struct TreeBlock<'a> {
    pub header: Header,
    pub bytes: &'a [u8],
}

impl<'a> TreeBlock<'a> {
    /// Parse the header; item and pointer accessors check their own bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let header = Header::read(bytes)?;
        let tb = TreeBlock { header, bytes };
        let n = header.nritems.get() as usize;
        let (slot, what) = if header.level == 0 {
            (Item::SIZE, "leaf")
        } else {
            (KeyPtr::SIZE, "node")
        };
        let room = bytes.len().saturating_sub(Header::SIZE) / slot;
        if n > room {
            return Err(FormatError::invalid(
                "tree block",
                format!("{what} claims {n} items, room for {room}"),
            ));
        }
        Ok(tb)
    }

    pub fn level(&self) -> u8 {
        self.header.level
    }

    pub fn nritems(&self) -> usize {
        self.header.nritems.get() as usize
    }

    /// Item `i` of a leaf, with its payload range checked against the block.
    pub fn item(&self, i: usize) -> Result<LeafItem, FormatError> {
        let off = Header::SIZE + i * Item::SIZE;
        let it = Item::read(self.bytes.get(off..).unwrap_or(&[]))?;
        let start = Header::SIZE + it.offset.get() as usize;
        let size = it.size.get() as usize;
        let items_end = Header::SIZE + self.nritems() * Item::SIZE;
        if start < items_end || start.checked_add(size).is_none_or(|e| e > self.bytes.len()) {
            return Err(FormatError::invalid(
                "leaf item",
                format!(
                    "slot {i} payload offset {} size {size} outside data area {items_end}..{}",
                    it.offset.get(),
                    self.bytes.len()
                ),
            ));
        }
        Ok(LeafItem {
            key: it.key.into(),
            start,
            size,
        })
    }

    /// Payload bytes of a leaf item.
    pub fn payload(&self, it: &LeafItem) -> &'a [u8] {
        &self.bytes[it.start..it.start + it.size]
    }

    /// Key pointer `i` of a node.
    pub fn key_ptr(&self, i: usize) -> Result<KeyPtr, FormatError> {
        let off = Header::SIZE + i * KeyPtr::SIZE;
        KeyPtr::read(self.bytes.get(off..).unwrap_or(&[]))
    }

    /// Key of slot `i`, leaf or node.
    pub fn key_at(&self, i: usize) -> Result<Key, FormatError> {
        if self.level() == 0 {
            Ok(self.item(i)?.key)
        } else {
            Ok(self.key_ptr(i)?.key.into())
        }
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // byte-level fixtures read better field by field
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn rejects_item_outside_block() {
        let mut b = vec![0u8; 4096];
        let mut h = Header::default();
        h.nritems = 1.into();
        b[..Header::SIZE].copy_from_slice(h.as_bytes());
        let mut it = Item::default();
        it.offset = 4000.into();
        it.size = 200.into();
        b[Header::SIZE..Header::SIZE + Item::SIZE].copy_from_slice(it.as_bytes());
        let tb = TreeBlock::parse(&b).unwrap();
        assert!(tb.item(0).is_err());
        it.offset = 3000.into();
        b[Header::SIZE..Header::SIZE + Item::SIZE].copy_from_slice(it.as_bytes());
        let tb = TreeBlock::parse(&b).unwrap();
        assert_eq!(tb.item(0).unwrap().size, 200);
    }

    #[test]
    fn rejects_too_many_items() {
        let mut b = vec![0u8; 4096];
        let mut h = Header::default();
        h.nritems = 1000.into();
        b[..Header::SIZE].copy_from_slice(h.as_bytes());
        assert!(TreeBlock::parse(&b).is_err());
    }
}
