"""``benchmark_models``: every model measured in one process, in interleaved rounds.

All models are measured after warm-up, on synthetic tensors made once, so a drifting machine
affects every model alike and data loading is out of the measurement. The study's speed figures
came from two different GPUs and its "memory footprint" was a torchsummary artifact (seed spec
sections 4, 8, 10); this is the measured replacement.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from satunet.benchmark.machine import describe_machine
from satunet.benchmark.memory import child_spec, peak_memory_child, peak_memory_cuda
from satunet.benchmark.noise import DEFAULT_MAX_SPREAD, assess, load_average, mark_rows
from satunet.benchmark.table import STUDY_TILE, BenchmarkReport, build_rows
from satunet.benchmark.timing import (
    Variant,
    agreement,
    calibrated_steps,
    first_train_step,
    harness_overhead_s,
    make_variant,
    time_infer,
    time_train,
)
from satunet.checkpoint import unwrap
from satunet.errors import ConfigError
from satunet.models import check_model_name, create_model
from satunet.profile import count_gmacs, count_params, study_footprint_mb
from satunet.runtime import Precision, resolve_device, usable_cores
from satunet.speed import prepare_for_inference

log = logging.getLogger(__name__)

STUDY_MODELS: tuple[str, ...] = (
    "unet_base",
    "unet_short",
    "unet_skinny",
    "unet_less_conv",
    "unetplusplus_resnet34",
    "deeplabv3plus_resnet34",
)
Factories = dict[str, Callable[[], nn.Module] | None]


@dataclass(frozen=True)
class Plan:
    """The settings of one benchmark run, checked."""

    device: torch.device
    size: int
    batch_size: int
    precision: Precision
    channels_last: bool
    compile: bool
    fold_bn: bool
    num_classes: int
    in_channels: int
    rounds: int
    warmup: int
    reference: str | None
    measure_train: bool
    measure_infer: bool
    measure_memory: bool
    min_time_s: float

    @property
    def compare(self) -> bool:
        """Whether every model is also measured as fp32 eager, for speed-ups and agreement."""
        return self.precision != "fp32" or self.channels_last or self.compile or self.fold_bn

    def step_spec(self) -> dict[str, Any]:
        """What a training/inference step is made of (also what the memory child is told)."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "size": self.size,
            "batch_size": self.batch_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "threads": torch.get_num_threads(),
        }


def check_plan(plan: Plan) -> None:
    """Refuse settings that cannot be measured, before any model is built."""
    if plan.rounds < 1 or plan.warmup < 0:
        raise ConfigError(
            f"rounds must be >= 1 and warmup >= 0, got {plan.rounds} and {plan.warmup}"
        )
    if plan.compile and plan.warmup < 1:
        raise ConfigError("--compile needs --warmup >= 1 so compilation is not timed")
    if min(plan.batch_size, plan.size, plan.num_classes, plan.in_channels) < 1:
        raise ConfigError("size, batch_size, num_classes and in_channels must all be >= 1")
    if not (plan.measure_train or plan.measure_infer or plan.measure_memory):
        raise ConfigError("nothing to measure: enable training, inference or memory")


def model_factories(
    models: Mapping[str, Callable[[], nn.Module]] | Sequence[str], reference: str | None
) -> Factories:
    """Row name -> factory (None: build the registry model of that name), reference included."""
    if isinstance(models, Mapping):
        factories: Factories = dict(models)
    else:
        if isinstance(models, str):
            raise ConfigError(f"models must be a list of names, not the string {models!r}")
        factories = dict.fromkeys(models)
    if not factories:
        raise ConfigError("no models to benchmark: name at least one")
    if reference is not None and reference not in factories:
        check_model_name(reference)
        log.info("measuring the reference %s too", reference)
        factories[reference] = None
    return factories


def model_facts(model: nn.Module, size: int, in_channels: int) -> dict[str, Any]:
    """Params, GMACs at ``size`` and the study's footprint figure, counted on the meta device."""
    meta = copy.deepcopy(unwrap(model)).to("meta")
    return {
        "params": count_params(meta),
        "gmacs": round(count_gmacs(meta, size, in_channels), 3),
        # Always at the study's 512x512: its int32 artefacts make other sizes meaningless.
        "study_footprint_mb": study_footprint_mb(meta, STUDY_TILE, in_channels),
    }


def build_variants(
    factories: Factories, plan: Plan
) -> tuple[list[Variant], dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """Each model (and its fp32 eager twin when comparing) as variants; facts; built models."""
    variants: list[Variant] = []
    facts: dict[str, dict[str, Any]] = {}
    built: dict[str, nn.Module] = {}
    spec = plan.step_spec()
    for name, factory in factories.items():
        torch.manual_seed(0)
        if factory is None:
            model = create_model(name, in_channels=plan.in_channels, num_classes=plan.num_classes)
        else:
            model = factory()
        if factory is None or hasattr(model, "size_multiple"):
            multiple = getattr(model, "size_multiple", 1)
            if plan.size % multiple:
                raise ConfigError(
                    f"{name} needs an input size divisible by {multiple}; --size {plan.size} is "
                    f"not (try {max(multiple, plan.size // multiple * multiple)})"
                )
        facts[name] = model_facts(model, plan.size, plan.in_channels)
        built[name] = model
        if plan.compare:
            twin = copy.deepcopy(model)
            variants.append(
                make_variant(name, twin, spec, plan.device, baseline=True, compile=False)
            )
        variants.append(
            make_variant(name, model, spec, plan.device, baseline=False, compile=plan.compile)
        )
    return variants, facts, built


def warm_up_train(variants: Sequence[Variant], plan: Plan, tick: Callable[..., None]) -> None:
    """Untimed training rounds: build primitives (and compile), then calibrate the step count."""
    for w in range(plan.warmup):
        for v in variants:
            if w == 0:
                v.first_train_s = first_train_step(v, plan.device)
                step = time_train(v, plan.device, 1)
                v.train_steps = calibrated_steps(plan.min_time_s, step)
            else:
                time_train(v, plan.device, v.train_steps)
            tick("warm-up train", v)


def prepare_inference(variants: Sequence[Variant], plan: Plan) -> dict[str, dict[str, float]]:
    """Each variant's inference model (after training warm-up) and its agreement with fp32."""
    results: dict[str, dict[str, float]] = {}
    for v in variants:
        if v.baseline:
            v.infer_model = v.model
            continue
        v.infer_model = v.model
        if plan.fold_bn:
            v.infer_model = prepare_for_inference(
                unwrap(v.model),
                device=plan.device,
                precision=v.precision,
                channels_last=plan.channels_last,
                fold_bn=True,
                compile=plan.compile,
            )
        if plan.compare:
            results[v.name] = agreement(v, plan.device)
    return results


def warm_up_infer(variants: Sequence[Variant], plan: Plan, tick: Callable[..., None]) -> None:
    """Untimed inference rounds; the first calibrates batch and latency call counts."""
    dev = plan.device
    for w in range(plan.warmup):
        for v in variants:
            if w == 0:
                v.first_infer_s = time_infer(v, dev, 1, v.x)
                v.infer_steps = calibrated_steps(plan.min_time_s, time_infer(v, dev, 1, v.x))
                time_infer(v, dev, 1, v.x1)
                one = time_infer(v, dev, 1, v.x1)
                v.latency_calls = calibrated_steps(plan.min_time_s, one, least=3)
            else:
                time_infer(v, dev, v.infer_steps, v.x)
            tick("warm-up infer", v)


def measure_memory(
    variants: Sequence[Variant],
    factories: Factories,
    built: Mapping[str, nn.Module],
    plan: Plan,
    bar: Any,
) -> tuple[dict[str, float | None], str]:
    """Peak memory of one training step per model, and the method used."""
    cuda = plan.device.type == "cuda"
    method = "cuda_max_allocated" if cuda else "child_peak_rss"
    log.info("benchmark: peak memory of one training step per model")
    memory: dict[str, float | None] = {}
    for v in variants:
        if v.baseline:
            continue
        bar.set_description(f"peak memory {v.name}")
        if cuda:
            memory[v.name] = peak_memory_cuda(v, plan.device)
        else:
            registry = factories[v.name] is None
            spec = child_spec(v.name, built[v.name], plan.step_spec(), registry=registry)
            memory[v.name] = peak_memory_child(spec) if spec is not None else None
        bar.update(1)
    return memory, method


def timed_rounds(
    variants: Sequence[Variant], plan: Plan, tick: Callable[..., None]
) -> tuple[float, int]:
    """The timed, interleaved rounds: (seconds timed, timed calls)."""
    timed_s, calls, dev = 0.0, 0, plan.device
    for r in range(plan.rounds):
        log.info("benchmark: timed round %d/%d", r + 1, plan.rounds)
        for v in variants:
            if plan.measure_train:
                took = time_train(v, dev, v.train_steps)
                v.train_s.append(took / (v.train_steps * plan.batch_size))
                timed_s, calls = timed_s + took, calls + 1
                tick("train", v)
            if plan.measure_infer:
                took = time_infer(v, dev, v.infer_steps, v.x)
                v.infer_s.append(took / (v.infer_steps * plan.batch_size))
                timed_s += took
                for _ in range(v.latency_calls):
                    took = time_infer(v, dev, 1, v.x1)
                    v.latency_s.append(took)
                    timed_s += took
                calls += 1 + v.latency_calls
                tick("infer", v)
    return timed_s, calls


def run_settings(plan: Plan, mem_method: str | None, timed_s: float, calls: int) -> dict[str, Any]:
    """The settings block of the report (what was measured, how, and the timing overhead)."""
    options = [plan.precision] + [
        label
        for on, label in (
            (plan.channels_last, "channels_last"),
            (plan.compile, "torch.compile"),
            (plan.fold_bn, "BN folded"),
        )
        if on
    ]
    overhead = 100 * calls * harness_overhead_s(plan.device) / timed_s if timed_s else None
    return {
        **{k: v for k, v in plan.step_spec().items() if k != "threads"},
        "device": str(plan.device),
        "compile": plan.compile,
        "fold_bn": plan.fold_bn,
        "rounds": plan.rounds,
        "warmup": plan.warmup,
        "reference": plan.reference,
        "variant": " + ".join(options),
        "peak_mem_method": mem_method,
        "timing_overhead_pct": overhead,
        "timed_s": timed_s,
        "loss": "cross-entropy, Adam(lr=1e-3, weight_decay=1e-3)",
    }


def benchmark_models(
    models: Mapping[str, Callable[[], nn.Module]] | Sequence[str] = STUDY_MODELS,
    *,
    size: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
    precision: Precision = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    fold_bn: bool = False,
    num_classes: int = 5,
    in_channels: int = 3,
    rounds: int = 3,
    warmup: int = 1,
    reference: str | None = "deeplabv3plus_resnet34",
    measure_train: bool = True,
    measure_infer: bool = True,
    measure_memory: bool = True,
    progress: bool = True,
    min_time_s: float = 0.5,
    max_spread: float = DEFAULT_MAX_SPREAD,
) -> BenchmarkReport:
    """Measure models side by side on this machine; see the module docstring for the method.

    Args:
        models: registry names, or a mapping of row name to a zero-argument model factory.
        device: auto, cpu, cuda or cuda:N.
        reference: the model speeds are divided by (a row name or a registry name; measured too
            if not among ``models``). None: no ratios.
        min_time_s: each model's timed work per round is at least this long (steps are repeated
            after warm-up calibration), so short steps are not dominated by timer noise.
        max_spread: a model whose per-round img/s spread, (max - min) / median, exceeds this is
            flagged as noisy; so is the whole run when the 1-minute load average at the start
            exceeds the usable cores. ``report.settings["noise"]`` holds the verdict
            (``trusted``, ``warnings``) and ``report.machine`` the load at start and end.

    When any speed option is on or precision is not fp32, every model is also measured as fp32
    eager in the same interleaved rounds, and its rows get the speed-ups and the output
    agreement against that baseline.
    """
    plan = Plan(
        resolve_device(device, precision), size, batch_size, precision, channels_last, compile,
        fold_bn, num_classes, in_channels, rounds, warmup, reference, measure_train,
        measure_infer, measure_memory, min_time_s,
    )  # fmt: skip
    check_plan(plan)
    if max_spread <= 0:
        raise ConfigError(f"max_spread must be > 0, got {max_spread}")
    load_start = load_average()
    wall_start = time.perf_counter()
    factories = model_factories(models, reference)
    variants, facts, built = build_variants(factories, plan)
    log.info(
        "benchmark: %d model(s) at %dx%d, batch %d, %s on %s; %d warm-up + %d timed rounds",
        len(factories), size, size, batch_size, precision, plan.device, warmup, rounds,
    )  # fmt: skip
    report = _measure(plan, factories, variants, facts, built, progress, wall_start)
    load_end = load_average()
    report.machine.update(load_start=load_start, load_end=load_end)
    noise = assess(
        report.rows, rounds=rounds, max_spread=max_spread, load_start=load_start,
        load_end=load_end, cores=usable_cores(),
    )  # fmt: skip
    mark_rows(report.rows, noise)
    report.settings["noise"] = noise
    for warning in noise["warnings"]:
        log.warning("benchmark: %s", warning)
    return report


def _measure(
    plan: Plan,
    factories: Factories,
    variants: list[Variant],
    facts: dict[str, dict[str, Any]],
    built: dict[str, nn.Module],
    progress: bool,
    wall_start: float,
) -> BenchmarkReport:
    from tqdm.auto import tqdm

    phases = (plan.measure_train + plan.measure_infer) * (plan.warmup + plan.rounds)
    total = phases * len(variants) + plan.measure_memory * len(factories)
    bar = tqdm(total=total, desc="benchmark", unit="step", disable=None if progress else True,
               leave=False)  # fmt: skip

    def tick(what: str, v: Variant) -> None:
        bar.set_description(f"{what} {v.name}{' (fp32 baseline)' if v.baseline else ''}")
        bar.update(1)

    if plan.measure_train:
        warm_up_train(variants, plan, tick)
    compared: dict[str, dict[str, float]] = {}
    if plan.measure_infer:
        compared = prepare_inference(variants, plan)
        warm_up_infer(variants, plan, tick)
    elif plan.compare:
        compared = {v.name: agreement(v, plan.device) for v in variants if not v.baseline}
    memory: dict[str, float | None] = {}
    mem_method = None
    if plan.measure_memory:
        memory, mem_method = measure_memory(variants, factories, built, plan, bar)
    timed_s, calls = timed_rounds(variants, plan, tick)
    bar.close()
    rows = build_rows(
        variants, facts, memory, compared, plan.reference, size=plan.size,
        compile=plan.compile, measure_memory=plan.measure_memory,
    )  # fmt: skip
    settings = run_settings(plan, mem_method, timed_s, calls)
    settings["wall_s"] = time.perf_counter() - wall_start
    machine = describe_machine(plan.device, plan.precision)
    return BenchmarkReport(rows=rows, machine=machine, settings=settings)
