# Sourced by scripts/vm-cgroup2 and scripts/vm-systemd: what both test VMs need.
#
# vm_tools installs qemu and cpio where missing and makes $cache.
# vm_kernel sets $kernel (the package name, e.g. linux-image-6.1.0-57-amd64), $vmlinuz and
# $modules (its /lib/modules/VERSION tree), downloading the package once (apt-get download,
# from the configured mirror) into $cache; returns 2 with a message when it cannot.
# vm_report NAME LOG STATUS LINES prints the guest's lines of LOG matching the extended regex
# LINES and returns 0 only if qemu exited with STATUS 0, the guest said DONE and no FAIL.

vm_tools() {
    if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            qemu-system-x86 cpio
    fi
    mkdir -p "$cache"
}

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

vm_report() {
    local name=$1 log=$2 status=$3 lines=$4
    tr -d '\r' <"$log" | grep -E "$lines" || true
    if [ "$status" != 0 ]; then
        echo "FAIL qemu exited with status $status (log: $log)"
        return 1
    fi
    if grep -q '^FAIL' <(tr -d '\r' <"$log") || ! grep -q '^DONE' <(tr -d '\r' <"$log"); then
        echo "$name: FAILED (log: $log)"
        return 1
    fi
    echo "$name: all checks passed on $kernel"
}
