#!/bin/sh
echo "hello from an offline-built btrfs image"
