"""The live split and the adapters that serve it, followed without restart.

The control process publishes the live state (an `abtest.routing.Routing`: the experiment id and salt, the
split of variant → share and the adapter folder of every variant) as `routing.json` in the data dir, written
atomically. `Router.refresh()` reads it when it changed, loads new adapters under their
immutable version name (never reloaded in place) and unloads retired ones, then swaps the split at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from abtest.routing import Routing
from ingest.contracts import BASE
from serving import lora_batch
from serving.upstream import AdapterFailed, NoServer

log = logging.getLogger(__name__)


def publish(data_dir: Path, routing: Routing) -> None:
    """Write routing.json atomically (what the control process calls when the live state changes)."""
    path = Path(data_dir) / "routing.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(routing.to_json(), indent=2))
    os.replace(tmp, path)


class Router:
    """Holds the current Routing and the model's adapters; `route(user)` is lock-free for requests."""

    def __init__(self, path: Path, model_holder, on_failed: Callable[[str, str], object] | None = None):
        """`on_failed(version, reason)`: an adapter the serving engine refused or answered wrongly (vLLM's
        probe), so the control process marks it failed and publishes a split without it."""
        self.path, self.holder, self.on_failed = Path(path), model_holder, on_failed
        self.current = Routing()
        self._mtime: int | None = None
        self._lock = threading.Lock()

    def route(self, user_id: str) -> tuple[str, str | None]:
        r = self.current
        return r.assign(user_id), r.experiment_id

    def variants(self) -> list[str]:
        return [BASE, *sorted(self.current.adapters)]

    def refresh(self) -> bool:
        """Apply routing.json if it changed; a bad file is logged and the current state kept."""
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime == self._mtime:
                return False
            try:
                new = Routing.read(self.path) if mtime else Routing()
                # Load first, switch the split, then unload what the new split no longer uses.
                self.holder.sync_adapters({**self.current.adapters, **new.adapters})
                self.current = new
                self.holder.sync_adapters(new.adapters)
            except NoServer as e:  # not the adapter's fault: tried again at the next refresh
                log.warning("routing.json not applied yet: %s", e)
                return False
            except (OSError, ValueError) as e:
                log.error("routing.json not applied, keeping the current split: %s", e)
                self._mtime = mtime
                if isinstance(e, AdapterFailed) and self.on_failed is not None:
                    self.on_failed(e.version, e.reason)
                return False
            self._mtime = mtime
            log.info("routing: experiment %s, split %s", new.experiment_id, list(new.split))
            return True


class ModelHolder:
    """The generator's model plus the LoRA adapters loaded into it, by immutable version name.

    Changes run on the generator's thread between batches, never during a forward pass.
    """

    def __init__(self, generator):
        self.generator = generator
        self.loaded: dict[str, str] = {}

    def sync_adapters(self, wanted: dict[str, str]) -> None:
        self.generator.call_between_batches(lambda: self._sync(dict(wanted))).result(timeout=300)

    def _sync(self, wanted: dict[str, str]) -> None:
        from peft import PeftModel

        model = self.generator.model
        before = dict(self.loaded)
        for version, folder in wanted.items():
            if version in self.loaded:
                if self.loaded[version] != folder:
                    raise ValueError(f"adapter {version} points at a new folder: versions are immutable")
                continue
            if not (Path(folder) / "adapter_config.json").exists():
                raise ValueError(f"adapter {version}: no adapter_config.json in {folder}")
            if isinstance(model, PeftModel):
                model.load_adapter(folder, adapter_name=version)
            else:
                model = PeftModel.from_pretrained(model, folder, adapter_name=version)
            model.eval()
            self.loaded[version] = folder
            log.info("loaded adapter %s from %s", version, folder)
        retired = [v for v in self.loaded if v not in wanted]
        if retired and not wanted:
            model = model.unload()  # the last adapter goes: back to the plain base model
        else:
            for version in retired:
                model.delete_adapter(version)
        for version in retired:
            del self.loaded[version]
            log.info("unloaded adapter %s", version)
        if self.loaded and self.loaded != before:
            # Only when the set changed: a new split over the same adapters (an A/B ramp) keeps the fused
            # matrices; rebuilding them reallocates ~40 MB on the 135M model and was measured to slow decoding.
            lora_batch.install(model)
            lora_batch.forget_stacks(model)
        self.generator.model = model
