"""The `fluxdepth` command: preview, generate, sequence. Thin: parsing and printing around the library calls."""

from __future__ import annotations

import argparse
import json
import sys

from .depth import DEFAULT_CLIP, INVERT_CHOICES, MODES, DepthInputError, DepthSettings, NormalizeSettings


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error: ...` line (exit 2), without the usage dump."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError(message)


def add_depth_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("depth")
    g.add_argument("depth", metavar="DEPTH", help="depth file: EXR, PNG, TIFF, PFM, NPY, JPEG, PGM")
    g.add_argument("--channel", help="channel to read (default: search Pz, depth, Z, ... in every part)")
    g.add_argument("--mode", choices=MODES, default="auto", help="normalization (default auto)")
    g.add_argument("--invert", choices=INVERT_CHOICES, default="auto", help="flip near/far (default auto)")
    g.add_argument("--clip", nargs=2, type=float, metavar=("LOW", "HIGH"), default=DEFAULT_CLIP,
                   help="percentile ends (default 0.5 99.5)")
    g.add_argument("--near", type=float, help="distance that maps to white (scene units)")
    g.add_argument("--far", type=float, help="distance that maps to the far end (scene units)")
    g.add_argument("--long-side", type=int, default=1024, help="control image long side in pixels (default 1024)")


def depth_settings_from_args(args: argparse.Namespace) -> DepthSettings:
    return DepthSettings(
        channel=args.channel,
        normalize=NormalizeSettings(
            mode=args.mode, invert=args.invert, clip=tuple(args.clip), near=args.near, far=args.far
        ),
        long_side=args.long_side,
    )


def cmd_preview(args: argparse.Namespace) -> int:
    from .depth import prepare_depth, write_preview_png
    from .depth.preview import stats_json

    result = prepare_depth(args.depth, depth_settings_from_args(args), log_histogram=False)
    write_preview_png(result.control, args.out)
    payload = json.loads(stats_json(result.stats))
    payload["out"] = args.out
    print(json.dumps(payload))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fluxdepth", description="FluxDepth Studio: depth passes -> FLUX.1-Depth-dev images")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("preview", help="write the normalized control map (16-bit PNG) and print its stats")
    add_depth_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT.png", help="16-bit greyscale PNG to write")
    p.set_defaults(func=cmd_preview)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user (exit 2, one line)."""
    return (DepthInputError, UsageError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
