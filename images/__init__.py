"""Image recipes and the firmware manifest, shipped with the harness as `harness.defaults`.

This folder holds data, not code: `recipes/*.yaml` (how flash images are made) and
`firmware.yaml` (the pinned firmware). This file only makes the folder loadable as a
package, so an installed harness finds the same files a checkout has.
"""
