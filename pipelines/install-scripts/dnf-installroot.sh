# Rocky Linux (or another dnf distribution) by `dnf --installroot`, for `method = "script"`.
# Needs dnf on the host and a reachable mirror. Args: mirror (the release's tree, holding
# BaseOS/ and AppStream/), releasever, gpgkey (URL or path of the release's signing key) and
# include (packages and @groups). GRUB here is grub2-* and the initramfs is dracut's, so the
# script brings its own finish; prepare and cleanup are the tool's.

setup() {
    if ! command -v dnf >/dev/null; then
        echo "dnf is not installed on this host (apt-get install dnf)" >&2
        return 1
    fi
}

install() {
    local repos=()
    for repo in BaseOS AppStream; do
        repos+=("--repofrompath=$repo,$ARG_MIRROR/$repo/x86_64/os/"
                "--setopt=$repo.gpgcheck=1" "--setopt=$repo.gpgkey=$ARG_GPGKEY")
    done
    # shellcheck disable=SC2086 # include is a space-separated list of packages
    dnf --installroot="$TARGET" --releasever="$ARG_RELEASEVER" --disablerepo='*' \
        "${repos[@]}" --setopt=install_weak_deps=False --assumeyes install $ARG_INCLUDE
}

# Runs in the guest (the appliance chroots into the new disk): $DISK, $ROOT_DEVICE,
# $ROOT_UUID and $LAYOUT describe the disk the tool prepared.
finish() {
    printf 'UUID=%s / ext4 defaults 0 1\n' "$ROOT_UUID" > /etc/fstab
    printf '%s\n' 'GRUB_TIMEOUT=1' 'GRUB_TERMINAL="console serial"' \
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"' 'GRUB_ENABLE_BLSCFG=true' \
        > /etc/default/grub
    grub2-install --target=i386-pc "$DISK"
    grub2-mkconfig -o /boot/grub2/grub.cfg
    dracut --no-hostonly --regenerate-all --force
    # SELinux labels were not set by the host: relabel on first boot.
    touch /.autorelabel
}
