//! Verify a btrfs image: every tree block (each copy), every reference, extent and
//! checksum, as `btrfs check --readonly --check-data-csum` does, in parallel.
//!
//! Damage is reported as [`Finding`]s, never as errors; an error is only returned
//! when the image cannot be read at all (an I/O error). The checker is panic-free
//! on any input: every length, count and address from the image is checked before
//! use, walks are bounded by the number of distinct blocks, and allocations driven
//! by on-disk numbers are capped.
//!
//! ```no_run
//! let report = btrfs_check::check_path(std::path::Path::new("disk.img"), &Default::default()).unwrap();
//! for f in &report.findings {
//!     println!("{f}");
//! }
//! std::process::exit(report.exit_code());
//! ```
#![forbid(unsafe_code)]

mod chunks;
mod csum;
mod extents;
pub mod finding;
mod fs;
mod fst;
#[doc(hidden)]
pub mod fuzzing;
mod superblock;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use btrfs_format::consts::*;
use btrfs_format::tree::TreeBlock;
use btrfs_format::{CsumType, Key, RootItem};
use btrfs_image::{Image, Root};

use finding::Sink;
pub use finding::{FKey, Finding, Kind, Report, Severity, Stats};
use walk::{LeafRef, TreeKind, TreeSpec, WalkedTree};

/// Reports progress; `forge-fsck` draws a bar with it.
pub trait Progress: Send + Sync {
    /// A new phase with `total` units of work (blocks or bytes).
    fn phase(&self, name: &str, total: u64);
    /// `n` more units done.
    fn inc(&self, n: u64);
}

/// What to check and how.
#[derive(Clone)]
pub struct Options {
    /// Skip reading data: no data checksum comparison, no decompression.
    pub metadata_only: bool,
    /// Keep at most this many findings of each kind (the rest are counted).
    pub max_findings_per_kind: usize,
    /// Worker threads for the checks (0: all cores).
    pub threads: usize,
    /// Concurrent data reads in flight (0: 8).
    pub io_depth: usize,
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            metadata_only: false,
            max_findings_per_kind: 200,
            threads: 0,
            io_depth: 0,
            progress: None,
        }
    }
}

impl core::fmt::Debug for Options {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Options")
            .field("metadata_only", &self.metadata_only)
            .field("max_findings_per_kind", &self.max_findings_per_kind)
            .field("threads", &self.threads)
            .finish()
    }
}

/// The image could not be checked at all.
#[derive(Debug)]
pub enum CheckError {
    /// The file cannot be opened or read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Internal failure (thread pool).
    Internal(String),
}

impl core::fmt::Display for CheckError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CheckError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CheckError::Internal(s) => write!(f, "internal error: {s}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Shared state of one check.
pub(crate) struct Ctx<'a> {
    pub img: &'a Image,
    pub sink: &'a Sink,
    pub opts: &'a Options,
    pub sectorsize: u64,
    pub nodesize: u64,
    pub csum: CsumType,
    pub super_gen: u64,
    pub chunk_tree_uuid: Option<[u8; 16]>,
    pub copies: AtomicU64,
    pub data_bytes: AtomicU64,
}

impl Ctx<'_> {
    pub fn progress_inc(&self, n: u64) {
        if let Some(p) = &self.opts.progress {
            p.inc(n);
        }
    }

    pub fn phase(&self, name: &str, total: u64) {
        if let Some(p) = &self.opts.progress {
            p.phase(name, total);
        }
    }

    pub fn stats_copy(&self) {
        self.copies.fetch_add(1, Ordering::Relaxed);
    }

    pub fn incompat(&self, bit: u64) -> bool {
        self.img.superblock().incompat_flags.get() & bit != 0
    }

    pub fn compat_ro(&self, bit: u64) -> bool {
        self.img.superblock().compat_ro_flags.get() & bit != 0
    }

    /// The leaf block of `l` (already verified during the walk).
    pub fn leaf(&self, l: &LeafRef) -> Option<TreeBlock<'_>> {
        let b = self.img.read_physical(l.phys, self.nodesize).ok()?;
        TreeBlock::parse(b).ok()
    }
}

/// Report something the checker cannot verify (once per message kind is enough:
/// the sink caps repeats).
pub(crate) fn unsupported(ctx: &Ctx<'_>, tree: u64, bytenr: u64, msg: String) {
    ctx.sink.push(
        Finding::new(Severity::Unsupported, Kind::UnsupportedFeature, msg)
            .tree(tree)
            .bytenr(bytenr),
    );
}

/// One leaf item met while iterating a walked tree.
#[derive(Clone, Copy)]
pub(crate) struct Item<'a> {
    pub key: Key,
    pub data: &'a [u8],
    pub leaf: u64,
}

/// Items of a walked tree, in key order, from its verified leaves.
pub(crate) fn items<'a>(
    ctx: &'a Ctx<'a>,
    t: &'a WalkedTree,
) -> impl Iterator<Item = Item<'a>> + 'a {
    t.leaves.iter().flat_map(move |l| {
        let tb = ctx.leaf(l);
        let n = tb.as_ref().map_or(0, |t| t.nritems());
        (0..n).filter_map(move |i| {
            let tb = tb.as_ref()?;
            let it = tb.item(i).ok()?;
            Some(Item {
                key: it.key,
                data: tb.payload(&it),
                leaf: l.bytenr,
            })
        })
    })
}

/// Everything the walk found, for the semantic checks.
pub(crate) struct Walked {
    pub trees: Vec<WalkedTree>,
    pub blocks: std::collections::HashMap<u64, walk::BlockMeta>,
    pub tree_refs: Vec<walk::TreeRefRaw>,
    pub data_refs: Vec<walk::DataRefRaw>,
}

impl Walked {
    /// The walked tree with id `id` (the first, for ids with several root items).
    pub fn tree(&self, id: u64) -> Option<&WalkedTree> {
        self.trees
            .iter()
            .find(|t| t.spec.id == id && t.spec.kind != TreeKind::Log)
    }
}

/// Check the image file at `path`.
pub fn check_path(path: &Path, opts: &Options) -> Result<Report, CheckError> {
    let io = |source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // Seek rather than stat: a block device's metadata says 0 bytes.
    let len = {
        use std::io::Seek;
        (&f).seek(std::io::SeekFrom::End(0)).map_err(io)?
    };
    let sink = Sink::new(opts.max_findings_per_kind.max(1));
    let supers = superblock::read_copies(
        &|off, buf| {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(buf, off)
        },
        len,
    );
    let supers = supers.map_err(io)?;
    let open = |m: usize| Image::open_with_mirror(path, m);
    run(opts, &sink, &supers, len, &open)?;
    Ok(finish_report(sink))
}

/// Check an image held in memory.
pub fn check_bytes(bytes: Vec<u8>, opts: &Options) -> Report {
    let sink = Sink::new(opts.max_findings_per_kind.max(1));
    let len = bytes.len() as u64;
    let shared = Arc::new(bytes);
    let supers = superblock::read_copies(
        &|off, buf| {
            let s = usize::try_from(off)
                .ok()
                .and_then(|o| shared.get(o..o.checked_add(buf.len())?));
            match s {
                Some(s) => {
                    buf.copy_from_slice(s);
                    Ok(())
                }
                None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            }
        },
        len,
    )
    .unwrap_or_default();
    let open = |m: usize| Image::from_shared(shared.clone(), m);
    if let Err(e) = run(opts, &sink, &supers, len, &open) {
        sink.push(Finding::error(Kind::SuperblockInvalid, e.to_string()));
    }
    finish_report(sink)
}

/// The fuzzing entry point: check `bytes` as an image, metadata and data, and
/// never panic, hang or allocate without bound whatever they are.
pub fn fuzz_one(bytes: &[u8]) -> Report {
    let opts = Options {
        threads: 1,
        io_depth: 1,
        max_findings_per_kind: 20,
        ..Options::default()
    };
    check_bytes(bytes.to_vec(), &opts)
}

fn finish_report(sink: Sink) -> Report {
    let stats = sink.stats();
    let (mut findings, dropped) = sink.into_parts();
    // Stable order: errors first, then by kind, then by where.
    findings.sort_by(|a, b| {
        (
            a.severity, a.kind, a.tree, a.bytenr, a.key, a.ino, &a.message,
        )
            .cmp(&(
                b.severity, b.kind, b.tree, b.bytenr, b.key, b.ino, &b.message,
            ))
    });
    findings.dedup();
    let mut stats = stats;
    stats.findings_dropped = dropped;
    Report { findings, stats }
}

fn run(
    opts: &Options,
    sink: &Sink,
    supers: &[superblock::Copy],
    len: u64,
    open: &(dyn Fn(usize) -> btrfs_image::Result<Image> + Sync),
) -> Result<(), CheckError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| CheckError::Internal(format!("thread pool: {e}")))?;
    pool.install(|| {
        let Some(mirror) = superblock::check_copies(sink, supers) else {
            return Ok(());
        };
        let img = match open(mirror) {
            Ok(img) => img,
            Err(btrfs_image::Error::Io { path, source }) => {
                return Err(CheckError::Io { path, source })
            }
            Err(btrfs_image::Error::Unsupported(s)) => {
                sink.push(Finding::new(
                    Severity::Unsupported,
                    Kind::UnsupportedFeature,
                    format!("cannot check this image: {s}"),
                ));
                superblock::truncated(sink, supers, mirror, len);
                return Ok(());
            }
            Err(e) => {
                superblock::truncated(sink, supers, mirror, len);
                sink.push(Finding::error(
                    Kind::ChunkInvalid,
                    format!("cannot build the chunk map, nothing else can be checked: {e}"),
                ));
                return Ok(());
            }
        };
        check_image_into(&img, opts, sink, len);
        Ok(())
    })
}

/// Check an already opened image.
pub fn check_image(img: &Image, opts: &Options) -> Report {
    let sink = Sink::new(opts.max_findings_per_kind.max(1));
    check_image_into(img, opts, &sink, img.bytes().len() as u64);
    finish_report(sink)
}

fn check_image_into(img: &Image, opts: &Options, sink: &Sink, file_len: u64) {
    let sb = img.superblock();
    let chunk_tree_uuid = img
        .read_tree_block(sb.chunk_root.get())
        .ok()
        .map(|tb| tb.header.chunk_tree_uuid);
    let ctx = Ctx {
        img,
        sink,
        opts,
        sectorsize: sb.sectorsize.get() as u64,
        nodesize: sb.nodesize.get() as u64,
        csum: img.csum_type(),
        super_gen: sb.generation.get(),
        chunk_tree_uuid,
        copies: AtomicU64::new(0),
        data_bytes: AtomicU64::new(0),
    };
    let timing = std::env::var_os("FORGE_FSCK_TIMING").is_some();
    let t0 = std::time::Instant::now();
    let lap = |what: &str| {
        if timing {
            eprintln!(
                "forge-fsck: {what} done at {:.3} s",
                t0.elapsed().as_secs_f64()
            );
        }
    };
    superblock::check_fields(&ctx, file_len);
    ctx.phase("tree blocks", 0);
    let walked = walk_everything(&ctx);
    lap("walk");
    sink.add_stats(|s| {
        s.trees = walked.trees.len() as u64;
        s.tree_blocks = walked.blocks.len() as u64;
        s.tree_block_copies = ctx.copies.load(Ordering::Relaxed);
    });
    // Data is read (I/O bound, its own pool) while the metadata checks run.
    let (problems, (ext, fs_out)) = std::thread::scope(|s| {
        let data = (!opts.metadata_only).then(|| {
            std::thread::Builder::new()
                .spawn_scoped(s, || {
                    let p = csum::verify_data(&ctx, &walked);
                    lap("data");
                    p
                })
                .ok()
        });
        let bgs = chunks::block_groups(&ctx, &walked);
        let ext = extents::parse(&ctx, &walked, &bgs);
        let (fs_out, ()) = rayon::join(
            || fs::check(&ctx, &walked),
            || {
                rayon::join(
                    || chunks::check(&ctx, &walked, &bgs),
                    || {
                        rayon::join(
                            || extents::check(&ctx, &walked, &ext, &bgs),
                            || fst::check(&ctx, &walked, &ext, &bgs),
                        )
                    },
                );
            },
        );
        lap("metadata");
        let problems = match data.flatten() {
            Some(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            // No thread could be started: read the data here.
            None if !opts.metadata_only => csum::verify_data(&ctx, &walked),
            None => Vec::new(),
        };
        (problems, (ext, fs_out))
    });
    csum::check(&ctx, &walked, &ext, &fs_out, problems);
    lap("checksums and decompression");
    sink.add_stats(|s| {
        s.extent_items = ext.extents.len() as u64;
        s.inodes = fs_out.inodes;
        s.data_bytes_verified = ctx.data_bytes.load(Ordering::Relaxed);
        s.compressed_extents = fs_out.compressed.len() as u64;
    });
}

fn fill_leaves(ctx: &Ctx<'_>, shared: &walk::Shared, trees: &mut [WalkedTree], budget: &mut u64) {
    for t in trees {
        match shared.leaves_of(t.spec.root.bytenr, t.spec.root.level, budget) {
            Ok(l) => t.leaves = l,
            Err(()) => ctx.sink.push(
                Finding::new(
                    Severity::Unsupported,
                    Kind::UnsupportedFeature,
                    "too many trees share too many blocks: the contents of this tree are not checked",
                )
                .tree(t.spec.id),
            ),
        }
    }
}

/// Walk the root and chunk trees, then every tree the root items name.
fn walk_everything(ctx: &Ctx<'_>) -> Walked {
    let img = ctx.img;
    let sb = img.superblock();
    let shared = walk::Shared::new();
    let mut first = vec![
        TreeSpec {
            id: BTRFS_ROOT_TREE_OBJECTID,
            root: img.root_tree(),
            kind: TreeKind::Normal,
            dead: false,
            drop: None,
        },
        TreeSpec {
            id: BTRFS_CHUNK_TREE_OBJECTID,
            root: img.chunk_root(),
            kind: TreeKind::Normal,
            dead: false,
            drop: None,
        },
    ];
    if sb.log_root.get() != 0 {
        first.push(TreeSpec {
            id: BTRFS_TREE_LOG_OBJECTID,
            root: Root {
                tree_id: BTRFS_TREE_LOG_OBJECTID,
                bytenr: sb.log_root.get(),
                level: sb.log_root_level,
                generation: sb.generation.get().saturating_add(1),
            },
            kind: TreeKind::Log,
            dead: false,
            drop: None,
        });
    }
    let (mut trees, mut trefs, mut drefs) = walk::walk_all(ctx, first, &shared, 0);
    let mut budget = u64::MAX;
    fill_leaves(ctx, &shared, &mut trees, &mut budget);
    let mut specs = Vec::new();
    for t in &trees {
        if t.spec.id == BTRFS_CHUNK_TREE_OBJECTID {
            continue;
        }
        let is_log = t.spec.kind == TreeKind::Log;
        let src = t.spec.id;
        for it in items(ctx, t) {
            if it.key.item_type != BTRFS_ROOT_ITEM_KEY {
                continue;
            }
            let id = it.key.objectid;
            let Ok(ri) = RootItem::read_any(it.data) else {
                continue; // reported by the item size check
            };
            let bad = |m: String| {
                ctx.sink.push(
                    Finding::error(Kind::RootItem, m)
                        .tree(src)
                        .key(it.key)
                        .bytenr(it.leaf),
                );
            };
            let bytenr = ri.bytenr.get();
            let gen = ri.generation.get();
            let max_gen = ctx.super_gen.saturating_add(u64::from(is_log));
            if ri.level >= BTRFS_MAX_LEVEL {
                bad(format!("root of tree {id} has level {}", ri.level));
                continue;
            }
            if bytenr == 0 || bytenr % ctx.sectorsize != 0 {
                bad(format!("root of tree {id} at invalid address {bytenr}"));
                continue;
            }
            if gen > max_gen {
                bad(format!(
                    "root of tree {id} has generation {gen}, newer than the superblock's {max_gen}"
                ));
            }
            let kind = if is_log {
                TreeKind::Log
            } else if id == BTRFS_TREE_RELOC_OBJECTID {
                TreeKind::Reloc
            } else if walk::is_subvol_id(id) {
                TreeKind::Subvol
            } else {
                TreeKind::Normal
            };
            if is_log && id != BTRFS_TREE_LOG_OBJECTID {
                continue;
            }
            // A subvolume being deleted (no refs): its contents are not judged, and
            // once the drop has begun, what lies left of drop_progress at
            // drop_level is already freed and is not walked.
            let dead = kind == TreeKind::Subvol && ri.refs.get() == 0;
            let dp = Key::from(ri.drop_progress);
            let drop = (dead && dp != Key::MIN).then_some((dp, ri.drop_level));
            if matches!(id, BTRFS_ROOT_TREE_OBJECTID | BTRFS_CHUNK_TREE_OBJECTID) {
                bad(format!("root tree has a ROOT_ITEM for tree {id}"));
                continue;
            }
            specs.push(TreeSpec {
                id,
                root: Root {
                    tree_id: id,
                    bytenr,
                    level: ri.level,
                    generation: gen,
                },
                kind,
                dead,
                drop,
            });
        }
    }
    let base = trees.len();
    // Live trees first, so that a block shared with a subvolume being deleted
    // is claimed (and its references recorded) by a live tree; the dead tree
    // then owns only its exclusive blocks, where its drop progress applies.
    let (dead, live): (Vec<TreeSpec>, Vec<TreeSpec>) = specs.into_iter().partition(|s| s.dead);
    let (t2, r2, d2) = walk::walk_all(ctx, live, &shared, base);
    trees.extend(t2);
    trefs.extend(r2);
    drefs.extend(d2);
    let (t3, r3, d3) = walk::walk_all(ctx, dead, &shared, trees.len());
    trees.extend(t3);
    trefs.extend(r3);
    drefs.extend(d3);
    // Every tree's leaves, shared subtrees included: bounded work even when
    // a damaged image makes every root reach the same blocks.
    let mut budget = shared.blocks().saturating_mul(256).saturating_add(64 << 20);
    fill_leaves(ctx, &shared, &mut trees[base..], &mut budget);
    let blocks = walk::finish(ctx, shared);
    Walked {
        trees,
        blocks,
        tree_refs: trefs,
        data_refs: drefs,
    }
}
