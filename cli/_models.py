"""`simsearch models` (the zoo) and `simsearch model-info ARTIFACT`."""
from __future__ import annotations

import argparse
import json

from ._errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="input channels (default 3)")
    p.set_defaults(func=_list)
    p = sub.add_parser("model-info", help="print an artifact's metadata as JSON")
    p.add_argument("artifact", help="path to a .safetensors model artifact")
    p.set_defaults(func=_info)


def _list(args) -> int:
    import model

    for name in model.list_models():
        try:
            m = model.create_model(name, in_chans=args.in_chans)
        except ModuleNotFoundError as exc:  # a baseline, on an install without the `train` extra
            print(f"{name:16s} needs {(exc.name or '?').split('.')[0]}, not installed (pip install 'simsearch[train]')")
            continue
        n = model.count_parameters(m)
        print(f"{name:16s} {n:>12,d} parameters  {n * 4 / 1024:>10.2f} KB (float32)")
    return 0


def _info(args) -> int:
    import model

    try:
        meta = model.read_meta(args.artifact)
    except model.ArtifactError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(meta.model_dump(), indent=2))
    return 0
