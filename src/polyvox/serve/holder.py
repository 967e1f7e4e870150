"""The voice being served, and how it is replaced: :class:`VoiceHolder` loads the bundle folder
whole, checks its files against ``bundle.json``, and swaps one reference (:class:`Loaded`) when the
bundle changes. A request takes that reference once and keeps it, so a reload never fails a
request or mixes versions; a reload that fails leaves the loaded voice served and says why."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import HTTPException

from polyvox.fileio import recover_folder
from polyvox.lock import writer_active
from polyvox.runtime.bundle import BundleMeta, FileCheck, load_bundle

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    voice: object
    meta: BundleMeta
    stamp: str  # bundle.json's content: a new version or rebuild changes it
    onnx: object | None = None  # OnnxAcoustic/OnnxConverter when the bundle has ONNX graphs and the runtime is onnx


class VoiceHolder:
    """The voice being served, swapped as one reference when the bundle changes."""

    def __init__(self, folder: Path, runtime: str = "torch"):
        self.folder = folder
        self.runtime = runtime
        self._lock = threading.Lock()
        self.current: Loaded | None = None
        self.reloads = 0
        self.reload_error: str | None = None  # why the last reload failed; None once one succeeds
        self.reload_failures = 0
        self.damage: list[str] = []  # what is wrong with the bundle's files on disk (the loaded voice serves on)
        self._files = FileCheck()

    def _stamp(self) -> str | None:
        # A promote killed mid-swap left the old bundle aside: serve it. But a live promote passes
        # through that same state between its two renames: while a writer holds the workspace, its
        # swap is its own (renaming the old folder back would undo it).
        if not writer_active(self.folder.parent.parent):
            recover_folder(self.folder)
        try:
            return (self.folder / "bundle.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def reload(self, force: bool = False) -> bool:
        """Load the bundle if it changed (or ``force``); True when a new voice is being served."""
        stamp = self._stamp()
        if stamp is None:
            self.damage = [] if self.current is None else ["bundle.json: missing"]
            if force:
                raise FileNotFoundError("bundle.json is missing from the bundle folder: nothing to reload "
                                        "(the loaded voice is still served)")
            return False
        if not force and self.current is not None and stamp == self.current.stamp:
            self.damage = self._files.damage(self.folder, self.current.meta)
            return False
        damage = self._files.damage(self.folder, BundleMeta.read(self.folder))
        if damage:  # a bundle whose files are not what bundle.json lists is never loaded
            raise ValueError(f"the bundle's files do not match bundle.json: {'; '.join(damage[:5])}")
        voice, meta = load_bundle(self.folder)  # fully loaded before anyone sees it
        onnx = None
        if self.runtime == "onnx" and meta.onnx and voice.mode == "weighted":
            from polyvox.runtime.onnx import onnx_runtime

            onnx = onnx_runtime(voice, self.folder / "onnx", threads=torch.get_num_threads())
        if self._stamp() != stamp:  # replaced while we read it: the next poll takes the newer one
            return False
        with self._lock:
            self.current = Loaded(voice, meta, stamp, onnx)
            self.reloads += 1
            self.damage = []
        log.info("serving %s version %s", self.folder, meta.version)
        return True

    def try_reload(self, force: bool = False) -> bool:
        """:meth:`reload`, surviving any bundle: a half-written one, or an ONNX graph onnxruntime
        refuses with its own error types. The old voice stays served; why the reload failed is kept
        for /healthz and /metrics until one succeeds."""
        before = list(self.damage)
        try:
            changed = self.reload(force)
            if self.damage and self.damage != before:
                log.warning("bundle %s is damaged (still serving the loaded voice): %s", self.folder,
                            "; ".join(self.damage))
        except Exception as exc:  # noqa: BLE001 - recorded and reported, never swallowed
            self.reload_failures += 1
            log.warning("bundle %s not reloaded (still serving the previous voice): %s: %s", self.folder,
                        type(exc).__name__, exc)
            self.reload_error = f"{type(exc).__name__}: {_no_paths(str(exc), self.folder)[:300]}"
            return False
        self.reload_error = None
        return changed

    def get(self) -> Loaded:
        with self._lock:
            if self.current is None:
                raise HTTPException(503, f"no voice to serve yet: {self.folder} holds no bundle (promote one)")
            return self.current


def _no_paths(text: str, folder: Path) -> str:
    """``text`` for anyone who asks (/healthz): paths inside the bundle relative to it, any other
    absolute path by its last part (the service log keeps the whole message)."""
    text = text.replace(str(folder.resolve()), "<bundle>").replace(str(folder), "<bundle>")
    return re.sub(r"(?<![\w<>])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)", r"…/\1", text)
