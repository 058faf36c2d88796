"""The trial runner: one shared run folder (`OUT/search`) whose stage list grows by each
candidate's new stages; a candidate's stages are run by the recipe runner and measured into a row."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import SlimtuneError
from ..tasks.names import CLASSIFY
from ..text import length_for
from .candidates import FLOOR, REFERENCE, chain, key_name
from .config import AutoConfig


class Search:
    """The shared run folder (`OUT/search`) whose stage list grows by each candidate's new stages."""

    def __init__(self, cfg: AutoConfig, out: Path, log):
        from ..model.folders import resolve

        self.cfg, self.out, self.log = cfg, Path(out), log
        self.folder = self.out / "search"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stages_file = self.folder / "stages.json"
        self.stages: list[dict] = json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else []
        config = json.loads((resolve(cfg.model) / "config.json").read_text())
        self.depth = int(config.get("num_hidden_layers") or 6)
        if not self.stages:
            self._add([REFERENCE | {"name": "reference"}])
        self.report: dict | None = None
        self.model_note: str | None = None  # why the model is not the user's (auto: pick_model)
        self.splits = None
        self._val: dict[str, dict] = {}

    def _train_fields(self, st: dict) -> dict:
        from ..methods import METHODS

        fields = {f.name for f in dataclasses.fields(METHODS[st["method"]].config_cls)}
        extra = {k: v for k, v in self.cfg.train.items() if k in fields}
        if "max_steps" in extra:  # a step budget (tests): drop what would fight it
            st = {k: v for k, v in st.items() if k not in ("early_stopping_patience",)}
        return st | extra

    def _add(self, stages: list[dict]) -> None:
        known = {s["name"] for s in self.stages}
        new = [self._train_fields(s) for s in stages if s["name"] not in known]
        if new:
            self.stages += new
            tmp = self.stages_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stages, indent=2))
            tmp.replace(self.stages_file)

    def _drop(self, names: set[str]) -> None:
        """Forget stages of a failed candidate that never finished (so later runs do not retry them)."""
        keep = [s for s in self.stages if s["name"] not in names or self._folder(s["name"]) is not None]
        if len(keep) != len(self.stages):
            self.stages = keep
            self.stages_file.write_text(json.dumps(self.stages, indent=2))

    def recipe_dict(self, stages: list[dict] | None = None) -> dict:
        return {"data": dataclasses.asdict(self.cfg.data), "model": self.cfg.model,
                "stages": stages if stages is not None else self.stages, "eval": dict(self.cfg.eval), "baseline": "reference"}

    def run(self) -> dict:
        from ..recipe import parse
        from ..runner import run as run_recipe

        raw = self.recipe_dict()
        # OUT/search is auto's own folder (its stages.json is written before the first run)
        self.report = run_recipe(parse(_plain(raw), "auto"), self.folder, log=self.log, overwrite=True)
        if self.splits is None:
            from ..data import load_splits

            self.splits = load_splits(self.cfg.data)
        return self.report

    def _folder(self, name: str) -> Path | None:
        for i, s in enumerate(self.stages):
            if s["name"] == name:
                f = self.folder / "stages" / f"{i + 1:02d}-{name}"
                return f if (f / "metrics.json").is_file() else None
        return None

    def val_metrics(self, artifact: Path) -> dict:
        """Accuracy on the validation split (what selection reads), cached beside the run."""
        from ..measure.metrics import evaluate
        from ..artifacts import load_predictor

        cache = self.folder / "val" / f"{artifact.name}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        if not len(self.splits.val):
            raise SlimtuneError("auto: the data has no validation split (data.val_size is 0); selection needs one")
        trained = self.cfg.train.get("max_length") or self.report["profile"]["suggested_max_length"]
        length = self.cfg.eval.get("max_length") or max(length_for(CLASSIFY, self.cfg.model), trained)  # text.eval_length
        pred = load_predictor(artifact, length, self.splits.label_names)
        m, _ = evaluate(pred, self.splits.val, 32)
        out = {"val_accuracy": m["accuracy"], "val_f1_macro": m["f1_macro"]}
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(json.dumps(out))
        return out

    def measure(self, key: dict) -> dict:
        """Run (or reuse) the candidate's stages and return its measured row."""
        if key["arch"] == FLOOR:
            if self.report is None:
                self.run()
            row = self.report["floor"]
            artifact = self.folder / "floor"
            stages = []
        else:
            stages = chain(key, self.depth)
            self._add(stages)
            try:
                self.run()
            except BaseException:
                self._drop({s["name"] for s in stages})
                raise
            name = stages[-1]["name"] if stages else "reference"
            row = next(s for s in self.report["stages"] if s["name"] == name)
            artifact = self.folder / row["artifact"]
        m = row["metrics"]
        return {
            "candidate": key_name(key), "key": key, "artifact": str(artifact), "stages": [s["name"] for s in stages],
            "val_accuracy": self.val_metrics(artifact)["val_accuracy"], "test_accuracy": m["accuracy"],
            "latency_ms_p50": m["latency_ms_p50"], "size_mb": m["size_bytes"] / 2**20, "params": m.get("params"),
            "method": row["method"],
        }

    def reference(self) -> dict:
        return self.measure({"arch": "reference", "vocab": "full", "runtime": "torch"})


def _plain(obj):
    """JSON round trip: tuples to lists (the recipe parser expects YAML-like values)."""
    return json.loads(json.dumps(obj))

