#!/usr/bin/env python3
"""Regenerate the btrfs-image reader fixtures in this directory.

Needs root, mkfs.btrfs/btrfs (btrfs-progs), zstd, a loop device and the btrfs
kernel module. Writes, for NAME in (mkfs-6.2-rootdir, kernel-compressed):
  NAME.img.zst         the image, zstd-compressed (sparse zeros compress away)
  NAME.dump-super.txt  `btrfs inspect-internal dump-super` of the image
  NAME.items.txt       "TREE_ID ITEMS" per tree, counted from `dump-tree -t ID`
  NAME.manifest.txt    one line per path: TYPE SIZE SHA256-or-TARGET PATH
mkfs-6.2-rootdir: `mkfs.btrfs --rootdir` (defaults: DUP metadata, 16 KiB nodes,
114 MiB so the superblock mirror at 64 MiB exists). kernel-compressed: 48 MiB,
4 KiB nodes (so trees grow above one leaf), files written by the kernel through
compress-force=zstd/zlib/lzo, overwritten in the middle, plus holes, prealloc,
xattrs, a hard link, a reflink, 300 small files and a default subvolume.
The file contents are generated from a fixed seed, so reruns differ only in
timestamps, device uuids and whatever the kernel chooses; the tests read the
expected values from the text files, so regenerate all of them together.
"""
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(*cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def text(rng, n):
    """Compressible but varied text of n bytes."""
    words = ["btrfs", "extent", "chunk", "leaf", "node", "stripe", "csum", "inode"]
    out = []
    size = 0
    i = 0
    while size < n:
        # Mostly predictable, a little entropy: compresses well but not trivially.
        line = "%06d %s %s\n" % (i, words[i % 8], rng.choice(words) if i % 4 == 0 else "-")
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out).encode()[:n]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def manifest(root, out_path, skip=()):
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in skip)
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(p)
            if os.path.islink(p):
                lines.append("symlink %d %s %s" % (st.st_size, os.readlink(p), rel))
            elif os.path.isdir(p):
                lines.append("dir 0 - %s" % rel)
            else:
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                lines.append("file %d %s %s" % (st.st_size, h, rel))
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def finish(img, name):
    with open(os.path.join(HERE, name + ".dump-super.txt"), "w") as f:
        run("btrfs", "inspect-internal", "dump-super", img, stdout=f)
    counts = []
    for tree in (1, 2, 3, 4, 5, 7, 9, 10, 256):
        r = subprocess.run(["btrfs", "inspect-internal", "dump-tree", "-t", str(tree), img],
                           capture_output=True, text=True)
        n = len(re.findall(r"^\titem \d+ key ", r.stdout, re.M))
        if r.returncode == 0 and (n or tree < 256):
            counts.append("%d %d" % (tree, n))
    with open(os.path.join(HERE, name + ".items.txt"), "w") as f:
        f.write("\n".join(counts) + "\n")
    run("zstd", "-19", "-f", "-q", img, "-o", os.path.join(HERE, name + ".img.zst"))


def mkfs_rootdir(tmp):
    rng = random.Random(20240601)
    tree = os.path.join(tmp, "tree")
    write(os.path.join(tree, "empty"), b"")
    write(os.path.join(tree, "one"), b"x")
    write(os.path.join(tree, "inline-3000"), text(rng, 3000))
    write(os.path.join(tree, "text-200k"), text(rng, 200 * 1024))
    with open(os.path.join(tree, "sparse"), "wb") as f:
        f.truncate(1 << 20)
        f.seek(512 * 1024)
        f.write(text(rng, 10000))
    os.symlink("text-200k", os.path.join(tree, "link"))
    write(os.path.join(tree, "sub", "a"), text(rng, 100))
    write(os.path.join(tree, "sub", "deeper", "b"), text(rng, 5000))
    os.makedirs(os.path.join(tree, "emptydir"))
    os.link(os.path.join(tree, "sub", "a"), os.path.join(tree, "hardlink-to-sub-a"))
    os.setxattr(os.path.join(tree, "one"), "user.forge", b"fixture")
    img = os.path.join(tmp, "mkfs.img")
    with open(img, "wb") as f:
        f.truncate(114 * 1024 * 1024)
    run("mkfs.btrfs", "-q", "-U", "5eed0001-0000-4000-8000-000000000001", "-L", "forge-fixture",
        "--rootdir", tree, img)
    manifest(tree, os.path.join(HERE, "mkfs-6.2-rootdir.manifest.txt"))
    finish(img, "mkfs-6.2-rootdir")


def kernel_compressed(tmp):
    rng = random.Random(20240602)
    img = os.path.join(tmp, "kernel.img")
    with open(img, "wb") as f:
        f.truncate(48 * 1024 * 1024)
    run("mkfs.btrfs", "-q", "-U", "5eed0002-0000-4000-8000-000000000002", "-L", "forge-kernel",
        "-m", "single", "-d", "single", "-n", "4096", img)
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    run("mount", "-o", "loop,compress-force=zstd", img, mnt)
    try:
        for algo in ("zstd", "zlib", "lzo"):
            if algo != "zstd":
                run("mount", "-o", "remount,compress-force=" + algo, mnt)
            d = os.path.join(mnt, algo)
            write(os.path.join(d, "big"), text(rng, 260 * 1024 + 123))
            write(os.path.join(d, "small"), text(rng, 3000))  # inline, compressed
            write(os.path.join(d, "tail"), text(rng, 4096 * 3 + 17))
            run("sync")
            # Overwrite the middle: later extents point into the old compressed one.
            with open(os.path.join(d, "big"), "r+b") as f:
                f.seek(70000)
                f.write(b"#" * 5000)
            run("sync")
        run("mount", "-o", "remount,compress=no", mnt)
        plain = os.path.join(mnt, "plain")
        write(os.path.join(plain, "data"), text(rng, 50000))
        with open(os.path.join(plain, "holes"), "wb") as f:
            f.seek(200000)
            f.write(text(rng, 9000))
            f.truncate(600000)
        with open(os.path.join(plain, "prealloc"), "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 256 * 1024)
            f.seek(8192)
            f.write(text(rng, 4096))
        os.symlink("../zstd/big", os.path.join(plain, "link"))
        os.link(os.path.join(plain, "data"), os.path.join(plain, "data-hardlink"))
        os.setxattr(os.path.join(plain, "data"), "user.colour", b"green")
        os.setxattr(os.path.join(plain, "data"), "user.empty", b"")
        run("cp", "--reflink=always", os.path.join(mnt, "zlib", "big"), os.path.join(plain, "reflinked"))
        # Enough small files that the fs and extent trees grow nodes above the leaves.
        for i in range(300):
            write(os.path.join(mnt, "many", "f%03d" % i), text(rng, 1 + (i * 37) % 700))
        run("btrfs", "-q", "subvolume", "create", os.path.join(mnt, "sv"))
        write(os.path.join(mnt, "sv", "inside"), text(rng, 777))
        os.makedirs(os.path.join(mnt, "sv", "d"))
        write(os.path.join(mnt, "sv", "d", "deep"), text(rng, 20000))
        out = run("btrfs", "subvolume", "list", mnt, capture_output=True, text=True).stdout
        svid = re.search(r"ID (\d+) .* path sv$", out, re.M).group(1)
        run("btrfs", "subvolume", "set-default", svid, mnt)
        run("sync")
        manifest(mnt, os.path.join(HERE, "kernel-compressed.manifest.txt"))
    finally:
        run("umount", mnt)
    finish(img, "kernel-compressed")


def main():
    if os.geteuid() != 0:
        sys.exit("needs root (loop mount)")
    tmp = tempfile.mkdtemp()
    try:
        mkfs_rootdir(tmp)
        kernel_compressed(tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
