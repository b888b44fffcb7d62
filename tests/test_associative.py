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
