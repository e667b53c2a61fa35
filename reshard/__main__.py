"""``python -m reshard {inspect,convert,verify}``; exit codes in ``reshard/__init__.py``.

Messages a script can rely on: on success ``convert`` prints ``converted <DST>`` and ``verify``
prints ``verified <DIR>`` on stdout (or one JSON object with ``--json``); on failure stderr gets
one line ``reshard: error: <message>`` and the process exits with the documented code.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Any

import reshard
from reshard.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ReshardError
from reshard.progress import ProgressBar

EPILOG = """exit codes:
  0  ok
  1  internal error (a bug)
  2  usage: bad options, DST exists, tp does not divide heads / KV heads / padded vocab
  3  bad input: unknown format, corrupt or truncated file, missing or unused tensors,
     shape mismatch, no architecture (pass --arch)
  4  verification failed (checksums, structure or numerics)
  5  unsafe pickle refused: the file needs globals outside the allowlist (nothing executed)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code is 2 as well; keep the format
        self.print_usage(sys.stderr)
        sys.stderr.write(f"reshard: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m reshard",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("inspect", help="format, architecture, tp, dtype, parameter count, files")
    p.add_argument("src")
    p.add_argument("--arch", help="architecture name when the checkpoint carries none")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p = sub.add_parser("convert", help="convert SRC (format detected) to DST")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", required=True, choices=["native", "hf", "metaseq"])
    p.add_argument("--tp", type=int, help="tensor-parallel size of the output (default: the source's)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="output dtype (default: the source's)")
    p.add_argument("--arch", help="architecture name when the checkpoint carries none")
    p.add_argument("--fsync", action="store_true", help="flush files to disk before publishing")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("verify", help="checksums, structure, and (with --against) logits")
    p.add_argument("dir")
    p.add_argument("--against", help="source checkpoint to compare logits with")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            info = reshard.inspect(args.src, arch=args.arch)
            if args.json:
                print(json.dumps(info.to_json(), indent=2, sort_keys=True))
            else:
                arch = info.architecture
                print(
                    f"format:      {info.format}\narchitecture: {arch['name']} ({arch['family']}, {arch['n_layer']} layers, "
                    f"{arch['n_head']} heads, hidden {arch['n_embd']}, vocab {arch['vocab_size']}) "
                    f"[from {info.architecture_from}]\ntp:          {info.tp}\ndtype:       {info.dtype}\n"
                    f"parameters:  {info.parameter_count:,}\nfiles:       {len(info.files)}"
                )
                for f in info.files:
                    print(f"  {f['path']}  {f['size']:,} bytes")
        elif args.command == "convert":
            bar = None if args.quiet else ProgressBar("convert")
            result = reshard.convert(
                args.src,
                args.dst,
                to=args.to,
                tp=args.tp,
                dtype=args.dtype,
                arch=args.arch,
                progress=bar,
                fsync=args.fsync,
            )
            if args.json:
                print(json.dumps(result.to_json(), indent=2, sort_keys=True))
            else:
                print(
                    f"converted {result.dst} ({result.format}, tp={result.tp}, {result.dtype}, "
                    f"{result.parameter_count:,} parameters, {len(result.files)} files, {result.seconds:.1f}s)"
                )
        else:
            vresult = reshard.verify(args.dir, against=args.against)
            if args.json:
                print(json.dumps(vresult.to_json(), indent=2, sort_keys=True))
            else:
                extra = f", logits max diff {vresult.numerics['max_abs_diff']:.3g}" if vresult.numerics else ""
                print(
                    f"verified {vresult.path} ({vresult.format}, tp={vresult.tp}, {vresult.files_checked} files{extra})"
                )
    except ReshardError as exc:
        sys.stderr.write(f"reshard: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("reshard: error: interrupted\n")
        return 130
    except Exception as exc:  # a bug: say so, with the type, and exit 1
        sys.stderr.write(f"reshard: error: internal error {type(exc).__name__}: {exc}\n")
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":
    # All that is imported by now (torch: about a million objects) lives until the process ends.
    # Frozen, the cyclic collector stops walking it: during the run, and in the interpreter's
    # final collections, which otherwise add most of a second to every command.
    gc.freeze()
    sys.exit(main())
