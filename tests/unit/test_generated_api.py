"""The committed swarm/api/v1 modules are what `python proto/generate.py` makes
from proto/ today: edit a .proto without regenerating and this fails."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["proto_generate"] = module
    spec.loader.exec_module(module)
    module.generate(tmp_path)

    fresh = tmp_path / "swarm" / "api" / "v1"
    committed = REPO / "swarm" / "api" / "v1"
    generated = sorted(p.name for p in fresh.iterdir())
    assert generated, "the generator produced nothing"
    stale = [name for name in generated if not (committed / name).exists()
             or not filecmp.cmp(fresh / name, committed / name, shallow=False)]
    assert stale == [], f"regenerate with `python proto/generate.py`: stale {stale}"
    extra = sorted({p.name for p in committed.glob("*_pb2*")} - set(generated))
    assert extra == [], f"generated files without a .proto: {extra}"
