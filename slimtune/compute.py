"""Where a run computes: the device (`device: auto | cpu | cuda`), the processes (see
`distributed`), and extra Trainer arguments a recipe passes through (`trainer:`).

    device: auto            # cuda when torch sees a GPU, else cpu (the default)
    trainer:                # more TrainingArguments, e.g. sharded training on GPUs:
      fsdp: full_shard auto_wrap
      fsdp_config: {transformer_layer_cls_to_wrap: [BertLayer]}
      # deepspeed: ds_config.json
      # gradient_accumulation_steps: 4

On CUDA, training runs in bf16 autocast where the GPU supports it (fp16 with loss scaling
otherwise); on the CPU in fp32. The fields slimtune sets from a stage's own settings (learning
rate, epochs, batch size, ...) cannot be overridden here: an error names them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import distributed
from .errors import SlimtuneError

DEVICES = ("auto", "cpu", "cuda")

# TrainingArguments that train/loop.py derives from a stage's fields or needs for its own bookkeeping.
RESERVED = frozenset({
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type", "seed", "eval_strategy", "eval_steps",
    "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "train_sampling_strategy", "logging_steps", "report_to", "optim", "save_only_model",
    "dataloader_num_workers", "disable_tqdm", "use_cpu",
})


def resolve_device(device: str, where: str = "device") -> str:
    """auto -> cuda if torch sees a GPU, else cpu; cuda without a GPU is an error, not a silent CPU run."""
    if device not in DEVICES:
        raise SlimtuneError(f"{where}: {device!r} is not one of {', '.join(DEVICES)}")
    import torch

    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        runtime = _gpu_runtime(torch)
        why = "a CPU-only torch build" if runtime is None else f"no GPU visible to this {runtime} build"
        raise SlimtuneError(f"{where}: cuda requested but torch.cuda.is_available() is False ({why}); "
                            "use device: auto or cpu")
    return "cuda" if device == "auto" and has_gpu else ("cpu" if device == "auto" else device)


def _gpu_runtime(torch) -> str | None:
    """'CUDA 12.8' or 'ROCm 6.4' for a GPU-enabled torch build, None for a CPU-only one."""
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    hip = getattr(torch.version, "hip", None)
    return f"ROCm {hip}" if hip else None


def _is_torch_part(name: str | None) -> bool:
    """torch itself and the GPU libraries a CUDA build pulls in (nvidia-*, cuda-*, triton)."""
    name = (name or "").lower().replace("_", "-")
    return name in ("torch", "triton") or name.startswith(("nvidia-", "cuda-"))


def torch_build(cpu_hint: str = "") -> str:
    """One line naming the installed torch build, for the set-up to print (Makefile): a CUDA build
    costs GBs that a CPU-only machine never uses, so it says so, and how to get the CPU one."""
    from importlib import metadata

    import torch

    runtime = _gpu_runtime(torch)
    if runtime is None:
        return f"torch {torch.__version__} (CPU-only build)"
    gb = sum(f.locate().stat().st_size for d in metadata.distributions() if _is_torch_part(d.metadata["Name"])
             for f in d.files or () if f.locate().is_file()) / 1e9
    hint = f"; to get the CPU-only build: {cpu_hint}" if cpu_hint else ""
    return f"torch {torch.__version__} with {runtime} ({runtime.split()[0]}-enabled build, ~{gb:.1f} GB{hint})"


def check_trainer_args(values, where: str) -> dict:
    """`trainer:` keys must be TrainingArguments fields that slimtune does not set itself."""
    if not isinstance(values, dict):
        raise SlimtuneError(f"{where}: expected a mapping of TrainingArguments fields, got {type(values).__name__}")
    if not values:  # the usual case: validating a recipe imports no torch (tests/test_layout.py)
        return {}
    from transformers import TrainingArguments  # only a recipe with a `trainer:` block pays for this

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in values:
        if key in RESERVED:
            raise SlimtuneError(f"{where}.{key}: set from each stage's fields by slimtune; set it on the stage "
                                "(or device:) instead")
        if key not in known:
            raise SlimtuneError(f"{where}: unknown key {key!r}; expected a transformers TrainingArguments field "
                                "(e.g. fsdp, fsdp_config, deepspeed, gradient_accumulation_steps, ddp_backend)")
    return dict(values)


def gpu() -> dict | None:
    """The GPU torch would use (name, memory, compute capability), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(), "cuda": torch.version.cuda}


@dataclass
class Compute:
    """A run's compute settings, handed to every training through the stage's Trainer callbacks
    (`callback()`), so no method needs to know about devices or processes."""

    device: str = "cpu"  # resolved: cpu | cuda
    trainer: dict = field(default_factory=dict)
    log: object = None

    def training_arguments(self, batch_size: int, where: str = "training") -> dict:
        """TrainingArguments for one training: device, precision, DDP batch split, then `trainer:`."""
        import torch

        distributed.check_batch(batch_size, where)
        kw: dict = {"use_cpu": self.device == "cpu"}
        if self.device == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
            kw |= {"bf16": bf16, "fp16": not bf16}
        kw |= distributed.trainer_args(batch_size)
        extra = dict(self.trainer)
        if "accelerator_config" in extra and "accelerator_config" in kw and isinstance(extra["accelerator_config"], dict):
            extra["accelerator_config"] = kw["accelerator_config"] | extra["accelerator_config"]
        return kw | extra

    def callback(self):
        """A Trainer callback carrying these settings; it logs what each training runs on."""
        from transformers import TrainerCallback

        settings = self

        class _Compute(TrainerCallback):
            compute = settings

            def on_train_begin(self, args, state, control, **kwargs):
                if settings.log is not None and distributed.is_main():
                    facts = distributed.record(args, args.per_device_train_batch_size)
                    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
                    settings.log(f"  training on {settings.device} ({precision}), {facts['world_size']} process(es), "
                                 f"global batch {facts['effective_batch_size']}")

        return _Compute()


def from_callbacks(callbacks) -> Compute:
    """The run's settings among a training's callbacks (a default CPU/auto one when absent, e.g. in tests)."""
    for c in callbacks:
        if isinstance(getattr(c, "compute", None), Compute):
            return c.compute
    return Compute(device=resolve_device("auto"))


def physical_cores() -> int:
    """CPU cores this process may run on, a core's hyperthreads counted once."""
    import os

    import psutil

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = psutil.cpu_count(logical=False) or logical
    # a process pinned to fewer CPUs than the machine has: assume the pinned ones are distinct cores
    return max(1, min(physical, logical))


# ONNX Runtime execution providers by short name (`slimtune bench --provider`); the GPU ones
# come with the onnxruntime-gpu wheel (TensorRT also needs TensorRT's libraries).
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def onnx_providers(provider: str) -> list[str]:
    """ORT providers for `provider`, CPU last as the fallback for operators the GPU one lacks."""
    if provider not in PROVIDERS:
        raise SlimtuneError(f"--provider: {provider!r} is not one of {', '.join(PROVIDERS)}")
    import onnxruntime as ort

    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise SlimtuneError(f"--provider {provider}: this onnxruntime ({ort.__version__}) has no {name} "
                            f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                            "in place of onnxruntime on a machine with CUDA")
    return [name] if provider == "cpu" else [name, "CPUExecutionProvider"]
