"""The transformers Trainer trains the wrapper, checkpoints it, resumes it and reloads its best checkpoint."""

import pytest
import torch
from conftest import random_ids, wrap
from safetensors.torch import load_file

import rmt

transformers = pytest.importorskip("transformers")


class Copies(torch.utils.data.Dataset):
    """Fixed random token rows of three segments (labels = inputs: causal LM)."""

    def __init__(self, n: int = 16):
        self.ids = random_ids(n, 24, seed=3)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(model, out, **args) -> "transformers.Trainer":
    args = {"load_best_model_at_end": True, **args}
    arguments = transformers.TrainingArguments(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-2, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
        metric_for_best_model="loss", greater_is_better=False, report_to=[],
        use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, logging_steps=1, disable_tqdm=True, **args)
    return transformers.Trainer(model=model, args=arguments, train_dataset=Copies(), eval_dataset=Copies(8))


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])  # GPT-2: tied lm_head/wte, which safetensors refuses twice
def test_trainer_trains_checkpoints_resumes_and_loads_the_best(kind, tmp_path):
    model = wrap(kind, num_mem_tokens=2)
    start = weights(model)
    run = trainer(model, tmp_path / "run")
    run.train()
    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    best = run.state.best_model_checkpoint
    assert best is not None
    # the best checkpoint was reloaded at the end: the model holds its weights, memory included
    saved = load_file(f"{best}/model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert not torch.equal(model.initial_memory, start["mechanism.initial_memory"])
    # each checkpoint is a model folder of its own
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(best).eval()
    ids = random_ids(2, 19)
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, atol=0, rtol=0)

    # a run resumed from its checkpoint-2 ends with the weights of the uninterrupted run
    final = load_file(checkpoints[-1] / "model.safetensors")
    fresh = wrap(kind, num_mem_tokens=2)
    resumed = trainer(fresh, tmp_path / "resumed", load_best_model_at_end=False)
    resumed.train(resume_from_checkpoint=str(checkpoints[0]))
    for name, tensor in final.items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
