//! File data: the writer pipeline from delayed ordered extents to extents on
//! disk with their checksums.
//!
//! 1. classify every file by its size and data runs (parallel): nothing,
//!    inline, raw extents, or compression candidates; with compression,
//!    files of up to a sector may go inline if they compress enough;
//! 2. size the data chunks for the worst case (with `--dedupe`, when that
//!    does not fit, duplicates are found first);
//! 3. run the streaming pipeline (`pipeline.rs`): ranges compressed in
//!    parallel ahead of the allocation point, addresses given strictly in
//!    (subvolume, inode, offset) order, writes and checksums in parallel
//!    batches, duplicates found and confirmed on the way, files of up to a
//!    sector sent inline or to an extent in their place in that order;
//! 4. read the files that go inline (compressed when that is smaller) on
//!    the cores the pipeline leaves idle, and the rest after it;
//! 5. trim the data chunks;
//! 6. flatten the extents per file.
//!
//! The order of allocation never depends on thread timing, so the image is
//! byte-identical whatever the thread count.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use btrfs_format::*;
use rayon::prelude::*;

use crate::compress::{compress, Compression};
use crate::layout::{ChunkSpec, Layout, MIB};
use crate::output::Output;
use crate::scan::{Kind, Node, Scan};
use crate::{Error, Result};

/// Largest data chunk we create (the kernel's own data chunks are up to 1 GiB
/// on small filesystems).
pub const DATA_CHUNK_MAX: u64 = 1 << 30;

/// Live counters for a progress display (updated by the workers).
#[derive(Debug, Default)]
pub struct Progress {
    /// Directory entries seen by the scan so far.
    pub scanned: AtomicU64,
    /// Set when the data step starts (the scan is over).
    pub data_started: std::sync::atomic::AtomicBool,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// File bytes read so far.
    pub bytes_in: AtomicU64,
    /// Bytes written to the image so far (compressed where compressed).
    pub bytes_out: AtomicU64,
}

impl Progress {
    /// A file that went inline: `ram` bytes read, `stored` kept in the tree.
    fn note_inline(&self, ram: u64, stored: usize) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(ram, Ordering::Relaxed);
        self.bytes_out.fetch_add(stored as u64, Ordering::Relaxed);
    }
}

/// How file data is stored.
#[derive(Debug, Clone)]
pub struct DataOptions {
    pub sectorsize: u64,
    pub csum: CsumType,
    pub inline_limit: u64,
    pub compression: Option<Compression>,
    pub dedupe: bool,
    pub chunk_max: u64,
    pub data_flags: u64,
    pub data_stripes: usize,
    /// File data in flight at once on the compression path.
    pub memory: u64,
    /// Where data chunks must end on the device (what `-b` leaves after the
    /// metadata), if anywhere. Compressed data, laid out for the worst case
    /// (nothing compresses), is then given the room there is; only if it
    /// does not fit once compressed does the import fail.
    pub data_end_max: Option<u64>,
}

/// One EXTENT_DATA item of a file pointing at a disk extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    pub subvol: usize,
    pub node: usize,
    pub file_offset: u64,
    /// Bytes of file data (whole sectors); also `ram_bytes`.
    pub num_bytes: u64,
    pub disk_bytenr: u64,
    pub disk_num_bytes: u64,
    pub compression: u8,
}

/// How one regular file is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Nothing on disk: empty or all holes.
    None,
    /// Inline in the fs tree; `data` is compressed when `compression` is set.
    Inline {
        data: Vec<u8>,
        ram: u64,
        compression: u8,
    },
    /// Indices into `DataPlan::extents`.
    Extents(std::ops::Range<usize>),
}

/// The result of writing all file data.
#[derive(Debug, Clone)]
pub struct DataPlan {
    pub extents: Vec<FileExtent>,
    /// Per subvolume, per node.
    pub files: Vec<Vec<FileData>>,
    /// Inode flags (COMPRESS, NOCOMPRESS) per subvolume, per node.
    pub inode_flags: Vec<Vec<u64>>,
    pub chunks: Vec<ChunkSpec>,
    /// Sorted allocated ranges, never spanning two chunks.
    pub allocated: Vec<(u64, u64)>,
    /// Checksums of every disk extent written: (disk_bytenr, sums).
    pub csums: Vec<(u64, Vec<u8>)>,
    /// Incompat bits the data needs (compression algorithms).
    pub incompat: u64,
    /// File bytes stored, and bytes they take on disk (data extents and inline).
    pub bytes_in: u64,
    pub bytes_on_disk: u64,
}

/// Sector-aligned data runs of a file, holes left out.
fn data_runs(node: &Node, sectorsize: u64) -> Result<Vec<(u64, u64)>> {
    let size = node.stat.size;
    let end = size.div_ceil(sectorsize) * sectorsize;
    // Fully allocated files need no hole search.
    if node.stat.allocated >= size {
        return Ok(vec![(0, end)]);
    }
    let f = crate::scan::open_source(&node.path)?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => {
                return Err(Error::source(
                    &node.path,
                    "cannot find data (SEEK_DATA)",
                    e.into(),
                ))
            }
        };
        if start >= size {
            break;
        }
        let stop = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(start)) {
            Ok(s) => s.min(size),
            Err(e) => {
                return Err(Error::source(
                    &node.path,
                    "cannot find holes (SEEK_HOLE)",
                    e.into(),
                ))
            }
        };
        let s = start / sectorsize * sectorsize;
        let e = (stop.div_ceil(sectorsize) * sectorsize).min(end);
        match runs.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => runs.push((s, e)),
        }
        pos = stop.max(start + 1);
    }
    Ok(runs)
}

/// The error for a file that ended before byte `at` of the `size` it was
/// scanned with.
fn shrank(path: &Path, at: u64, size: u64) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("file shrank while being read (ended before byte {at} of {size})"),
        ),
    )
}

/// Read exactly `buf.len()` bytes at `offset`, or fail naming the file.
fn read_exact_at(f: &File, path: &Path, buf: &mut [u8], offset: u64, size: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => return Err(shrank(path, offset + got as u64, size)),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::source(path, "cannot read", e)),
        }
    }
    Ok(())
}

pub(crate) fn check_size(f: &File, node: &Node) -> Result<()> {
    // fstat, not statx for every field: this runs once per file.
    let now = rustix::fs::fstat(f)
        .map_err(|e| Error::source(&node.path, "cannot stat", e.into()))?
        .st_size as u64;
    if now != node.stat.size {
        return Err(Error::io(
            &node.path,
            std::io::Error::other(format!(
                "file changed size while being read ({} bytes when scanned, {now} now)",
                node.stat.size
            )),
        ));
    }
    Ok(())
}

/// Fill `buf` with `node`'s bytes from `offset` on, zeros past the size it
/// was scanned with; returns how many bytes came from the file.
pub(crate) fn read_padded(f: &File, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let want = (buf.len() as u64).min(node.stat.size.saturating_sub(offset)) as usize;
    read_exact_at(f, &node.path, &mut buf[..want], offset, node.stat.size)?;
    buf[want..].fill(0);
    Ok(want)
}

/// [`read_padded`], then check that the file still has the size it was
/// scanned with. A read that reaches the scanned end asks for one byte
/// more: a file that grew returns it, one that shrank returns less, and
/// no `fstat` is needed (one per file was ~1.5% of a compressing run's
/// CPU, most files being read in one piece). Other reads `fstat`.
pub(crate) fn read_checked(f: &File, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let size = node.stat.size;
    let want = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
    if offset + want as u64 != size {
        let n = read_padded(f, node, offset, buf)?;
        check_size(f, node)?;
        return Ok(n);
    }
    let mut probe = [0u8; 1];
    let mut got = 0;
    loop {
        let mut bufs = [
            std::io::IoSliceMut::new(&mut buf[got..want]),
            std::io::IoSliceMut::new(&mut probe),
        ];
        let n = match rustix::io::preadv(f, &mut bufs, offset + got as u64) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::source(&node.path, "cannot read", e.into())),
        };
        got += n;
        if got > want {
            // Name the new size when fstat sees it; it may have changed back.
            check_size(f, node)?;
            return Err(Error::io(
                &node.path,
                std::io::Error::other(format!(
                    "file changed size while being read (it had {size} bytes when scanned)"
                )),
            ));
        }
        if n == 0 && got < want {
            return Err(shrank(&node.path, offset + got as u64, size));
        }
        // A short read that stops at the scanned end is the file's end.
        if got == want {
            break;
        }
    }
    buf[want..].fill(0);
    Ok(want)
}

/// File bytes of `[offset, offset + buf.len())` into `buf`, zero-padded past
/// EOF; the file must still have the size it was scanned with.
pub(crate) fn read_range_into(node: &Node, offset: u64, buf: &mut [u8]) -> Result<()> {
    let f = crate::scan::open_source(&node.path)?;
    read_checked(&f, node, offset, buf).map(|_| ())
}

/// File bytes of `[offset, offset+len)`, zero-padded past EOF.
pub(crate) fn read_range(node: &Node, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_range_into(node, offset, &mut buf)?;
    Ok(buf)
}

/// Allocator over the data chunks: hands out space at the cursor, never
/// across a chunk end or a superblock copy.
pub(crate) struct DataAlloc<'a> {
    chunks: &'a [ChunkSpec],
    excluded: Vec<Vec<(u64, u64)>>,
    chunk: usize,
    pub(crate) cursor: u64,
}

impl<'a> DataAlloc<'a> {
    pub(crate) fn new(chunks: &'a [ChunkSpec]) -> Self {
        DataAlloc {
            excluded: chunks.iter().map(|c| c.excluded()).collect(),
            cursor: chunks.first().map(|c| c.logical).unwrap_or(0),
            chunks,
            chunk: 0,
        }
    }

    /// The longest free piece at the cursor, at most `len`: (chunk index,
    /// address, length). Computed without moving the cursor.
    fn next_piece(&self, len: u64) -> Option<(usize, u64, u64)> {
        let (mut chunk, mut cursor) = (self.chunk, self.cursor);
        loop {
            let c = self.chunks.get(chunk)?;
            if cursor >= c.end() {
                chunk += 1;
                cursor = self.chunks.get(chunk)?.logical;
                continue;
            }
            if let Some(&(s, l)) = self.excluded[chunk]
                .iter()
                .find(|&&(s, l)| cursor >= s && cursor < s + l)
            {
                cursor = s + l;
                continue;
            }
            let limit = self.excluded[chunk]
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| s > cursor)
                .min()
                .unwrap_or(c.end())
                .min(c.end());
            return Some((chunk, cursor, len.min(limit - cursor)));
        }
    }

    /// Take the longest free piece at the cursor, at most `len`.
    pub(crate) fn alloc_upto(&mut self, len: u64) -> Option<(u64, u64)> {
        let (chunk, at, got) = self.next_piece(len)?;
        self.chunk = chunk;
        self.cursor = at + got;
        Some((at, got))
    }

    /// Where `alloc_upto(len)` would allocate, without allocating.
    pub(crate) fn peek_upto(&self, len: u64) -> (u64, u64) {
        self.next_piece(len)
            .map_or((u64::MAX, 0), |(_, at, got)| (at, got))
    }

    /// `len` contiguous bytes (skipping a piece too short to hold them).
    pub(crate) fn alloc_exact(&mut self, len: u64) -> Option<u64> {
        loop {
            // A piece too short is skipped (at most 128 KiB goes unused).
            let (at, got) = self.alloc_upto(len)?;
            if got == len {
                return Some(at);
            }
        }
    }
}

/// Lay out data chunks after the current end of the device holding `bytes`.
fn data_chunks(layout: &mut Layout, bytes: u64, opts: &DataOptions) -> Vec<ChunkSpec> {
    let (flags, stripes, chunk_max) = (opts.data_flags, opts.data_stripes, opts.chunk_max);
    let mut out = Vec::new();
    let mut remaining = bytes;
    loop {
        let mut len =
            (remaining.max(MIB).div_ceil(BTRFS_STRIPE_LEN) * BTRFS_STRIPE_LEN).min(chunk_max);
        // Room for superblock copies inside the chunk.
        let phys = layout.physical_end();
        let probe = ChunkSpec {
            logical: phys,
            length: len,
            flags,
            stripes: (0..stripes as u64).map(|i| phys + i * len).collect(),
        };
        let lost: u64 = probe.excluded().iter().map(|r| r.1).sum();
        len = (len + lost * 2).min(chunk_max);
        let c = layout.push_chunk(flags, len, stripes);
        let lost: u64 = c.excluded().iter().map(|r| r.1).sum();
        remaining = remaining.saturating_sub(c.length - lost);
        out.push(c);
        if remaining == 0 {
            return out;
        }
    }
}

/// Data chunks laid out on `before` into `layout` for `worst` bytes, or for
/// what fits before `opts.data_end_max` when compressing.
fn data_chunks_for(
    layout: &mut Layout,
    before: &Layout,
    worst: u64,
    opts: &DataOptions,
) -> Vec<ChunkSpec> {
    let chunks = data_chunks(layout, worst, opts);
    match (opts.compression, opts.data_end_max) {
        (Some(_), Some(max_end)) => fit_data_chunks(layout, before, chunks, max_end, opts),
        _ => chunks,
    }
}

/// Data chunks that end by `max_end` on the device, when `chunks` (laid out
/// on `before` into `layout`) do not: compressed data may fit in less than
/// its worst case. Chunks that do not fit even so are left for the caller to
/// refuse.
fn fit_data_chunks(
    layout: &mut Layout,
    before: &Layout,
    chunks: Vec<ChunkSpec>,
    max_end: u64,
    opts: &DataOptions,
) -> Vec<ChunkSpec> {
    let start = before.physical_end();
    if layout.physical_end() <= max_end || max_end <= start {
        return chunks;
    }
    // Superblock copies inside the chunks take room: shrink until it fits.
    let mut bytes = (max_end - start) / opts.data_stripes as u64;
    loop {
        let mut l = before.clone();
        let c = data_chunks(&mut l, bytes, opts);
        if l.physical_end() <= max_end || bytes <= MIB {
            *layout = l;
            return c;
        }
        let over = (l.physical_end() - max_end).div_ceil(opts.data_stripes as u64);
        bytes = bytes.saturating_sub(over.max(BTRFS_STRIPE_LEN)).max(MIB);
    }
}

/// Bytes of data chunks enough for every file with data extents, if nothing
/// compresses (compressed extents never split: room to skip short pieces).
fn worst_case(classes: &[Vec<Class>], opts: &DataOptions) -> u64 {
    let mut upper = 0u64;
    let mut compressed_ranges = 0u64;
    for c in classes.iter().flatten() {
        match c {
            Class::Raw { runs } | Class::MaybeInline { runs } => {
                upper += runs.iter().map(|r| r.1 - r.0).sum::<u64>()
            }
            Class::Compress { runs } => {
                let b: u64 = runs.iter().map(|r| r.1 - r.0).sum();
                upper += b;
                compressed_ranges += b.div_ceil(BTRFS_MAX_COMPRESSED);
            }
            _ => {}
        }
    }
    let slack = if compressed_ranges > 0 {
        4 * BTRFS_MAX_COMPRESSED * (upper / opts.chunk_max + 2)
    } else {
        0
    };
    upper + slack
}

/// Find duplicates before the pipeline (only when space is short): hash
/// every candidate in parallel, confirm byte for byte, and mark all but the
/// first file in order of each content as sharing its extents.
fn dedupe_prepass(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    classes: &mut [Vec<Class>],
    candidates: &mut [Vec<bool>],
) -> std::result::Result<(), Located> {
    let list = positions(candidates, |&c| c);
    let hashes: Vec<Result<u128>> = pool.install(|| {
        list.par_iter()
            .map(|&(si, ni)| {
                crate::pipeline::hash_file(&scan.subvols[si].nodes[ni], classes[si][ni].runs())
            })
            .collect()
    });
    // In file order: the first of each content owns it.
    let mut owners = crate::pipeline::Owners::default();
    for (&(si, ni), h) in list.iter().zip(hashes) {
        let node = &scan.subvols[si].nodes[ni];
        let at = |e| ((si, ni), e);
        let owner = owners.claim(
            node.stat.size,
            classes[si][ni].runs(),
            h.map_err(at)?,
            (si, ni),
        );
        if let Some(owner) = owner {
            let a = &scan.subvols[owner.0].nodes[owner.1].path;
            if same_content(a, &node.path).map_err(at)? {
                classes[si][ni] = Class::Dup { owner };
            }
        }
    }
    for c in candidates.iter_mut() {
        c.fill(false);
    }
    Ok(())
}

/// How a file was classified before its data is written.
#[derive(Debug, Clone)]
pub(crate) enum Class {
    Empty,
    Inline {
        data: Vec<u8>,
        ram: u64,
        compression: u8,
    },
    /// Goes inline; not read yet.
    InlineLater,
    /// Over the inline limit but within a sector: inline if it compresses to
    /// the limit (the kernel's rule for compressed inline extents), a raw
    /// extent otherwise. Decided in the pipeline, in its place in file
    /// order (before it when space is short and duplicates are found first).
    MaybeInline {
        runs: Vec<(u64, u64)>,
    },
    /// Data runs, written uncompressed.
    Raw {
        runs: Vec<(u64, u64)>,
    },
    /// Data runs, cut into ranges and compressed.
    Compress {
        runs: Vec<(u64, u64)>,
    },
    /// Same content as the given (subvolume, node), which owns the extents.
    Dup {
        owner: (usize, usize),
    },
}

fn classify(node: &Node, opts: &DataOptions) -> Result<Class> {
    if !matches!(node.kind, Kind::File) || node.stat.size == 0 {
        return Ok(Class::Empty);
    }
    let runs = data_runs(node, opts.sectorsize)?;
    if runs.is_empty() {
        return Ok(Class::Empty);
    }
    if node.stat.size <= opts.inline_limit {
        // Inline whether or not it compresses; read after the pipeline.
        return Ok(Class::InlineLater);
    }
    if opts.compression.is_some() && opts.inline_limit > 0 && node.stat.size <= opts.sectorsize {
        return Ok(Class::MaybeInline { runs });
    }
    // Whether the first range compresses is found out in the pipeline itself.
    match &opts.compression {
        None => Ok(Class::Raw { runs }),
        Some(_) => Ok(Class::Compress { runs }),
    }
}

/// An error and the file it concerns: (subvolume, node), which orders
/// failures as files are ordered.
type Located = ((usize, usize), Error);

/// A small file's bytes and their compression type: compressed when the
/// heuristic let it be tried and the result is smaller and fits inline,
/// raw (`BTRFS_COMPRESS_NONE`) otherwise.
fn read_small(node: &Node, opts: &DataOptions) -> Result<(Vec<u8>, u8)> {
    let raw = read_range(node, 0, node.stat.size)?;
    let padded_len = node.stat.size.div_ceil(opts.sectorsize) * opts.sectorsize;
    if let Some(inline) = inline_compressed(&raw, padded_len as usize, opts)? {
        return Ok(inline);
    }
    Ok((raw, BTRFS_COMPRESS_NONE))
}

/// The kernel's rule for compressed inline data: a file's bytes (`data`,
/// within a range of `padded_len` whose zeros pad the last sector) are
/// stored compressed inline when the heuristic lets them be tried and the
/// result is smaller and fits the inline limit. The heuristic sees the
/// padding, as the kernel's sees the page; the compressor sees the file's
/// bytes, as the kernel compresses up to its size. The compressed bytes
/// and their compression type, or none.
pub(crate) fn inline_compressed(
    data: &[u8],
    padded_len: usize,
    opts: &DataOptions,
) -> Result<Option<(Vec<u8>, u8)>> {
    let Some(c) = opts
        .compression
        .as_ref()
        .filter(|c| c.tries(data, padded_len))
    else {
        return Ok(None);
    };
    let z = compress(c, data, opts.sectorsize as usize)?;
    Ok((z.len() < data.len() && z.len() as u64 <= opts.inline_limit).then(|| (z, c.type_byte())))
}

/// Read (and, when that is smaller, compress) a file that goes inline.
fn inline_class(node: &Node, opts: &DataOptions) -> Result<Class> {
    let (data, compression) = read_small(node, opts)?;
    Ok(Class::Inline {
        data,
        ram: node.stat.size,
        compression,
    })
}

/// Decide every `MaybeInline` file (in parallel): inline and compressed, or
/// a raw extent. The raw ones did not compress (or the heuristic said they
/// would not), so they are NOCOMPRESS unless compression is forced, as a
/// file whose first range does not compress; those are returned. A file
/// that cannot be read becomes a raw extent too: the pipeline then meets
/// its error in file order.
fn decide_maybe_inline(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    classes: &mut [Vec<Class>],
    opts: &DataOptions,
    progress: &Progress,
) -> Vec<(usize, usize)> {
    let todo = positions(classes, |c| matches!(c, Class::MaybeInline { .. }));
    enum Decided {
        Inline(Vec<u8>, u8),
        Raw,
        Unread,
    }
    // Only what goes inline is kept: raw bytes would add up to the size of
    // every such file at once.
    let decided: Vec<Decided> = pool.install(|| {
        todo.par_iter()
            .map(
                |&(si, ni)| match read_small(&scan.subvols[si].nodes[ni], opts) {
                    Ok((z, t)) if t != BTRFS_COMPRESS_NONE => {
                        // Counted now, so that the bar moves while they are read.
                        progress.note_inline(scan.subvols[si].nodes[ni].stat.size, z.len());
                        Decided::Inline(z, t)
                    }
                    Ok(_) => Decided::Raw,
                    Err(_) => Decided::Unread,
                },
            )
            .collect()
    });
    let force = opts.compression.is_some_and(|c| c.force);
    let mut nocompress = Vec::new();
    for (&(si, ni), d) in todo.iter().zip(decided) {
        let c = &mut classes[si][ni];
        if let Decided::Inline(data, compression) = d {
            *c = Class::Inline {
                data,
                ram: scan.subvols[si].nodes[ni].stat.size,
                compression,
            };
            continue;
        }
        if let Class::MaybeInline { runs } = c {
            *c = Class::Raw {
                runs: std::mem::take(runs),
            };
        }
        if matches!(d, Decided::Raw) && !force {
            nocompress.push((si, ni));
        }
    }
    nocompress
}

/// `e`, the failure of the file at `at`, or the failure of a file that goes
/// inline before it: those are read last, so when an earlier step fails
/// they are read now, and the first failing file in order is reported.
fn first_in_order(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    classes: &mut [Vec<Class>],
    opts: &DataOptions,
    (at, e): Located,
) -> Error {
    match read_inline(pool, scan, classes, opts, &Progress::default()) {
        Err((first, earlier)) if first < at => earlier,
        _ => e,
    }
}

/// (subvolume, node) of every entry `keep` selects, in order: per-node
/// tables (classes, candidates) are laid out by subvolume, then node.
fn positions<T>(table: &[Vec<T>], keep: impl Fn(&T) -> bool) -> Vec<(usize, usize)> {
    let keep = &keep;
    table
        .iter()
        .enumerate()
        .flat_map(|(si, row)| {
            row.iter()
                .enumerate()
                .filter(move |(_, x)| keep(x))
                .map(move |(ni, _)| (si, ni))
        })
        .collect()
}

/// Read every file classified `InlineLater` (in parallel); on failure, the
/// first such file in (subvolume, inode) order and its error.
fn read_inline(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    classes: &mut [Vec<Class>],
    opts: &DataOptions,
    progress: &Progress,
) -> std::result::Result<(), Located> {
    let reads = InlineReads::new(scan, classes, opts, progress);
    reads.finish(pool, classes)
}

/// The reads of the files classified `InlineLater`, claimed one file at a
/// time by whichever thread is free: during the pipeline a thread of idle
/// priority (it only gets a core the pipeline leaves unused, as when its
/// workers wait on the disk), then every thread of the pool for the rest.
struct InlineReads<'a> {
    todo: Vec<(usize, usize)>,
    next: AtomicUsize,
    stop: AtomicBool,
    done: Vec<OnceLock<Result<Class>>>,
    scan: &'a Scan,
    opts: &'a DataOptions,
    progress: &'a Progress,
}

impl<'a> InlineReads<'a> {
    fn new(
        scan: &'a Scan,
        classes: &[Vec<Class>],
        opts: &'a DataOptions,
        progress: &'a Progress,
    ) -> Self {
        let todo = positions(classes, |c| matches!(c, Class::InlineLater));
        InlineReads {
            done: (0..todo.len()).map(|_| OnceLock::new()).collect(),
            todo,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            scan,
            opts,
            progress,
        }
    }

    /// Read files until none is left unclaimed (or `stop`).
    fn work(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&(si, ni)) = self.todo.get(i) else {
                return;
            };
            let c = inline_class(&self.scan.subvols[si].nodes[ni], self.opts);
            if let Ok(Class::Inline { data, ram, .. }) = &c {
                self.progress.note_inline(*ram, data.len());
            }
            let _ = self.done[i].set(c);
        }
    }

    /// Read them in a thread of idle priority while `run` runs; the pool
    /// reads the rest afterwards (unless `run` fails). Where idle priority
    /// cannot be had, or the pool has one thread (`-j 1`), nothing is read
    /// early.
    fn alongside<T, E>(
        &self,
        pool: &rayon::ThreadPool,
        run: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        std::thread::scope(|ts| {
            if pool.current_num_threads() > 1 && !self.todo.is_empty() {
                ts.spawn(|| {
                    if idle_priority() {
                        self.work();
                    }
                });
            }
            let outcome = run();
            if std::env::var_os("FORGE_MKFS_TIMING").is_some() {
                eprintln!(
                    "timing:   small files read alongside the pipeline: {} of {}",
                    self.next.load(Ordering::Relaxed).min(self.todo.len()),
                    self.todo.len()
                );
            }
            match &outcome {
                Ok(_) => {
                    pool.broadcast(|_| self.work());
                }
                Err(_) => self.stop.store(true, Ordering::Relaxed),
            }
            outcome
        })
    }

    /// Read what is left (in the pool) and put every result in `classes`;
    /// on failure, the first failing file in order and its error.
    fn finish(
        self,
        pool: &rayon::ThreadPool,
        classes: &mut [Vec<Class>],
    ) -> std::result::Result<(), Located> {
        pool.broadcast(|_| self.work());
        for (&(si, ni), c) in self.todo.iter().zip(self.done) {
            let c = c
                .into_inner()
                .unwrap_or_else(|| Err(Error::Internal("a small file was not read".into())));
            classes[si][ni] = c.map_err(|e| ((si, ni), e))?;
        }
        Ok(())
    }
}

/// Put the calling thread in the `SCHED_IDLE` class: it runs only on a core
/// nothing else wants. False where that is refused.
fn idle_priority() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that lives across the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

impl Class {
    /// The data runs of a file that goes through the pipeline (raw,
    /// compression candidate, or small and maybe inline); none otherwise.
    fn pipeline_runs(&self) -> Option<&[(u64, u64)]> {
        match self {
            Class::Raw { runs } | Class::Compress { runs } | Class::MaybeInline { runs } => {
                Some(runs)
            }
            _ => None,
        }
    }

    /// The data runs of a file with data extents (none otherwise).
    pub(crate) fn runs(&self) -> &[(u64, u64)] {
        self.pipeline_runs().unwrap_or(&[])
    }
}

/// Dedupe candidates: files with data whose (size, data runs) another file
/// shares. Only these are hashed.
fn dedupe_candidates(scan: &Scan, classes: &[Vec<Class>]) -> Vec<Vec<bool>> {
    use std::collections::HashMap;
    type Shape<'a> = (u64, &'a [(u64, u64)]);
    let mut count: HashMap<Shape, usize> = HashMap::new();
    for (si, sv) in classes.iter().enumerate() {
        for (ni, c) in sv.iter().enumerate() {
            if let Some(runs) = c.pipeline_runs() {
                *count
                    .entry((scan.subvols[si].nodes[ni].stat.size, runs))
                    .or_default() += 1;
            }
        }
    }
    classes
        .iter()
        .enumerate()
        .map(|(si, sv)| {
            sv.iter()
                .enumerate()
                .map(|(ni, c)| {
                    c.pipeline_runs().is_some_and(|runs| {
                        count[&(scan.subvols[si].nodes[ni].stat.size, runs)] > 1
                    })
                })
                .collect()
        })
        .collect()
}

pub(crate) fn same_content(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let mut fa = crate::scan::open_source(a)?;
    let mut fb = crate::scan::open_source(b)?;
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| Error::source(a, "cannot read", e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| Error::source(b, "cannot read", e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
    fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match f.read(&mut buf[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }
}

/// Append the per-sector checksums of `buf` to `sums`.
pub(crate) fn sector_sums(buf: &[u8], opts: &DataOptions, sums: &mut Vec<u8>) {
    let cs = opts.csum.size();
    let base = sums.len();
    sums.resize(base + buf.len() / opts.sectorsize as usize * cs, 0);
    for (i, sector) in buf.chunks(opts.sectorsize as usize).enumerate() {
        let at = base + i * cs;
        opts.csum.compute_into(sector, &mut sums[at..at + cs]);
    }
}

/// Classify, deduplicate, compress, place and write all file data.
pub fn write_all(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    layout: &mut Layout,
    out_for: &mut dyn FnMut(&Layout, u64) -> Result<Output>,
    opts: &DataOptions,
    progress: &Progress,
) -> Result<(Output, DataPlan)> {
    let ss = opts.sectorsize;
    let mut timing = crate::Timing::new(true);
    // 1. Classify.
    let flat: Vec<(usize, usize)> = scan
        .subvols
        .iter()
        .enumerate()
        .flat_map(|(si, sv)| (0..sv.nodes.len()).map(move |ni| (si, ni)))
        .collect();
    let files_total = flat
        .iter()
        .filter(|&&(si, ni)| matches!(scan.subvols[si].nodes[ni].kind, Kind::File))
        .count() as u64;
    progress.files_total.store(files_total, Ordering::Relaxed);
    progress.data_started.store(true, Ordering::Relaxed);
    progress.bytes_total.store(
        flat.iter()
            .map(|&(si, ni)| &scan.subvols[si].nodes[ni])
            .filter(|n| matches!(n.kind, Kind::File))
            .map(|n| n.stat.size)
            .sum(),
        Ordering::Relaxed,
    );
    let classified: Vec<Result<Class>> = pool.install(|| {
        flat.par_iter()
            .map(|&(si, ni)| classify(&scan.subvols[si].nodes[ni], opts))
            .collect()
    });
    let mut classes: Vec<Vec<Class>> = scan
        .subvols
        .iter()
        .map(|s| Vec::with_capacity(s.nodes.len()))
        .collect();
    let mut failed = None;
    for (&(si, ni), c) in flat.iter().zip(classified) {
        classes[si].push(c.unwrap_or_else(|e| {
            failed.get_or_insert(((si, ni), e));
            Class::Empty
        }));
    }
    if let Some(f) = failed {
        return Err(first_in_order(pool, scan, &mut classes, opts, f));
    }
    // Files without data are done already.
    let empty = positions(&classes, |c| matches!(c, Class::Empty))
        .into_iter()
        .filter(|&(si, ni)| matches!(scan.subvols[si].nodes[ni].kind, Kind::File))
        .count();
    progress
        .files_done
        .fetch_add(empty as u64, Ordering::Relaxed);
    timing.mark("classify");
    // Files compression may bring inline are decided in the pipeline: the
    // data chunks are sized as if they all stayed extents.
    let mut small_nocompress = Vec::new();
    // 2. Deduplication candidates (decided in the pipeline).
    let mut candidates = if opts.dedupe {
        dedupe_candidates(scan, &classes)
    } else {
        classes.iter().map(|sv| vec![false; sv.len()]).collect()
    };
    // Data chunks for the worst case: nothing compresses, nothing is shared.
    let before = layout.clone();
    let worst = worst_case(&classes, opts);
    let mut chunks = data_chunks_for(layout, &before, worst, opts);
    let out = match out_for(layout, worst) {
        Ok(out) => out,
        // That much space is not there (-b, or the disk): find the
        // duplicates first, reading every candidate once more, and size
        // for what is really stored.
        Err(Error::NoSpace(_)) if opts.dedupe => {
            // The prepass shares extents only: small files first learn
            // whether they go inline.
            small_nocompress = decide_maybe_inline(pool, scan, &mut classes, opts, progress);
            candidates = dedupe_candidates(scan, &classes);
            if let Err(f) = dedupe_prepass(pool, scan, &mut classes, &mut candidates) {
                return Err(first_in_order(pool, scan, &mut classes, opts, f));
            }
            // Copies found now are done: they share their owner's extents.
            for (si, ni) in positions(&classes, |c| matches!(c, Class::Dup { .. })) {
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                let size = scan.subvols[si].nodes[ni].stat.size;
                progress.bytes_in.fetch_add(size, Ordering::Relaxed);
            }
            *layout = before.clone();
            let worst = worst_case(&classes, opts);
            chunks = data_chunks_for(layout, &before, worst, opts);
            out_for(layout, worst)?
        }
        Err(e) => return Err(e),
    };
    timing.mark("open the output");
    // Written data leaves the page cache once on disk (see `Output`).
    out.set_drop_behind(true);
    let alloc = DataAlloc::new(&chunks);
    // 3. The pipeline: files with data extents in (subvolume, inode) order.
    let order: Vec<(usize, usize)> = flat
        .iter()
        .copied()
        .filter(|&(si, ni)| classes[si][ni].pipeline_runs().is_some())
        .collect();
    // 4. Files that go inline are read alongside: before the pipeline they
    // would delay the first write, and after it they would leave the cores
    // idle while the disk takes the pipeline's writes. Of two failures the
    // first file in order is reported, as if everything had been read in
    // order.
    let inline_reads = InlineReads::new(scan, &classes, opts, progress);
    let outcome = inline_reads.alongside(pool, || {
        crate::pipeline::run(
            pool,
            scan,
            &mut classes,
            &candidates,
            order,
            layout,
            alloc,
            &out,
            opts,
            progress,
        )
    });
    timing.mark("pipeline");
    let outcome = match outcome {
        Ok(o) => {
            inline_reads
                .finish(pool, &mut classes)
                .map_err(|(_, e)| e)?;
            o
        }
        Err(crate::pipeline::Failure {
            file: Some(at),
            error,
        }) => return Err(first_in_order(pool, scan, &mut classes, opts, (at, error))),
        // A bug (a panicked task, a stall): nothing to put in order.
        Err(crate::pipeline::Failure { file: None, error }) => return Err(error),
    };
    timing.mark("inline files");
    let per_node = outcome.per_node;
    let mut nocompress = outcome.nocompress;
    for (si, ni) in small_nocompress {
        nocompress[si][ni] = true;
    }
    let mut csums = outcome.csums;

    // 5. Trim the data chunks to what was used.
    let used_end = outcome.used_end;
    let mut kept = Vec::new();
    for (k, ch) in chunks.iter().enumerate() {
        let mut ch = ch.clone();
        if k > 0 && ch.logical >= used_end {
            layout.chunks.retain(|c| c.logical != ch.logical);
            continue;
        }
        if used_end < ch.end() {
            let len =
                (used_end - ch.logical).max(MIB).div_ceil(BTRFS_STRIPE_LEN) * BTRFS_STRIPE_LEN;
            let len = len.min(ch.length);
            if let Some(lc) = layout.chunks.iter_mut().find(|c| c.logical == ch.logical) {
                lc.length = len;
            }
            ch.length = len;
        }
        kept.push(ch);
    }

    // 6. Flatten per file; duplicates share their owner's extents.
    let mut extents = Vec::new();
    let mut files: Vec<Vec<FileData>> = Vec::new();
    let mut inode_flags: Vec<Vec<u64>> = Vec::new();
    let mut incompat = 0;
    let mut bytes_in = 0;
    let mut bytes_on_disk = 0;
    for (si, sv) in classes.into_iter().enumerate() {
        let mut f = Vec::with_capacity(sv.len());
        let mut fl = Vec::with_capacity(sv.len());
        for (ni, c) in sv.into_iter().enumerate() {
            let node = &scan.subvols[si].nodes[ni];
            let mut flags = 0;
            let data = match c {
                Class::Empty => FileData::None,
                Class::InlineLater => return Err(Error::Internal("small file left unread".into())),
                Class::Inline {
                    data,
                    ram,
                    compression,
                } => {
                    bytes_in += ram;
                    bytes_on_disk += data.len() as u64;
                    if compression != BTRFS_COMPRESS_NONE {
                        flags |= BTRFS_INODE_COMPRESS;
                    } else if opts.compression.is_some_and(|c| !c.force) {
                        // Its only range did not compress (or the heuristic
                        // said it would not): the rule of a first range.
                        flags |= BTRFS_INODE_NOCOMPRESS;
                    }
                    // Moved, not copied: small files add up.
                    FileData::Inline {
                        data,
                        ram,
                        compression,
                    }
                }
                // A small file still `MaybeInline` became an extent.
                Class::Raw { .. }
                | Class::Compress { .. }
                | Class::MaybeInline { .. }
                | Class::Dup { .. } => {
                    let (osi, oni) = match c {
                        Class::Dup { owner } => owner,
                        _ => (si, ni),
                    };
                    if nocompress[osi][oni] {
                        flags |= BTRFS_INODE_NOCOMPRESS;
                    }
                    let start = extents.len();
                    for e in &per_node[osi][oni] {
                        if e.compression != BTRFS_COMPRESS_NONE {
                            flags |= BTRFS_INODE_COMPRESS;
                        }
                        if !matches!(c, Class::Dup { .. }) {
                            bytes_on_disk += e.disk_num_bytes;
                        }
                        extents.push(FileExtent {
                            subvol: si,
                            node: ni,
                            ..*e
                        });
                    }
                    bytes_in += node.stat.size;
                    FileData::Extents(start..extents.len())
                }
            };
            if let Some(c) = &opts.compression {
                if flags & BTRFS_INODE_COMPRESS != 0 {
                    incompat |= c.incompat_flag();
                }
            }
            f.push(data);
            fl.push(flags);
        }
        files.push(f);
        inode_flags.push(fl);
    }
    csums.sort_by_key(|c| c.0);
    timing.mark("flatten");
    let mut allocated: Vec<(u64, u64)> = Vec::new();
    let chunk_of = |a: u64| kept.iter().position(|c| c.contains(a));
    for &(at, ref s) in &csums {
        let len = (s.len() / opts.csum.size()) as u64 * ss;
        match allocated.last_mut() {
            Some((st, l)) if *st + *l == at && chunk_of(*st) == chunk_of(at) => *l += len,
            _ => allocated.push((at, len)),
        }
    }
    Ok((
        out,
        DataPlan {
            extents,
            files,
            inode_flags,
            chunks: kept,
            allocated,
            csums,
            incompat,
            bytes_in,
            bytes_on_disk,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, ScanOptions};

    /// The idle-priority reader gets the cores the pipeline leaves unused:
    /// while `run` only waits, it reads every small file by itself, and the
    /// files read alongside are exactly the files read afterwards.
    #[test]
    fn small_files_are_read_on_idle_cores_during_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..300u32 {
            let body: Vec<u8> = (0..1 + i * 6).map(|k| (k * 7 + i) as u8).collect();
            std::fs::write(dir.path().join(format!("f{i:03}")), body).unwrap();
        }
        let tree = scan(dir.path(), &ScanOptions::default()).unwrap();
        let opts = DataOptions {
            sectorsize: 4096,
            csum: CsumType::Crc32c,
            inline_limit: 2048,
            compression: Compression::parse("zstd", false).unwrap(),
            dedupe: false,
            chunk_max: DATA_CHUNK_MAX,
            data_flags: BTRFS_BLOCK_GROUP_DATA,
            data_stripes: 1,
            memory: 1 << 20,
            data_end_max: None,
        };
        let classes: Vec<Vec<Class>> = tree
            .subvols
            .iter()
            .map(|sv| {
                sv.nodes
                    .iter()
                    .map(|n| classify(n, &opts).unwrap())
                    .collect()
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let progress = Progress::default();
        let reads = InlineReads::new(&tree, &classes, &opts, &progress);
        assert_eq!(reads.todo.len(), 300);
        let read_early = reads
            .alongside(&pool, || {
                let t = std::time::Instant::now();
                while reads.next.load(Ordering::Relaxed) < reads.todo.len()
                    && t.elapsed() < std::time::Duration::from_secs(20)
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok::<_, ()>(reads.done.iter().filter(|d| d.get().is_some()).count())
            })
            .unwrap();
        assert!(read_early >= 299, "only {read_early} of 300 read early");
        let mut early = classes.clone();
        reads.finish(&pool, &mut early).unwrap();
        let mut after = classes;
        read_inline(&pool, &tree, &mut after, &opts, &Progress::default()).unwrap();
        let inline = |c: &[Vec<Class>]| -> Vec<(Vec<u8>, u64, u8)> {
            c.iter()
                .flatten()
                .filter_map(|c| match c {
                    Class::Inline {
                        data,
                        ram,
                        compression,
                    } => Some((data.clone(), *ram, *compression)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(inline(&early).len(), 300);
        assert_eq!(inline(&early), inline(&after));
        assert_eq!(progress.files_done.load(Ordering::Relaxed), 300);
    }
}
