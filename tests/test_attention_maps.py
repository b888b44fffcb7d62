"""`rmt attention`: the maps are the backbone's real attention weights on the real segments, laid out as
the mechanism says, one panel per segment; bad input is one line and exit code 2."""

import json
import shutil

import pytest
import torch
from conftest import random_ids, wrap
from test_run_folder import one_line_error

from rmt.analysis.attention import attention_maps, segment_attentions
from rmt.analysis.attention_cli import default_fact_segments
from rmt.cli import main
from rmt.training import TrainConfig, train
from rmt.training.trainer import load_trained

S = 24  # word tokens: a reasoning fact is 8, its question and answer 8
RUNS = {
    "bert": {"task_args": {"kind": "classification"},
             "backbone": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 37}},
    "gpt2": {"task_args": {"kind": "causal-lm"},
             "backbone": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4}},
}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, tmp_path_factory):
    """A tiny reasoning run of one training step (random weights are enough: the maps are checked, not learned)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    config = TrainConfig.from_dict({"task": "reasoning", "tokenizer": "word", "rmt": {"num_mem_tokens": 3, "segment_size": S},
                                    "curriculum": [1], "steps_per_stage": 1, "batch_size": 2, "eval_every": 1,
                                    "eval_examples": 2, "save_every": 1, "out_dir": str(out), **RUNS[request.param]})
    result = train(config, progress=False)
    return out, result


def maps(out, segments=4, **kwargs):
    """What `rmt attention` reads: the run's model and its example, segment by segment."""
    from rmt.analysis.attention_cli import _task

    config = TrainConfig.load(out / "train_config.json")
    model = load_trained(config, sorted(out.glob("stage-*"))[-1] / "best").eval()
    task = _task(config, segments, config.seed)
    ids = torch.tensor([task.example(0, "test")["input_ids"]])
    return model, task, ids, segment_attentions(model, ids)


def test_cli_writes_one_panel_per_segment_to_png_and_json(run, tmp_path, capsys):
    out, _ = run
    for segments in (4, 2):
        png = tmp_path / f"maps-{segments}.png"
        assert main(["attention", str(out), "--out", str(png), "--segments", str(segments)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        report = json.loads(png.with_suffix(".json").read_text())
        assert report["segments"] == segments and len(report["panels"]) == segments
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == segments + 1 and lines[0].startswith("segment 1: write")
    panels = report["panels"]
    for panel in panels:
        mem, tok = panel["memory_positions"], panel["token_positions"]
        assert len(panel["memory_to_tokens"]) == len(mem) and len(panel["memory_to_tokens"][0]) == len(tok) == S
        assert {panel["labels"][i][0] for i in mem} <= {"r", "w", "m"}
    assert main(["attention", str(out), "--out", str(tmp_path / "l.png"), "--layer", "-1"]) == 0  # the last layer


def test_the_panels_show_fig6s_operations_on_facts_in_known_segments(run):
    out, _ = run
    model, task, ids, read = maps(out)
    spans = task.spans(0, "test")
    assert [f["start"] // S + 1 for f in spans["facts"]] == [1, 3] == list(default_fact_segments(2, 4))
    panels = attention_maps(read, facts=spans["facts"], question=spans["question"],
                            answer_at=spans["answer"][0] - 1 if spans["answer"] else None,
                            token_labels=[task.decode([t]).strip() for t in ids[0].tolist()])
    assert [p.operation for p in panels] == ["write", "keep", "append", "read"]
    assert [len(p.facts) for p in panels] == [1, 0, 1, 0]
    assert panels[-1].answer_row is not None and panels[-1].question is not None
    for p in panels:  # the write rows' attention splits over facts, other tokens, memory and special tokens
        s = p.summary
        total = (s["write_on_facts"] or 0) + s["write_on_other_tokens"] + s["write_on_memory"] + s["write_on_special"]
        assert total == pytest.approx(1, abs=1e-5)
        if p.facts:
            share = s["write_on_facts"] / (s["write_on_facts"] + s["write_on_other_tokens"])
            assert s["fact_lift"] == pytest.approx(share / (8 / S))
        k, start, end = p.facts[0] if p.facts else (None, 0, 0)
        if k:
            assert p.labels[start:end] == [t.lower() for t in task.tokenizer.tokenize(spans["facts"][k - 1]["text"])]


def test_every_row_sums_to_one_over_the_keys(run):
    out, _ = run
    _, _, ids, read = maps(out)
    assert len(read.segments) == 4
    for seg in read.segments:
        torch.testing.assert_close(seg.attentions.sum(-1), torch.ones(seg.attentions.shape[:-1]))
    for panel in attention_maps(read):
        torch.testing.assert_close(panel.matrix.sum(-1), torch.ones(panel.matrix.shape[0]))


def test_a_decoder_token_never_attends_to_a_later_position(run):
    out, result = run
    _, _, _, read = maps(out)
    causal = result.config.task_args["kind"] == "causal-lm"
    for seg in read.segments:
        later = torch.triu(torch.ones_like(seg.attentions[0, 0]), diagonal=1).bool()  # key after query
        upper = seg.attentions[..., later]
        if causal:
            assert float(upper.abs().max()) == 0
        else:  # the encoder sees everything: the check above would fail on it
            assert float(upper.min()) > 0


def test_the_maps_are_those_of_a_direct_backbone_call_on_the_hand_built_segment(run):
    """Segment j's row built by hand (memory after j segments, the layout of the README), run through
    the backbone directly: the same inputs and the same attention weights as the map's."""
    out, _ = run
    model, _, ids, read = maps(out)
    emb = model.get_input_embeddings()
    base = model.backbone
    for j, seg in enumerate(read.segments):
        with torch.no_grad():
            memory = model(ids[:, : j * S]).memory if j else model.init_memory(1)  # (1, m, d)
            tokens = emb(ids[:, j * S : (j + 1) * S])
            if model.is_causal:
                row = torch.cat([memory, tokens, memory], dim=1)  # [read | segment | write]
            else:
                cls, sep = emb(model.special_ids).unsqueeze(1).unbind(0)
                row = torch.cat([cls.unsqueeze(0), memory, tokens, sep.unsqueeze(0)], dim=1)  # [CLS] mem segment [SEP]
            base.set_attn_implementation("eager")
            direct = base(inputs_embeds=row, output_attentions=True).attentions
            base.set_attn_implementation("sdpa")
        torch.testing.assert_close(seg.inputs_embeds, row[0])
        torch.testing.assert_close(seg.attentions, torch.stack([a[0] for a in direct]))
    assert base.config._attn_implementation == "sdpa"  # eager only while the maps are read


@pytest.mark.parametrize("kind", ["gpt2", "llama-sink", "bert"])
@pytest.mark.parametrize("mechanism", ["rmt", "mt", "armt"])
def test_the_layout_names_every_position_of_the_row_the_mechanism_builds(kind, mechanism):
    model = wrap(kind, mechanism, num_mem_tokens=3)
    ids = random_ids(1, 13)  # a full segment and a short one
    read = segment_attentions(model, ids)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        carried = model(ids[:, :8]).memory  # rmt: the memory after the first segment
    assert [seg.tokens for seg in read.segments] == [(0, 8), (8, 13)]
    for j, seg in enumerate(read.segments):
        x = seg.inputs_embeds
        torch.testing.assert_close(x[seg.positions("tokens")], emb(ids[0, slice(*seg.tokens)]))
        for role, token in (("sink", 1), ("cls", 1), ("sep", 2)):
            for i in seg.positions(role):
                torch.testing.assert_close(x[i], emb.weight[token])
        # mt and armt put the learned memory in every segment; rmt the memory it carries
        memory = carried[0] if mechanism == "rmt" and j else model.initial_memory
        blocks = [r for r, _, _ in seg.blocks if r in ("read", "write", "memory")]
        assert blocks == {"rmt": ["memory"] if kind == "bert" else ["read", "write"], "armt": ["write"],
                          "mt": ["read"]}[mechanism]
        for role in blocks:
            torch.testing.assert_close(x[seg.positions(role)], memory)
        assert sorted(i for _, a, b in seg.blocks for i in range(a, b)) == list(range(x.shape[0]))


def test_armt_maps_show_the_memory_tokens_after_the_segment_and_xl_is_refused():
    read = segment_attentions(wrap("gpt2", "armt", num_mem_tokens=3), random_ids(1, 16))
    assert [r for r, _, _ in read.segments[0].blocks] == ["tokens", "write"]
    with pytest.raises(ValueError, match="xl_cache"):
        segment_attentions(wrap("gpt2", "rmt+xl"), random_ids(1, 16))
    with pytest.raises(ValueError, match=r"\(1, T\)"):
        segment_attentions(wrap("gpt2"), random_ids(2, 16))


def test_bad_input_is_one_line_and_exit_code_2(run, tmp_path, capsys):
    out, _ = run
    assert main(["attention", str(tmp_path / "nowhere")]) == 2
    one_line_error(capsys, "train_config.json not found")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(out / "train_config.json", unfinished)
    assert main(["attention", str(unfinished)]) == 2
    one_line_error(capsys, "state.json not found", "finished a stage")
    other = tmp_path / "babi"
    shutil.copytree(out, other)
    config = json.loads((other / "train_config.json").read_text())
    (other / "train_config.json").write_text(json.dumps({**config, "task": "babi-qa1", "task_args": {}}))
    assert main(["attention", str(other)]) == 2
    one_line_error(capsys, "babi-qa1", "no length to set from a number of segments")
    for args, fragment in ((["--segments", "0"], "--segments must be >= 1"), (["--layer", "7"], "layer 7"),
                           (["--layer", "x"], "--layer must be an integer"), (["--seed", "1.5"], "--seed")):
        assert main(["attention", str(out), "--out", str(tmp_path / "x.png"), *args]) == 2
        one_line_error(capsys, fragment)


def test_the_json_keeps_each_list_of_numbers_or_strings_on_one_line():
    from rmt.analysis.attention_cli import _dumps

    data = {"rows": [[0.5, -1e-05], [1, 2]], "labels": ["[CLS]", "a ,\n b", '"q\\', None, True], "blocks": [{"r": 1}], "e": []}
    text = _dumps(data)
    assert json.loads(text) == data
    assert '"labels": ["[CLS]", "a ,\\n b", "\\"q\\\\", null, true]' in text and "  [0.5, -1e-05]," in text
