"""Where firmware and QEMU come from: the pinned manifest, the one selection rule, downloads."""
