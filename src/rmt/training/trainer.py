"""Train an RMT through a curriculum, on accelerate (multi-process, mixed precision and gradient
accumulation come from it; `accelerate launch --num_processes 2 --cpu -m rmt.cli train ...`).

The loop is short on purpose. What makes it resumable exactly: batch ``t`` of a stage is a pure
function of ``(seed, stage, t, process)`` (tasks generate example ``i`` from a seed), every stage
starts from the same RNG state, and a checkpoint holds the model, optimizer, schedule and RNG
states (`Accelerator.save_state`) plus the stage's progress; `state.json` records the finished
stages. A run killed at any moment (SIGKILL included) resumes to the weights it would have had:
every file is replaced atomically (`checkpoint`, `run_dir`), and `tests/test_faults.py` kills runs
inside every write to hold that.

Run directory (paths inside are relative to it: it can be moved)::

    out_dir/
      lock                               pid of the `train` using the folder (flock; a dead one's is taken over)
      train_config.json
      state.json                         finished stages, their best metric and checkpoint
      stage-1-1seg/checkpoints/step-N/   the last two states of the running stage (for resume), with a manifest
      stage-1-1seg/best/                 best model of the stage (RecurrentMemoryTransformer.save_pretrained)
      logs/                              TensorBoard
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..backbones import backbone_tokenizer, build_backbone, load_backbone
from ..config import RMTConfig
from ..data import load_tokenizer
from ..evaluation.by_length import evaluate, metric_names
from ..memory import extra_positions
from ..recurrent import RecurrentMemoryTransformer
from ..tasks import task_at
from ..tasks.base import Task
from .checkpoint import load_checkpoint, remove_checkpoints, save_checkpoint
from .config import TrainConfig
from .curriculum import Stage
from .faults import fault_point
from .run_dir import CONFIG_NAME, RunLock, read_json, read_state, recover_dir, replace_dir, stage_name, write_state


class TrainingInterrupted(RuntimeError):
    """Raised by `train(..., stop_after_steps=n)`: a stand-in for a run killed midway (tests, time limits)."""


@dataclass
class TrainResult:
    out_dir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    config: Optional[TrainConfig] = None

    @property
    def best_dir(self) -> Path:
        """The best checkpoint of the last stage: the trained model."""
        return Path(self.stages[-1]["best_dir"])

    def load_model(self) -> RecurrentMemoryTransformer:
        if self.config is None:
            return RecurrentMemoryTransformer.from_pretrained(self.best_dir)
        return load_trained(self.config, self.best_dir)


class TaskFactory:
    """The configured task at any segment count (cached; background text shared)."""

    def __init__(self, config: TrainConfig, tokenizer: Any = None):
        self.config = config
        self.tokenizer = tokenizer
        self.segment_size = int(config.rmt.get("segment_size", RMTConfig.segment_size))
        self._cache: dict[int, Task] = {}

    def __call__(self, num_segments: int) -> Task:
        if num_segments not in self._cache:
            kwargs = dict(self.config.task_args)
            if self.tokenizer is not None:
                kwargs["tokenizer"] = self.tokenizer
            if self._cache:  # reuse the loaded background text
                background = getattr(next(iter(self._cache.values())), "background", None)
                if background is not None:
                    kwargs["background"] = background
            self._cache[num_segments] = task_at(self.config.task, num_segments, self.segment_size,
                                                seed=self.config.seed, **kwargs)
        return self._cache[num_segments]


def make_tasks(config: TrainConfig) -> TaskFactory:
    """The run's tasks, read with the run's tokenizer (a pretrained backbone's own, or `config.tokenizer`)."""
    if isinstance(config.backbone, str):
        return TaskFactory(config, backbone_tokenizer(config.backbone))
    return TaskFactory(config, load_tokenizer(config.tokenizer))


def build_model(config: TrainConfig) -> tuple[RecurrentMemoryTransformer, TaskFactory]:
    """The wrapped backbone (with its LoRA adapter, if configured) and the task factory, both from the config."""
    backbone, rmt_config, tasks = _backbone(config)
    if config.lora:
        backbone = _with_lora(backbone, config)
    return RecurrentMemoryTransformer(backbone, rmt_config), tasks


def run_config(run: str | Path) -> TrainConfig:
    """The config of a run of `rmt train` (its ``train_config.json``)."""
    path = Path(run) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give a run directory written by `rmt train`")
    return TrainConfig.from_dict(read_json(path))


def load_run(run: str | Path) -> tuple[RecurrentMemoryTransformer, TrainConfig]:
    """The model a run of `rmt train` kept (the best checkpoint of its last finished stage) and the
    run's config; the run may have moved since it was trained."""
    config = run_config(run)
    stages = read_state(Path(run))["stages"]
    if not stages:
        raise FileNotFoundError(f"{Path(run) / 'state.json'} not found: has the run in {run} finished a stage?")
    return load_trained(config, stages[-1]["best_dir"]), config


def load_trained(config: TrainConfig, path: Any) -> RecurrentMemoryTransformer:
    """A model saved by a run of `config`; a LoRA run's adapter is loaded over a freshly built base."""
    try:
        if not config.lora:
            return RecurrentMemoryTransformer.from_pretrained(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # a random-init base is rebuilt with the weights the run started from
            base, _, _ = _backbone(config)
        return RecurrentMemoryTransformer.from_pretrained(path, backbone=base)
    except SafetensorError as err:  # its message names no file
        raise ValueError(f"the model in {path} is damaged ({err}); train the stage again or restore the folder") from None


def _backbone(config: TrainConfig) -> tuple[Any, RMTConfig, TaskFactory]:
    """The backbone, the RMTConfig (special ids resolved from the tokenizer: built once, never edited) and the tasks."""
    rmt_args = dict(config.rmt)
    sink = rmt_args.get("sink_token_id")
    if sink == "bos":
        rmt_args["sink_token_id"] = None  # resolved below, from the tokenizer
    RMTConfig.from_dict(rmt_args)  # the fields are checked before anything is built
    segment_size = int(rmt_args.get("segment_size", RMTConfig.segment_size))
    if isinstance(config.backbone, str):
        probe = task_at(config.task, 1, segment_size, **config.task_args)
        backbone, tok = load_backbone(config.backbone, task=probe.kind, num_labels=probe.num_labels)
        tasks = TaskFactory(config, tok)
    else:
        tasks = make_tasks(config)
        task = tasks(1)
        tok = task.tokenizer
        is_causal = task.kind == "causal-lm"
        special = {"pad_token_id": tok.pad_token_id}
        if is_causal:
            special.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        else:
            rmt_args.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id)
    if sink == "bos":
        if tok.bos_token_id is None:
            raise ValueError("rmt.sink_token_id is 'bos' but the tokenizer has no BOS token: give a token id instead")
        rmt_args["sink_token_id"] = int(tok.bos_token_id)
    rmt_config = RMTConfig.from_dict(rmt_args)
    if not isinstance(config.backbone, str):
        positions = extra_positions(rmt_config, is_causal)
        backbone = build_backbone(config.backbone, task.kind, vocab_size=len(tok), num_labels=task.num_labels,
                                  max_positions=rmt_config.segment_size + positions, special_ids=special)
    names = tasks(1).label_names
    if names:  # a classifier keeps what its classes are (evaluation reads them back)
        backbone.config.id2label = dict(enumerate(names))
        backbone.config.label2id = {n: i for i, n in enumerate(names)}
    return backbone, rmt_config, tasks


def _with_lora(backbone: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.CAUSAL_LM if backbone.can_generate() else TaskType.SEQ_CLS
    try:
        lora = LoraConfig(**{"task_type": task_type, **config.lora})
    except TypeError as err:
        raise ValueError(f"lora: {err} (the keys are peft.LoraConfig fields: r, lora_alpha, target_modules, ...)") from None
    try:
        return get_peft_model(backbone, lora)
    except ValueError as err:  # e.g. target modules that the backbone does not have
        raise ValueError(f"lora: {err}") from None


class TrainingDiverged(ValueError):
    """The loss, a gradient or a weight became NaN or infinite: the run stops before keeping anything of it."""


def train(config: TrainConfig, *, resume: bool = True, progress: bool = True,
          stop_after_steps: Optional[int] = None) -> TrainResult:
    """Run the curriculum; with `resume`, continue an interrupted run in `config.out_dir` exactly.

    Everything that can be checked is checked before the run folder is touched (config, task,
    metric, backbone, device), so a failed start leaves no trace; the folder is then locked
    against a second `train` on it.
    """
    out = Path(config.out_dir)
    transformers.utils.logging.disable_progress_bar()  # one bar per stage is enough
    # several processes without CUDA (torchrun on CPUs): accelerate must be told to use gloo on the CPU
    cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if config.mixed_precision != "no" and not torch.cuda.is_available():
        raise ValueError(f"mixed_precision={config.mixed_precision} needs a CUDA GPU and this machine has none (on the "
                         "CPU it would be ignored); use mixed_precision=no")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard",
                              project_dir=str(out / "logs"), cpu=cpu_processes)
    set_seed(config.seed)
    model, tasks = build_model(config)
    _check_tasks(config, tasks)
    start_model = _initial_model(config, model)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with RunLock(out) if accelerator.is_main_process else nullcontext():
        state = _start(out, config, resume, accelerator)
        accelerator.init_trackers("rmt", config={k: v for k, v in config.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})
        budget = [stop_after_steps]  # optimizer steps left before a simulated interruption
        for index, stage in enumerate(config.stages()):
            stage_dir = out / stage_name(index, stage.segments)
            if index < len(state["stages"]):
                if accelerator.is_main_process:  # finished before the interruption
                    remove_checkpoints(stage_dir)
                continue
            if state["stages"]:
                model = load_trained(config, state["stages"][-1]["best_dir"])
            elif start_model is not None:
                model = start_model
            set_seed(config.seed + index)  # a stage starts from the same RNG state, resumed or not
            offset = sum(done["steps"] for done in state["stages"])
            summary = _train_stage(accelerator, config, model, tasks, index, stage, stage_dir, progress, budget, offset)
            state["stages"].append(summary)
            if accelerator.is_main_process:
                write_state(out, state)
                fault_point("state:written")
                remove_checkpoints(stage_dir)
            accelerator.wait_for_everyone()
        accelerator.end_training()
    return TrainResult(out, state["stages"], config)


def _initial_model(config: TrainConfig, built: RecurrentMemoryTransformer) -> Optional[RecurrentMemoryTransformer]:
    """`built` with the weights of `config.init_from` (a run directory or a model folder), which
    must have the same parameters; None without init_from."""
    if config.init_from is None:
        return None
    source = Path(config.init_from)
    if (source / CONFIG_NAME).is_file():  # a run directory: its trained model
        stages = read_state(source)["stages"]
        if not stages:
            raise ValueError(f"init_from={source}: the run has no finished stage to start from")
        source = Path(stages[-1]["best_dir"])
    if not source.is_dir():
        raise FileNotFoundError(f"init_from={config.init_from}: no run directory or model folder there")
    trained = load_trained(config, source).state_dict()
    ours = {k: v.shape for k, v in built.state_dict().items()}
    theirs = {k: v.shape for k, v in trained.items()}
    if ours != theirs:
        diff = sorted(set(ours) ^ set(theirs)) or [k for k in ours if ours[k] != theirs[k]]
        raise ValueError(f"init_from={config.init_from}: its model does not match this config's backbone and memory "
                         f"(first difference: {diff[0]}); start from a run of the same backbone and rmt settings")
    built.load_state_dict(trained)  # the weights; the run's own rmt settings (segment_size, bptt_depth, ...) stay
    return built


def _check_tasks(config: TrainConfig, tasks: TaskFactory) -> None:
    """Every input length the curriculum uses can be made, and the task reports `config.metric`."""
    stages = config.stages()
    lengths = {s.segments for s in stages} | ({1} if any(s.mix_shorter for s in stages) else set())
    for n in sorted(lengths):
        tasks(n).example(0, "train")
    metrics = metric_names(tasks(stages[0].segments))
    if config.metric not in metrics:
        task = tasks(stages[0].segments)
        raise ValueError(f"metric {config.metric!r} is not one of task {config.task!r}'s metrics: {', '.join(metrics)} "
                         f"(set metric: {task.metric}, the task's own)")


def _start(out: Path, config: TrainConfig, resume: bool, accelerator: Accelerator) -> dict[str, Any]:
    """The finished stages of the run in `out` (none for a new run, whose config is written now)."""
    config_file = out / CONFIG_NAME
    new_run = not config_file.is_file()
    accelerator.wait_for_everyone()  # every process has looked before the main one writes
    if new_run:
        if accelerator.is_main_process:
            config.save(config_file)
        accelerator.wait_for_everyone()
        return {"stages": []}
    if not resume:
        raise ValueError(f"{out} already holds a run; resume it, or choose another out_dir")
    if _same_run(TrainConfig.from_dict(read_json(config_file))) != _same_run(config):
        raise ValueError(f"{out} holds a run with a different config; resume it with the same config or use another out_dir")
    state = read_state(out)
    if accelerator.is_main_process:
        for stage in state["stages"]:
            recover_dir(Path(stage["best_dir"]))
    accelerator.wait_for_everyone()
    return state


def _same_run(config: TrainConfig) -> dict[str, Any]:
    """What must match to resume a run: all but where its folder is (a moved run resumes)."""
    return {k: v for k, v in config.to_dict().items() if k != "out_dir"}


def _check_finite(what: str, value: float, stage: int, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(f"stage {stage}, step {step}: {what} is {value}; nothing of this step is kept "
                               "(lower learning_rate or max_grad_norm)")


def _train_stage(accelerator: Accelerator, config: TrainConfig, model: RecurrentMemoryTransformer,
                 tasks: TaskFactory, index: int, stage: Stage, stage_dir: Path, progress: bool, budget: list,
                 offset: int) -> dict[str, Any]:
    """Train one stage from `model`; `offset` (steps of earlier stages) places it on the log's step axis."""
    best_dir = stage_dir / "best"
    accelerator.free_memory()  # forget the previous stage's objects: a checkpoint holds this stage's only
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * stage.max_steps), stage.max_steps)
    # the schedule is not prepared: accelerate would step it once per process, since it expects
    # each process to see 1/N of an epoch; here every process takes a share of every batch
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.is_main_process:
        recover_dir(best_dir)  # a crash while best/ was being replaced
    accelerator.wait_for_everyone()
    info = load_checkpoint(accelerator, stage_dir) or {"step": 0, "best": None, "best_step": None, "stopped_early": False}
    with warnings.catch_warnings():  # the optimizer has stepped, in the run being resumed
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(info["step"]):  # the linear schedule is a function of the step alone
            scheduler.step()
    def better(value: float, loss: float) -> bool:
        """A better metric, or the same metric at a lower evaluation loss (a task whose exact match
        stays at 0 for a whole stage still keeps the model that is closest to right)."""
        old = info["best"]
        if old is None:
            return True
        if value != old:
            return value > old if config.greater_is_better else value < old
        return loss < info.get("best_loss", -math.inf)  # a checkpoint from before the rule: keep it
    clip = config.max_grad_norm if config.max_grad_norm is not None else math.inf  # inf: measured, never clipped
    trained = [p for p in model.parameters() if p.requires_grad]  # what a step can blow up
    eval_task = tasks(stage.segments)
    bar = tqdm(total=stage.max_steps, initial=info["step"], desc=f"stage {index + 1}: {stage.segments} segment(s)",
               disable=not (progress and accelerator.is_local_main_process))
    model.train()
    while info["step"] < stage.max_steps and not info["stopped_early"]:
        step = info["step"]
        segments = stage.segments_at(step, config.seed)
        task = tasks(segments)
        accum = config.gradient_accumulation_steps
        loss_value = 0.0
        for micro in range(accum):
            batch = _batch(task, config, accelerator, step * accum + micro)
            sync = accelerator.no_sync(model) if micro < accum - 1 else nullcontext()
            with sync:
                loss = model(**batch, return_logits=False).loss / accum  # no (B, T, V) outputs to keep
                accelerator.backward(loss)
            loss_value += float(loss.detach())
        _check_finite("the training loss", loss_value, index + 1, step + 1)
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), clip))
        _check_finite("the gradient norm", grad_norm, index + 1, step + 1)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        weight_norm = float(torch.stack([p.detach().norm() for p in trained]).norm())
        _check_finite("the norm of the weights", weight_norm, index + 1, step + 1)
        info["step"] = step = step + 1
        bar.update(1)
        accelerator.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0], "train/segments": segments,
                         "train/grad_norm": grad_norm, "train/stage": index + 1}, step=offset + step)
        fault_point("step")
        if step % config.eval_every == 0 or step == stage.max_steps:
            metrics = evaluate(accelerator.unwrap_model(model), eval_task, config.eval_examples, config.eval_batch_size)
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=offset + step)
            value = metrics[config.metric]
            _check_finite(f"the evaluation {config.metric}", value, index + 1, step)
            bar.set_postfix({config.metric: f"{value:.3f}", "loss": f"{loss_value:.3f}"})
            if better(value, metrics["loss"]):
                info["best"], info["best_loss"], info["best_step"] = value, metrics["loss"], step
                if accelerator.is_main_process:
                    _save_best(accelerator.unwrap_model(model), best_dir)
            if stage.threshold is not None and (value >= stage.threshold if config.greater_is_better else value <= stage.threshold):
                info["stopped_early"] = True
        if step % config.save_every == 0 or step == stage.max_steps or info["stopped_early"]:
            save_checkpoint(accelerator, stage_dir, info)
        if budget[0] is not None:
            budget[0] -= 1
            if budget[0] <= 0:
                raise TrainingInterrupted(f"stopped after the requested number of steps (stage {index + 1}, step {step})")
    bar.close()
    return {"stage": index + 1, "segments": stage.segments, "steps": info["step"], "best_metric": info["best"],
            "best_step": info["best_step"], "stopped_early": info["stopped_early"], "best_dir": str(best_dir)}


def _save_best(model: RecurrentMemoryTransformer, best_dir: Path) -> None:
    """Replace the stage's best model as one unit."""
    tmp = best_dir.with_name(best_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    fault_point("best:written")
    replace_dir(tmp, best_dir)


def _batch(task: Task, config: TrainConfig, accelerator: Accelerator, micro_step: int) -> dict[str, torch.Tensor]:
    """Micro-batch `micro_step` of this process: examples are indexed, so data order survives a resume."""
    size = config.batch_size
    first = (micro_step * accelerator.num_processes + accelerator.process_index) * size
    batch = task.collate([task.example(i, "train") for i in range(first, first + size)])
    return {k: v.to(accelerator.device) for k, v in batch.items()}


