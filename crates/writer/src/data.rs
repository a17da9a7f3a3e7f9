//! File data: find each file's data runs, cut them into extents, give every
//! extent its disk address in (subvolume, inode, offset) order, then read,
//! checksum and write all extents in parallel.
//!
//! Uncompressed extents have known sizes, so every address is decided before
//! any byte is read: the image is the same whatever the thread count.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use btrfs_format::*;
use rayon::prelude::*;

use crate::layout::{ChunkSpec, Layout, MIB};
use crate::output::Output;
use crate::scan::{Kind, Node, Scan};
use crate::{Error, Result};

/// Largest data chunk we create (the kernel's own data chunks are up to 1 GiB
/// on small filesystems).
pub const DATA_CHUNK_MAX: u64 = 1 << 30;

/// One data extent of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedExtent {
    pub subvol: usize,
    pub node: usize,
    pub file_offset: u64,
    /// Bytes of the extent (a multiple of the sector size).
    pub len: u64,
    /// Bytes to read from the file (the rest of the last sector is zeros).
    pub read_len: u64,
    pub disk_bytenr: u64,
}

/// How each regular file is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Nothing on disk: empty or all holes.
    None,
    /// Inline in the fs tree (read at build time; small).
    Inline,
    /// Regular extents: indices into `DataPlan::extents`.
    Extents(std::ops::Range<usize>),
}

#[derive(Debug, Clone)]
pub struct DataPlan {
    pub extents: Vec<PlannedExtent>,
    /// Per subvolume, per node.
    pub files: Vec<Vec<FileData>>,
    pub chunks: Vec<ChunkSpec>,
    /// Sorted, merged allocated ranges.
    pub allocated: Vec<(u64, u64)>,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(path, std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Sector-aligned data runs of a file, holes left out.
fn data_runs(node: &Node, sectorsize: u64) -> Result<Vec<(u64, u64)>> {
    let size = node.stat.size;
    let end = size.div_ceil(sectorsize) * sectorsize;
    // Fully allocated files need no hole search.
    if node.stat.allocated >= size {
        return Ok(vec![(0, end)]);
    }
    let f = File::open(&node.path).map_err(|e| io_err(&node.path, "cannot open", e))?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_err(&node.path, "cannot find data (SEEK_DATA)", e.into())),
        };
        if start >= size {
            break;
        }
        let stop = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(start)) {
            Ok(s) => s.min(size),
            Err(e) => {
                return Err(io_err(
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

/// Allocator over the data chunks: hands out the longest piece it can at the
/// cursor, never across a chunk end or a superblock copy.
struct DataAlloc<'a> {
    chunks: &'a [ChunkSpec],
    excluded: Vec<Vec<(u64, u64)>>,
    chunk: usize,
    cursor: u64,
}

impl<'a> DataAlloc<'a> {
    fn new(chunks: &'a [ChunkSpec]) -> Self {
        DataAlloc {
            excluded: chunks.iter().map(|c| c.excluded()).collect(),
            cursor: chunks.first().map(|c| c.logical).unwrap_or(0),
            chunks,
            chunk: 0,
        }
    }

    fn alloc_upto(&mut self, len: u64) -> Option<(u64, u64)> {
        loop {
            let c = self.chunks.get(self.chunk)?;
            if self.cursor >= c.end() {
                self.chunk += 1;
                self.cursor = self.chunks.get(self.chunk)?.logical;
                continue;
            }
            if let Some(&(s, l)) = self.excluded[self.chunk]
                .iter()
                .find(|&&(s, l)| self.cursor >= s && self.cursor < s + l)
            {
                self.cursor = s + l;
                continue;
            }
            let limit = self.excluded[self.chunk]
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| s > self.cursor)
                .min()
                .unwrap_or(c.end())
                .min(c.end());
            let got = len.min(limit - self.cursor);
            let at = self.cursor;
            self.cursor += got;
            return Some((at, got));
        }
    }
}

/// Lay out data chunks from `start` (physical = logical) holding `bytes`.
pub fn data_chunks(
    layout: &mut Layout,
    bytes: u64,
    flags: u64,
    stripes: usize,
    chunk_max: u64,
) -> Vec<ChunkSpec> {
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

/// Decide how every file is stored and where its extents go.
pub fn plan(
    scan: &Scan,
    layout: &mut Layout,
    sectorsize: u64,
    inline_limit: u64,
    data_flags: u64,
    data_stripes: usize,
    chunk_max: u64,
) -> Result<DataPlan> {
    // Runs of every file (in order), and the bytes they need.
    // Per subvolume, per node: the data runs of files stored in extents.
    type Runs = Option<Vec<(u64, u64)>>;
    let mut runs_of: Vec<Vec<Runs>> = Vec::new();
    let mut total = 0u64;
    let mut files: Vec<Vec<FileData>> = Vec::new();
    for sv in &scan.subvols {
        let mut r = Vec::with_capacity(sv.nodes.len());
        let mut f = Vec::with_capacity(sv.nodes.len());
        for node in &sv.nodes {
            if !matches!(node.kind, Kind::File) || node.stat.size == 0 {
                r.push(None);
                f.push(FileData::None);
                continue;
            }
            let runs = data_runs(node, sectorsize)?;
            if runs.is_empty() {
                r.push(None);
                f.push(FileData::None);
            } else if node.stat.size <= inline_limit {
                r.push(None);
                f.push(FileData::Inline);
            } else {
                total += runs.iter().map(|(s, e)| e - s).sum::<u64>();
                r.push(Some(runs));
                f.push(FileData::None);
            }
        }
        runs_of.push(r);
        files.push(f);
    }
    let chunks = data_chunks(layout, total, data_flags, data_stripes, chunk_max);
    let mut alloc = DataAlloc::new(&chunks);
    let mut extents = Vec::new();
    for (si, sv) in runs_of.iter().enumerate() {
        for (ni, runs) in sv.iter().enumerate() {
            let Some(runs) = runs else { continue };
            let size = scan.subvols[si].nodes[ni].stat.size;
            let first = extents.len();
            for &(s, e) in runs {
                let mut off = s;
                while off < e {
                    let want = (e - off).min(BTRFS_MAX_EXTENT_SIZE);
                    let (at, got) = alloc
                        .alloc_upto(want)
                        .ok_or_else(|| Error::Internal("data chunks too small".into()))?;
                    extents.push(PlannedExtent {
                        subvol: si,
                        node: ni,
                        file_offset: off,
                        len: got,
                        read_len: got.min(size.saturating_sub(off)),
                        disk_bytenr: at,
                    });
                    off += got;
                }
            }
            files[si][ni] = FileData::Extents(first..extents.len());
        }
    }
    // Merged per chunk: a range never spans two block groups.
    let mut allocated: Vec<(u64, u64)> = Vec::new();
    let chunk_of = |a: u64| chunks.iter().position(|c| c.contains(a));
    for e in &extents {
        match allocated.last_mut() {
            Some((s, l)) if *s + *l == e.disk_bytenr && chunk_of(*s) == chunk_of(e.disk_bytenr) => {
                *l += e.len
            }
            _ => allocated.push((e.disk_bytenr, e.len)),
        }
    }
    Ok(DataPlan {
        extents,
        files,
        chunks,
        allocated,
    })
}

/// Read, checksum and write every extent; returns each extent's checksums.
pub fn write(
    scan: &Scan,
    plan: &DataPlan,
    layout: &Layout,
    out: &Output,
    csum: CsumType,
    sectorsize: u64,
) -> Result<Vec<Vec<u8>>> {
    const BUF: u64 = MIB;
    plan.extents
        .par_iter()
        .map(|e| {
            let node = &scan.subvols[e.subvol].nodes[e.node];
            let path = &node.path;
            let f = File::open(path).map_err(|err| io_err(path, "cannot open", err))?;
            let mut sums = vec![0u8; (e.len / sectorsize) as usize * csum.size()];
            let mut buf = vec![0u8; e.len.min(BUF) as usize];
            let mut done = 0u64;
            while done < e.len {
                let n = (e.len - done).min(BUF) as usize;
                let want = e.read_len.saturating_sub(done).min(n as u64) as usize;
                let mut got = 0;
                while got < want {
                    match f.read_at(&mut buf[got..want], e.file_offset + done + got as u64) {
                        Ok(0) => {
                            return Err(Error::io(
                                path,
                                std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!(
                                        "file shrank while being read (ended before byte {} of {})",
                                        e.file_offset + done + got as u64,
                                        node.stat.size
                                    ),
                                ),
                            ))
                        }
                        Ok(k) => got += k,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(io_err(path, "cannot read", err)),
                    }
                }
                buf[want..n].fill(0);
                let first_sector = (done / sectorsize) as usize;
                for (i, sector) in buf[..n].chunks(sectorsize as usize).enumerate() {
                    let at = (first_sector + i) * csum.size();
                    csum.compute_into(sector, &mut sums[at..at + csum.size()]);
                }
                let logical = e.disk_bytenr + done;
                let phys = layout
                    .physical(logical)
                    .ok_or_else(|| Error::Internal(format!("data at {logical} outside chunks")))?;
                for p in phys {
                    out.write_at(&buf[..n], p)?;
                }
                done += n as u64;
            }
            let now = f
                .metadata()
                .map_err(|err| io_err(path, "cannot stat", err))?
                .len();
            if now != node.stat.size {
                return Err(Error::io(
                    path,
                    std::io::Error::other(format!(
                        "file changed size while being read ({} bytes when scanned, {now} now)",
                        node.stat.size
                    )),
                ));
            }
            Ok(sums)
        })
        .collect()
}
