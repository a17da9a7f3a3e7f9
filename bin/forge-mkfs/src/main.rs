//! forge-mkfs: create a btrfs filesystem image (options named as in mkfs.btrfs).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use btrfs_format::CsumType;
use btrfs_writer::compress::Compression;
use btrfs_writer::config::{parse_size, FEATURE_LIST};
use btrfs_writer::scan::{ScanOptions, SubvolSpec};

mod progress;
use btrfs_writer::summary::{parse_uuid, Summary};
use btrfs_writer::{
    make_empty_filesystem, make_rootdir_filesystem, Features, MkfsConfig, Profile, RootdirOptions,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "forge-mkfs",
    version,
    about = "Create a btrfs filesystem image, offline (options as in mkfs.btrfs)"
)]
struct Args {
    /// Image file (created or extended) or block device
    image: PathBuf,
    /// Filesystem size (suffixes K, M, G, T); creates or extends the file
    #[arg(short = 'b', long = "byte-count", value_name = "SIZE")]
    byte_count: Option<String>,
    /// Overwrite an existing filesystem or partition table
    #[arg(short, long)]
    force: bool,
    /// Filesystem label (at most 255 bytes)
    #[arg(short = 'L', long, value_name = "LABEL")]
    label: Option<String>,
    /// Filesystem UUID
    #[arg(short = 'U', long = "uuid", value_name = "UUID")]
    uuid: Option<String>,
    /// Device UUID
    #[arg(long = "device-uuid", value_name = "UUID")]
    device_uuid: Option<String>,
    /// Checksum algorithm: crc32c, xxhash, sha256, blake2
    #[arg(
        long = "csum",
        alias = "checksum",
        value_name = "TYPE",
        default_value = "crc32c"
    )]
    csum: String,
    /// Tree block size, a power of two from 4K to 64K
    #[arg(
        short = 'n',
        long = "nodesize",
        value_name = "SIZE",
        default_value = "16K"
    )]
    nodesize: String,
    /// Data block size (4096)
    #[arg(
        short = 's',
        long = "sectorsize",
        value_name = "SIZE",
        default_value = "4096"
    )]
    sectorsize: String,
    /// Metadata profile: single or dup
    #[arg(
        short = 'm',
        long = "metadata",
        value_name = "PROFILE",
        default_value = "dup"
    )]
    metadata: String,
    /// Data profile: single or dup
    #[arg(
        short = 'd',
        long = "data",
        value_name = "PROFILE",
        default_value = "single"
    )]
    data: String,
    /// Features, comma separated; ^name turns one off; 'list-all' lists them
    #[arg(short = 'O', long = "features", value_name = "LIST")]
    features: Vec<String>,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
    /// Fill the filesystem from this directory
    #[arg(short = 'r', long = "rootdir", value_name = "DIR")]
    rootdir: Option<PathBuf>,
    /// Make SUBDIR (relative to --rootdir) a subvolume: [rw|ro|default|default-ro:]SUBDIR
    #[arg(
        short = 'u',
        long = "subvol",
        value_name = "[FLAGS:]SUBDIR",
        requires = "rootdir"
    )]
    subvol: Vec<String>,
    /// Cut the image to its last used byte (with --rootdir)
    #[arg(long, requires = "rootdir")]
    shrink: bool,
    /// Largest file stored inline in the metadata, in bytes
    #[arg(long = "max-inline", value_name = "BYTES", default_value = "2048")]
    max_inline: String,
    /// Owner of every imported file
    #[arg(long, value_name = "UID", requires = "rootdir")]
    uid: Option<u32>,
    /// Group of every imported file
    #[arg(long, value_name = "GID", requires = "rootdir")]
    gid: Option<u32>,
    /// Same as --uid 0 --gid 0
    #[arg(long = "all-root", requires = "rootdir")]
    all_root: bool,
    /// Worker threads (default: all cores)
    #[arg(short = 'j', long = "threads", value_name = "N", default_value = "0")]
    threads: usize,
    /// Compress file data: zstd[:1..15], zlib[:1..9], lzo or no (with --rootdir)
    #[arg(long, value_name = "ALGO[:LEVEL]", requires = "rootdir")]
    compress: Option<String>,
    /// Compress every range, even of files whose start does not compress
    #[arg(
        long = "compress-force",
        value_name = "ALGO[:LEVEL]",
        requires = "rootdir",
        conflicts_with = "compress"
    )]
    compress_force: Option<String>,
    /// Store files of identical content once (shared extents)
    #[arg(long, requires = "rootdir")]
    dedupe: bool,
    /// File data in flight at once (suffixes K, M, G)
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    memory: String,
}

/// "Now" for every timestamp: SOURCE_DATE_EPOCH when set (reproducible builds).
fn now() -> Result<(u64, u32)> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        let secs: u64 = v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?;
        return Ok((secs, 0));
    }
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock is before 1970")?;
    Ok((d.as_secs(), d.subsec_nanos()))
}

/// SOURCE_DATE_EPOCH also clamps newer file times, as reproducible-build tools do.
fn clamp_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

fn config(args: &Args) -> Result<MkfsConfig> {
    let mut features = Features::default();
    for f in &args.features {
        features.apply(f)?;
    }
    let uuid = |s: &Option<String>, what: &str| -> Result<Option<[u8; 16]>> {
        s.as_deref()
            .map(|s| parse_uuid(s).with_context(|| format!("invalid {what} '{s}'")))
            .transpose()
    };
    let byte_count = args.byte_count.as_deref().map(parse_size).transpose()?;
    let nodesize = parse_size(&args.nodesize)?;
    let sectorsize = parse_size(&args.sectorsize)?;
    Ok(MkfsConfig {
        byte_count,
        nodesize: u32::try_from(nodesize).context("nodesize too large")?,
        sectorsize: u32::try_from(sectorsize).context("sectorsize too large")?,
        csum: CsumType::from_name(&args.csum).with_context(|| {
            format!(
                "unknown checksum type '{}' (crc32c, xxhash, sha256, blake2)",
                args.csum
            )
        })?,
        metadata_profile: Profile::parse(&args.metadata)?,
        data_profile: Profile::parse(&args.data)?,
        features,
        label: args.label.clone().unwrap_or_default(),
        fsid: uuid(&args.uuid, "filesystem UUID")?,
        dev_uuid: uuid(&args.device_uuid, "device UUID")?,
        now: now()?,
        force: args.force,
    })
}

fn run(args: Args) -> Result<()> {
    if args.features.iter().any(|f| f == "list-all" || f == "help") {
        println!("Filesystem features available:");
        for (name, desc) in FEATURE_LIST {
            println!("{name:<20}- {desc}");
        }
        return Ok(());
    }
    let cfg = config(&args)?;
    cfg.validate()?;
    let report = match &args.rootdir {
        None => make_empty_filesystem(&args.image, &cfg),
        Some(dir) => {
            let compression = match (&args.compress, &args.compress_force) {
                (Some(c), _) => Compression::parse(c, false)?,
                (None, Some(c)) => Compression::parse(c, true)?,
                (None, None) => None,
            };
            let mut opts = RootdirOptions::new(dir);
            opts.compression = compression;
            opts.dedupe = args.dedupe;
            opts.memory = parse_size(&args.memory)?;
            opts.max_inline = parse_size(&args.max_inline)?;
            opts.shrink = args.shrink;
            opts.threads = args.threads;
            opts.scan = ScanOptions {
                subvols: args
                    .subvol
                    .iter()
                    .map(|s| SubvolSpec::parse(s))
                    .collect::<Result<_, _>>()?,
                uid: args.uid.or(args.all_root.then_some(0)),
                gid: args.gid.or(args.all_root.then_some(0)),
                clamp: clamp_epoch()?,
                ..ScanOptions::default()
            };
            let started = std::time::Instant::now();
            let bar = progress::start(&opts.progress, args.quiet);
            let r = make_rootdir_filesystem(&args.image, &cfg, &opts);
            progress::finish(bar);
            if let Ok(rep) = &r {
                if !args.quiet {
                    if let Some(d) = &rep.data {
                        eprintln!("{}", progress::summary_line(d, started.elapsed()));
                    }
                }
            }
            r
        }
    }
    .with_context(|| format!("cannot create a filesystem on {}", args.image.display()))?;
    if !args.quiet {
        let path = args.image.display().to_string();
        print!(
            "{}",
            Summary {
                path: &path,
                cfg: &cfg,
                layout: &report.layout,
                report: &report.commit,
            }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forge-mkfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
