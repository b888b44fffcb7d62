"""Algorithmic tasks of the NeurIPS 2022 RMT paper: copy, reverse, associative retrieval, quadratic equations.

Character level: every character is one token (checked against the tokenizer), the target follows
a start-to-generate token, and only the target is scored (per-token accuracy and exact match).
"""

from __future__ import annotations

import math
import string

from ..data.tokenizer import sep_id
from .base import Task, _check_lengths, causal_example, register, token_scores


class _CharTask(Task):
    metric = "exact_match"  # the whole target right (NeurIPS 2022)
    """Shared machinery: characters to single tokens, ``source <sep> target`` layout."""

    kind = "causal-lm"

    def __init__(self, tokenizer=None, seed: int = 0, alphabet: str = string.ascii_lowercase + string.digits) -> None:
        super().__init__(tokenizer, seed)
        if len(set(alphabet)) < 2:
            raise ValueError(f"alphabet needs at least 2 distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.sep_token_id = sep_id(self.tokenizer)
        self._char_ids: dict[str, int] = {}

    def char_ids(self, text: str) -> list[int]:
        """One token per character; a tokenizer that splits a character into several is refused."""
        out = []
        for ch in text:
            if ch not in self._char_ids:
                ids = self.encode(ch)
                if len(ids) != 1:
                    raise ValueError(f"character {ch!r} is {len(ids)} tokens with this tokenizer; character-level "
                                     "tasks need one token per character (use rmt.data.ByteTokenizer)")
                self._char_ids[ch] = ids[0]
            out.append(self._char_ids[ch])
        return out

    def make(self, source: str, target: str) -> dict:
        return causal_example([*self.char_ids(source), self.sep_token_id], self.char_ids(target))


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")


@register("copy")
class CopyTask(_CharTask):
    """Copy: a random string, then the start token, then the string repeated (paper: 24 source, 48 target)."""

    name = "copy"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """Source, start token and target (the source twice) fill the segments."""
        if "target_length" in task_args:
            raise ValueError("copy: target_length follows from the number of segments (twice the source); leave it "
                             "out of task_args")
        return {"source_length": max(1, (num_segments * segment_size - 1) // 3)}

    def __init__(self, tokenizer=None, seed: int = 0, source_length: int = 24, target_length: int | None = None,
                 **kwargs) -> None:
        super().__init__(tokenizer, seed, **kwargs)
        target_length = 2 * source_length if target_length is None else target_length
        _check_positive(source_length=source_length, target_length=target_length)
        if target_length % source_length:
            raise ValueError(f"target_length ({target_length}) must be a multiple of source_length ({source_length})")
        self.source_length, self.target_length = source_length, target_length

    def example(self, index: int, split: str = "train") -> dict:
        rng = self.rng(index, split)
        src = "".join(rng.choice(self.alphabet) for _ in range(self.source_length))
        return self.make(src, src * (self.target_length // self.source_length))


@register("reverse")
class ReverseTask(_CharTask):
    """Reverse: a random string, then the start token, then the string backwards (paper: 24 / 24)."""

    name = "reverse"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """Source, start token and the reversed source fill the segments."""
        return {"source_length": max(1, (num_segments * segment_size - 1) // 2)}

    def __init__(self, tokenizer=None, seed: int = 0, source_length: int = 24, **kwargs) -> None:
        super().__init__(tokenizer, seed, **kwargs)
        _check_positive(source_length=source_length)
        self.source_length = self.target_length = source_length

    def example(self, index: int, split: str = "train") -> dict:
        rng = self.rng(index, split)
        src = "".join(rng.choice(self.alphabet) for _ in range(self.source_length))
        return self.make(src, src[::-1])


@register("associative-retrieval")
class AssociativeRetrievalTask(_CharTask):
    """Associative retrieval: key-value pairs, '?', a key; the target is its value (paper: 10 pairs)."""

    name = "associative-retrieval"

    @classmethod
    def length_for_segments(cls, num_segments: int, segment_size: int, **task_args) -> dict:
        """As many key-value pairs as fill the segments (2 tokens each, 4 for the query and answer)."""
        pairs = max(1, (num_segments * segment_size - 4) // 2)
        keys = task_args.get("keys", string.ascii_lowercase)
        if pairs > len(set(keys)):
            raise ValueError(f"associative-retrieval: {num_segments} segments of {segment_size} tokens hold {pairs} "
                             f"pairs, but there are only {len(set(keys))} distinct keys; give more keys in task_args "
                             "or use shorter segments")
        return {"num_pairs": pairs}

    def __init__(self, tokenizer=None, seed: int = 0, num_pairs: int = 10, keys: str = string.ascii_lowercase,
                 values: str = string.digits, **kwargs) -> None:
        super().__init__(tokenizer, seed, alphabet=keys + values, **kwargs)
        _check_positive(num_pairs=num_pairs)
        if num_pairs > len(set(keys)):
            raise ValueError(f"num_pairs={num_pairs} needs as many distinct keys; got {len(set(keys))} in {keys!r}")
        if set(keys) & set(values) or "?" in keys + values:
            raise ValueError("keys and values must be disjoint and must not contain '?'")
        self.num_pairs, self.keys, self.values = num_pairs, keys, values
        self.source_length, self.target_length = 2 * num_pairs + 2, 1

    def example(self, index: int, split: str = "train") -> dict:
        rng = self.rng(index, split)
        keys = rng.sample(sorted(set(self.keys)), self.num_pairs)  # distinct keys make the answer unique
        vals = [rng.choice(self.values) for _ in keys]
        query = rng.randrange(self.num_pairs)
        src = "".join(k + v for k, v in zip(keys, vals)) + "?" + keys[query]
        return self.make(src, vals[query])


@register("quadratic-equations")
class QuadraticEquationsTask(_CharTask):
    """Quadratic equations: an equation, then its solution through the discriminant; only the answer is scored."""

    name = "quadratic-equations"
    own_length = "an equation and its solution"

    def __init__(self, tokenizer=None, seed: int = 0, max_root: int = 99, max_leading: int = 9,
                 loss_on_solution: bool = True) -> None:
        super().__init__(tokenizer, seed, alphabet="0123456789+-*/=^(),;:xDsqrt ")
        _check_positive(max_root=max_root, max_leading=max_leading)
        self.max_root, self.max_leading = max_root, max_leading
        # The paper trains the model to write the solution, then the answer; the metric reads the answer.
        self.loss_on_solution = loss_on_solution

    def solve(self, a: int, b: int, c: int) -> tuple[str, str]:
        """The worked solution and the answer for ``a*x^2+b*x+c=0`` with integer roots."""
        d = b * b - 4 * a * c
        r = math.isqrt(d)
        x1, x2 = sorted(((-b - r) // (2 * a), (-b + r) // (2 * a)))
        steps = (f"D=b^2-4*a*c=({b})^2-4*({a})*({c})={d};sqrt(D)={r};"
                 f"x=(-({b})-{r})/(2*({a})),(-({b})+{r})/(2*({a}));answer:")
        answer = f"x={x1}" if x1 == x2 else f"x={x1},{x2}"
        return steps, answer

    def example(self, index: int, split: str = "train") -> dict:
        """``equation <sep> solution answer``; ``answer_length`` says how many final tokens are the answer."""
        rng = self.rng(index, split)
        a = rng.choice([s * m for s in (1, -1) for m in range(1, self.max_leading + 1)])
        r1, r2 = (rng.randint(-self.max_root, self.max_root) for _ in range(2))
        b, c = -a * (r1 + r2), a * r1 * r2  # a(x - r1)(x - r2): integer roots by construction
        steps, answer = self.solve(a, b, c)
        prompt = [*self.char_ids(f"{a}*x^2{b:+d}*x{c:+d}=0"), self.sep_token_id]
        if self.loss_on_solution:
            ex = causal_example(prompt, self.char_ids(steps + answer))
        else:
            ex = causal_example(prompt + self.char_ids(steps), self.char_ids(answer))
        ex["answer_length"] = len(answer)
        return ex

    def score(self, predictions, examples) -> dict[str, float]:
        """Per-token accuracy and exact match of the answer only (the last ``answer_length`` target tokens)."""
        _check_lengths(predictions, examples)
        answers = []
        for pred, ex in zip(predictions, examples):
            target = self.target_ids(ex)
            n = ex["answer_length"]
            pred = list(pred)[: len(target)]
            answers.append((pred[len(target) - n :], target[-n:]))
        return token_scores([p for p, _ in answers], [{"labels": t} for _, t in answers])
