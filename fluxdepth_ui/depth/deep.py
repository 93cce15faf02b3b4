"""Deep EXR files decode in a child process, bounded in memory and time before any sample is read (issue 24).

A deep file's header does not say how many samples it holds: 8 MB on disk expanded to 2.5 GB once, and the binding
decodes every sample of every pixel before we see one. So the decode (and the flattening to the front-most sample)
runs in `python -m fluxdepth_ui.depth.deep`, whose data segment is capped near the decoded-bytes limit and which is
killed after `limits.decode_s`; what comes back is the flat raster only, as arrays (no pickle) plus a JSON record.
docs/sharing.md lists the limits.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

from .. import limits
from ..errors import display_name
from .errors import DepthInputError

# What the child's interpreter, numpy and OpenEXR take before decoding anything (measured: about 95 MB of data
# segment); the cap is this plus twice the decoded-bytes limit (the samples and their flattened copy).
_BASE_BYTES = 160 * 2**20
_REFUSED = 3  # the child's exit code for a DepthInputError, its message on stdout


def read_deep_exr(path: str, fmt: str):
    """The flattened raster of a deep EXR, decoded in a bounded child process."""
    from .readers import Channel, Raster

    name = display_name(path)
    bound = limits.current()
    with tempfile.TemporaryDirectory(prefix="fluxdepth-deep-") as work:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            run = subprocess.run([sys.executable, "-m", "fluxdepth_ui.depth.deep", path, work,
                                  json.dumps({"decoded_mb": bound.decoded_mb, "megapixels": bound.megapixels})],
                                 capture_output=True, text=True, timeout=bound.decode_s, env=env)
        except subprocess.TimeoutExpired:
            raise DepthInputError(f"{name}: its deep samples take longer than {bound.decode_s} s to decode; export "
                                  "a flat depth AOV from the renderer") from None
        if run.returncode == _REFUSED:
            raise DepthInputError(run.stdout.strip().splitlines()[-1])
        if run.returncode != 0:
            raise DepthInputError(f"{name}: its deep samples need more memory than the {bound.decoded_mb} MB "
                                  "decoding limit (or the file is corrupt); export a flat depth AOV")
        with open(os.path.join(work, "raster.json")) as fh:
            record = json.load(fh)
        with np.load(os.path.join(work, "pixels.npz"), allow_pickle=False) as arrays:
            channels = tuple(Channel(c["name"], arrays[f"c{i}"], c["sample_type"], c["part"], tuple(c["origin"]),
                                     c["part_name"], c["view"]) for i, c in enumerate(record["channels"]))
    return Raster(path, fmt, record["width"], record["height"], channels, tuple(record["views"]),
                  record["metadata"], tuple(record["notes"]), float(record["pixel_aspect"]))


def _child(path: str, work: str, bound: dict) -> int:
    from .readers import decode_exr

    data_cap = _BASE_BYTES + 2 * bound["decoded_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (data_cap, data_cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limits.configure(limits.Limits(decoded_mb=bound["decoded_mb"], megapixels=bound["megapixels"]))
    try:
        raster = decode_exr(path, "exr")
    except DepthInputError as exc:
        if "no readable image parts" not in str(exc):
            print(str(exc))
            return _REFUSED
        # The header was read before (readers._read_exr): the binding gives back no parts when an allocation
        # for the samples failed under the cap, so this is the memory bound, not a corrupt file.
        print(f"{display_name(path)}: its deep samples need more memory than the {bound['decoded_mb']} MB decoding "
              "limit; export a flat depth AOV")
        return _REFUSED
    except MemoryError:
        print(f"{display_name(path)}: its deep samples need more memory than the {bound['decoded_mb']} MB decoding "
              "limit; export a flat depth AOV")
        return _REFUSED
    np.savez(os.path.join(work, "pixels.npz"), **{f"c{i}": c.data for i, c in enumerate(raster.channels)})
    record = dict(width=raster.width, height=raster.height, views=list(raster.views), notes=list(raster.notes),
                  pixel_aspect=raster.pixel_aspect,
                  metadata=raster.metadata,
                  channels=[dict(name=c.name, sample_type=c.sample_type, part=c.part, origin=list(c.origin),
                                 part_name=c.part_name, view=c.view) for c in raster.channels])
    with open(os.path.join(work, "raster.json"), "w") as fh:
        json.dump(record, fh)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
