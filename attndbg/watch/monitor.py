"""``attndbg.watch``: attention statistics of a model while it trains, on sampled steps only.

    with attndbg.watch(model, every=10, log="attn.jsonl") as watcher:
        for batch in loader:
            loss = model(batch).loss
            loss.backward()
            optimizer.step()
            watcher.step()

On a sampled step (step % every == 0) the model's forward runs under the capture machinery,
which keeps each attention call's tensors where they are (detached, not copied); at the end
of the forward each call is reduced on its device to per-head numbers and the catalogue's
findings, and its tensors are dropped. Other steps run with no hook on the model at all.
``step()`` closes the step: it merges the layers (and the ranks, under torch.distributed),
checks the trend alerts, and writes the log.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attndbg.errors import UsageError, first_line
from attndbg.watch.alerts import Alert, AlertTracker, AttentionAlert, AttentionWarning, Thresholds
from attndbg.watch.log import JsonlLog, header
from attndbg.watch.reduce import LayerSample, merge, reduce_call

OnAlert = str | Callable[[Alert], Any]


class Watcher:
    """Attention statistics of ``model`` on every ``every``-th training step.

    every: record one training step in ``every`` (steps 0, every, 2·every, ...).
    log: a JSON-lines file written as the run goes (schema: docs/watch-log.md).
    on_alert: ``"warn"`` (an :class:`AttentionWarning`), ``"raise"`` (:class:`AttentionAlert`
        from ``step()``, after the log is written), ``"ignore"``, or a callable given each Alert.
    thresholds: a :class:`Thresholds`, or a dict of the fields to change.
    tensorboard: a ``SummaryWriter`` or a log directory for one (needs the tensorboard package).
    catalogue: also run attndbg's checks on each recorded call (findings logged once each).
    auto_step: count every training-mode forward of ``model`` as a step (no ``step()`` calls).
    eval_forwards: also record forwards made in eval mode on sampled steps.
    layers: a glob on module names (``"*.attn"``) to record only some attention calls.
    per_rank: under torch.distributed, also write one log per rank (``NAME.rank<R>.jsonl``).
    max_memory: bytes of temporaries the statistics pass may use per call.
    max_batch: reduce only the first ``max_batch`` sequences of each call (faster; the softmax
        statistics and findings are then estimates; non-finite values are still counted over
        the whole call). None (the default) reads the whole batch.

    ``alerts`` holds every alert so far, ``findings`` the catalogue's findings (first step of
    each), ``last`` the layers of the last sampled step (name → :class:`LayerSample`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        every: int = 10,
        log: str | Path | None = None,
        *,
        on_alert: OnAlert = "warn",
        thresholds: Thresholds | dict[str, float] | None = None,
        tensorboard: Any = None,
        catalogue: bool = True,
        auto_step: bool = False,
        eval_forwards: bool = False,
        layers: str | None = None,
        per_rank: bool = False,
        max_memory: int = 1 << 28,
        max_batch: int | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or every < 1:
            raise UsageError(f"watch(every={every!r}): expected a whole number ≥ 1")
        if not (callable(on_alert) or on_alert in ("warn", "raise", "ignore")):
            raise UsageError(
                f"watch(on_alert={on_alert!r}): expected 'warn', 'raise', 'ignore' or a callable"
            )
        self.model, self.every, self.on_alert = model, every, on_alert
        self.thresholds = Thresholds.from_value(thresholds)
        self.catalogue, self.auto_step, self.eval_forwards = catalogue, auto_step, eval_forwards
        self.layers, self.per_rank, self.max_memory = layers, per_rank, max_memory
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise UsageError(f"watch(max_batch={max_batch!r}): expected a whole number ≥ 1, or None")
        self.max_batch = max_batch
        self.log_path = Path(log) if log is not None else None
        self._tensorboard_spec = tensorboard
        self.step_index = 0
        self.alerts: list[Alert] = []
        self.findings: dict[tuple[str, str], dict[str, Any]] = {}
        self.last: dict[str, LayerSample] = {}
        self._tracker = AlertTracker(self.thresholds)
        self._pending: dict[str, LayerSample] = {}
        self._pending_seconds = 0.0
        self._skipped: list[dict[str, str]] = []  # calls of the open step that could not be reduced
        self._skip_warned = False
        self._calls: Any = None  # the Calls of the forward being recorded
        self._capture: contextlib.ExitStack | None = None
        self._step_hooks: list[Any] = []  # on the model only while auto_step is on
        self._armed: list[Any] = []  # on every module, only during a sampled step
        self._outermost: torch.nn.Module | None = None
        self._main_log: JsonlLog | None = None
        self._rank_log: JsonlLog | None = None
        self._tensorboard: Any = None
        self._sampled = 0
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> Watcher:
        if self._started:
            return self
        from attndbg.watch import distributed

        rank, world = distributed.rank_and_size()
        if self.log_path is not None:
            head = header(self.every, self.thresholds.to_dict(), world, None if world == 1 else rank)
            if rank == 0:
                self._main_log = JsonlLog(self.log_path)
                self._main_log.write(
                    {**head, "rank": None, "aggregate": "worst over ranks" if world > 1 else None}
                )
            if self.per_rank and world > 1:
                self._rank_log = JsonlLog(distributed.rank_path(self.log_path, rank))
                self._rank_log.write(head)
        if self._tensorboard_spec is not None and rank == 0:
            from attndbg.watch.tensorboard import scalar_writer

            self._tensorboard = scalar_writer(self._tensorboard_spec)
        if self.auto_step:
            self._step_hooks = [self.model.register_forward_hook(self._count_step, always_call=True)]
        self._started = True
        self._arm(self.sampling)
        return self

    def close(self) -> None:
        """Finish a step left open (forwards recorded but no ``step()``), write the end record,
        remove the hooks. Idempotent."""
        if not self._started:
            return
        self._started = False
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []
        self._arm(False)
        self._stop_capture()
        try:
            if self._pending:
                self._finish_step(self.step_index)
        finally:
            end = {
                "type": "end",
                "steps": self.step_index,
                "sampled": self._sampled,
                "alerts": len(self.alerts),
            }
            for log in (self._main_log, self._rank_log):
                if log is not None:
                    log.write(end)
                    log.close()
            if self._tensorboard is not None:
                self._tensorboard.flush()

    # ---- steps -----------------------------------------------------------------------------
    @property
    def sampling(self) -> bool:
        """Whether the current step is one that is recorded."""
        return self.step_index % self.every == 0

    def step(self) -> list[Alert]:
        """Close the current training step (call it once per optimizer step, after it); returns
        the alerts this step raised (empty on steps that are not sampled)."""
        alerts: list[Alert] = []
        if self._pending or self._skipped or (self.sampling and self._distributed_world() > 1):
            alerts = self._finish_step(self.step_index)
        self.step_index += 1
        self._arm(self._started and self.sampling)
        return alerts

    # ---- forward hooks: only during sampled steps ------------------------------------------
    def _arm(self, armed: bool) -> None:
        """Hooks on every module while a sampled step runs, none otherwise: a step that is not
        sampled runs the model exactly as without watch. Every module, not only the root,
        because trainers (Lightning's ``training_step``) call submodules directly."""
        if armed and not self._armed:
            for module in self.model.modules():
                self._armed.append(module.register_forward_pre_hook(self._before_forward))
                self._armed.append(module.register_forward_hook(self._after_forward, always_call=True))
        elif not armed and self._armed:
            for handle in self._armed:
                handle.remove()
            self._armed = []

    def _before_forward(self, module: torch.nn.Module, _inputs: Any) -> None:
        if self._capture is not None or (not module.training and not self.eval_forwards):
            return
        from attndbg.recording.recorder import capture, on_device

        stack = contextlib.ExitStack()
        stack.enter_context(on_device())  # live tensors, no copies: reduced and dropped at the end
        self._calls = stack.enter_context(capture(self.model, layers=self.layers))
        self._capture, self._outermost = stack, module

    def _after_forward(self, module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        if module is self._outermost:
            self._stop_capture()

    def _count_step(self, module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        if module.training or self.eval_forwards:
            self._stop_capture()
            self.step()

    def _stop_capture(self) -> None:
        """End the recording at the end of the outermost forward, and reduce its calls there:
        a traced hand-written attention call is only complete once its P·V product ran."""
        if self._capture is None:
            return
        stack, calls = self._capture, self._calls
        self._capture = self._calls = self._outermost = None
        stack.close()
        started = time.perf_counter()
        for name, call in zip(calls.names(), calls.calls):
            self._reduce(name, call)
        calls.calls.clear()  # the last references to this forward's activations
        self._pending_seconds += time.perf_counter() - started

    def _reduce(self, name: str, call: Any) -> None:
        try:
            sample = reduce_call(
                call, name, catalogue=self.catalogue, max_memory=self.max_memory, max_batch=self.max_batch
            )
        except Exception as exc:  # a monitor must never stop the training it watches
            self._skipped.append({"layer": name, "error": f"{type(exc).__name__}: {first_line(exc)}"})
            if not self._skip_warned:
                self._skip_warned = True
                warnings.warn(
                    f"attndbg.watch: {name} not reduced: {first_line(exc)}", AttentionWarning, stacklevel=2
                )
            return
        previous = self._pending.get(name)
        self._pending[name] = sample if previous is None else merge(previous, sample)

    # ---- end of a sampled step -------------------------------------------------------------
    def _distributed_world(self) -> int:
        from attndbg.watch import distributed

        return distributed.rank_and_size()[1]

    def _finish_step(self, step: int) -> list[Alert]:
        from attndbg.watch import distributed

        local = list(self._pending.values())
        seconds, self._pending, self._pending_seconds = self._pending_seconds, {}, 0.0
        self._sampled += 1
        if self._rank_log is not None:
            self._rank_log.write(self._step_record(step, local, seconds))
        layers = distributed.aggregate(local)
        new_findings = []
        for layer in layers:
            for finding in layer.findings:
                # the worst head of a finding may change from step to step: one per layer and code
                key = (layer.name, finding["code"])
                if key not in self.findings:
                    self.findings[key] = {"type": "finding", "step": step, "layer": layer.name, **finding}
                    new_findings.append(self.findings[key])
        self.last = {layer.name: layer for layer in layers}
        record = self._step_record(step, layers, seconds)
        self._skipped = []
        alerts = self._tracker.update(step, record["layers"], new_findings)
        self.alerts.extend(alerts)
        if self._main_log is not None:
            self._main_log.write(record)
            for finding in new_findings:
                self._main_log.write(finding)
            for alert in alerts:
                self._main_log.write(alert.to_dict())
        if self._tensorboard is not None:
            from attndbg.watch.tensorboard import write_step

            write_step(self._tensorboard, step, layers, alerts)
        self._dispatch(alerts)
        return alerts

    def _step_record(self, step: int, layers: list[LayerSample], seconds: float) -> dict[str, Any]:
        record = {
            "type": "step",
            "step": step,
            "seconds": round(seconds, 6),
            "layers": [layer.to_dict() for layer in layers],
        }
        if self._skipped:
            record["skipped"] = list(self._skipped)
        return record

    def _dispatch(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if callable(self.on_alert):
                self.on_alert(alert)
            elif self.on_alert == "warn":
                warnings.warn(f"attndbg.watch: {alert.message}", AttentionWarning, stacklevel=4)
        if self.on_alert == "raise" and alerts:
            raise AttentionAlert(alerts[0])


def watch(model: torch.nn.Module, every: int = 10, log: str | Path | None = None, **options: Any) -> Watcher:
    """Watch a model's attention while it trains: a :class:`Watcher` (its docstring lists the
    options). Use it as a context manager and call ``step()`` after each optimizer step."""
    return Watcher(model, every, log, **options)
