"""`rmt` as an lm-eval model, and lm-eval's own BABILong task run offline on a dataset written by the builder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
import transformers

import rmt

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from rmt.evaluation.lm_eval_model import RMTLM, write_local_tasks  # noqa: E402
from rmt.tasks.babilong import BabilongTask, write_dataset  # noqa: E402

BABI_DIR = Path(__file__).parents[2] / "shared" / "babi" / "en"


@pytest.fixture(scope="module")
def rmt_dir(tmp_path_factory):
    tok = transformers.ByT5Tokenizer()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    model = rmt.RecurrentMemoryTransformer(transformers.GPT2LMHeadModel(cfg), rmt.RMTConfig(num_mem_tokens=4, segment_size=16))
    folder = tmp_path_factory.mktemp("rmt")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _request(kind, args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_through_memory_equals_one_forward(rmt_dir):
    lm = RMTLM(path=str(rmt_dir))
    context, continuation = "Mary went to the kitchen. John went to the garden. Where is Mary?", " kitchen"
    (logprob, greedy), = lm.loglikelihood([_request("loglikelihood", (context, continuation))])
    ids = lm._encode(context) + lm._encode(continuation)
    n = len(lm._encode(continuation))
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].float()  # one call over the whole input
    scores = torch.log_softmax(logits[-n - 1:-1], -1)
    expected = scores.gather(1, torch.tensor(ids[-n:]).view(-1, 1)).sum()
    assert logprob == pytest.approx(float(expected), abs=1e-4) and greedy == bool((scores.argmax(-1) == torch.tensor(ids[-n:])).all())
    (rolling,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", (context,))])
    assert rolling < 0


def test_generate_until_reads_long_inputs_and_stops(rmt_dir):
    lm = RMTLM(path=str(rmt_dir))
    long_context = "Mary went to the kitchen. " * 20  # 520 tokens: 32 segments of 16
    out, = lm.generate_until([_request("generate_until", (long_context, {"until": [], "max_gen_toks": 5}))])
    assert isinstance(out, str) and len(lm._encode(out)) <= 5
    first = out[:1]
    if first:
        cut, = lm.generate_until([_request("generate_until", (long_context, {"until": [first], "max_gen_toks": 5}))])
        assert cut == ""


def test_registering_rmt_keeps_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    assert get_model("rmt") is RMTLM and get_model("hf").__name__ == "HFLM"


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="needs path="):
        RMTLM()
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=99)).save_pretrained(tmp_path)
    transformers.ByT5Tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is not an RMT"):
        RMTLM(path=str(tmp_path))


@pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"no bAbI data at {BABI_DIR}")
def test_lm_eval_runs_its_babilong_task_on_a_local_dataset(rmt_dir, tmp_path):
    from lm_eval.tasks import TaskManager

    tok = transformers.ByT5Tokenizer()
    task = BabilongTask(1, tokenizer=tok, length="1k", babi=BABI_DIR, prompt="none")
    write_dataset(tmp_path / "data", [task], 3)
    names = write_local_tasks(tmp_path / "tasks", tmp_path / "data", [1], ["1k"])
    assert names == ["babilong_qa1_1k_local"]
    results = lm_eval.simple_evaluate(model="rmt", model_args=f"path={rmt_dir},max_gen_toks=4", tasks=names,
                                      task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                                      log_samples=True)
    assert 0.0 <= results["results"]["babilong_qa1_1k_local"]["acc,none"] <= 1.0
    samples = results["samples"]["babilong_qa1_1k_local"]
    assert len(samples) == 3
    prompt = samples[0]["arguments"][0][0]  # (context, generation settings) of its one request
    record = task.record(0)
    # lm-eval's own prompt: its instruction, its two examples, then the local sample
    assert prompt.startswith("I will give you context") and "Where is Charlie?" in prompt
    assert prompt.endswith(f"{record['input']}\n{record['question']}")
