# Debian or Ubuntu by mmdebstrap, for `method = "script"`. Args: suite, mirror, variant
# (default minbase) and include (packages; the pipeline must name a kernel and GRUB for the
# default finish to make the disk bootable). prepare, finish and cleanup are the tool's
# defaults: an MBR disk with one ext4 root, fstab, DHCP with systemd-networkd, GRUB.

setup() {
    if ! command -v mmdebstrap >/dev/null; then
        echo "mmdebstrap is not installed on this host (apt-get install mmdebstrap)" >&2
        return 1
    fi
}

install() {
    mmdebstrap --variant="${ARG_VARIANT:-minbase}" --include="$ARG_INCLUDE" \
        "$ARG_SUITE" "$TARGET" "$ARG_MIRROR"
}
