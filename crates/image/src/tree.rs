//! B-tree search and iteration.
//!
//! Every step down checks that the child has exactly the parent's level minus one,
//! the generation the parent pointer records, and a first key equal to the pointer's
//! key, and that its keys stay below the parent's next key. Together with strictly
//! ascending keys inside each block (checked when a block is read), a block can be
//! reached at most once per walk, so a hostile image cannot loop or explode a walk:
//! work is bounded by the number of blocks in the image, depth by 8 levels.
use btrfs_format::consts::*;
use btrfs_format::tree::TreeBlock;
use btrfs_format::{Key, RootItem};

use crate::error::{fmt_err, Error, Location, Result};
use crate::image::Image;

/// Where a tree starts: its root block and what that block must say about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Root {
    pub tree_id: u64,
    pub bytenr: u64,
    pub level: u8,
    pub generation: u64,
}

/// One leaf item: key, payload, and where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeItem<'a> {
    pub key: Key,
    pub data: &'a [u8],
    /// Logical address of the leaf holding the item.
    pub leaf: u64,
    pub slot: usize,
}

/// A block on the current path, with the slot being visited.
struct Frame<'a> {
    block: TreeBlock<'a>,
    bytenr: u64,
    slot: usize,
    /// Keys in this block must be below this (the parent's next key).
    upper: Option<Key>,
}

fn key_at(f: &Frame<'_>, i: usize) -> Result<Key> {
    f.block
        .key_at(i)
        .map_err(fmt_err(Location::TreeBlock(f.bytenr)))
}

/// Number of leading slots whose key satisfies `pred` (keys are verified sorted).
fn partition(f: &Frame<'_>, pred: impl Fn(Key) -> bool) -> Result<usize> {
    let (mut lo, mut hi) = (0, f.block.nritems());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(key_at(f, mid)?) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

impl Image {
    fn root_frame(&self, root: &Root) -> Result<Frame<'_>> {
        let block =
            self.read_tree_block_checked(root.bytenr, Some(root.level), Some(root.generation))?;
        Ok(Frame {
            block,
            bytenr: root.bytenr,
            slot: 0,
            upper: None,
        })
    }

    /// Child `slot` of node `parent`, checked against the pointer that leads to it.
    fn child_frame<'a>(&'a self, parent: &Frame<'a>, slot: usize) -> Result<Frame<'a>> {
        let pat = Location::TreeBlock(parent.bytenr);
        let ptr = parent.block.key_ptr(slot).map_err(fmt_err(pat))?;
        let bytenr = ptr.blockptr.get();
        let level = parent.block.level() - 1;
        let block =
            self.read_tree_block_checked(bytenr, Some(level), Some(ptr.generation.get()))?;
        let at = Location::TreeBlock(bytenr);
        let n = block.nritems();
        if n == 0 {
            return Err(Error::corrupt(
                at,
                format!("empty non-root block (parent {})", parent.bytenr),
            ));
        }
        let upper = if slot + 1 < parent.block.nritems() {
            Some(key_at(parent, slot + 1)?)
        } else {
            parent.upper
        };
        let f = Frame {
            block,
            bytenr,
            slot: 0,
            upper,
        };
        let first = key_at(&f, 0)?;
        let want = Key::from(ptr.key);
        if first != want {
            return Err(Error::corrupt(
                at,
                format!(
                    "first key {first} differs from key {want} in parent {}",
                    parent.bytenr
                ),
            ));
        }
        if let Some(u) = upper {
            let last = key_at(&f, n - 1)?;
            if last >= u {
                return Err(Error::corrupt(
                    at,
                    format!(
                        "last key {last} not below {u}, the next key in parent {}",
                        parent.bytenr
                    ),
                ));
            }
        }
        Ok(f)
    }

    /// Items of the tree at `root` in key order, from the first key `>= start`.
    pub fn iter_from(&self, root: &Root, start: Key) -> TreeIter<'_> {
        self.range(root, start, Key::MAX)
    }

    /// All items of the tree at `root`.
    pub fn iter(&self, root: &Root) -> TreeIter<'_> {
        self.iter_from(root, Key::MIN)
    }

    /// Items with `min <= key <= max`.
    pub fn range(&self, root: &Root, min: Key, max: Key) -> TreeIter<'_> {
        TreeIter {
            img: self,
            root: *root,
            start: min,
            end: max,
            path: Vec::new(),
            started: false,
            done: false,
        }
    }

    /// The item with exactly `key`.
    pub fn search(&self, root: &Root, key: Key) -> Result<Option<TreeItem<'_>>> {
        match self.find_le(root, key)? {
            Some(it) if it.key == key => Ok(Some(it)),
            _ => Ok(None),
        }
    }

    /// The item with the largest key `<= key`.
    pub fn find_le(&self, root: &Root, key: Key) -> Result<Option<TreeItem<'_>>> {
        let mut f = self.root_frame(root)?;
        loop {
            let p = partition(&f, |k| k <= key)?;
            if p == 0 {
                return Ok(None);
            }
            if f.block.level() == 0 {
                let it = f
                    .block
                    .item(p - 1)
                    .map_err(fmt_err(Location::TreeBlock(f.bytenr)))?;
                return Ok(Some(TreeItem {
                    key: it.key,
                    data: f.block.payload(&it),
                    leaf: f.bytenr,
                    slot: p - 1,
                }));
            }
            f = self.child_frame(&f, p - 1)?;
        }
    }

    /// Every block of the tree at `root`, parents before children, in key order.
    pub fn tree_blocks(&self, root: &Root) -> TreeBlocks<'_> {
        TreeBlocks {
            img: self,
            root: *root,
            stack: Vec::new(),
            started: false,
            done: false,
        }
    }

    /// Root of tree `tree_id`: root and chunk trees from the superblock, others from
    /// the last ROOT_ITEM of that objectid in the root tree.
    pub fn tree_root(&self, tree_id: u64) -> Result<Option<Root>> {
        match tree_id {
            BTRFS_ROOT_TREE_OBJECTID => Ok(Some(self.root_tree())),
            BTRFS_CHUNK_TREE_OBJECTID => Ok(Some(self.chunk_root())),
            _ => Ok(self.root_item(tree_id)?.map(|(_, ri)| Root {
                tree_id,
                bytenr: ri.bytenr.get(),
                level: ri.level,
                generation: ri.generation.get(),
            })),
        }
    }

    /// The last ROOT_ITEM of `tree_id` in the root tree, with its key.
    pub fn root_item(&self, tree_id: u64) -> Result<Option<(Key, RootItem)>> {
        let want = Key::new(tree_id, BTRFS_ROOT_ITEM_KEY, u64::MAX);
        let Some(it) = self.find_le(&self.root_tree(), want)? else {
            return Ok(None);
        };
        if it.key.objectid != tree_id || it.key.item_type != BTRFS_ROOT_ITEM_KEY {
            return Ok(None);
        }
        let at = Location::Item {
            tree: BTRFS_ROOT_TREE_OBJECTID,
            key: it.key,
        };
        let ri = RootItem::read_any(it.data).map_err(fmt_err(at))?;
        if ri.level >= BTRFS_MAX_LEVEL {
            return Err(Error::corrupt(
                at,
                format!("root level {} not below 8", ri.level),
            ));
        }
        Ok(Some((it.key, ri)))
    }

    /// Like [`Image::tree_root`], but a missing tree is an error.
    pub fn require_tree_root(&self, tree_id: u64) -> Result<Root> {
        self.tree_root(tree_id)?.ok_or_else(|| {
            Error::NotFound(format!("tree {tree_id} (no ROOT_ITEM in the root tree)"))
        })
    }
}

/// Iterator over the items of a tree in key order; stops after the first error.
pub struct TreeIter<'a> {
    img: &'a Image,
    root: Root,
    start: Key,
    end: Key,
    path: Vec<Frame<'a>>,
    started: bool,
    done: bool,
}

impl<'a> TreeIter<'a> {
    /// Descend to the leaf that holds `start` (or would), positioned at it.
    fn seek(&mut self) -> Result<()> {
        let start = self.start;
        self.path.push(self.img.root_frame(&self.root)?);
        loop {
            let Some(top) = self.path.last_mut() else {
                return Ok(());
            };
            if top.block.level() == 0 {
                top.slot = partition(top, |k| k < start)?;
                return Ok(());
            }
            top.slot = partition(top, |k| k <= start)?.saturating_sub(1);
            let child = {
                let top = &self.path[self.path.len() - 1];
                self.img.child_frame(top, top.slot)?
            };
            self.path.push(child);
        }
    }

    /// After a leaf is used up: the next leaf to the right, or an empty path.
    fn advance(&mut self) -> Result<()> {
        self.path.pop();
        while let Some(node) = self.path.last_mut() {
            node.slot += 1;
            if node.slot >= node.block.nritems() {
                self.path.pop();
                continue;
            }
            if key_at(node, node.slot)? > self.end {
                self.path.clear();
                return Ok(());
            }
            // Down the leftmost edge of the subtree at this slot.
            loop {
                let top = &self.path[self.path.len() - 1];
                if top.block.level() == 0 {
                    return Ok(());
                }
                let child = self.img.child_frame(top, top.slot)?;
                self.path.push(child);
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<TreeItem<'a>>> {
        if !self.started {
            self.started = true;
            self.seek()?;
        }
        loop {
            let Some(leaf) = self.path.last_mut() else {
                return Ok(None);
            };
            if leaf.slot < leaf.block.nritems() {
                let slot = leaf.slot;
                let it = leaf
                    .block
                    .item(slot)
                    .map_err(fmt_err(Location::TreeBlock(leaf.bytenr)))?;
                leaf.slot += 1;
                if it.key > self.end {
                    self.path.clear();
                    return Ok(None);
                }
                return Ok(Some(TreeItem {
                    key: it.key,
                    data: leaf.block.payload(&it),
                    leaf: leaf.bytenr,
                    slot,
                }));
            }
            self.advance()?;
        }
    }
}

impl<'a> Iterator for TreeIter<'a> {
    type Item = Result<TreeItem<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(it)) => Some(Ok(it)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// One tree block reached by [`Image::tree_blocks`].
#[derive(Clone, Copy)]
pub struct BlockRef<'a> {
    pub bytenr: u64,
    pub block: TreeBlock<'a>,
}

/// Pre-order walk over every block of a tree; stops after the first error.
pub struct TreeBlocks<'a> {
    img: &'a Image,
    root: Root,
    stack: Vec<Frame<'a>>,
    started: bool,
    done: bool,
}

impl<'a> TreeBlocks<'a> {
    fn step(&mut self) -> Result<Option<BlockRef<'a>>> {
        if !self.started {
            self.started = true;
            let f = self.img.root_frame(&self.root)?;
            let r = BlockRef {
                bytenr: f.bytenr,
                block: f.block,
            };
            self.stack.push(f);
            return Ok(Some(r));
        }
        while let Some(top) = self.stack.last_mut() {
            if top.block.level() == 0 || top.slot >= top.block.nritems() {
                self.stack.pop();
                continue;
            }
            let slot = top.slot;
            top.slot += 1;
            let child = {
                let top = &self.stack[self.stack.len() - 1];
                self.img.child_frame(top, slot)?
            };
            let r = BlockRef {
                bytenr: child.bytenr,
                block: child.block,
            };
            self.stack.push(child);
            return Ok(Some(r));
        }
        Ok(None)
    }
}

impl<'a> Iterator for TreeBlocks<'a> {
    type Item = Result<BlockRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
