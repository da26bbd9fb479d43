# Sourced by scripts/vm-cgroup2 and scripts/vm-systemd: Debian 12's current kernel for a test VM.
#
# vm_kernel sets $kernel (the package name, e.g. linux-image-6.1.0-57-amd64), $vmlinuz and
# $modules (its /lib/modules/VERSION tree), downloading the package once (apt-get download,
# from the configured mirror) into $cache; returns 2 with a message when it cannot.

vm_kernel() {
    kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$kernel" ]; then
        echo "vm: apt knows no linux-image-amd64 (apt-get update?)" >&2
        return 2
    fi
    vmlinuz="$cache/$kernel.vmlinuz"
    modules="$cache/$kernel.modules"
    if [ -s "$vmlinuz" ] && [ -d "$modules" ]; then
        return 0
    fi
    local work
    work=$(mktemp -d)
    chown _apt "$work" 2>/dev/null || true # apt downloads as _apt where it can
    if ! (cd "$work" && apt-get download "$kernel" >/dev/null 2>&1); then
        rm -rf "$work"
        echo "vm: cannot download $kernel (apt-get download)" >&2
        return 2
    fi
    dpkg-deb -x "$work"/*.deb "$work/x"
    rm -rf "$modules.tmp"
    mv "$work"/x/lib/modules/* "$modules.tmp"
    rm -rf "$modules"
    mv "$modules.tmp" "$modules"
    cp "$work"/x/boot/vmlinuz-* "$vmlinuz.tmp"
    mv "$vmlinuz.tmp" "$vmlinuz"
    rm -rf "$work"
}
