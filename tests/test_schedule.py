"""The segment schedule and the segment layouts, tested directly on small tensors."""

import torch

from rmt import schedule
from rmt.memory.base import arrange, take


def test_plan_packs_real_tokens_left_and_counts_segments():
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    p = schedule.plan(ids, mask, segment_size=2)
    assert p.ids[1, :2].tolist() == [3, 4] and p.positions[1, :2].tolist() == [2, 3]
    assert p.lengths.tolist() == [5, 2] and p.num_segments.tolist() == [3, 1] and p.num_steps == 3
    assert not p.uniform and schedule.plan(ids, None, 2).uniform


def test_samples_are_aligned_at_their_last_segment():
    ids = torch.arange(10).view(2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    p = schedule.plan(ids, mask, segment_size=2)
    steps = [schedule.step(p, j) for j in range(p.num_steps)]
    assert [s.rows.tolist() for s in steps] == [[0], [0], [0, 1]]  # the short sample reads last
    last = steps[-1]
    assert last.gather(p.ids, -1).tolist() == [[4, -1], [5, 6]]  # sample 0's partial tail, sample 1 whole
    assert last.lengths.tolist() == [1, 2]


def test_right_alignment_makes_the_first_segment_partial():
    p = schedule.plan(torch.arange(5).view(1, 5), None, segment_size=2, alignment="right")
    cut = [schedule.step(p, j).gather(p.ids, -1).tolist()[0] for j in range(p.num_steps)]
    assert cut == [[0], [1, 2], [3, 4]]


def test_pack_shifts_labels_across_the_whole_input():
    ids = torch.tensor([[0, 7, 8, 9]])
    p = schedule.plan(ids, torch.tensor([[0, 1, 1, 1]]), segment_size=2)
    assert schedule.pack(ids, p, shift=True).tolist() == [[8, 9, -100, -100]]
    assert schedule.pack(ids, p, shift=False).tolist() == [[7, 8, 9, -100]]


def test_assemble_scatters_to_the_callers_positions():
    parts = [(torch.tensor([0, 1]), torch.tensor([3, 0]), torch.tensor([[1.0], [2.0]]))]
    out = schedule.assemble(parts, uniform=False, B=2, T=4)
    assert out[..., 0].tolist() == [[0, 0, 0, 1], [2, 0, 0, 0]]


def test_arrange_puts_blocks_around_each_rows_real_tokens():
    d = 1
    before = [torch.full((2, 1, d), -1.0)]
    after = [torch.full((2, 2, d), -2.0)]
    embeds = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]).view(2, 3, 1)
    seg = arrange(before, embeds, torch.tensor([3, 1]), after)
    assert seg.inputs_embeds[..., 0].tolist() == [[-1, 1, 2, 3, -2, -2], [-1, 4, -2, -2, 0, 0]]
    assert seg.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert seg.after.tolist() == [4, 2]
    assert take(seg.inputs_embeds, seg.after, 2)[..., 0].tolist() == [[-2, -2], [-2, -2]]
