"""Regenerate ``crdt_ops/wire/crdt_pb2.py`` and its stub from ``proto/`` (needs the ``dev``
extra).

``python scripts/generate_proto.py`` writes the two files into ``crdt_ops/wire/``;
``--check`` exits 1 when the committed files differ from what the generator emits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "crdt_ops" / "wire"
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "crdt_ops/v1/crdt.proto"
OUTPUTS = ("crdt_pb2.py", "crdt_pb2.pyi")


def generate(out: Path) -> None:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugin into ``out``."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
            f"--python_out={out}", f"--mypy_out={out}", str(PROTO_ROOT / PROTO_FILE),
        ],
        check=True, env=env, capture_output=True,
    )
    for name in OUTPUTS:
        shutil.move(out / "crdt_ops" / "v1" / name, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        stale = [n for n in OUTPUTS if not (HERE / n).exists()
                 or (HERE / n).read_bytes() != (out / n).read_bytes()]
        if args.check:
            if stale:
                print(f"stale generated code: {', '.join(stale)}; "
                      "run python scripts/generate_proto.py")
                return 1
            print("generated code is up to date")
            return 0
        for name in OUTPUTS:
            shutil.copyfile(out / name, HERE / name)
        print(f"wrote {', '.join(OUTPUTS)} in {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
