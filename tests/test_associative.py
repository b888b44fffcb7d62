"""The associative memory (ARMT) against its formulas written plainly, and against the backbone."""

import pytest
import torch
import torch.nn.functional as F
from conftest import CLS, SEP, SINK, random_ids, wrap

import rmt
from rmt.memory.associative import EPS, AssociativeBlock, dpfp


def phi_plain(x: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """DPFP of one vector, element by element."""
    r = torch.cat([F.relu(x), F.relu(-x)])
    n = r.numel()
    out = torch.stack([r[i] * r[(i - j) % n] for j in range(1, nu + 1) for i in range(n)])
    return out / out.norm().clamp_min(1e-12)


def read_plain(block: AssociativeBlock, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One sample: h (n, d), A (H, k, v), z (H, k) -> (n, d), a position and a head at a time."""
    H = block.heads
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        q_all = block.W_q(h[t]).view(H, -1)
        parts = []
        for head in range(H):
            q = phi_plain(q_all[head])
            parts.append((q @ A[head]) / (q @ z[head] + EPS))
        out[t] = torch.cat(parts)
    return out


def write_plain(block: AssociativeBlock, m: torch.Tensor, A: torch.Tensor, z: torch.Tensor, first: bool):
    """One sample: the delta rule over memory tokens m (M, d), with the paper's first-segment case."""
    H = block.heads
    A, z = A.clone(), z.clone()
    new_A, new_z = A.clone(), z.clone()
    for i in range(m.shape[0]):
        k_all, v_all = block.W_k(m[i]).view(H, -1), block.W_v(m[i]).view(H, -1)
        beta = torch.sigmoid(block.W_beta(m[i]))
        for head in range(H):
            k = phi_plain(k_all[head])
            if first:
                v_old, gamma = torch.zeros_like(v_all[head]), torch.tensor(1.0)
            else:
                v_old = (k @ A[head]) / (k @ z[head] + EPS)
                gamma = (1 - (k @ z[head]) / (k @ k)).clamp(0, 1)
            new_A[head] += beta[head] * torch.outer(k, v_all[head] - v_old)
            new_z[head] += gamma * k
    return new_A, new_z


@pytest.mark.parametrize("heads", [1, 2])
def test_batched_read_and_write_equal_the_formulas(heads):
    torch.manual_seed(0)
    d, d_mem, M = 16, 8, 3
    block = AssociativeBlock(d, d_mem, heads)
    torch.nn.init.normal_(block.W_v.weight, std=0.5)
    k_dim, v_dim = 6 * d_mem // heads, d // heads
    A0, z0 = torch.zeros(2, heads, k_dim, v_dim), torch.zeros(2, heads, k_dim)
    m1, m2, h = torch.randn(2, M, d), torch.randn(2, M, d), torch.randn(2, 5, d)
    A1, z1 = block.write(m1, A0, z0)  # the first segment: from an empty state
    A2, z2 = block.write(m2, A1, z1)  # a later one: the delta rule against what is stored
    for b in range(2):
        pA1, pz1 = write_plain(block, m1[b], A0[b], z0[b], first=True)
        pA2, pz2 = write_plain(block, m2[b], pA1, pz1, first=False)
        torch.testing.assert_close(A1[b], pA1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z1[b], pz1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(A2[b], pA2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z2[b], pz2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(block.read(h, A2, z2)[b], read_plain(block, h[b], pA2, pz2), atol=1e-5, rtol=1e-5)
    assert (block.read(h, A0, z0) == 0).all()  # an empty memory reads exactly nothing


def test_dpfp_matches_its_definition():
    x = torch.randn(4, 5)
    torch.testing.assert_close(dpfp(x), torch.stack([phi_plain(row) for row in x]))


def test_a_written_key_reads_back_its_value():
    """The delta rule stores an association: after writing v under k, reading with k gives v."""
    torch.manual_seed(1)
    block = AssociativeBlock(8, 8, 1)
    with torch.no_grad():
        block.W_v.weight.copy_(torch.eye(8))
        block.W_k.weight.copy_(torch.eye(8))
        block.W_q.weight.copy_(torch.eye(8))
        block.W_beta.bias.fill_(20.0)  # beta ~ 1
        block.W_beta.weight.zero_()
    m = torch.randn(1, 1, 8)
    A, z = block.write(m, torch.zeros(1, 1, 48, 8), torch.zeros(1, 1, 48))
    torch.testing.assert_close(block.read(m, A, z), m, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["gpt2", "llama-sink", "bert"])
def test_untrained_first_segment_is_the_backbone_on_segment_and_memory(kind):
    """W_v = 0 as constructed: the first segment is the backbone's own output on [segment | mem]."""
    config = dict(memory="armt", num_mem_tokens=3, segment_size=8, d_mem=8)
    if kind == "bert":
        config.update(cls_token_id=CLS, sep_token_id=SEP)
    if kind.endswith("-sink"):
        config["sink_token_id"] = SINK
    torch.manual_seed(0)
    from conftest import BACKBONES

    model = rmt.RecurrentMemoryTransformer(BACKBONES[kind](), rmt.RMTConfig(**config)).eval()
    ids = random_ids(2, 8)
    emb = model.backbone.get_input_embeddings()
    mem = model.initial_memory.expand(2, -1, -1)
    if kind == "bert":
        x = torch.cat([emb(torch.full((2, 1), CLS)), emb(ids), mem, emb(torch.full((2, 1), SEP))], dim=1)
        torch.testing.assert_close(model(ids).logits, model.backbone(inputs_embeds=x).logits, atol=1e-5, rtol=0)
        return
    x = torch.cat([emb(ids), mem], dim=1)
    if kind.endswith("-sink"):
        x = torch.cat([emb(torch.full((2, 1), SINK)), x], dim=1)
    start = int(kind.endswith("-sink"))
    ref = model.backbone(inputs_embeds=x).logits[:, start : start + 8]
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)
    # and it stays the backbone on every later segment: nothing is written, nothing is read
    longer = random_ids(2, 24)
    out = model(longer).logits
    for s in range(3):
        xs = torch.cat([emb(longer[:, 8 * s : 8 * s + 8]), mem], dim=1)
        if kind.endswith("-sink"):
            xs = torch.cat([emb(torch.full((2, 1), SINK)), xs], dim=1)
        torch.testing.assert_close(out[:, 8 * s : 8 * s + 8], model.backbone(inputs_embeds=xs).logits[:, start : start + 8],
                                   atol=1e-5, rtol=0)


def test_the_state_has_one_matrix_per_chosen_layer():
    model = wrap("llama", "armt", memory_layers=[1], num_memory_heads=2)
    state = model(random_ids(1, 20)).memory
    assert state.matrix.shape == (1, 1, 2, 6 * 8 // 2, 32 // 2) and state.normalizer.shape == (1, 1, 2, 24)
    assert len(model.mechanism.assoc) == 1
    keys = set(model.state_dict())
    assert {k for k in keys if k.startswith("mechanism.")} == {
        "mechanism.initial_memory", *(f"mechanism.assoc.0.{n}" for n in
                                      ("W_q.weight", "W_k.weight", "W_v.weight", "W_beta.weight", "W_beta.bias"))}
    with pytest.raises(ValueError, match="memory_layers"):
        wrap("llama", "armt", memory_layers=[2])
    with pytest.raises(ValueError, match="options of memory='armt'"):
        rmt.RMTConfig(d_mem=32)


def test_no_hooks_stay_on_the_backbone():
    model = wrap("gpt2", "armt")
    model(random_ids(1, 4))  # transformers installs hooks of its own on a first call
    count = lambda: [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in model.backbone.transformer.h]  # noqa: E731
    before = count()
    model(random_ids(1, 20))
    model.generate(random_ids(1, 5), max_new_tokens=4)
    with pytest.raises(ValueError):
        model(random_ids(1, 5), memory=model.init_memory(2))  # an error midway
    assert count() == before


def test_a_write_at_or_below_the_threshold_is_as_if_its_token_were_absent():
    """write_threshold: a memory token whose gate is at or below it changes neither A nor z."""
    torch.manual_seed(2)
    d, d_mem, M = 16, 8, 6
    block = AssociativeBlock(d, d_mem, 1, threshold=0.5)
    torch.nn.init.normal_(block.W_v.weight, std=0.5)
    torch.nn.init.normal_(block.W_beta.weight, std=1.0)
    A0, z0 = torch.zeros(2, 1, 6 * d_mem, d), torch.zeros(2, 1, 6 * d_mem)
    m1, m2 = torch.randn(2, M, d), torch.randn(2, M, d)
    A1, z1 = block.write(m1, A0, z0)
    A2, z2 = block.write(m2, A1, z1)
    for b in range(2):
        kept1 = torch.sigmoid(block.W_beta(m1[b]))[:, 0] > 0.5
        kept2 = torch.sigmoid(block.W_beta(m2[b]))[:, 0] > 0.5
        assert 0 < int(kept1.sum()) < M and 0 < int(kept2.sum()) < M  # some writes happen, some do not
        pA1, pz1 = write_plain(block, m1[b, kept1], A0[b], z0[b], first=True)
        pA2, pz2 = write_plain(block, m2[b, kept2], pA1, pz1, first=False)
        torch.testing.assert_close(A2[b], pA2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z2[b], pz2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_a_closed_gate_leaves_the_state_exactly_unchanged_however_long_the_input(kind):
    writer = wrap(kind, "armt")
    state = writer(random_ids(2, 24, seed=1)).memory  # a state that holds something
    assert state.matrix.abs().sum() > 0
    keeper = wrap(kind, "armt", write_threshold=0.5)
    with torch.no_grad():
        for block in keeper.mechanism.assoc:
            block.W_beta.bias.fill_(-3.0)  # every gate ~0.05: below the threshold, so nothing is written
            block.W_beta.weight.zero_()
    after = keeper(random_ids(2, 200, seed=2), memory=state).memory
    assert torch.equal(after.matrix, state.matrix) and torch.equal(after.normalizer, state.normalizer)
    for block in keeper.mechanism.assoc:
        block.threshold = 0.0  # without the threshold the same small gates do write
    assert not torch.equal(keeper(random_ids(2, 200, seed=2), memory=state).memory.matrix, state.matrix)


def test_the_write_penalty_costs_every_gate_its_value_in_the_gradient_only():
    torch.manual_seed(3)
    d, M, b, cost = 16, 4, 3, 0.2
    m = torch.randn(b, M, d)
    A0, z0 = torch.randn(b, 1, 48, d).abs() * 0.1, torch.rand(b, 1, 48)
    grads = []
    for penalty in (0.0, cost):
        torch.manual_seed(4)
        block = AssociativeBlock(d, 8, 1, penalty=penalty)
        torch.nn.init.normal_(block.W_v.weight, std=0.5)
        A, z = block.write(m, A0, z0)
        (A.sum() + z.sum()).backward()
        grads.append(block.W_beta.bias.grad.clone())
    beta = torch.sigmoid(block.W_beta(m)).detach()
    expected = cost / b * (beta * (1 - beta)).sum()  # d(cost * mean_b sum_i beta_i) / d bias
    torch.testing.assert_close(grads[1] - grads[0], expected.reshape(1), atol=1e-5, rtol=1e-4)
    model = wrap("gpt2", "armt", write_penalty=1.0)
    ids = random_ids(2, 20)
    loss = model(ids, labels=ids).loss
    plain = wrap("gpt2", "armt")
    assert torch.equal(loss, plain(ids, labels=ids).loss)  # out.loss does not include the cost


@pytest.mark.parametrize("bad", [{"write_threshold": 1.0}, {"write_threshold": -0.1}, {"write_penalty": -1},
                                 {"write_threshold": "0.5"}, {"write_penalty": True}])
def test_bad_write_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        rmt.RMTConfig(memory="armt", **bad)


def test_write_options_belong_to_armt_and_survive_a_round_trip(tmp_path):
    with pytest.raises(ValueError, match="options of memory='armt'"):
        rmt.RMTConfig(write_threshold=0.5)
    model = wrap("gpt2", "armt", write_threshold=0.25, write_penalty=0.1)
    model.save_pretrained(tmp_path)
    loaded = rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path)
    assert (loaded.rmt_config.write_threshold, loaded.rmt_config.write_penalty) == (0.25, 0.1)
    assert [b.threshold for b in loaded.mechanism.assoc] == [0.25] * len(loaded.mechanism.assoc)


def test_a_threshold_set_after_training_reads_as_one_built_in(tmp_path):
    """set_write_threshold: a model read with a stricter gate equals the same weights built with it,
    and saves the new threshold; other mechanisms and bad values are refused."""
    built = wrap("gpt2", "armt", write_threshold=0.5)
    changed = wrap("gpt2", "armt")
    changed.load_state_dict(built.state_dict())
    with torch.no_grad():
        for model in (built, changed):
            for block in model.mechanism.assoc:
                torch.nn.init.normal_(block.W_v.weight, std=0.5)
                torch.nn.init.normal_(block.W_beta.weight, std=0.3)  # gates on both sides of 0.5
        changed.load_state_dict(built.state_dict())
    ids = random_ids(2, 60, seed=5)
    assert not torch.equal(changed(ids).logits, built(ids).logits)  # the threshold matters here
    changed.set_write_threshold(0.5)
    assert torch.equal(changed(ids).logits, built(ids).logits)
    changed.save_pretrained(tmp_path)
    assert rmt.RecurrentMemoryTransformer.from_pretrained(tmp_path).rmt_config.write_threshold == 0.5
    with pytest.raises(ValueError, match="write_threshold"):
        changed.set_write_threshold(1.5)
    with pytest.raises(ValueError, match="memory='armt'"):
        wrap("gpt2", "rmt").set_write_threshold(0.5)
