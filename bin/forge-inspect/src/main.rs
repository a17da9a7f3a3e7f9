//! forge-inspect: list, read, extract, diff and dump a btrfs image without mounting it.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use btrfs_image::btrfs_format::consts::*;
use btrfs_image::Image;
use clap::{Args, Parser, Subcommand};
use forge_inspect::diff::{DiffOptions, Ignore};
use forge_inspect::extract::ExtractOptions;
use forge_inspect::ls::LsOptions;
use forge_inspect::{InodeId, Limits};

#[derive(Parser)]
#[command(
    name = "forge-inspect",
    version,
    about = "List, read, extract, diff and dump a btrfs image without mounting it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Subvolume to work in: an id, or a path from the top-level subvolume
    /// (default: the default subvolume, the one the kernel mounts).
    #[arg(long, value_name = "ID|PATH")]
    subvol: Option<String>,
    /// Refuse files larger than this (suffixes K, M, G, T, P, E); default 64
    /// times the image size, at least 1G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_file_size: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// List a directory (or one file) of the image.
    Ls {
        image: PathBuf,
        #[arg(default_value = "/")]
        path: String,
        /// Long listing: mode, links, owner, group, size, mtime (UTC).
        #[arg(short = 'l')]
        long: bool,
        /// Recurse: list every path below PATH.
        #[arg(short = 'R')]
        recursive: bool,
        /// JSON array of entries with every inode field.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Write a file's bytes to standard output (decompressed, holes as zeros).
    Cat {
        image: PathBuf,
        path: String,
        #[command(flatten)]
        common: Common,
    },
    /// Show an inode: fields, names, extents with disk addresses, xattrs.
    Stat {
        image: PathBuf,
        path: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Copy PATH (default: everything) out of the image into DEST.
    Extract {
        image: PathBuf,
        /// Destination directory: created if missing, else it must be empty.
        dest: PathBuf,
        #[arg(default_value = "/")]
        path: String,
        /// Stop before writing more than this much file data in all (default:
        /// the space free on DEST's filesystem).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_total: Option<u64>,
        /// Do not set owners (only root can).
        #[arg(long)]
        no_owners: bool,
        /// Do not create device nodes (only root can).
        #[arg(long)]
        no_devices: bool,
        #[arg(long)]
        no_xattrs: bool,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
        #[arg(short = 'q', long)]
        quiet: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Compare the image with a directory; exit 0 when equal, 1 when not.
    Diff {
        image: PathBuf,
        dir: PathBuf,
        /// Compare this path of the image (default: its top).
        #[arg(long, default_value = "/")]
        path: String,
        /// Fields to leave out: mode, owner, mtime, nsec, xattrs, rdev, links, content.
        #[arg(long, value_name = "LIST")]
        ignore: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Dump tree blocks with every item decoded (like btrfs inspect-internal dump-tree).
    DumpTree {
        image: PathBuf,
        /// Only this tree: an id or a name (root, extent, chunk, dev, fs, csum,
        /// quota, uuid, free-space, block-group, data-reloc).
        #[arg(short = 't', long = "tree")]
        tree: Option<String>,
        /// Only the tree block at this logical address.
        #[arg(short = 'b', long = "block", conflicts_with = "tree")]
        block: Option<u64>,
        /// With -b: also every block below it.
        #[arg(long, requires = "block")]
        follow: bool,
    },
    /// Dump every superblock field (like btrfs inspect-internal dump-super -f).
    DumpSuper {
        image: PathBuf,
        /// Superblock copy: 0 (64 KiB), 1 (64 MiB), 2 (256 GiB).
        #[arg(short = 's', long = "super", default_value_t = 0)]
        mirror: usize,
        /// Every copy the image holds.
        #[arg(short = 'a', long = "all")]
        all: bool,
    },
}

/// A size with an optional binary suffix (K, M, G, T, P, E).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let shift = match suffix
        .to_ascii_lowercase()
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(format!("invalid size suffix in '{s}'")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn open(image: &Path) -> Result<Image> {
    forge_inspect::open(image).with_context(|| format!("cannot open image {}", image.display()))
}

fn limits(img: &Image, c: &Common) -> Limits {
    let mut l = Limits::for_image(img.bytes().len() as u64);
    if let Some(m) = c.max_file_size {
        l.max_file_size = m;
    }
    l
}

/// Open the image, pick the subvolume, resolve PATH.
fn locate(image: &Path, c: &Common, path: &str) -> Result<(Image, InodeId)> {
    let img = open(image)?;
    let sv = forge_inspect::select_subvol(&img, c.subvol.as_deref())
        .with_context(|| format!("{}", image.display()))?;
    let id =
        forge_inspect::resolve(&img, sv, path).with_context(|| format!("{}", image.display()))?;
    Ok((img, id))
}

fn tree_id(s: &str) -> Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let norm = s.to_ascii_lowercase().replace('_', "-");
    let norm = norm.strip_suffix("-tree").unwrap_or(&norm);
    Ok(match norm {
        "root" => BTRFS_ROOT_TREE_OBJECTID,
        "extent" => BTRFS_EXTENT_TREE_OBJECTID,
        "chunk" => BTRFS_CHUNK_TREE_OBJECTID,
        "dev" | "device" => BTRFS_DEV_TREE_OBJECTID,
        "fs" => BTRFS_FS_TREE_OBJECTID,
        "csum" | "checksum" => BTRFS_CSUM_TREE_OBJECTID,
        "quota" => BTRFS_QUOTA_TREE_OBJECTID,
        "uuid" => BTRFS_UUID_TREE_OBJECTID,
        "free-space" => BTRFS_FREE_SPACE_TREE_OBJECTID,
        "block-group" => BTRFS_BLOCK_GROUP_TREE_OBJECTID,
        "raid-stripe" => BTRFS_RAID_STRIPE_TREE_OBJECTID,
        "data-reloc" => BTRFS_DATA_RELOC_TREE_OBJECTID,
        _ => bail!("unknown tree '{s}': give an id or root, extent, chunk, dev, fs, csum, quota, uuid, free-space, block-group, data-reloc"),
    })
}

/// Broken pipes (`forge-inspect cat ... | head`) end output quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn out_err(e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context("writing output")
}

fn run(cli: Cli) -> Result<u8> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli.cmd {
        Cmd::Ls {
            image,
            path,
            long,
            recursive,
            json,
            common,
        } => {
            let (img, id) = locate(&image, &common, &path)?;
            let opts = LsOptions {
                long: long || json,
                recursive,
                max_depth: forge_inspect::DEFAULT_MAX_DEPTH,
            };
            let ctx = || format!("{}: ls {path}", image.display());
            if json {
                let all = forge_inspect::ls::ls_collect(&img, id, &path, opts).with_context(ctx)?;
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out).map_err(out_err)?;
            } else {
                forge_inspect::ls::ls(&img, id, &path, opts, &mut |e| {
                    let line = if long {
                        forge_inspect::ls::format_long(&e)
                    } else {
                        e.path
                    };
                    writeln!(out, "{line}").map_err(|e| forge_inspect::Error::Io {
                        path: "<output>".into(),
                        source: e,
                    })
                })
                .with_context(ctx)?;
            }
        }
        Cmd::Cat {
            image,
            path,
            common,
        } => {
            let (img, id) = locate(&image, &common, &path)?;
            let l = limits(&img, &common);
            forge_inspect::cat::cat(&img, id, &path, &l, &mut out)
                .with_context(|| format!("{}: cat {path}", image.display()))?;
        }
        Cmd::Stat {
            image,
            path,
            json,
            common,
        } => {
            let (img, id) = locate(&image, &common, &path)?;
            let s = forge_inspect::stat::stat(&img, id, &path)
                .with_context(|| format!("{}: stat {path}", image.display()))?;
            if json {
                serde_json::to_writer_pretty(&mut out, &s)?;
                writeln!(out).map_err(out_err)?;
            } else {
                write!(out, "{}", forge_inspect::stat::format_stat(&s)).map_err(out_err)?;
            }
        }
        Cmd::Extract {
            image,
            dest,
            path,
            max_total,
            no_owners,
            no_devices,
            no_xattrs,
            json,
            quiet,
            common,
        } => {
            let (img, id) = locate(&image, &common, &path)?;
            let mut opts = ExtractOptions::new(limits(&img, &common));
            opts.owners &= !no_owners;
            opts.devices &= !no_devices;
            opts.xattrs = !no_xattrs;
            opts.max_total = max_total;
            let name = path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .as_bytes()
                .to_vec();
            let r = forge_inspect::extract::extract(&img, id, &name, &dest, &opts).with_context(
                || {
                    format!(
                        "{}: extract {path} into {}",
                        image.display(),
                        dest.display()
                    )
                },
            )?;
            for w in &r.warnings {
                eprintln!("forge-inspect: warning: {w}");
            }
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out).map_err(out_err)?;
            } else if !quiet {
                writeln!(
                    out,
                    "extracted {} directories, {} files ({} bytes of data), {} symlinks, \
                     {} hard links, {} special files into {}",
                    r.dirs,
                    r.files,
                    r.bytes_written,
                    r.symlinks,
                    r.hardlinks,
                    r.specials,
                    dest.display()
                )
                .map_err(out_err)?;
            }
        }
        Cmd::Diff {
            image,
            dir,
            path,
            ignore,
            json,
            common,
        } => {
            let (img, id) = locate(&image, &common, &path)?;
            let opts = DiffOptions {
                ignore: match ignore {
                    Some(l) => Ignore::parse(&l)?,
                    None => Ignore::default(),
                },
                limits: limits(&img, &common),
            };
            let diffs = forge_inspect::diff::diff(&img, id, &dir, &opts).with_context(|| {
                format!("{}: diff {path} against {}", image.display(), dir.display())
            })?;
            if json {
                let v = serde_json::json!({
                    "equal": diffs.is_empty(),
                    "differences": diffs,
                });
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out).map_err(out_err)?;
            } else {
                for d in &diffs {
                    writeln!(out, "{d}").map_err(out_err)?;
                }
            }
            out.flush().map_err(out_err)?;
            return Ok(if diffs.is_empty() { 0 } else { 1 });
        }
        Cmd::DumpTree {
            image,
            tree,
            block,
            follow,
        } => {
            let img = open(&image)?;
            let ctx = || format!("{}: dump-tree", image.display());
            match (tree, block) {
                (Some(t), _) => img.dump_tree_id(tree_id(&t)?, &mut out).with_context(ctx)?,
                (None, Some(b)) if follow => img.dump_subtree(b, &mut out).with_context(ctx)?,
                (None, Some(b)) => img.dump_block(b, &mut out).with_context(ctx)?,
                (None, None) => img.dump_all_trees(&mut out).with_context(ctx)?,
            }
        }
        Cmd::DumpSuper { image, mirror, all } => {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&image)
                .with_context(|| format!("cannot open image {}", image.display()))?;
            let len = f
                .metadata()
                .with_context(|| format!("{}", image.display()))?
                .len();
            let mirrors: Vec<usize> = if all {
                (0..BTRFS_SUPER_MIRROR_MAX)
                    .filter(|&m| btrfs_sb_offset(m) + BTRFS_SUPER_INFO_SIZE as u64 <= len)
                    .collect()
            } else {
                if mirror >= BTRFS_SUPER_MIRROR_MAX {
                    bail!("superblock copy {mirror} does not exist (0, 1 or 2)");
                }
                vec![mirror]
            };
            for (i, m) in mirrors.into_iter().enumerate() {
                let off = btrfs_sb_offset(m);
                let mut raw = vec![0u8; BTRFS_SUPER_INFO_SIZE];
                f.read_exact_at(&mut raw, off).with_context(|| {
                    format!(
                        "{}: cannot read superblock copy {m} at offset {off} (image is {len} bytes)",
                        image.display()
                    )
                })?;
                let s = btrfs_image::dump::dump_superblock(&raw, off)
                    .with_context(|| format!("{}: superblock at offset {off}", image.display()))?;
                if i > 0 {
                    writeln!(out).map_err(out_err)?;
                }
                write!(out, "{s}").map_err(out_err)?;
            }
        }
    }
    out.flush().map_err(out_err)?;
    Ok(0)
}

/// The error and its causes, each cause left out when the message before
/// already says it (library errors quote their source).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut prev = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if prev.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
        prev = m;
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("forge-inspect: error: {}", message(&e));
            ExitCode::from(2)
        }
    }
}
