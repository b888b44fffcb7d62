"""The FLOPs model: the scaling report's headline ratios, linear RMT cost, and the CLI."""

import json

import pytest
from transformers import BertConfig, OPTConfig

from rmt.analysis.cli import main
from rmt.analysis.flops import (
    DEFAULT_LENGTHS,
    OPT_CONFIGS,
    flops_ratio,
    forward_flops,
    from_hf_config,
    get_config,
    plot_relative_flops,
    rmt_forward_flops,
)


@pytest.mark.parametrize(("name", "reported"), [("opt-125m", 295), ("opt-175b", 29)])
def test_headline_ratios_at_2048000_tokens(name, reported):
    ratio = flops_ratio(OPT_CONFIGS[name], 2_048_000, segment_size=512, num_mem_tokens=10)
    assert abs(ratio - reported) / reported < 0.10


def test_ratio_shrinks_with_model_size_and_grows_with_length():
    at_2m = [flops_ratio(c, 2_048_000) for c in OPT_CONFIGS.values()]
    assert at_2m == sorted(at_2m, reverse=True)
    for config in OPT_CONFIGS.values():
        full = [forward_flops(config, n) for n in DEFAULT_LENGTHS]
        rmt = [rmt_forward_flops(config, n) for n in DEFAULT_LENGTHS]
        ratios = [flops_ratio(config, n) for n in DEFAULT_LENGTHS]
        assert full == sorted(full) and rmt == sorted(rmt) and ratios == sorted(ratios)


def test_rmt_is_linear_in_segments_and_full_attention_is_not():
    config = OPT_CONFIGS["opt-125m"]
    one = rmt_forward_flops(config, 512)
    for k in (2, 7, 4000):
        assert rmt_forward_flops(config, 512 * k) == pytest.approx(k * one, rel=1e-12)
    assert forward_flops(config, 2 * 65536) > 2 * forward_flops(config, 65536)


def test_one_segment_without_memory_is_full_attention():
    for config in OPT_CONFIGS.values():
        for n in (1, 300, 512):
            assert rmt_forward_flops(config, n, 512, 0) == forward_flops(config, n)


def test_partial_last_segment_counts_its_own_length():
    config = OPT_CONFIGS["opt-1.3b"]
    expected = 2 * forward_flops(config, 522) + forward_flops(config, 110)
    assert rmt_forward_flops(config, 1124, 512, 10) == expected


def test_hand_count_for_a_tiny_model():
    config = from_hf_config(BertConfig(num_hidden_layers=2, hidden_size=4, num_attention_heads=2,
                                       intermediate_size=8, vocab_size=10))
    n, d, h, f, v = 3, 4, 2, 8, 10
    layer = 6 * n * d * d + 4 * n * n * d + 3 * h * n * n + 2 * n * d * d + 4 * n * d * f
    assert forward_flops(config, n) == 2 * layer + 2 * n * d * v


def test_from_hf_config_matches_the_published_opt_table():
    hf = OPTConfig(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                   ffn_dim=3072, vocab_size=50272)
    shape = from_hf_config(hf, name="opt-125m")
    assert shape == OPT_CONFIGS["opt-125m"]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="opt-125m.*opt-175b"):
        get_config("gpt-5")
    with pytest.raises(SystemExit) as exit_info:
        main(["flops", "--model", "gpt-5", "--json"])
    message = str(exit_info.value.code)
    assert "gpt-5" in message and "opt-175b" in message and "\n" not in message


def test_cli_json(capsys):
    assert main(["flops", "--model", "opt-175b", "--length", "2048000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "opt-175b" and out["length"] == 2_048_000
    assert out["segment_size"] == 512 and out["num_mem_tokens"] == 10
    assert out["ratio"] == pytest.approx(out["full_attention_flops"] / out["rmt_flops"])
    assert 26 < out["ratio"] < 32


def test_cli_table_lengths_and_plot(capsys, tmp_path):
    png = tmp_path / "fig2.png"
    argv = ["flops", "--model", "125m", "--length", "512,1000", "--length", "2048000",
            "--mem", "0", "--plot", str(png)]
    assert main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("opt-125m")]
    assert [row.split()[1] for row in rows] == ["512", "1,000", "2,048,000"]
    assert png.read_bytes().startswith(b"\x89PNG")


def test_plot_relative_flops(tmp_path):
    path = plot_relative_flops(tmp_path / "sub" / "all.png", lengths=[512, 4096, 65536])
    assert path.stat().st_size > 0
