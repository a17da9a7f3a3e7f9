//! The streaming data pipeline: delayed ordered extents are read and
//! compressed by the workers, allocated strictly in file order by one
//! coordinator through a bounded reorder window, then written and checksummed
//! by the workers in batches.
//!
//! No barrier stops the workers between these steps: the coordinator keeps the
//! pool fed with compression tasks ahead of the allocation point (within the
//! memory budget) and queues batches for the write lanes as soon as ranges
//! have addresses.
//! Allocation only ever depends on file contents and options, never on which
//! task finished first, so the image is byte-identical whatever the thread
//! count.
//!
//! The kernel's compression rule is followed by probing: of a file with
//! several ranges only the first is compressed at first; if it does not
//! compress the file is marked NOCOMPRESS and streamed raw, so incompressible
//! files cost one read, not a wasted compression of every range. Unless
//! compression is forced, a range is only given to the compressor when the
//! kernel's heuristic expects it to compress; a first range it rejects counts
//! as one that did not compress.
//!
//! A file of up to a sector over the inline limit is one range like any
//! other, whose outcome may also be an inline extent: read once, and decided
//! in file order with the rest.
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};

use btrfs_format::*;

use crate::compress::{compress_extent, worth_it};
use crate::data::{
    check_size, inline_compressed, read_checked, read_padded, read_range_into, same_content,
    sector_sums, Class, DataAlloc, DataOptions, FileExtent, Progress,
};
use crate::layout::Layout;
use crate::output::Output;
use crate::scan::{Node, Scan};
use crate::{Error, Result};

/// Bytes of one write task's staging buffer (and of one streamed I/O piece).
const STAGE: u64 = 1 << 20;
/// Most files between the allocation point and the newest admitted file.
const WINDOW_FILES: usize = 8192;
/// Range tasks queued or running per thread at most. The workers only need
/// the next task at hand; a longer queue only holds finished ranges in
/// memory, as when a file's first range comes back compressible and the
/// rest of it queues behind everything spawned meanwhile.
const RANGES_AHEAD_PER_THREAD: usize = 4;
/// How often the calling thread looks in on the pipeline (a safety net; the
/// workers coordinate themselves).
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_millis(2);
/// Candidates for deduplication of at most this many ranges are hashed from
/// their compression tasks; larger ones (and raw ones) by a reading task.
const HASH_FROM_RANGES: usize = 8;

/// What the pipeline hands back to `write_all`.
pub struct Outcome {
    /// Extents per subvolume, per node (owners only; duplicates are empty).
    pub per_node: Vec<Vec<Vec<FileExtent>>>,
    /// (logical address, per-sector checksums) of everything written.
    pub csums: Vec<(u64, Vec<u8>)>,
    /// Files stored uncompressed because their first range did not compress.
    pub nocompress: Vec<Vec<bool>>,
    /// Where the allocator stopped.
    pub used_end: u64,
}

/// Why the pipeline stopped: the error, and the file it concerns (its
/// subvolume and inode index), if any.
pub struct Failure {
    pub file: Option<(usize, usize)>,
    pub error: Error,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { file: None, error }
    }
}

/// A delayed ordered extent once read (and compressed when that pays).
struct RangeOut {
    /// The bytes that go to disk: compressed and sector padded, or raw.
    data: Vec<u8>,
    compressed: bool,
    /// The compressed bytes of a file of up to a sector that go inline
    /// (exactly, not padded), not to an extent.
    inline: bool,
    /// xxh3-128 of the raw range, for `--dedupe`.
    hash: u128,
}

enum Msg {
    Range {
        slot: usize,
        k: usize,
        charged: u64,
        out: Result<RangeOut>,
    },
    Hash {
        slot: usize,
        out: Result<u128>,
    },
    Confirm {
        slot: usize,
        same: Result<bool>,
    },
    Written {
        slot: usize,
        charged: u64,
        out: Result<Vec<(u64, Vec<u8>)>>,
    },
    /// A task not run: its file is past the first failure.
    Skipped {
        charged: u64,
        /// A range task (counted in `ranges_in_flight`).
        range: bool,
    },
}

/// Bytes to put at a logical address: a buffer, or file data streamed in.
enum PieceData {
    Buffer(Vec<u8>),
    Stream {
        subvol: usize,
        node: usize,
        file_offset: u64,
    },
}

struct Piece {
    logical: u64,
    len: u64,
    data: PieceData,
}

/// Pieces contiguous on every stripe, written by one task.
#[derive(Default)]
struct Batch {
    /// The window slot of its first piece's file.
    slot: usize,
    pieces: Vec<Piece>,
    phys: Vec<u64>,
    len: u64,
    charged: u64,
}

/// A file between admission and allocation.
struct FileState {
    si: usize,
    ni: usize,
    /// Delayed ordered extents (offset, length); empty for raw files.
    ranges: Vec<(u64, u64)>,
    outs: Vec<Option<RangeOut>>,
    /// Ranges handed to compression tasks so far (they are spawned in order).
    spawned: usize,
    /// Ranges given disk addresses so far.
    allocated: usize,
    /// Waiting for the first range to decide whether the file compresses.
    probing: bool,
    /// Stored uncompressed and streamed from the file.
    raw: bool,
    /// Up to a sector, over the inline limit: inline if it compresses
    /// enough (`Class::MaybeInline`).
    small: bool,
    nocompress: bool,
    candidate: bool,
    hashing: bool,
    hash: Option<u128>,
    dedupe_done: bool,
    confirming: Option<(usize, usize)>,
}

thread_local! {
    static STAGING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Delayed ordered extents of data runs: ≤128 KiB pieces, never across a run.
fn cut_ranges(runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in runs {
        let mut off = s;
        while off < e {
            let len = (e - off).min(BTRFS_MAX_COMPRESSED);
            out.push((off, len));
            off += len;
        }
    }
    out
}

/// The dedupe hash of a file: xxh3-128 over the hashes of its ranges.
fn combine(hashes: impl Iterator<Item = u128>) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for x in hashes {
        h.update(&x.to_le_bytes());
    }
    h.digest128()
}

/// Hash a file's ranges by reading it (the same bytes its ranges hold).
pub(crate) fn hash_file(node: &Node, runs: &[(u64, u64)]) -> Result<u128> {
    let f = crate::scan::open_source(&node.path)?;
    let mut buf = vec![0u8; BTRFS_MAX_COMPRESSED as usize];
    let mut hashes = Vec::new();
    let ranges = cut_ranges(runs);
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let buf = &mut buf[..len as usize];
        if i + 1 == ranges.len() {
            read_checked(&f, node, off, buf)?;
        } else {
            read_padded(&f, node, off, buf)?;
        }
        hashes.push(xxhash_rust::xxh3::xxh3_128(buf));
    }
    if ranges.is_empty() {
        check_size(&f, node)?;
    }
    Ok(combine(hashes.into_iter()))
}

/// Read and (when it pays) compress one delayed ordered extent. The file's
/// bytes are read into a buffer the thread keeps: most ranges compress, and
/// then only the (smaller) compressed bytes need a buffer of their own.
///
/// A `small` file (up to a sector, over the inline limit) is compressed
/// from its bytes alone, as the kernel compresses up to the file's size,
/// and goes inline when that fits the limit and is smaller; an extent of
/// it could not save a sector, so otherwise its bytes stay raw.
fn compress_range(
    node: &Node,
    off: u64,
    len: u64,
    small: bool,
    opts: &DataOptions,
) -> Result<RangeOut> {
    thread_local! {
        static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let ss = opts.sectorsize as usize;
    RAW.with_borrow_mut(|raw| {
        let len = len as usize;
        if raw.len() < len {
            raw.resize(len, 0);
        }
        let raw = &mut raw[..len];
        read_range_into(node, off, raw)?;
        let hash = if opts.dedupe {
            xxhash_rust::xxh3::xxh3_128(raw)
        } else {
            0
        };
        // The heuristic sees the whole range, with the zeros that pad its
        // last sector, as the kernel's sees the range's pages.
        if small {
            let size = (node.stat.size as usize).min(raw.len());
            if let Some((z, _)) = inline_compressed(&raw[..size], raw.len(), opts)? {
                return Ok(RangeOut {
                    data: z,
                    compressed: true,
                    inline: true,
                    hash,
                });
            }
        } else if let Some(c) = opts
            .compression
            .as_ref()
            .filter(|c| c.tries(raw, raw.len()))
        {
            let z = compress_extent(c, raw, ss)?;
            if worth_it(z.len(), raw.len(), ss) {
                return Ok(RangeOut {
                    data: z,
                    compressed: true,
                    inline: false,
                    hash,
                });
            }
        }
        Ok(RangeOut {
            data: raw.to_vec(),
            compressed: false,
            inline: false,
            hash,
        })
    })
}

/// Part of a write: bytes streamed into the staging buffer, or a piece's
/// own buffer (written from where it is, not copied to the staging buffer).
enum Part {
    Staged(std::ops::Range<usize>),
    Buffer(Vec<u8>),
}

/// Write one batch (one vectored positional write per MiB and stripe) and
/// return the checksums of each piece. Streamed file data is read into a
/// staging buffer; compressed extents are written from their own buffers.
fn write_batch(
    batch: Batch,
    scan: &Scan,
    out: &Output,
    opts: &DataOptions,
    progress: &Progress,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let Batch { pieces, phys, .. } = batch;
    STAGING.with(|st| {
        let mut st = st.borrow_mut();
        if st.len() < STAGE as usize {
            st.resize(STAGE as usize, 0);
        }
        // `queued` bytes in `parts`, of which `fill` in the staging buffer.
        let mut parts: Vec<Part> = Vec::new();
        let (mut queued, mut fill) = (0usize, 0usize);
        let mut flushed = 0u64;
        let flush = |st: &[u8], parts: &mut Vec<Part>, queued: usize, flushed: &mut u64| {
            let slices: Vec<&[u8]> = parts
                .iter()
                .map(|p| match p {
                    Part::Staged(r) => &st[r.clone()],
                    Part::Buffer(b) => &b[..],
                })
                .collect();
            for &p in &phys {
                out.reserve_ahead(p + *flushed + queued as u64)?;
                out.write_vectored_at(&slices, p + *flushed)?;
                // Let the disk start now: the flush before the superblock
                // then has little left to wait for.
                out.start_writeback(p + *flushed, queued as u64);
            }
            *flushed += queued as u64;
            parts.clear();
            Ok::<(), Error>(())
        };
        let mut result = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let mut sums =
                Vec::with_capacity((piece.len / opts.sectorsize) as usize * opts.csum.size());
            match piece.data {
                PieceData::Buffer(buf) => {
                    if queued + buf.len() > STAGE as usize {
                        flush(&st, &mut parts, queued, &mut flushed)?;
                        (queued, fill) = (0, 0);
                    }
                    sector_sums(&buf, opts, &mut sums);
                    queued += buf.len();
                    progress
                        .bytes_out
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    parts.push(Part::Buffer(buf));
                }
                PieceData::Stream {
                    subvol,
                    node,
                    file_offset,
                } => {
                    let node = &scan.subvols[subvol].nodes[node];
                    let f = crate::scan::open_source(&node.path)?;
                    let mut done = 0u64;
                    while done < piece.len {
                        if queued == STAGE as usize {
                            flush(&st, &mut parts, queued, &mut flushed)?;
                            (queued, fill) = (0, 0);
                        }
                        let n = (piece.len - done).min(STAGE - queued as u64) as usize;
                        let dst = &mut st[fill..fill + n];
                        let want = if done + n as u64 == piece.len {
                            read_checked(&f, node, file_offset + done, dst)?
                        } else {
                            read_padded(&f, node, file_offset + done, dst)?
                        };
                        sector_sums(dst, opts, &mut sums);
                        progress.bytes_in.fetch_add(want as u64, Ordering::Relaxed);
                        progress.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                        match parts.last_mut() {
                            Some(Part::Staged(r)) if r.end == fill => r.end += n,
                            _ => parts.push(Part::Staged(fill..fill + n)),
                        }
                        fill += n;
                        queued += n;
                        done += n as u64;
                    }
                }
            }
            result.push((piece.logical, sums));
        }
        if queued > 0 {
            flush(&st, &mut parts, queued, &mut flushed)?;
        }
        Ok(result)
    })
}

/// The data chunks hold the worst case (nothing compresses) unless `-b`
/// left less room: then compressed data did not fit.
fn data_chunks_full() -> Error {
    Error::NoSpace("the data does not fit the space -b leaves it, even compressed".into())
}

/// Owners of content for `--dedupe`, found in file order: content is
/// known by size, data runs and hash.
#[derive(Default)]
pub(crate) struct Owners(HashMap<ContentKey, (usize, usize)>);

/// Size, data runs and hash.
type ContentKey = (u64, Vec<(u64, u64)>, u128);

impl Owners {
    /// The earlier file with this content, to confirm byte for byte; or
    /// none, and `file`, the first with it, owns it.
    pub(crate) fn claim(
        &mut self,
        size: u64,
        runs: &[(u64, u64)],
        hash: u128,
        file: (usize, usize),
    ) -> Option<(usize, usize)> {
        match self.0.entry((size, runs.to_vec(), hash)) {
            std::collections::hash_map::Entry::Occupied(o) => Some(*o.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(file);
                None
            }
        }
    }
}

/// The coordinator's state.
struct Coordinator<'a> {
    scan: &'a Scan,
    classes: &'a mut [Vec<Class>],
    candidates: &'a [Vec<bool>],
    opts: &'a DataOptions,
    layout: &'a Layout,
    progress: &'a Progress,
    alloc: DataAlloc<'a>,
    order: Vec<(usize, usize)>,
    /// Next file of `order` to admit.
    next: usize,
    /// Files admitted and not yet allocated; the front is `order[base]`.
    window: VecDeque<FileState>,
    base: usize,
    /// Window slots whose remaining ranges may be spawned, earliest first.
    spawnable: BTreeSet<usize>,
    budget: u64,
    charged: u64,
    in_flight: usize,
    /// Range tasks spawned and not yet delivered.
    ranges_in_flight: usize,
    threads: usize,
    batch: Batch,
    owners: Owners,
    out: Outcome,
    /// The first failure in file order: (slot, error). Files before it are
    /// still finished, so the error reported never depends on timing.
    failed: Option<(usize, Error)>,
}

impl<'a> Coordinator<'a> {
    /// Files from this slot on are not processed (past the first failure).
    fn limit(&self) -> usize {
        self.failed.as_ref().map_or(usize::MAX, |(s, _)| *s)
    }

    /// As many range tasks queued or running as the workers need.
    fn range_queue_full(&self) -> bool {
        self.ranges_in_flight >= RANGES_AHEAD_PER_THREAD * self.threads
    }

    fn node(&self, si: usize, ni: usize) -> &'a Node {
        &self.scan.subvols[si].nodes[ni]
    }

    fn runs(&self, si: usize, ni: usize) -> &[(u64, u64)] {
        self.classes[si][ni].runs()
    }

    fn state(&mut self, slot: usize) -> Option<&mut FileState> {
        slot.checked_sub(self.base)
            .and_then(|i| self.window.get_mut(i))
    }
}

/// Run the pipeline over every file with data extents, in `order`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    pool: &rayon::ThreadPool,
    scan: &Scan,
    classes: &mut [Vec<Class>],
    candidates: &[Vec<bool>],
    order: Vec<(usize, usize)>,
    layout: &Layout,
    alloc: DataAlloc<'_>,
    out: &Output,
    opts: &DataOptions,
    progress: &Progress,
) -> std::result::Result<Outcome, Failure> {
    // The calling thread waits outside the pool; on a worker of a one-thread
    // pool nothing would ever run.
    if pool.current_thread_index().is_some() {
        return Err(Error::Internal(
            "the data pipeline must be started from outside its thread pool".into(),
        )
        .into());
    }
    let co = Coordinator {
        scan,
        classes,
        candidates,
        opts,
        layout,
        progress,
        alloc,
        order,
        next: 0,
        window: VecDeque::new(),
        base: 0,
        spawnable: BTreeSet::new(),
        budget: (opts.memory / 2).max(2 * BTRFS_MAX_COMPRESSED),
        charged: 0,
        in_flight: 0,
        ranges_in_flight: 0,
        threads: pool.current_num_threads().max(1),
        batch: Batch::default(),
        owners: Owners::default(),
        out: Outcome {
            per_node: scan
                .subvols
                .iter()
                .map(|s| vec![Vec::new(); s.nodes.len()])
                .collect(),
            csums: Vec::new(),
            nocompress: scan
                .subvols
                .iter()
                .map(|s| vec![false; s.nodes.len()])
                .collect(),
            used_end: 0,
        },
        failed: None,
    };
    let sh = Shared {
        co: Mutex::new(co),
        inbox: Mutex::new(Vec::new()),
        lane: Mutex::new(Lane::default()),
        lanes: if opts.compression.is_some() {
            1
        } else {
            pool.current_num_threads().max(1)
        },
        limit: AtomicUsize::new(usize::MAX),
        panicked: AtomicBool::new(false),
        scan,
        opts,
        out,
        progress,
    };
    pool.in_place_scope_fifo(|s| {
        // The first tasks; from then on the workers coordinate (`deliver`).
        // This thread only looks in now and then, as a safety net, and to
        // see the end.
        deliver(&sh, s, None);
        loop {
            std::thread::sleep(IDLE_CHECK);
            // After a panic the scope only waits for the remaining tasks,
            // which all skip their work.
            if sh.panicked.load(Ordering::SeqCst) {
                break;
            }
            deliver(&sh, s, None);
            let co = lock(&sh.co);
            if co.in_flight == 0 && lock(&sh.inbox).is_empty() {
                break;
            }
        }
    });
    if sh.panicked.load(Ordering::SeqCst) {
        return Err(Error::Internal(
            "a data pipeline task panicked (a bug); no filesystem was written".into(),
        )
        .into());
    }
    let co = sh.co.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some((slot, error)) = co.failed {
        return Err(Failure {
            file: co.order.get(slot).copied(),
            error,
        });
    }
    if !(co.window.is_empty() && co.next == co.order.len()) {
        return Err(Error::Internal("data pipeline stalled with no task in flight".into()).into());
    }
    let mut outcome = co.out;
    outcome.used_end = co.alloc.cursor;
    Ok(outcome)
}

/// What the coordinator and every task share.
struct Shared<'a> {
    co: Mutex<Coordinator<'a>>,
    /// Results of finished tasks not yet seen by the coordinator.
    inbox: Mutex<Vec<Msg>>,
    /// Batches waiting to be written.
    lane: Mutex<Lane>,
    /// Most write lanes at once: one when compressing, so that writers never
    /// queue on the image file's lock (the kernel spins for it) while there
    /// is compression to do; one per thread when streaming raw data, whose
    /// reads and checksums are the work.
    lanes: usize,
    /// Tasks of this slot and later are skipped (set at the first failure).
    limit: AtomicUsize,
    panicked: AtomicBool,
    scan: &'a Scan,
    opts: &'a DataOptions,
    out: &'a Output,
    progress: &'a Progress,
}

/// The write lanes' queue.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Batch>,
    running: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hand a finished task's result to the coordinator, and coordinate if no
/// other thread is doing it right now. Whoever holds the coordinator drains
/// the inbox before letting go, so no result waits for a wake-up: no thread
/// sleeps on a channel, and the workers never context-switch to hand over.
fn deliver<'scope, 'a: 'scope>(
    sh: &'scope Shared<'a>,
    s: &rayon::ScopeFifo<'scope>,
    msg: Option<Msg>,
) {
    if let Some(m) = msg {
        lock(&sh.inbox).push(m);
    }
    if sh.panicked.load(Ordering::SeqCst) {
        return;
    }
    // Pairs with the fence after unlocking below: either we see the
    // coordinator free, or its holder sees our message.
    fence(Ordering::SeqCst);
    loop {
        let mut co = match sh.co.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let sp = Spawner { s, sh };
        let coordinated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            loop {
                let msgs = std::mem::take(&mut *lock(&sh.inbox));
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    handle(&mut co, m, &sp);
                }
            }
            if let Err(e) = step(&mut co, &sp) {
                let slot = co.base;
                fail(&mut co, slot, e);
            }
            sh.limit.store(co.limit(), Ordering::SeqCst);
        }));
        if coordinated.is_err() {
            sh.limit.store(0, Ordering::SeqCst);
            sh.panicked.store(true, Ordering::SeqCst);
            return;
        }
        drop(co);
        fence(Ordering::SeqCst);
        if lock(&sh.inbox).is_empty() {
            return;
        }
    }
}

/// Run a task's `work` for a file at `slot` holding `charged` bytes, unless
/// the slot is past the first failure; a panic stops the pipeline.
fn guarded(sh: &Shared, slot: usize, charged: u64, range: bool, work: impl FnOnce() -> Msg) -> Msg {
    if slot >= sh.limit.load(Ordering::SeqCst) {
        return Msg::Skipped { charged, range };
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(m) => m,
        Err(_) => {
            sh.limit.store(0, Ordering::SeqCst);
            sh.panicked.store(true, Ordering::SeqCst);
            Msg::Skipped { charged, range }
        }
    }
}

/// Hands tasks to the pool; each task delivers exactly one message, except a
/// write lane, which delivers one per batch it writes.
struct Spawner<'s, 'scope, 'a: 'scope> {
    s: &'s rayon::ScopeFifo<'scope>,
    sh: &'scope Shared<'a>,
}

impl<'scope, 'a: 'scope> Spawner<'_, 'scope, 'a> {
    /// Run `work` for a file at `slot` holding `charged` bytes of budget;
    /// skipped when the slot is past the first failure.
    fn task(
        &self,
        slot: usize,
        charged: u64,
        range: bool,
        work: impl FnOnce() -> Msg + Send + 'scope,
    ) {
        let sh = self.sh;
        self.s.spawn_fifo(move |s| {
            let msg = guarded(sh, slot, charged, range, work);
            deliver(sh, s, Some(msg));
        });
    }

    fn range(&self, co: &mut Coordinator, slot: usize, k: usize) {
        let f = &co.window[slot - co.base];
        let (off, len) = f.ranges[k];
        let node = &self.sh.scan.subvols[f.si].nodes[f.ni];
        let small = f.small;
        let opts = self.sh.opts;
        co.charged += len;
        co.in_flight += 1;
        co.ranges_in_flight += 1;
        self.task(slot, len, true, move || Msg::Range {
            slot,
            k,
            charged: len,
            out: compress_range(node, off, len, small, opts),
        });
    }

    fn hash(&self, co: &mut Coordinator, slot: usize) {
        let f = &co.window[slot - co.base];
        let node = &self.sh.scan.subvols[f.si].nodes[f.ni];
        let runs = co.runs(f.si, f.ni).to_vec();
        co.in_flight += 1;
        self.task(slot, 0, false, move || Msg::Hash {
            slot,
            out: hash_file(node, &runs),
        });
    }

    fn confirm(&self, co: &mut Coordinator, slot: usize, owner: (usize, usize)) {
        let f = &co.window[slot - co.base];
        let a = &self.sh.scan.subvols[owner.0].nodes[owner.1].path;
        let b = &self.sh.scan.subvols[f.si].nodes[f.ni].path;
        co.in_flight += 1;
        self.task(slot, 0, false, move || Msg::Confirm {
            slot,
            same: same_content(a, b),
        });
    }

    /// Queue the current batch for a write lane, starting one if fewer than
    /// `lanes` run.
    fn flush(&self, co: &mut Coordinator) {
        if co.batch.pieces.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut co.batch);
        co.in_flight += 1;
        let mut lane = lock(&self.sh.lane);
        lane.queue.push_back(batch);
        if lane.running < self.sh.lanes {
            lane.running += 1;
            drop(lane);
            self.write_lane();
        }
    }

    /// A write lane: one task that writes queued batches, oldest first, until
    /// none is left. Each batch still delivers its own message.
    fn write_lane(&self) {
        let sh = self.sh;
        self.s.spawn_fifo(move |s| loop {
            let batch = {
                let mut lane = lock(&sh.lane);
                let b = lane.queue.pop_front();
                if b.is_none() {
                    lane.running -= 1;
                }
                b
            };
            let Some(batch) = batch else { return };
            let (slot, charged) = (batch.slot, batch.charged);
            let msg = guarded(sh, slot, charged, false, || Msg::Written {
                slot,
                charged,
                out: write_batch(batch, sh.scan, sh.out, sh.opts, sh.progress),
            });
            deliver(sh, s, Some(msg));
        });
    }
}

/// Spawn what the budget allows, allocate what is ready, hand out writes.
fn step(co: &mut Coordinator, sp: &Spawner) -> Result<()> {
    loop {
        spawn_decided(co, sp);
        // Admit the next file only once everything before it is spawned.
        if !co.spawnable.is_empty()
            || co.next >= co.order.len().min(co.limit())
            || co.window.len() >= WINDOW_FILES
            || co.charged >= co.budget
            || co.range_queue_full()
        {
            break;
        }
        admit(co, sp)?;
    }
    // 3. Allocate the files at the front, in order.
    allocate_ready(co, sp)?;
    // 4. Hand out the partial batch when the workers may run dry.
    if co.in_flight <= 2 * co.threads
        || co.failed.is_some()
        || (co.next == co.order.len() && co.window.is_empty())
        || co.charged >= co.budget
    {
        sp.flush(co);
    }
    Ok(())
}

/// Spawn the remaining ranges of decided files, earliest file first. The file
/// at the allocation point may go a little over budget: everything else in
/// flight may be waiting for it.
fn spawn_decided(co: &mut Coordinator, sp: &Spawner) {
    while let Some(&slot) = co.spawnable.first() {
        if slot >= co.limit() {
            return;
        }
        let is_head = slot == co.base;
        loop {
            if co.range_queue_full() {
                return;
            }
            let f = &co.window[slot - co.base];
            if f.spawned == f.ranges.len() {
                co.spawnable.remove(&slot);
                break;
            }
            let len = f.ranges[f.spawned].1;
            // A candidate hashed from its ranges needs all of them at once.
            let head_room = is_head
                && (f.spawned - f.allocated < 4 * co.threads
                    || (!f.dedupe_done && f.ranges.len() <= HASH_FROM_RANGES));
            if co.charged > 0 && co.charged + len > co.budget && !head_room {
                return;
            }
            let k = f.spawned;
            co.window[slot - co.base].spawned += 1;
            sp.range(co, slot, k);
        }
    }
}

/// Admit the next file of `order` into the window and start its first tasks.
fn admit(co: &mut Coordinator, sp: &Spawner) -> Result<()> {
    let slot = co.next;
    co.next += 1;
    let (si, ni) = co.order[slot];
    let candidate = co.candidates[si][ni];
    let (raw, small, ranges) = match &co.classes[si][ni] {
        Class::Raw { .. } => (true, false, Vec::new()),
        Class::Compress { runs } => (false, false, cut_ranges(runs)),
        Class::MaybeInline { runs } => (false, true, cut_ranges(runs)),
        _ => return Err(Error::Internal("file without data in the pipeline".into())),
    };
    let force = co.opts.compression.is_some_and(|c| c.force);
    let probing = !raw && !force && ranges.len() > 1;
    let n = ranges.len();
    co.window.push_back(FileState {
        si,
        ni,
        ranges,
        outs: (0..n).map(|_| None).collect(),
        spawned: 0,
        allocated: 0,
        probing,
        raw,
        small,
        nocompress: false,
        candidate,
        hashing: false,
        hash: None,
        dedupe_done: !candidate,
        confirming: None,
    });
    if candidate && (raw || n > HASH_FROM_RANGES) {
        co.window[slot - co.base].hashing = true;
        sp.hash(co, slot);
    }
    if probing {
        co.window[slot - co.base].spawned = 1;
        sp.range(co, slot, 0);
    } else if !raw {
        co.spawnable.insert(slot);
    }
    Ok(())
}

fn allocate_ready(co: &mut Coordinator, sp: &Spawner) -> Result<()> {
    loop {
        let slot = co.base;
        let Some(f) = co.window.front() else {
            return Ok(());
        };
        if slot >= co.limit() {
            return Ok(());
        }
        if f.probing || f.hashing || f.confirming.is_some() {
            return Ok(());
        }
        let (si, ni) = (f.si, f.ni);
        // A small file that goes inline has no extent to share (a copy of it
        // goes inline too: the same bytes compress the same).
        if f.small
            && f.outs
                .first()
                .is_some_and(|o| o.as_ref().is_some_and(|o| o.inline))
        {
            co.window[0].dedupe_done = true;
        }
        let f = &co.window[0];
        // Deduplication: the first file in order with some content owns it.
        if !f.dedupe_done {
            let hash = match f.hash {
                Some(h) => h,
                None if !f.raw && f.outs.iter().all(|o| o.is_some()) => {
                    combine(f.outs.iter().flatten().map(|o| o.hash))
                }
                None => return Ok(()),
            };
            let size = co.node(si, ni).stat.size;
            let runs = co.classes[si][ni].runs();
            if let Some(owner) = co.owners.claim(size, runs, hash, (si, ni)) {
                co.window[0].confirming = Some(owner);
                sp.confirm(co, slot, owner);
                return Ok(());
            }
            co.window[0].dedupe_done = true;
        }
        if co.window[0].raw {
            let runs = co.runs(si, ni).to_vec();
            for (s, e) in runs {
                let mut off = s;
                while off < e {
                    let want = (e - off).min(BTRFS_MAX_EXTENT_SIZE);
                    let (at, got) = co.alloc.alloc_upto(want).ok_or_else(data_chunks_full)?;
                    co.out.per_node[si][ni].push(FileExtent {
                        subvol: si,
                        node: ni,
                        file_offset: off,
                        num_bytes: got,
                        disk_bytenr: at,
                        disk_num_bytes: got,
                        compression: BTRFS_COMPRESS_NONE,
                    });
                    // I/O in pieces of at most a staging buffer.
                    let mut done = 0;
                    while done < got {
                        let n = (got - done).min(STAGE);
                        let piece = Piece {
                            logical: at + done,
                            len: n,
                            data: PieceData::Stream {
                                subvol: si,
                                node: ni,
                                file_offset: off + done,
                            },
                        };
                        add_piece(co, piece, 0, sp)?;
                        done += n;
                    }
                    off += got;
                }
            }
            if co.window[0].nocompress {
                co.out.nocompress[si][ni] = true;
            }
            finish_file(co);
            continue;
        }
        // Compressed (or compression-tried) ranges, as far as they are done.
        let c = co.opts.compression;
        loop {
            let f = &mut co.window[0];
            let k = f.allocated;
            if k == f.ranges.len() {
                break;
            }
            let Some(o) = f.outs[k].take() else { break };
            f.allocated += 1;
            if o.inline {
                let (ram, stored) = (co.node(si, ni).stat.size, o.data.len() as u64);
                let Some(c) = &c else {
                    return Err(Error::Internal(
                        "inline compression without an algorithm".into(),
                    ));
                };
                co.classes[si][ni] = Class::Inline {
                    data: o.data,
                    ram,
                    compression: c.type_byte(),
                };
                co.progress.bytes_in.fetch_add(ram, Ordering::Relaxed);
                co.progress.bytes_out.fetch_add(stored, Ordering::Relaxed);
                // No write to wait for: its budget is free now.
                co.charged -= co.window[0].ranges[k].1;
                continue;
            }
            let (off, len) = f.ranges[k];
            let comp = match (o.compressed, &c) {
                (true, Some(c)) => c.type_byte(),
                _ => BTRFS_COMPRESS_NONE,
            };
            let size = o.data.len() as u64;
            // Uncompressed ranges of one file that land next to each other
            // on disk become one extent.
            let mut merged = false;
            if comp == BTRFS_COMPRESS_NONE {
                let (at, got) = co.alloc.peek_upto(len);
                if let Some(prev) = co.out.per_node[si][ni].last_mut() {
                    if prev.compression == BTRFS_COMPRESS_NONE
                        && prev.file_offset + prev.num_bytes == off
                        && prev.disk_bytenr + prev.disk_num_bytes == at
                        && got == len
                        && prev.num_bytes + len <= BTRFS_MAX_EXTENT_SIZE
                    {
                        prev.num_bytes += len;
                        prev.disk_num_bytes += len;
                        merged = true;
                    }
                }
            }
            let at = co.alloc.alloc_exact(size).ok_or_else(data_chunks_full)?;
            if !merged {
                co.out.per_node[si][ni].push(FileExtent {
                    subvol: si,
                    node: ni,
                    file_offset: off,
                    num_bytes: len,
                    disk_bytenr: at,
                    disk_num_bytes: size,
                    compression: comp,
                });
            }
            let raw_len = len.min(co.node(si, ni).stat.size.saturating_sub(off));
            co.progress.bytes_in.fetch_add(raw_len, Ordering::Relaxed);
            let piece = Piece {
                logical: at,
                len: size,
                data: PieceData::Buffer(o.data),
            };
            add_piece(co, piece, len, sp)?;
        }
        let f = &co.window[0];
        if f.allocated < f.ranges.len() {
            return Ok(());
        }
        if f.nocompress {
            co.out.nocompress[si][ni] = true;
        }
        finish_file(co);
    }
}

fn finish_file(co: &mut Coordinator) {
    co.progress.files_done.fetch_add(1, Ordering::Relaxed);
    co.window.pop_front();
    co.spawnable.remove(&co.base);
    co.base += 1;
}

/// Put a piece into the current batch, handing the batch out first when the
/// piece does not continue it on every stripe or would overfill it.
fn add_piece(co: &mut Coordinator, piece: Piece, charge: u64, sp: &Spawner) -> Result<()> {
    let phys = co
        .layout
        .physical(piece.logical)
        .ok_or_else(|| Error::Internal(format!("data at {} outside chunks", piece.logical)))?;
    let b = &co.batch;
    let continues = !b.pieces.is_empty()
        && b.phys.len() == phys.len()
        && b.phys.iter().zip(&phys).all(|(s, p)| s + b.len == *p)
        && b.len + piece.len <= STAGE;
    if !continues {
        sp.flush(co);
        co.batch.phys = phys;
        co.batch.slot = co.base;
    }
    co.batch.len += piece.len;
    co.batch.charged += charge;
    co.batch.pieces.push(piece);
    if co.batch.len >= STAGE {
        sp.flush(co);
    }
    Ok(())
}

fn handle(co: &mut Coordinator, msg: Msg, sp: &Spawner) {
    co.in_flight -= 1;
    match msg {
        Msg::Skipped { charged, range } => {
            co.charged -= charged;
            if range {
                co.ranges_in_flight -= 1;
            }
        }
        Msg::Written { slot, charged, out } => {
            co.charged -= charged;
            match out {
                Ok(sums) => co.out.csums.extend(sums),
                Err(e) => fail(co, slot, e),
            }
        }
        Msg::Range {
            slot,
            k,
            charged,
            out,
        } => {
            co.ranges_in_flight -= 1;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    co.charged -= charged;
                    return fail(co, slot, e);
                }
            };
            let force = co.opts.compression.is_some_and(|c| c.force);
            let Some(f) = co.state(slot) else {
                co.charged -= charged;
                return;
            };
            if f.raw {
                // The file turned out not to compress: drop it.
                co.charged -= charged;
                return;
            }
            let compressed = out.compressed;
            let single = f.ranges.len() == 1;
            f.outs[k] = Some(out);
            if single && !compressed && !force {
                f.nocompress = true;
            }
            if f.probing && k == 0 {
                f.probing = false;
                if compressed {
                    co.spawnable.insert(slot);
                } else {
                    // The kernel's rule: the first range decides.
                    f.nocompress = true;
                    f.raw = true;
                    let freed = f.ranges[0].1;
                    f.outs.clear();
                    let hash_now = f.candidate && !f.hashing && f.hash.is_none();
                    co.charged -= freed;
                    if hash_now {
                        if let Some(f) = co.state(slot) {
                            f.hashing = true;
                        }
                        sp.hash(co, slot);
                    }
                }
            }
        }
        Msg::Hash { slot, out } => match out {
            Ok(h) => {
                if let Some(f) = co.state(slot) {
                    f.hashing = false;
                    f.hash = Some(h);
                }
            }
            Err(e) => fail(co, slot, e),
        },
        Msg::Confirm { slot, same } => match same {
            Ok(same) => {
                let Some(f) = co.state(slot) else { return };
                let owner = f.confirming.take();
                f.dedupe_done = true;
                if let (true, Some(owner)) = (same, owner) {
                    let (si, ni) = (f.si, f.ni);
                    // Its buffers are dropped; ranges still in flight are
                    // dropped when they arrive (the file leaves the window).
                    let freed: u64 = f
                        .outs
                        .iter()
                        .zip(&f.ranges)
                        .filter(|(o, _)| o.is_some())
                        .map(|(_, r)| r.1)
                        .sum();
                    co.charged -= freed;
                    co.classes[si][ni] = Class::Dup { owner };
                    let size = co.node(si, ni).stat.size;
                    co.progress.bytes_in.fetch_add(size, Ordering::Relaxed);
                    if slot == co.base {
                        finish_file(co);
                    }
                }
            }
            Err(e) => fail(co, slot, e),
        },
    }
}

/// Record a failure of the file at `slot`; the earliest in file order wins.
fn fail(co: &mut Coordinator, slot: usize, e: Error) {
    if co.failed.as_ref().is_none_or(|(s, _)| slot < *s) {
        co.failed = Some((slot, e));
    }
}
